"""Multi-head attention with a capability-based choice among four implementations.

:func:`attention` computes ``softmax(q k^T * scale + bias + pad) v`` on ``(B, H, L, Dh)``
tensors, for self-attention (``Lq == Lk``) and cross-attention (``Lq != Lk``), with

* a *key padding mask* ``(B, Lk)``, bool or integer, **True/1 = a real token**;
* an optional additive *attention bias* broadcastable to ``(B, H, Lq, Lk)``;
* dropout on the attention probabilities (``dropout_p``, pass 0 in eval).

A query row whose keys are all masked (by the padding mask, or ``-inf`` in the bias) gives
a zero output row and zero gradients, never NaN, whichever backend runs.

Backends, in the order the dispatcher tries them (the first that fits runs):

``xformers``
    ``xformers.ops.memory_efficient_attention`` (BMHK layout). CUDA only: xformers imports
    on a CPU machine but has no CPU operators, and a wheel built for another torch imports
    without working operators; both are detected (an import check, then one tiny probe
    call per device) and the backend refuses with the reason.
``sdpa``
    ``torch.nn.functional.scaled_dot_product_attention``. On CPU with ``dropout_p > 0`` it
    leaves its flash kernel for an ``O(Lq*Lk)``-memory math kernel, so automatic dispatch
    passes it over in that case (it can still be forced).
``chunked``
    Query-chunked attention, an ``autograd.Function`` that keeps only the row log-sum-exp
    and, in the backward, recomputes each chunk's probabilities and regenerates its
    dropout mask from a seed (the recompute idea of FlashAttention). Memory beyond the
    inputs and outputs is one chunk of ``(B, H, chunk, Lk)`` scores, so training memory
    grows linearly with the sequence length, with dropout, on any device.
``math``
    The explicit reference (:func:`attention_math`): materialises the ``(B, H, Lq, Lk)``
    probabilities. Always fits; last in priority.

Each backend declares what it supports and says *why* it does not fit given inputs
(:meth:`AttentionBackend.unsupported_reasons`). ``backend="name"`` forces one: if it does
not fit, a ``ValueError`` lists the reasons. Automatic fallbacks are logged once at
``DEBUG`` level. Nothing global is switched: the choice is made per call.
"""

from __future__ import annotations

import functools
import logging
import sys
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .dropout import random_keep_mask

__all__ = [
    "ATTENTION_BACKENDS",
    "AttentionBackend",
    "AttentionCall",
    "MultiHeadAttention",
    "attention",
    "attention_math",
    "available_attention_backends",
    "chunked_dropout_keep_mask",
    "default_chunk_size",
    "select_attention_backend",
]

logger = logging.getLogger(__name__)

# Query rows per chunk of the chunked path, and the most score elements (B * H * chunk * Lk)
# one chunk may hold (fewer rows for very large batches, never fewer than 16).
_CHUNK_ROWS = 128
_CHUNK_ELEMENTS = 1 << 24
#: The chunked path keeps its dropout mask for the backward (one byte per attention score)
#: when the call has at most this many scores (B * H * Lq * Lk); above it the backward draws
#: the mask again from the seed, so memory stays linear in the sequence length.  16M scores
#: are e.g. batch 2 x 12 heads x 577 x 577 tokens (384 px images) with room to spare.
DROPOUT_MASK_KEEP_LIMIT = 1 << 24


# ----------------------------------------------------------------------------------------
# What a call needs, and what each backend declares it supports
# ----------------------------------------------------------------------------------------


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


class AttentionBackend:
    """One attention implementation and the inputs it declares it supports.

    Subclasses set ``name`` and implement :meth:`unsupported_reasons` (hard limits: the
    backend cannot run these inputs, or would compute something else) and :meth:`run`.
    :meth:`auto_skip_reasons` lists soft reasons why automatic dispatch should prefer a
    later backend although this one could run (e.g. it would use ``O(L^2)`` memory).
    """

    name: str = ""

    def unsupported_reasons(self, call: AttentionCall) -> list[str]:
        raise NotImplementedError

    def auto_skip_reasons(self, call: AttentionCall) -> list[str]:
        return []

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
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


# ----------------------------------------------------------------------------------------
# Mask helpers shared by the backends
# ----------------------------------------------------------------------------------------


def _bias4(attn_bias: torch.Tensor) -> torch.Tensor:
    """View a bias broadcastable to (B, H, Lq, Lk) as a 4-D tensor (leading 1s)."""
    return attn_bias.reshape((1,) * (4 - attn_bias.dim()) + tuple(attn_bias.shape))


def _padding_additive(key_padding_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, Lk) bool, True = real token -> (B, 1, 1, Lk) additive mask: 0 or -inf."""
    add = torch.zeros(key_padding_mask.shape, dtype=dtype, device=key_padding_mask.device)
    add = add.masked_fill(~key_padding_mask, float("-inf"))
    return add[:, None, None, :]


def _additive_mask(
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
        mask = _padding_additive(key_padding_mask, dtype)
    if attn_bias is not None:
        b = _bias4(attn_bias)
        mask = b if mask is None else b + mask
    if mask is None:
        return None, None
    dead = torch.isneginf(mask).all(dim=-1, keepdim=True)
    if not bool(dead.any()):
        return mask, None
    return mask.masked_fill(dead, 0.0), dead


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Scores and softmax statistics are kept in fp32 for half inputs, fp64 for fp64."""
    return torch.float64 if dtype == torch.float64 else torch.float32


# ----------------------------------------------------------------------------------------
# math: the explicit reference
# ----------------------------------------------------------------------------------------


def chunked_dropout_keep_mask(
    seed: int,
    shape: tuple[int, int, int, int],
    dropout_p: float,
    chunk_size: int,
    device: torch.device | str,
) -> torch.Tensor:
    """The (B, H, Lq, Lk) bool keep-mask the chunked path draws for ``seed``.

    Query chunk ``c`` (rows ``c*chunk_size ...``) draws its mask from a generator seeded
    with ``seed`` and ``c``; the chunked backward regenerates it from the same seed. The
    math backend uses this function when given a ``dropout_seed``, so both backends apply
    exactly the same dropout.

    Each decision compares 16 random bits with ``dropout_p * 2**16``: the drop probability
    is ``dropout_p`` rounded to a multiple of 2**-16 (kept values are still scaled by
    ``1 / (1 - dropout_p)``).
    """
    B, H, Lq, Lk = shape
    parts = [
        _chunk_keep(seed, ci, (B, H, min(i0 + chunk_size, Lq) - i0, Lk), dropout_p, device)
        for ci, i0 in enumerate(range(0, Lq, chunk_size))
    ]
    return torch.cat(parts, dim=2).view(torch.bool)


def _chunk_keep(
    seed: int, chunk_index: int, shape: tuple[int, ...], dropout_p: float, device
) -> torch.Tensor:
    """uint8 keep-mask of one chunk (1 = kept): :func:`~bridgetower.layers.dropout.
    random_keep_mask` from a generator seeded with ``seed`` and ``chunk_index``."""
    gen = torch.Generator(device=device)
    gen.manual_seed((seed + 1_000_003 * chunk_index) % (1 << 63))
    return random_keep_mask(shape, dropout_p, device, gen)


def default_chunk_size(batch: int, num_heads: int, len_q: int, len_k: int) -> int:
    """Query rows per chunk of the chunked path.

    128 rows, so the working memory (B * H * rows * Lk scores) grows linearly with the
    key length; fewer rows (down to 16) when that would exceed 16M score elements.
    """
    rows = _CHUNK_ELEMENTS // max(1, batch * num_heads * len_k)
    return max(1, min(len_q, _CHUNK_ROWS, max(16, rows)))


def attention_math(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    key_padding_mask: torch.Tensor | None = None,
    attn_bias: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    scale: float | None = None,
    dropout_keep: torch.Tensor | None = None,
) -> torch.Tensor:
    """Reference attention: scores, masks, softmax, dropout, weighted sum, all explicit.

    ``dropout_keep`` (bool, broadcastable to (B, H, Lq, Lk)) replaces the random dropout
    mask when given (kept probabilities are scaled by ``1 / (1 - dropout_p)``). Rows whose
    keys are all masked give zeros. No input validation (see :func:`attention`).
    """
    if scale is None:
        scale = q.shape[-1] ** -0.5
    cdt = _compute_dtype(q.dtype)
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
    return torch.matmul(probs.to(v.dtype), v)


class MathBackend(AttentionBackend):
    """The explicit reference; materialises (B, H, Lq, Lk). Fits every input."""

    name = "math"

    def unsupported_reasons(self, call: AttentionCall) -> list[str]:
        return []

    def run(self, q, k, v, key_padding_mask, attn_bias, dropout_p, scale, dropout_seed,
            chunk_size):
        keep = None
        if dropout_p > 0.0 and dropout_seed is not None:
            B, H, Lq, _ = q.shape
            Lk = k.shape[2]
            chunk = chunk_size or default_chunk_size(B, H, Lq, Lk)
            keep = chunked_dropout_keep_mask(dropout_seed, (B, H, Lq, Lk), dropout_p, chunk,
                                             q.device)
        return attention_math(q, k, v, key_padding_mask=key_padding_mask,
                              attn_bias=attn_bias, dropout_p=dropout_p, scale=scale,
                              dropout_keep=keep)


# ----------------------------------------------------------------------------------------
# sdpa
# ----------------------------------------------------------------------------------------


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
        mask, dead = _additive_mask(key_padding_mask, attn_bias, q.dtype)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p,
                                             scale=scale)
        if dead is not None:
            out = out.masked_fill(dead, 0.0)
        return out


# ----------------------------------------------------------------------------------------
# chunked: O(N)-memory attention with recomputed dropout
# ----------------------------------------------------------------------------------------


def _chunk_scores(q_c, k, pad_add, bias4, i0, i1, scale):
    """Scores of query rows [i0, i1): (B, H, c, Lk) in the compute dtype."""
    s = torch.matmul(q_c, k.transpose(-2, -1)).mul_(scale)
    if bias4 is not None:
        s = s + (bias4[:, :, i0:i1] if bias4.shape[2] != 1 else bias4)  # may broadcast up
    if pad_add is not None:
        s.add_(pad_add)
    return s


class _ChunkedAttentionFn(torch.autograd.Function):
    """Query-chunked attention keeping the row log-sum-exp; backward recomputes.

    Inputs are already in the compute dtype (fp32 or fp64). ``pad_add`` is the (B, 1, 1, Lk)
    additive padding mask, ``bias4`` a 4-D bias broadcastable to (B, H, Lq, Lk).
    """

    @staticmethod
    def forward(ctx, q, k, v, pad_add, bias4, dropout_p, scale, seed, chunk, for_backward):
        B, H, Lq, _ = q.shape
        Lk, Dv = k.shape[2], v.shape[3]
        # Laid out (B, Lq, H, Dv) like SDPA's CPU output: the caller's merge of the heads,
        # out.transpose(1, 2).reshape(B, Lq, H * Dv), is then a view, and the tensor saved
        # for this backward is the one the output projection saves (no second copy).
        out = q.new_empty(B, Lq, H, Dv).transpose(1, 2)
        lse = q.new_empty(B, H, Lq)
        keep_scale = 1.0 / (1.0 - dropout_p)
        # Small dropout masks (1 byte per score) are kept for the backward; larger ones are
        # drawn again there from the same seed, so memory stays linear in the key length.
        kept_masks = ([] if dropout_p > 0.0 and for_backward
                      and B * H * Lq * Lk <= DROPOUT_MASK_KEEP_LIMIT else None)
        for ci, i0 in enumerate(range(0, Lq, chunk)):
            i1 = min(i0 + chunk, Lq)
            s = _chunk_scores(q[:, :, i0:i1], k, pad_add, bias4, i0, i1, scale)
            m = s.amax(dim=-1, keepdim=True)
            m = torch.where(torch.isneginf(m), torch.zeros_like(m), m)
            p = s.sub_(m).exp_()  # in place: s is a temporary of this chunk
            denom = p.sum(dim=-1, keepdim=True)
            # An all-masked row has denom == 0: its probabilities are 0, and lse = +inf makes
            # exp(s - lse) = 0 in the backward as well.
            lse[:, :, i0:i1] = torch.where(denom > 0, m + torch.log(denom),
                                           torch.full_like(m, float("inf"))).squeeze(-1)
            # Normalise and apply the dropout scale 1 / (1 - p) in one pass.
            p.mul_(keep_scale / denom.clamp_min(torch.finfo(p.dtype).tiny))
            if dropout_p > 0.0:
                keep = _chunk_keep(seed, ci, (B, H, i1 - i0, Lk), dropout_p, q.device)
                p.mul_(keep)
                if kept_masks is not None:
                    kept_masks.append(keep)
                del keep
            out[:, :, i0:i1] = torch.matmul(p, v)
            del p
        ctx.save_for_backward(q, k, v, pad_add, bias4, out, lse)
        ctx.dropout_p, ctx.scale, ctx.seed, ctx.chunk = dropout_p, scale, seed, chunk
        ctx.kept_masks = kept_masks
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        q, k, v, pad_add, bias4, out, lse = ctx.saved_tensors
        dropout_p, scale, seed, chunk = ctx.dropout_p, ctx.scale, ctx.seed, ctx.chunk
        B, H, Lq, _ = q.shape
        Lk = k.shape[2]
        grad_out = grad_out.to(q.dtype).contiguous()  # sliced per chunk below
        # A second backward (retain_graph) draws the masks again from the seed.
        kept_masks, ctx.kept_masks = ctx.kept_masks, None
        need_q, need_k, need_v, _, need_bias = ctx.needs_input_grad[:5]
        dq = torch.empty_like(q) if need_q else None
        dk = torch.zeros_like(k)
        dv = torch.zeros_like(v) if need_v else None
        dbias = torch.zeros_like(bias4) if need_bias else None
        # D_i = sum_j P~_ij dP_ij = dO_i . O_i (also with dropout: O = (P * Z) V).
        delta = (grad_out * out).sum(dim=-1)  # (B, H, Lq)
        keep_scale = 1.0 / (1.0 - dropout_p)
        for ci, i0 in enumerate(range(0, Lq, chunk)):
            i1 = min(i0 + chunk, Lq)
            q_c, do_c = q[:, :, i0:i1], grad_out[:, :, i0:i1]
            s = _chunk_scores(q_c, k, pad_add, bias4, i0, i1, scale)
            p = s.sub_(lse[:, :, i0:i1, None]).exp_()  # probabilities, (B, H, c, Lk)
            if dropout_p > 0.0:
                do_c = do_c * keep_scale  # dO / (1 - p_drop): (B, H, c, Dv), small
            dp = torch.matmul(do_c, v.transpose(-2, -1))  # (B, H, c, Lk)
            if dropout_p > 0.0:
                # With Z = keep / (1 - p_drop): dS = P * (dP*Z - D) and dV += (P*Z)^T dO.
                # do_c is dO / (1 - p_drop) here, so dP*Z = dp * keep and
                # (P*Z)^T dO = (P * keep)^T do_c.
                if kept_masks is not None:  # freed chunk by chunk
                    keep, kept_masks[ci] = kept_masks[ci], None
                else:
                    keep = _chunk_keep(seed, ci, (B, H, i1 - i0, Lk), dropout_p, q.device)
                ds = dp.mul_(keep).sub_(delta[:, :, i0:i1, None]).mul_(p)
                if need_v:
                    dv += torch.matmul(p.mul_(keep).transpose(-2, -1), do_c)
                del keep
            else:
                if need_v:
                    dv += torch.matmul(p.transpose(-2, -1), do_c)
                ds = dp.sub_(delta[:, :, i0:i1, None]).mul_(p)  # dL/dscores, (B, H, c, Lk)
            del p
            if need_q:
                dq[:, :, i0:i1] = torch.matmul(ds, k) * scale
            if need_k:
                dk += torch.matmul(ds.transpose(-2, -1), q_c) * scale
            if need_bias:
                red = [d for d in (0, 1, 3) if bias4.shape[d] == 1 and ds.shape[d] != 1]
                g = ds.sum(dim=red, keepdim=True) if red else ds
                if bias4.shape[2] == 1:
                    dbias += g.sum(dim=2, keepdim=True)
                else:
                    dbias[:, :, i0:i1] += g
        return dq, (dk if need_k else None), dv, None, dbias, None, None, None, None, None


class ChunkedBackend(AttentionBackend):
    """Query-chunked attention with O(N) memory and seed-regenerated dropout (any device)."""

    name = "chunked"

    def unsupported_reasons(self, call: AttentionCall) -> list[str]:
        return []

    def run(self, q, k, v, key_padding_mask, attn_bias, dropout_p, scale, dropout_seed,
            chunk_size):
        B, H, Lq, _ = q.shape
        Lk = k.shape[2]
        cdt = _compute_dtype(q.dtype)
        chunk = chunk_size or default_chunk_size(B, H, Lq, Lk)
        pad_add = (_padding_additive(key_padding_mask, cdt)
                   if key_padding_mask is not None else None)
        bias4 = _bias4(attn_bias).to(cdt) if attn_bias is not None else None
        seed = 0
        if dropout_p > 0.0:
            # Drawn from the default generator, so torch.manual_seed makes the run
            # reproducible and activation checkpointing (which restores the RNG state)
            # recomputes the same mask.
            seed = (int(torch.randint(0, 1 << 62, ()).item()) if dropout_seed is None
                    else int(dropout_seed))
        # Contiguous once here: the per-head views of the projections are strided, and every
        # per-chunk matmul on a strided (B, H, c, Dh) slice would copy it again.
        qc, kc, vc = (t.to(cdt).contiguous() for t in (q, k, v))
        # Whether a backward can follow (grad mode is always off inside Function.forward).
        for_backward = torch.is_grad_enabled() and any(
            t is not None and t.requires_grad for t in (q, k, v, bias4))
        out = _ChunkedAttentionFn.apply(qc, kc, vc, pad_add, bias4, float(dropout_p),
                                        float(scale), seed, chunk, for_backward)
        return out.to(q.dtype)


# ----------------------------------------------------------------------------------------
# xformers
# ----------------------------------------------------------------------------------------


@functools.cache
def _xformers_import_problem() -> str | None:
    """None when ``xformers.ops`` imports, else why not (checked once, lazily)."""
    try:
        import xformers.ops  # noqa: F401
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
        mask, dead = _additive_mask(key_padding_mask, attn_bias, q.dtype)
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


# ----------------------------------------------------------------------------------------
# dispatch
# ----------------------------------------------------------------------------------------

_BACKENDS: tuple[AttentionBackend, ...] = (
    XFormersBackend(), SDPABackend(), ChunkedBackend(), MathBackend()
)
#: Backend names in dispatch priority order.
ATTENTION_BACKENDS: tuple[str, ...] = tuple(b.name for b in _BACKENDS)
_BY_NAME = {b.name: b for b in _BACKENDS}


def _check_backend_name(backend: str | None) -> None:
    if backend is not None and backend not in _BY_NAME:
        raise ValueError(f"unknown attention backend {backend!r}; valid: None (automatic), "
                         + ", ".join(repr(n) for n in ATTENTION_BACKENDS))


@functools.lru_cache(maxsize=256)
def _log_once(message: str) -> None:
    logger.debug(message)


def select_attention_backend(call: AttentionCall, backend: str | None = None) -> AttentionBackend:
    """The backend that runs ``call``: the forced one (checked) or the first that fits.

    Raises ``ValueError`` listing the reasons when a forced backend does not fit.
    """
    _check_backend_name(backend)
    if backend is not None:
        chosen = _BY_NAME[backend]
        reasons = chosen.unsupported_reasons(call)
        if reasons:
            raise ValueError(f"attention backend {backend!r} does not fit these inputs "
                             f"({_describe(call)}): " + "; ".join(reasons))
        return chosen
    skipped = []
    for cand in _BACKENDS:
        reasons = cand.unsupported_reasons(call) + cand.auto_skip_reasons(call)
        if not reasons:
            if skipped:
                _log_once(f"attention: using {cand.name!r} for {_describe(call)}; skipped "
                          + "; ".join(f"{n}: {', '.join(r)}" for n, r in skipped))
            return cand
        skipped.append((cand.name, reasons))
    raise AssertionError("the math backend always fits")  # pragma: no cover


def available_attention_backends(call: AttentionCall) -> dict[str, list[str]]:
    """For each backend, in priority order, the reasons it would not be chosen ([] = fits)."""
    return {b.name: b.unsupported_reasons(call) + b.auto_skip_reasons(call) for b in _BACKENDS}


def _describe(call: AttentionCall) -> str:
    return (f"device={call.device_type}, dtype={call.dtype}, head_dim={call.head_dim}, "
            f"Lq={call.len_q}, Lk={call.len_k}, mask={call.mask_kind}, "
            f"dropout_p={call.dropout_p}, needs_grad={call.needs_grad}")


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
) -> torch.Tensor:
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

    Returns:
        (B, H, Lq, Dv), in the dtype of ``q``.
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
    impl = select_attention_backend(call, backend)
    return impl.run(q, k, v, key_padding_mask, attn_bias, dropout_p, scale, dropout_seed,
                    chunk_size)


# ----------------------------------------------------------------------------------------
# module
# ----------------------------------------------------------------------------------------


class MultiHeadAttention(nn.Module):
    """Multi-head (self- or cross-) attention with separate q/k/v projections.

    Args:
        dim: width of the queries and of the output.
        num_heads: number of heads; must divide ``dim`` (head dim ``dim // num_heads``).
        kv_dim: width of the keys/values input (``context``), default ``dim``.
        dropout: attention-probability dropout (active in training mode only).
        bias: whether the projections have biases.
        backend: None (choose per call by capability) or a name from
            ``ATTENTION_BACKENDS``, frozen at construction.
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
        if not isinstance(dim, int) or dim <= 0:
            raise ValueError(f"MultiHeadAttention: dim must be a positive int, got {dim!r}")
        if not isinstance(num_heads, int) or num_heads <= 0 or dim % num_heads != 0:
            raise ValueError(f"MultiHeadAttention: num_heads ({num_heads!r}) must be a "
                             f"positive int dividing dim ({dim})")
        kv_dim = dim if kv_dim is None else kv_dim
        if not isinstance(kv_dim, int) or kv_dim <= 0:
            raise ValueError(f"MultiHeadAttention: kv_dim must be a positive int, got {kv_dim!r}")
        if not (0.0 <= dropout < 1.0):
            raise ValueError(f"MultiHeadAttention: dropout must be in [0, 1), got {dropout}")
        _check_backend_name(backend)
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
    ) -> torch.Tensor:
        """x: (B, Lq, dim); context: (B, Lk, kv_dim) or None (self-attention).

        key_padding_mask: (B, Lk), True/1 = real token. attn_bias: broadcastable to
        (B, num_heads, Lq, Lk). Returns (B, Lq, dim).
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
                      dropout_p=self.dropout if self.training else 0.0, backend=self.backend)
        o = o.transpose(1, 2).reshape(B, Lq, self.dim)  # (B, Lq, dim)
        return self.proj(o)

    def extra_repr(self) -> str:
        s = f"{self.dim}, num_heads={self.num_heads}"
        if self.kv_dim != self.dim:
            s += f", kv_dim={self.kv_dim}"
        s += f", dropout={self.dropout}"
        if self.backend is not None:
            s += f", backend={self.backend!r}"
        return s
