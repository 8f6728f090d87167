"""The public attention entry point: input validation, the backend list and its dispatch.

See the package docstring (:mod:`bridgetower.kernels.attention_backends`) for the backends.
"""

from __future__ import annotations

import functools
import logging

import torch

from ..dispatch import backend_reasons, check_backend_name, select_backend
from .base import AttentionBackend, AttentionCall
from .chunked import ChunkedBackend, default_chunk_size
from .math import MathBackend, attention_math
from .sdpa import SDPABackend
from .xformers import XFormersBackend

logger = logging.getLogger(__name__)

__all__ = [
    "ATTENTION_BACKENDS",
    "attention",
    "available_attention_backends",
    "check_attention_backend",
    "select_attention_backend",
]

_BACKENDS: tuple[AttentionBackend, ...] = (
    XFormersBackend(), SDPABackend(), ChunkedBackend(), MathBackend()
)
#: Backend names in dispatch priority order.
ATTENTION_BACKENDS: tuple[str, ...] = tuple(b.name for b in _BACKENDS)


def check_attention_backend(name: str | None) -> None:
    """Validate an attention backend name: None (automatic) or one of
    :data:`ATTENTION_BACKENDS`; ``ValueError`` listing the valid names otherwise."""
    check_backend_name("attention", _BACKENDS, name)


def select_attention_backend(call: AttentionCall, backend: str | None = None) -> AttentionBackend:
    """The backend that runs ``call``: the forced one (checked) or the first that fits.

    Raises ``ValueError`` listing the reasons when a forced backend does not fit.
    """
    return select_backend("attention", _BACKENDS, call, backend, AttentionCall.describe)


def available_attention_backends(call: AttentionCall) -> dict[str, list[str]]:
    """For each backend, in priority order, the reasons it would not be chosen ([] = fits)."""
    return backend_reasons(_BACKENDS, call)


def _validate(q, k, v, key_padding_mask, attn_bias, dropout_p):
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"attention: {name} must be a Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"attention: {name} must be (B, H, L, Dh), got shape "
                             f"{tuple(t.shape)}")
        if not t.is_floating_point():
            raise TypeError(f"attention: {name} must be floating point, got {t.dtype}")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"attention: q, k, v dtypes differ: {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"attention: q, k, v devices differ: {q.device}, {k.device}, {v.device}")
    B, H, Lq, Dh = q.shape
    if k.shape[:2] != (B, H) or v.shape[:2] != (B, H) or k.shape[2] != v.shape[2]:
        raise ValueError(f"attention: incompatible shapes q {tuple(q.shape)}, k "
                         f"{tuple(k.shape)}, v {tuple(v.shape)} (need (B, H, Lq, Dh), "
                         "(B, H, Lk, Dh), (B, H, Lk, Dv))")
    if k.shape[3] != Dh:
        raise ValueError(f"attention: q and k head dims differ: {tuple(q.shape)} vs "
                         f"{tuple(k.shape)}")
    Lk = k.shape[2]
    if key_padding_mask is not None:
        if not isinstance(key_padding_mask, torch.Tensor):
            raise TypeError("attention: key_padding_mask must be a Tensor")
        if key_padding_mask.shape != (B, Lk):
            raise ValueError(f"attention: key_padding_mask must have shape (B, Lk) = "
                             f"({B}, {Lk}), got {tuple(key_padding_mask.shape)}")
        if key_padding_mask.is_floating_point() or key_padding_mask.is_complex():
            raise TypeError("attention: key_padding_mask must be bool or integer "
                            f"(True/1 = real token), got {key_padding_mask.dtype}; pass "
                            "additive float masks as attn_bias")
        if key_padding_mask.device != q.device:
            raise ValueError(f"attention: key_padding_mask on {key_padding_mask.device}, "
                             f"q on {q.device}")
    if attn_bias is not None:
        if not isinstance(attn_bias, torch.Tensor):
            raise TypeError("attention: attn_bias must be a Tensor")
        if not attn_bias.is_floating_point():
            raise TypeError(f"attention: attn_bias must be floating point (additive), got "
                            f"{attn_bias.dtype}; pass boolean padding as key_padding_mask")
        ok = attn_bias.dim() <= 4
        if ok:
            try:
                ok = torch.broadcast_shapes(attn_bias.shape, (B, H, Lq, Lk)) == (B, H, Lq, Lk)
            except RuntimeError:
                ok = False
        if not ok:
            raise ValueError(f"attention: attn_bias of shape {tuple(attn_bias.shape)} is not "
                             f"broadcastable to (B, H, Lq, Lk) = {(B, H, Lq, Lk)}")
        if attn_bias.device != q.device:
            raise ValueError(f"attention: attn_bias on {attn_bias.device}, q on {q.device}")
    if not (0.0 <= float(dropout_p) < 1.0):
        raise ValueError(f"attention: dropout_p must be in [0, 1), got {dropout_p}")


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    key_padding_mask: torch.Tensor | None = None,
    attn_bias: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    backend: str | None = None,
    scale: float | None = None,
    dropout_seed: int | None = None,
    chunk_size: int | None = None,
    return_probs: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Scaled dot-product attention on (B, H, L, Dh) tensors, dispatched by capability.

    Args:
        q: (B, H, Lq, Dh) queries.
        k: (B, H, Lk, Dh) keys.
        v: (B, H, Lk, Dv) values.
        key_padding_mask: (B, Lk), bool or integer, True/1 = real token, False/0 = padding.
        attn_bias: additive bias broadcastable to (B, H, Lq, Lk) (may require grad).
        dropout_p: attention-probability dropout; pass 0.0 in evaluation.
        backend: None (automatic), or one of ``ATTENTION_BACKENDS`` to force it.
        scale: logit scale, default ``Dh ** -0.5``.
        dropout_seed: make the dropout mask a function of this seed (``chunked`` and
            ``math`` apply the same mask for the same seed and chunk size).
        chunk_size: query rows per chunk of the ``chunked`` path (default
            :func:`default_chunk_size`).
        return_probs: also return the attention probabilities ``(B, H, Lq, Lk)`` (for
            ``output_attentions``; differentiable). Only ``math`` materialises them: the call
            runs there whatever ``backend`` says (the memory-efficient backends fall back),
            reported once per backend at ``INFO``.

    Returns:
        (B, H, Lq, Dv), in the dtype of ``q``; with ``return_probs``, ``(out, probs)``.
    """
    _validate(q, k, v, key_padding_mask, attn_bias, dropout_p)
    if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size <= 0):
        raise ValueError(f"attention: chunk_size must be a positive int, got {chunk_size!r}")
    B, H, Lq, Dh = q.shape
    Lk = k.shape[2]
    if key_padding_mask is not None and key_padding_mask.dtype != torch.bool:
        key_padding_mask = key_padding_mask != 0
    if attn_bias is not None and attn_bias.dtype != q.dtype:
        attn_bias = attn_bias.to(q.dtype)
    scale = Dh ** -0.5 if scale is None else float(scale)
    dropout_p = float(dropout_p)
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (q, k, v, attn_bias))
    call = AttentionCall(
        device_type=q.device.type, dtype=q.dtype, head_dim=Dh, value_dim=v.shape[3],
        batch=B, num_heads=H, len_q=Lq, len_k=Lk,
        has_key_padding_mask=key_padding_mask is not None,
        has_attn_bias=attn_bias is not None,
        bias_requires_grad=bool(attn_bias is not None and attn_bias.requires_grad
                                and torch.is_grad_enabled()),
        dropout_p=dropout_p, seeded_dropout=dropout_seed is not None, needs_grad=needs_grad,
    )
    if return_probs:
        check_attention_backend(backend)
        if backend != "math":
            _log_probs_fallback(backend or "automatic")
        return attention_math(q, k, v, key_padding_mask=key_padding_mask, attn_bias=attn_bias,
                              dropout_p=dropout_p, scale=scale, return_probs=True)
    impl = select_attention_backend(call, backend)
    if chunk_size is None:
        chunk_size = default_chunk_size(B, H, Lq, Lk)
    return impl.run(q, k, v, key_padding_mask, attn_bias, dropout_p, scale, dropout_seed,
                    chunk_size)


@functools.lru_cache(maxsize=8)
def _log_probs_fallback(backend: str) -> None:
    """Say once per backend that attention probabilities come from ``math`` instead."""
    logger.info(
        "attention backend %r does not return attention probabilities; the calls that need them "
        "(output_attentions=True) run on 'math', which materialises them", backend)
