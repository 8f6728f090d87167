"""Fused bridge + LayerNorm: ``LayerNorm(a*x + b*z) * weight + bias``.

TEMPORARY: the PyTorch path only, so the layers can be built against the final signature.
The Triton kernels, their launchers and ``BridgeNormFn`` replace this body.
"""

from __future__ import annotations

import torch

from .reference import bridge_norm_ref


def bridge_norm(
    x: torch.Tensor,
    z: torch.Tensor,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    coef: torch.Tensor | None = None,
    *,
    mode: str = "add",
    eps: float = 1e-5,
    backend: str | None = None,
) -> torch.Tensor:
    return bridge_norm_ref(x, z, weight, bias, coef, mode=mode, eps=eps)
