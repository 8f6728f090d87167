"""Pure-PyTorch reference implementations of the fused kernels.

This module imports no Triton.  It is the CPU path of :func:`bridgetower.kernels.bridge_norm`,
the float64 oracle of the kernel tests, and the baseline of the benchmarks.

``bridge_norm_ref`` computes, over the last dimension::

    s   = a * x + b * z
    out = (s - mean(s)) / sqrt(var(s) + eps) * weight + bias

with ``(a, b)`` given by ``mode`` (the table in :mod:`bridgetower.kernels.modes`).

Statistics are computed in float32 (or float64 for float64 inputs) and the result is cast
back to the input dtype, as the Triton kernel does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .modes import BRIDGE_NORM_MODES, bridge_mode

__all__ = ["BRIDGE_NORM_MODES", "bridge_coefficients", "bridge_norm_eager", "bridge_norm_ref"]


def bridge_coefficients(
    coef: torch.Tensor | None, mode: str
) -> tuple[torch.Tensor | float, torch.Tensor | float]:
    """The ``(a, b)`` of ``s = a*x + b*z`` for ``mode`` (differentiable in ``coef``)."""
    return bridge_mode(mode).coefficients(coef)


def _bridge_sum(x: torch.Tensor, z: torch.Tensor, coef: torch.Tensor | None, mode: str):
    """``s = a*x + b*z`` (``x + z`` for ``add``, without multiplying by 1)."""
    if mode == "add":
        return x + z
    a, b = bridge_coefficients(coef, mode)
    return a * x + b * z


def bridge_norm_ref(x: torch.Tensor, z: torch.Tensor, weight: torch.Tensor | None = None,
                    bias: torch.Tensor | None = None, coef: torch.Tensor | None = None, *,
                    mode: str = "add", eps: float = 1e-5) -> torch.Tensor:
    """Reference ``LayerNorm(a*x + b*z) * weight + bias`` (see the module docstring).

    No input validation here: :func:`bridgetower.kernels.bridge_norm` validates once at the
    public entry point.
    """
    compute = torch.float64 if x.dtype == torch.float64 else torch.float32
    c = coef.to(compute) if coef is not None else None
    s = _bridge_sum(x.to(compute), z.to(compute), c, mode)
    w = weight.to(compute) if weight is not None else None
    b = bias.to(compute) if bias is not None else None
    return F.layer_norm(s, (s.shape[-1],), w, b, eps).to(x.dtype)


def bridge_norm_eager(x: torch.Tensor, z: torch.Tensor, weight: torch.Tensor | None = None,
                      bias: torch.Tensor | None = None, coef: torch.Tensor | None = None, *,
                      mode: str = "add", eps: float = 1e-5) -> torch.Tensor:
    """The unfused eager computation in the input dtype: ``a*x + b*z`` then ``F.layer_norm``.

    What a model written with plain PyTorch ops does (every intermediate in the input dtype,
    ``s`` materialised).  It is the baseline of the benchmarks and the "same dtype" error
    yardstick of the kernel tests; :func:`bridge_norm_ref` is the accurate reference.
    """
    s = _bridge_sum(x, z, coef, mode)
    return F.layer_norm(s, (s.shape[-1],), weight, bias, eps)
