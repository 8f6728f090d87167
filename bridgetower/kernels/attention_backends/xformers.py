"""``xformers``: ``xformers.ops.memory_efficient_attention`` (CUDA only, BMHK layout).

xformers imports on a CPU machine but has no CPU operators, and a wheel built for another
torch imports without working operators; both are detected (an import check, then one tiny
probe call per device, each once and only where the backend could run) and the backend
refuses with the reason. Padding goes in as an additive ``(B, H, Mq, Mk)`` bias whose
last-dim storage is aligned to 8 elements.
"""

from __future__ import annotations

import functools
import sys

import torch

from .base import AttentionBackend, AttentionCall
from .masks import additive_mask

__all__ = ["XFormersBackend"]


@functools.cache
def _xformers_import_problem() -> str | None:
    """None when ``xformers.ops`` imports, else why not (checked once, lazily)."""
    from ..._optional import require

    try:
        require("xformers.ops", "xformers", needed_for="the 'xformers' attention backend")
    except Exception as exc:  # ImportError, or a wheel/torch mismatch failing at import
        return f"xformers is not importable ({type(exc).__name__}: {exc})"
    return None


def _probe_xformers(device: str) -> str | None:
    """Run one tiny ``memory_efficient_attention`` on ``device``; None if it works."""
    try:
        import xformers.ops as xops

        q = torch.zeros(1, 8, 1, 8, device=device, dtype=torch.float16)  # (B, M, H, K)
        xops.memory_efficient_attention(q, q, q)
    except Exception as exc:
        first = str(exc).splitlines()[0] if str(exc) else ""
        hint = ""
        if getattr(sys.modules.get("xformers"), "_has_cpp_library", True) is False:
            hint = "; its C++/CUDA extension did not load (a wheel built for another torch?)"
        return (f"xformers imports but its operators do not run on {device} "
                f"({type(exc).__name__}: {first}){hint}")
    return None


@functools.cache
def _xformers_device_problem(device: str) -> str | None:
    return _probe_xformers(device)


_XFORMERS_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_XFORMERS_MAX_HEAD_DIM = 128


class XFormersBackend(AttentionBackend):
    """``xformers.ops.memory_efficient_attention`` (CUDA only, BMHK layout)."""

    name = "xformers"

    def unsupported_reasons(self, call: AttentionCall) -> list[str]:
        reasons = []
        if call.device_type != "cuda":
            reasons.append(f"xformers has no operators for device {call.device_type!r} "
                           "(CUDA tensors only)")
        if call.dtype not in _XFORMERS_DTYPES:
            reasons.append(f"dtype {call.dtype} not supported (float16, bfloat16, float32)")
        if call.head_dim != call.value_dim:
            reasons.append(f"needs equal query/value head dims, got {call.head_dim} "
                           f"and {call.value_dim}")
        if call.head_dim > _XFORMERS_MAX_HEAD_DIM:
            reasons.append(f"head dim {call.head_dim} > {_XFORMERS_MAX_HEAD_DIM}")
        if call.bias_requires_grad:
            reasons.append("no gradient for attn_bias")
        if call.dropout_p > 0.0 and call.seeded_dropout:
            reasons.append("cannot reproduce a dropout mask from dropout_seed")
        if call.device_type == "cuda":  # import (and probe) only where it could run
            problem = _xformers_import_problem() or _xformers_device_problem("cuda")
            if problem is not None:
                reasons.append(problem)
        return reasons

    def run(self, q, k, v, key_padding_mask, attn_bias, dropout_p, scale, dropout_seed,
            chunk_size):
        import xformers.ops as xops

        B, H, Lq, _ = q.shape
        Lk = k.shape[2]
        mask, dead = additive_mask(key_padding_mask, attn_bias, q.dtype)
        xbias = None
        if mask is not None:
            # xformers wants a (B, H, Mq, Mk) bias whose last-dim storage is aligned to 8
            # elements: allocate the padded storage at the mask's own (broadcast) shape,
            # copy, slice back to Lk and expand (no copy of size Lq*Lk unless given).
            lk8 = -(-Lk // 8) * 8
            store = mask.new_zeros(*mask.shape[:3], lk8)
            store[..., :Lk] = mask.expand(*mask.shape[:3], Lk)
            xbias = store[..., :Lk].expand(B, H, Lq, Lk)
        out = xops.memory_efficient_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),  # (B, M, H, K)
            attn_bias=xbias, p=dropout_p, scale=scale,
        ).transpose(1, 2)  # (B, H, Lq, Dh)
        if dead is not None:
            out = out.masked_fill(dead, 0.0)
        return out
