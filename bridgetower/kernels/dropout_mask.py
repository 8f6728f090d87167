"""Random keep-masks from 16-bit decisions: cheap dropout masks on the CPU.

``torch.nn.Dropout`` on the CPU draws one float per element through ``bernoulli_`` (about
10 ns per element on our 2-core test machine).  Here each decision compares 16 random bits
with ``p * 2**16``, four decisions per 64-bit generator call, and the mask is a uint8
tensor the input is multiplied by: about a third of the time.  The drop probability is
``p`` rounded to a multiple of 2**-16 (off by less than 8e-6).

:func:`random_keep_mask` serves :class:`bridgetower.layers.dropout.Dropout` and the chunked
attention backend, which draws its masks from seeded generators so that the backward can
draw them again.
"""

from __future__ import annotations

import math

import torch

__all__ = ["random_keep_mask"]

_DROP_LEVELS = 1 << 16  # a decision compares 16 random bits


def _dropout_threshold(p: float) -> int:
    """The int16 threshold of :func:`random_keep_mask`: a lane below it is dropped.  Capped
    at the int16 maximum, so ``p`` within 2**-17 of 1 drops with probability 1 - 2**-16 (a
    larger Python int would wrap in the int16 comparison)."""
    return min(round(p * _DROP_LEVELS), _DROP_LEVELS - 1) - _DROP_LEVELS // 2


def random_keep_mask(
    shape: tuple[int, ...],
    p: float,
    device: torch.device | str,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """A uint8 keep-mask (1 = kept) of ``shape``, each element dropped with probability
    ``p`` rounded to a multiple of 2**-16.

    The bits come from 64-bit draws over the whole int64 range (``generator``, default
    the global one of ``device``), four 16-bit lanes per draw, compared in one contiguous
    pass.  uint8 rather than bool: multiplying by it (``x.mul(keep)``) is several times
    faster on the CPU than ``masked_fill``.
    """
    if not 0.0 <= float(p) <= 1.0:
        raise ValueError(f"random_keep_mask: p must be in [0, 1], got {p}")
    if not all(isinstance(d, int) and d >= 0 for d in shape):
        raise TypeError(f"random_keep_mask: shape must be a tuple of non-negative ints, got {shape!r}")
    n = math.prod(shape)
    # Not ``random_()``: for int64 it draws from [0, 2**63), so the top lane would have only
    # 15 random bits.  The full range is uniform up to a bias of 2**-64.
    words = torch.randint(-(1 << 63), (1 << 63) - 1, ((n + 3) // 4,), dtype=torch.int64,
                          device=device, generator=generator)
    keep = torch.ge(words.view(torch.int16)[:n], _dropout_threshold(p))
    return keep.view(torch.uint8).view(shape)
