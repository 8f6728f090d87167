"""Padding masks and additive biases as the backends consume them.

A *key padding mask* is ``(B, Lk)`` bool, True = a real token; an *attention bias* is
additive and broadcastable to ``(B, H, Lq, Lk)``. A query row whose keys are all masked must
give zeros, never NaN: :func:`additive_mask` replaces such rows by zeros and reports them.
"""

from __future__ import annotations

import torch

__all__ = ["additive_mask", "bias_4d", "padding_additive"]


def bias_4d(attn_bias: torch.Tensor) -> torch.Tensor:
    """View a bias broadcastable to (B, H, Lq, Lk) as a 4-D tensor (leading 1s)."""
    return attn_bias.reshape((1,) * (4 - attn_bias.dim()) + tuple(attn_bias.shape))


def padding_additive(key_padding_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, Lk) bool, True = real token -> (B, 1, 1, Lk) additive mask: 0 or -inf."""
    add = torch.zeros(key_padding_mask.shape, dtype=dtype, device=key_padding_mask.device)
    add = add.masked_fill(~key_padding_mask, float("-inf"))
    return add[:, None, None, :]


def additive_mask(
    key_padding_mask: torch.Tensor | None, attn_bias: torch.Tensor | None, dtype: torch.dtype
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Combine the padding mask and the bias into one additive mask, made safe.

    Returns ``(mask, dead)``: ``mask`` broadcastable to (B, H, Lq, Lk) with no row that is
    all ``-inf`` (such rows are replaced by zeros so no kernel produces NaN), and ``dead``
    (broadcastable to (B, H, Lq, 1), bool) marking those rows, whose output the caller sets
    to zero; ``dead`` is None when there is no such row. The mask keeps the shape of its
    inputs (padding alone stays (B, 1, 1, Lk)), so nothing of size Lq*Lk is allocated
    unless the bias already is.
    """
    mask = None
    if key_padding_mask is not None:
        mask = padding_additive(key_padding_mask, dtype)
    if attn_bias is not None:
        b = bias_4d(attn_bias)
        mask = b if mask is None else b + mask
    if mask is None:
        return None, None
    dead = torch.isneginf(mask).all(dim=-1, keepdim=True)
    if not bool(dead.any()):
        return mask, None
    return mask.masked_fill(dead, 0.0), dead
