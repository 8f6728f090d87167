"""``sdpa``: ``torch.nn.functional.scaled_dot_product_attention`` with an additive mask.

Runs everywhere. On CPU with ``dropout_p > 0`` it leaves its flash kernel for an
``O(Lq*Lk)``-memory math kernel, so automatic dispatch passes it over in that case (it can
still be forced); it cannot reproduce a dropout mask from a seed.
"""

from __future__ import annotations

import torch.nn.functional as F

from .base import AttentionBackend, AttentionCall
from .masks import additive_mask

__all__ = ["SDPABackend"]


class SDPABackend(AttentionBackend):
    """``torch.nn.functional.scaled_dot_product_attention`` with an additive mask."""

    name = "sdpa"

    def unsupported_reasons(self, call: AttentionCall) -> list[str]:
        reasons = []
        if call.dropout_p > 0.0 and call.seeded_dropout:
            reasons.append("sdpa cannot reproduce a dropout mask from dropout_seed")
        return reasons

    def auto_skip_reasons(self, call: AttentionCall) -> list[str]:
        if call.device_type == "cpu" and call.dropout_p > 0.0:
            return ["on CPU, sdpa with dropout_p > 0 leaves its flash kernel for an "
                    "O(Lq*Lk)-memory math kernel"]
        return []

    def run(self, q, k, v, key_padding_mask, attn_bias, dropout_p, scale, dropout_seed,
            chunk_size):
        mask, dead = additive_mask(key_padding_mask, attn_bias, q.dtype)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p,
                                             scale=scale)
        if dead is not None:
            out = out.masked_fill(dead, 0.0)
        return out
