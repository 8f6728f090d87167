"""Dropout with cheap CPU masks (:func:`bridgetower.kernels.random_keep_mask`).

``torch.nn.Dropout`` on the CPU draws one float per element through ``bernoulli_`` (about
10 ns per element on our 2-core test machine); a 16-bit decision per element, four per 64-bit
draw, takes about a third of that.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..kernels.dropout_mask import random_keep_mask

__all__ = ["Dropout", "random_keep_mask"]


class Dropout(nn.Dropout):
    """``nn.Dropout`` (same arguments, same behaviour in eval) with cheap CPU masks.

    In training on the CPU, for floating-point input and ``0 < p < 1`` without
    ``inplace``, the mask comes from :func:`random_keep_mask` with the global generator
    (so ``torch.manual_seed`` and activation checkpointing, which restores the RNG state,
    reproduce it) and the rate is ``p`` rounded to a multiple of 2**-16.  Everywhere else
    (CUDA, where torch's dropout is one fused kernel; ``inplace``; ``p`` of 0 or 1; under
    ``torch.compile``) it is ``nn.Dropout``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (not self.training or x.device.type != "cpu" or self.inplace
                or not 0.0 < self.p < 1.0 or not x.is_floating_point()
                or torch.compiler.is_compiling()):
            return F.dropout(x, self.p, self.training, self.inplace)
        keep = random_keep_mask(tuple(x.shape), self.p, x.device)
        return x.mul(keep).mul_(1.0 / (1.0 - self.p))
