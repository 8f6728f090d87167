"""Per-sample image transform: PIL image -> normalised ``(3, H, W)`` float tensor.

A thin per-sample wrapper around :class:`bridgetower.models.ImageProcessor` (the BridgeTower /
HF preprocessing: bicubic resize of the shorter side, centre crop, rescale, CLIP mean/std),
so datasets can transform each image in ``DataLoader`` workers while batching and padding
(``pixel_mask``) stay with the collator. Same pixels as calling the processor on the image.
``CLIP_MEAN`` / ``CLIP_STD`` are re-exported from :mod:`bridgetower.models.image_ops`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from bridgetower.models.image_ops import CLIP_MEAN, CLIP_STD

__all__ = ["CLIP_MEAN", "CLIP_STD", "ImageTransform"]


class ImageTransform:
    """``ImageTransform(processor)`` or ``ImageTransform(size, **ImageProcessor options)``.

    ``__call__(image)`` returns ``processor.preprocess_image(image)`` as a ``(3, H, W)``
    float32 tensor (``H = W = size`` with the default centre crop).
    """

    def __init__(self, size_or_processor: Any = 288, **processor_kwargs: Any) -> None:
        from bridgetower.models.processor import ImageProcessor

        if isinstance(size_or_processor, ImageProcessor):
            if processor_kwargs:
                raise ValueError(
                    f"pass either a processor or options, not both (got {sorted(processor_kwargs)})"
                )
            self.processor = size_or_processor
        elif isinstance(size_or_processor, int) and not isinstance(size_or_processor, bool):
            self.processor = ImageProcessor(size_or_processor, **processor_kwargs)
        else:
            raise TypeError(
                "ImageTransform takes an int size or a bridgetower.models.ImageProcessor, got "
                f"{type(size_or_processor).__name__}"
            )

    @property
    def size(self) -> int:
        return self.processor.size

    def __call__(self, image: Any) -> Tensor:
        return torch.from_numpy(self.processor.preprocess_image(image))  # (3, H, W)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.processor!r})"
