"""``math``: the explicit attention reference, and the backend that always fits.

Scores, masks, softmax, dropout and the weighted sum written out, materialising the
``(B, H, Lq, Lk)`` probabilities: the float64 oracle of the tests and the last backend of the
dispatcher. Given a ``dropout_seed`` it applies the same mask as the ``chunked`` backend.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import AttentionBackend, compute_dtype
from .chunked import chunked_dropout_keep_mask

__all__ = ["MathBackend", "attention_math"]


def attention_math(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
                   key_padding_mask: torch.Tensor | None = None,
                   attn_bias: torch.Tensor | None = None, dropout_p: float = 0.0,
                   scale: float | None = None,
                   dropout_keep: torch.Tensor | None = None,
                   return_probs: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Reference attention: scores, masks, softmax, dropout, weighted sum, all explicit.

    ``dropout_keep`` (bool, broadcastable to (B, H, Lq, Lk)) replaces the random dropout
    mask when given (kept probabilities are scaled by ``1 / (1 - dropout_p)``). Rows whose
    keys are all masked give zeros. With ``return_probs`` also returns the ``(B, H, Lq, Lk)``
    probabilities (after dropout, as ``transformers``' eager attention returns them), in the
    dtype of ``v``, part of the autograd graph. No input validation (see :func:`attention`).
    """
    if scale is None:
        scale = q.shape[-1] ** -0.5
    cdt = compute_dtype(q.dtype)
    scores = torch.matmul(q.to(cdt), k.to(cdt).transpose(-2, -1)) * scale  # (B, H, Lq, Lk)
    if attn_bias is not None:
        scores = scores + attn_bias.to(cdt)
    if key_padding_mask is not None:
        scores = scores.masked_fill(~key_padding_mask[:, None, None, :], float("-inf"))
    dead = torch.isneginf(scores).all(dim=-1, keepdim=True)  # (B, H, Lq, 1)
    probs = torch.softmax(scores.masked_fill(dead, 0.0), dim=-1).masked_fill(dead, 0.0)
    if dropout_p > 0.0:
        if dropout_keep is not None:
            probs = probs * dropout_keep / (1.0 - dropout_p)
        else:
            probs = F.dropout(probs, p=dropout_p, training=True)
    probs = probs.to(v.dtype)  # one cast, so that the returned probabilities are those used (gradients reach them)
    out = torch.matmul(probs, v)
    return (out, probs) if return_probs else out


class MathBackend(AttentionBackend):
    """The explicit reference; materialises (B, H, Lq, Lk). Fits every input."""

    name = "math"

    def run(self, q, k, v, key_padding_mask, attn_bias, dropout_p, scale, dropout_seed,
            chunk_size):
        keep = None
        if dropout_p > 0.0 and dropout_seed is not None:
            shape = (*q.shape[:3], k.shape[2])  # (B, H, Lq, Lk)
            keep = chunked_dropout_keep_mask(dropout_seed, shape, dropout_p, chunk_size,
                                             q.device)
        return attention_math(q, k, v, key_padding_mask=key_padding_mask,
                              attn_bias=attn_bias, dropout_p=dropout_p, scale=scale,
                              dropout_keep=keep)
