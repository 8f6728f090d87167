"""Residual LayerNorm: ``LayerNorm(x + residual)`` in one fused call.

The post-LN sub-blocks of a BERT-style layer end in ``LayerNorm(x + residual)``.
:class:`AddLayerNorm` runs it through :func:`bridgetower.kernels.bridge_norm` in mode
``"add"``, which reads ``x`` and ``residual`` once and writes one output (the fused Triton
kernel on a GPU, the PyTorch reference elsewhere), instead of materialising the sum first.
Its parameters are named ``weight`` and ``bias`` like :class:`torch.nn.LayerNorm`, so
LayerNorm state dicts load into it unchanged.  The module checks nothing per call:
``bridge_norm`` validates its inputs once (shapes, dtypes, devices) and names them in its
errors (``x`` and ``z`` there are ``x`` and ``residual`` here).
"""

from __future__ import annotations

import torch
from torch import nn

from ..kernels import bridge_norm, check_bridge_norm_backend
from .validation import check_positive_int

__all__ = ["AddLayerNorm"]


class AddLayerNorm(nn.Module):
    """``LayerNorm(x + residual)`` over the last dimension, through the fused bridge-norm op.

    Args:
        dim: size of the normalised (last) dimension.
        eps: added to the variance for numerical stability.
        elementwise_affine: learn a per-channel ``weight`` (init 1) and ``bias`` (init 0).
        backend: ``bridge_norm`` backend: None (chosen by capability), ``"triton"`` or
            ``"torch"``.
        device, dtype: of the parameters.

    Shapes: ``x`` and ``residual`` are ``(..., dim)`` with the same shape; the output too.
    """

    def __init__(
        self,
        dim: int,
        *,
        eps: float = 1e-5,
        elementwise_affine: bool = True,
        backend: str | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        check_positive_int("AddLayerNorm", dim=dim)
        check_bridge_norm_backend(backend)
        self.dim = dim
        self.eps = float(eps)
        self.elementwise_affine = elementwise_affine
        self.backend = backend
        if elementwise_affine:
            self.weight = nn.Parameter(torch.empty(dim, device=device, dtype=dtype))
            self.bias = nn.Parameter(torch.empty(dim, device=device, dtype=dtype))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.elementwise_affine:
            nn.init.ones_(self.weight)
            nn.init.zeros_(self.bias)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """``x``, ``residual``: ``(..., dim)`` of one shape (checked by ``bridge_norm``)."""
        return bridge_norm(x, residual, self.weight, self.bias, mode="add", eps=self.eps,
                           backend=self.backend)

    def extra_repr(self) -> str:
        s = f"{self.dim}, eps={self.eps}, elementwise_affine={self.elementwise_affine}"
        return s if self.backend is None else s + f", backend={self.backend!r}"
