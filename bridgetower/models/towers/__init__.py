"""The uni-modal towers: an open_clip ViT (:mod:`.vision`) and any ``transformers`` text
encoder (:mod:`.text`), each returning the hidden states of its top layers."""

from .text import TransformersTextEncoder
from .vision import OpenCLIPVisionEncoder

__all__ = ["OpenCLIPVisionEncoder", "TransformersTextEncoder"]
