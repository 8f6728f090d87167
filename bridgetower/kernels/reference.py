"""Pure-PyTorch reference implementations of the fused kernels.

This module imports no Triton.  It is the CPU path of :func:`bridgetower.kernels.bridge_norm`,
the float64 oracle of the kernel tests, and the baseline of the benchmarks.

``bridge_norm_ref`` computes, over the last dimension::

    s   = a * x + b * z
    out = (s - mean(s)) / sqrt(var(s) + eps) * weight + bias

with ``(a, b)`` given by ``mode``:

==================== ===================== ======================
mode                 a                     b
==================== ===================== ======================
``add``              1                     1
``scaled_add``       ``coef`` (0-d)        1
``interpolate``      ``1 - coef`` (0-d)    ``coef``
``scaled_add_tensor``  ``coef`` (shape D)  1
``interpolate_tensor`` ``1 - coef`` (D)    ``coef``
==================== ===================== ======================

Statistics are computed in float32 (or float64 for float64 inputs) and the result is cast
back to the input dtype, as the Triton kernel does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["BRIDGE_NORM_MODES", "bridge_coefficients", "bridge_norm_eager", "bridge_norm_ref"]

BRIDGE_NORM_MODES = ("add", "scaled_add", "interpolate", "scaled_add_tensor", "interpolate_tensor")


def bridge_coefficients(
    coef: torch.Tensor | None, mode: str
) -> tuple[torch.Tensor | float, torch.Tensor | float]:
    """The ``(a, b)`` of ``s = a*x + b*z`` for ``mode`` (differentiable in ``coef``)."""
    if mode == "add":
        return 1.0, 1.0
    if mode in ("scaled_add", "scaled_add_tensor"):
        return coef, 1.0
    if mode in ("interpolate", "interpolate_tensor"):
        return 1.0 - coef, coef
    raise ValueError(
        f"unknown bridge_norm mode {mode!r}; valid modes: {', '.join(BRIDGE_NORM_MODES)}"
    )


def bridge_norm_ref(
    x: torch.Tensor,
    z: torch.Tensor,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    coef: torch.Tensor | None = None,
    *,
    mode: str = "add",
    eps: float = 1e-5,
) -> torch.Tensor:
    """Reference ``LayerNorm(a*x + b*z) * weight + bias`` (see the module docstring).

    No input validation here: :func:`bridgetower.kernels.bridge_norm` validates once at the
    public entry point.
    """
    a, b = bridge_coefficients(coef, mode)
    compute = torch.float64 if x.dtype == torch.float64 else torch.float32
    xc, zc = x.to(compute), z.to(compute)
    if isinstance(a, torch.Tensor):
        a = a.to(compute)
    if isinstance(b, torch.Tensor):
        b = b.to(compute)
    s = a * xc + b * zc if mode != "add" else xc + zc
    w = weight.to(compute) if weight is not None else None
    bb = bias.to(compute) if bias is not None else None
    out = F.layer_norm(s, (s.shape[-1],), w, bb, eps)
    return out.to(x.dtype)


def bridge_norm_eager(
    x: torch.Tensor,
    z: torch.Tensor,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    coef: torch.Tensor | None = None,
    *,
    mode: str = "add",
    eps: float = 1e-5,
) -> torch.Tensor:
    """The unfused eager computation in the input dtype: ``a*x + b*z`` then ``F.layer_norm``.

    What a model written with plain PyTorch ops does (every intermediate in the input dtype,
    ``s`` materialised).  It is the baseline of the benchmarks and the "same dtype" error
    yardstick of the kernel tests; :func:`bridge_norm_ref` is the accurate reference.
    """
    a, b = bridge_coefficients(coef, mode)
    s = x + z if mode == "add" else a * x + b * z
    return F.layer_norm(s, (s.shape[-1],), weight, bias, eps)
