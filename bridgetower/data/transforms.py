"""Per-sample image transform: PIL image -> normalised ``(3, H, W)`` float tensor.

A thin per-sample wrapper around :class:`bridgetower.models.ImageProcessor` (the BridgeTower /
HF preprocessing: bicubic resize of the shorter side, centre crop, rescale, CLIP mean/std),
so datasets can transform each image in ``DataLoader`` workers while batching and padding
(``pixel_mask``) stay with the collator. Same pixels as calling the processor on the image.
``CLIP_MEAN`` / ``CLIP_STD`` are re-exported from :mod:`bridgetower.models.image_ops`.

:class:`AugmentedImageTransform` is the random training augmentation of the official
fine-tuning scripts (``scripts/ftfpt_base_*.sh``: ``EXP_RGM``), built from ``torchvision``
transforms (the ``augment`` extra); :data:`OFFICIAL_AUGMENTATION` says which task uses which.
Pretraining uses none (resize and centre crop only), and neither do tasks not listed.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from bridgetower.models.image_ops import CLIP_MEAN, CLIP_STD

__all__ = ["AUGMENTATIONS", "AugmentedImageTransform", "CLIP_MEAN", "CLIP_STD", "ImageTransform",
           "OFFICIAL_AUGMENTATION"]

#: The random training augmentations: ``"randaug"`` (official ``blip_randaug_wc``: random
#: resized crop of 50-100% of the area, horizontal flip, RandAugment with 2 ops at magnitude
#: 7 of 30, colour ops included) and ``"randaug-geometric"`` (``blip_randaug_wohf``, for VQA:
#: the crop, no flip, 2 ops at magnitude 5 of 10 from Identity, AutoContrast, Brightness,
#: Sharpness, Equalize, ShearX/Y, TranslateX/Y, Rotate: no hue or colour changes);
#: ``"none"``: :class:`ImageTransform`.
AUGMENTATIONS = ("none", "randaug", "randaug-geometric")

#: The augmentation of each task's official fine-tuning recipe.
OFFICIAL_AUGMENTATION: dict[str, str] = {
    "vqa": "randaug-geometric", "nlvr2": "randaug", "snli-ve": "randaug", "irtr": "randaug",
}

_GEOMETRIC_OPS = ("Identity", "AutoContrast", "Brightness", "Sharpness", "Equalize", "ShearX", "ShearY",
                  "TranslateX", "TranslateY", "Rotate")


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


class AugmentedImageTransform:
    """A random training transform (see :data:`AUGMENTATIONS`): PIL image -> ``(3, size,
    size)`` float32 tensor, normalised with the CLIP mean and std like :class:`ImageTransform`.

    Randomness comes from the global ``torch`` RNG; the :class:`~bridgetower.training.stream.BatchStream`
    seeds it per batch, so the same batch gets the same augmentation with or without loader
    workers and after a resume.
    """

    def __init__(self, size: int = 288, kind: str = "randaug") -> None:
        from .._optional import require

        if not isinstance(size, int) or isinstance(size, bool) or size < 1:
            raise ValueError(f"size must be a positive int, got {size!r}")
        if kind not in AUGMENTATIONS or kind == "none":
            raise ValueError(f"kind must be one of {AUGMENTATIONS[1:]}, got {kind!r} (use ImageTransform for none)")
        v2 = require("torchvision.transforms.v2", "augment", needed_for="fine-tuning augmentation",
                     package="torchvision")
        bicubic = v2.InterpolationMode.BICUBIC
        ops: list[Any] = [v2.RandomResizedCrop(size, scale=(0.5, 1.0), interpolation=bicubic, antialias=True)]
        if kind == "randaug":
            ops += [v2.RandomHorizontalFlip(), v2.RandAugment(num_ops=2, magnitude=7, num_magnitude_bins=31)]
        else:
            geometric = type("GeometricRandAugment", (v2.RandAugment,), {
                "_AUGMENTATION_SPACE": {k: v2.RandAugment._AUGMENTATION_SPACE[k] for k in _GEOMETRIC_OPS}})
            ops.append(geometric(num_ops=2, magnitude=5, num_magnitude_bins=11))
        ops += [v2.PILToTensor(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(CLIP_MEAN), list(CLIP_STD))]
        self.kind = kind
        self.size = size
        self.pipeline = v2.Compose(ops)

    def __call__(self, image: Any) -> Tensor:
        return self.pipeline(image.convert("RGB"))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(size={self.size}, kind={self.kind!r})"
