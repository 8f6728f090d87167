"""Image constants and the batch padding shared by the processor and the data collators.

- :data:`CLIP_MEAN`, :data:`CLIP_STD`: the per-channel normalisation of the CLIP vision
  tower (OpenAI CLIP / open_clip), applied by :class:`~bridgetower.models.ImageProcessor`.
- :func:`pad_images`: images of different sizes -> one zero-padded batch and its
  ``pixel_mask``. The processor, :class:`~bridgetower.data.PretrainingCollator` and
  :class:`~bridgetower.data.TaskCollator` all pad with it, so a batch has the same layout
  whichever of them built it.

Padding is at the bottom and right (each image sits in the top-left corner), with zeros, as
Hugging Face's ``BridgeTowerImageProcessor`` does; the model turns ``pixel_mask`` into a patch
mask, so the padded patches are not attended to.

Limits: plain tensors or NumPy arrays on one device; no channel-last layout.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = ["CLIP_MEAN", "CLIP_STD", "pad_images"]

#: Per-channel (R, G, B) mean of the CLIP image normalisation.
CLIP_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
#: Per-channel (R, G, B) standard deviation of the CLIP image normalisation.
CLIP_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)


def pad_images(
    images: Sequence[Tensor | np.ndarray],
    *,
    size: tuple[int, int] | None = None,
    dtype: torch.dtype | None = None,
) -> tuple[Tensor, Tensor]:
    """Zero-pad ``(C, H_i, W_i)`` images at the bottom/right into one batch.

    Args:
        images: a non-empty list of 3-D tensors or NumPy arrays with the same ``C``.
        size: ``(H, W)`` of the batch; default the largest height and width of ``images``.
            It may not be smaller than an image.
        dtype: of ``pixel_values``; default the dtype of the first image.

    Returns:
        ``pixel_values`` ``(B, C, H, W)`` (the images in the top-left corner, zeros
        elsewhere) and ``pixel_mask`` ``(B, H, W)`` int64 (1 = a pixel of the image, 0 =
        padding), on the device of the first image.
    """
    if isinstance(images, (Tensor, np.ndarray)) or not isinstance(images, Sequence):
        raise TypeError(f"images must be a list of (C, H, W) tensors or arrays, got {type(images).__name__}")
    if not images:
        raise ValueError("images is empty: a batch needs at least one image")
    tensors = []
    for i, im in enumerate(images):
        if not isinstance(im, (Tensor, np.ndarray)):
            raise TypeError(f"images[{i}] must be a tensor or a NumPy array, got {type(im).__name__}")
        if im.ndim != 3:
            raise ValueError(f"images[{i}] must be (C, H, W), got shape {tuple(im.shape)}")
        tensors.append(torch.as_tensor(im))
    channels = sorted({t.shape[0] for t in tensors})
    if len(channels) != 1:
        raise ValueError(f"images in a batch must have the same number of channels, got {channels}")
    max_h = max(t.shape[1] for t in tensors)
    max_w = max(t.shape[2] for t in tensors)
    h, w = (max_h, max_w) if size is None else (int(size[0]), int(size[1]))
    if h < max_h or w < max_w:
        raise ValueError(f"size {(h, w)} is smaller than the largest image ({max_h}, {max_w})")
    dtype = tensors[0].dtype if dtype is None else dtype
    device = tensors[0].device
    b = len(tensors)
    if all(t.shape[1:] == (h, w) for t in tensors):  # nothing to pad
        return torch.stack([t.to(device=device, dtype=dtype) for t in tensors]), torch.ones(
            (b, h, w), dtype=torch.long, device=device
        )
    pixel_values = torch.zeros((b, channels[0], h, w), dtype=dtype, device=device)
    pixel_mask = torch.zeros((b, h, w), dtype=torch.long, device=device)
    for i, t in enumerate(tensors):
        pixel_values[i, :, : t.shape[1], : t.shape[2]] = t
        pixel_mask[i, : t.shape[1], : t.shape[2]] = 1
    return pixel_values, pixel_mask
