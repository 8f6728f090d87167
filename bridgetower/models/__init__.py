"""BridgeTower models: configs, encoders, task models, checkpoint conversion. See docs/architecture.md."""

from .bridgetower import BridgeTowerModel, BridgeTowerOutput, patch_mask_from_pixel_mask
from .config import BridgeTowerConfig, FusionConfig, TextConfig, VisionConfig, apply_overrides
from .factory import create_model, get_config, list_models, register_config
from .processor import BridgeTowerProcessor, ImageProcessor
from .tasks import (
    TASK_MODELS,
    BridgeTowerContrastiveOutput,
    BridgeTowerForContrastiveLearning,
    BridgeTowerForImageAndTextRetrieval,
    BridgeTowerForIRTR,
    BridgeTowerForMaskedLM,
    BridgeTowerForNLVR2,
    BridgeTowerForPretraining,
    BridgeTowerForSNLIVE,
    BridgeTowerForVisualQuestionAnswering,
    BridgeTowerPretrainingOutput,
    TaskOutput,
)
from .text import TransformersTextEncoder
from .tokenizer import build_test_tokenizer
from .unimodal import BridgeTowerForImageClassification, BridgeTowerForTextClassification
from .vision import OpenCLIPVisionEncoder

__all__ = [
    "TASK_MODELS",
    "BridgeTowerConfig",
    "BridgeTowerContrastiveOutput",
    "BridgeTowerForContrastiveLearning",
    "BridgeTowerForIRTR",
    "BridgeTowerForImageAndTextRetrieval",
    "BridgeTowerForMaskedLM",
    "BridgeTowerForNLVR2",
    "BridgeTowerForPretraining",
    "BridgeTowerForImageClassification",
    "BridgeTowerForSNLIVE",
    "BridgeTowerForTextClassification",
    "BridgeTowerForVisualQuestionAnswering",
    "BridgeTowerModel",
    "BridgeTowerOutput",
    "BridgeTowerPretrainingOutput",
    "BridgeTowerProcessor",
    "FusionConfig",
    "ImageProcessor",
    "OpenCLIPVisionEncoder",
    "TaskOutput",
    "TextConfig",
    "TransformersTextEncoder",
    "VisionConfig",
    "apply_overrides",
    "build_test_tokenizer",
    "create_model",
    "get_config",
    "list_models",
    "patch_mask_from_pixel_mask",
    "register_config",
]
