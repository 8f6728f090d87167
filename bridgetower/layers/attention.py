"""Multi-head attention module over the capability-dispatched :func:`attention` kernel.

:class:`MultiHeadAttention` projects ``q``, ``k``, ``v`` (BERT names ``query``, ``key``,
``value``, output ``proj``), splits the heads and runs
:func:`bridgetower.kernels.attention` (backends ``xformers``, ``sdpa``, ``chunked``,
``math``; see :mod:`bridgetower.kernels.attention_backends`).

The functional names that used to live here (``attention``, ``attention_math``,
``ATTENTION_BACKENDS``, ``AttentionCall`` ...) are re-exported from the kernels for
compatibility.
"""

from __future__ import annotations

import torch
from torch import nn

from ..kernels import attention_backends as _backends
from ..kernels.attention_backends import attention, check_attention_backend
from ._compat import moved_names
from .validation import check_positive_int

# The functional side moved to bridgetower.kernels.attention_backends; these names still
# resolve here, so ``from bridgetower.layers.attention import X`` works.
__all__ = ["MultiHeadAttention", *sorted(_backends.__all__)]
__getattr__ = moved_names(__name__, _backends.__name__, _backends.__all__, warn=False)


class MultiHeadAttention(nn.Module):
    """Multi-head (self- or cross-) attention with separate q/k/v projections.

    Args:
        dim: width of the queries and of the output.
        num_heads: number of heads; must divide ``dim`` (head dim ``dim // num_heads``).
        kv_dim: width of the keys/values input (``context``), default ``dim``.
        dropout: attention-probability dropout (active in training mode only).
        bias: whether the projections have biases.
        backend: None (choose per call by capability) or a name from
            ``ATTENTION_BACKENDS``. A plain attribute: a model sets it on every attention
            once (after validating the name with
            :func:`~bridgetower.kernels.check_attention_backend`).
        device, dtype: of the parameters.

    Parameters ``query``, ``key``, ``value`` (``key``/``value`` take ``kv_dim`` inputs) and
    ``proj`` (output), all :class:`torch.nn.Linear`, named like the BERT/RoBERTa attention
    blocks (``attention.self.{query,key,value}`` and ``attention.output.dense``).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        *,
        kv_dim: int | None = None,
        dropout: float = 0.0,
        bias: bool = True,
        backend: str | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        kv_dim = dim if kv_dim is None else kv_dim
        check_positive_int("MultiHeadAttention", dim=dim, kv_dim=kv_dim)
        if not isinstance(num_heads, int) or num_heads <= 0 or dim % num_heads != 0:
            raise ValueError(f"MultiHeadAttention: num_heads ({num_heads!r}) must be a "
                             f"positive int dividing dim ({dim})")
        if not (0.0 <= dropout < 1.0):
            raise ValueError(f"MultiHeadAttention: dropout must be in [0, 1), got {dropout}")
        check_attention_backend(backend)
        self.dim, self.num_heads, self.kv_dim = dim, num_heads, kv_dim
        self.head_dim = dim // num_heads
        self.dropout = float(dropout)
        self.backend = backend
        fk = {"device": device, "dtype": dtype}
        self.query = nn.Linear(dim, dim, bias=bias, **fk)
        self.key = nn.Linear(kv_dim, dim, bias=bias, **fk)
        self.value = nn.Linear(kv_dim, dim, bias=bias, **fk)
        self.proj = nn.Linear(dim, dim, bias=bias, **fk)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """BERT initialisation: weights N(0, 0.02), biases 0."""
        for lin in (self.query, self.key, self.value, self.proj):
            nn.init.normal_(lin.weight, std=0.02)
            if lin.bias is not None:
                nn.init.zeros_(lin.bias)

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        B, L, _ = t.shape
        return t.view(B, L, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, L, Dh)

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        key_padding_mask: torch.Tensor | None = None,
        attn_bias: torch.Tensor | None = None,
        *,
        need_weights: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """x: (B, Lq, dim); context: (B, Lk, kv_dim) or None (self-attention).

        key_padding_mask: (B, Lk), True/1 = real token. attn_bias: broadcastable to
        (B, num_heads, Lq, Lk). Returns (B, Lq, dim); with ``need_weights`` also the
        attention probabilities (B, num_heads, Lq, Lk), differentiable (computed by the
        ``math`` backend whatever ``backend`` is set; see
        :func:`~bridgetower.kernels.attention`).
        """
        if x.dim() != 3 or x.shape[-1] != self.dim:
            raise ValueError(f"MultiHeadAttention: x must be (B, Lq, {self.dim}), got "
                             f"{tuple(x.shape)}")
        if context is None:
            if self.kv_dim != self.dim:
                raise ValueError(f"MultiHeadAttention: self-attention needs kv_dim == dim, "
                                 f"but kv_dim={self.kv_dim}, dim={self.dim}; pass context")
            context = x
        elif context.dim() != 3 or context.shape[-1] != self.kv_dim or \
                context.shape[0] != x.shape[0]:
            raise ValueError(f"MultiHeadAttention: context must be (B={x.shape[0]}, Lk, "
                             f"{self.kv_dim}), got {tuple(context.shape)}")
        B, Lq, _ = x.shape
        q = self._heads(self.query(x))
        k = self._heads(self.key(context))
        v = self._heads(self.value(context))
        o = attention(q, k, v, key_padding_mask=key_padding_mask, attn_bias=attn_bias,
                      dropout_p=self.dropout if self.training else 0.0, backend=self.backend,
                      return_probs=need_weights)
        probs = None
        if need_weights:
            o, probs = o
        o = o.transpose(1, 2).reshape(B, Lq, self.dim)  # (B, Lq, dim)
        return (self.proj(o), probs) if need_weights else self.proj(o)

    def extra_repr(self) -> str:
        s = f"{self.dim}, num_heads={self.num_heads}"
        if self.kv_dim != self.dim:
            s += f", kv_dim={self.kv_dim}"
        s += f", dropout={self.dropout}"
        if self.backend is not None:
            s += f", backend={self.backend!r}"
        return s
