"""What one attention call needs (:class:`AttentionCall`) and the backend interface.

Every backend is a :class:`~bridgetower.kernels.dispatch.Backend` that also knows how to
:meth:`AttentionBackend.run` a call; the dispatcher (:mod:`.api`) chooses among them by the
reasons they give for an :class:`AttentionCall`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..dispatch import Backend

__all__ = ["AttentionBackend", "AttentionCall", "compute_dtype"]


@dataclass(frozen=True)
class AttentionCall:
    """The properties of one attention call that decide which backend may run it."""

    device_type: str
    dtype: torch.dtype
    head_dim: int  # Dh of q and k
    value_dim: int  # Dh of v
    batch: int
    num_heads: int
    len_q: int
    len_k: int
    has_key_padding_mask: bool
    has_attn_bias: bool
    bias_requires_grad: bool
    dropout_p: float
    seeded_dropout: bool  # a dropout_seed was given: the mask must be reproducible
    needs_grad: bool

    @property
    def mask_kind(self) -> str:
        kinds = [n for n, on in (("key_padding", self.has_key_padding_mask),
                                 ("bias", self.has_attn_bias)) if on]
        return "+".join(kinds) or "none"

    def describe(self) -> str:
        return (f"device={self.device_type}, dtype={self.dtype}, head_dim={self.head_dim}, "
                f"Lq={self.len_q}, Lk={self.len_k}, mask={self.mask_kind}, "
                f"dropout_p={self.dropout_p}, needs_grad={self.needs_grad}")


class AttentionBackend(Backend):
    """One attention implementation: the reasons it gives for an :class:`AttentionCall`
    (:meth:`unsupported_reasons`, :meth:`auto_skip_reasons`, inherited) and :meth:`run`.

    ``run`` gets validated inputs: ``key_padding_mask`` bool (True = real token) or None,
    ``attn_bias`` in q's dtype or None, ``scale`` and ``chunk_size`` resolved to numbers.
    """

    def run(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        key_padding_mask: torch.Tensor | None,
        attn_bias: torch.Tensor | None,
        dropout_p: float,
        scale: float,
        dropout_seed: int | None,
        chunk_size: int | None,
    ) -> torch.Tensor:
        """(B, H, Lq, Dh), (B, H, Lk, Dh), (B, H, Lk, Dv) -> (B, H, Lq, Dv) in q's dtype."""
        raise NotImplementedError


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Scores and softmax statistics are kept in fp32 for half inputs, fp64 for fp64."""
    return torch.float64 if dtype == torch.float64 else torch.float32
