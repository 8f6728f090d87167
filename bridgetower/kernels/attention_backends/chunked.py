"""``chunked``: query-chunked attention with O(N) memory and seed-regenerated dropout.

An ``autograd.Function`` that walks the queries in chunks and keeps only the row log-sum-exp;
the backward recomputes each chunk's probabilities and regenerates its dropout mask from a
seed (the recompute idea of FlashAttention). Memory beyond the inputs and outputs is one
chunk of ``(B, H, chunk, Lk)`` scores, so training memory grows linearly with the sequence
length, with dropout, on any device. On the CPU it is what automatic dispatch takes for
training with attention dropout (SDPA then leaves its flash kernel for an ``O(L^2)`` one).
"""

from __future__ import annotations

import torch

from ..dropout_mask import random_keep_mask
from .base import AttentionBackend, compute_dtype
from .masks import bias_4d, padding_additive

__all__ = [
    "DROPOUT_MASK_KEEP_LIMIT",
    "ChunkedBackend",
    "chunk_keep_mask",
    "chunked_dropout_keep_mask",
    "default_chunk_size",
]

# Query rows per chunk of the chunked path, and the most score elements (B * H * chunk * Lk)
# one chunk may hold (fewer rows for very large batches, never fewer than 16).
_CHUNK_ROWS = 128
_CHUNK_ELEMENTS = 1 << 24
#: The chunked path keeps its dropout mask for the backward (one byte per attention score)
#: when the call has at most this many scores (B * H * Lq * Lk); above it the backward draws
#: the mask again from the seed, so memory stays linear in the sequence length.  16M scores
#: are e.g. batch 2 x 12 heads x 577 x 577 tokens (384 px images) with room to spare.
DROPOUT_MASK_KEEP_LIMIT = 1 << 24


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
        chunk_keep_mask(seed, ci, (B, H, min(i0 + chunk_size, Lq) - i0, Lk), dropout_p, device)
        for ci, i0 in enumerate(range(0, Lq, chunk_size))
    ]
    return torch.cat(parts, dim=2).view(torch.bool)


def chunk_keep_mask(
    seed: int, chunk_index: int, shape: tuple[int, ...], dropout_p: float, device
) -> torch.Tensor:
    """uint8 keep-mask of one chunk (1 = kept): :func:`~bridgetower.kernels.dropout_mask.
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
                keep = chunk_keep_mask(seed, ci, (B, H, i1 - i0, Lk), dropout_p, q.device)
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
                    keep = chunk_keep_mask(seed, ci, (B, H, i1 - i0, Lk), dropout_p, q.device)
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

    def run(self, q, k, v, key_padding_mask, attn_bias, dropout_p, scale, dropout_seed,
            chunk_size):
        cdt = compute_dtype(q.dtype)
        pad_add = (padding_additive(key_padding_mask, cdt)
                   if key_padding_mask is not None else None)
        bias4 = bias_4d(attn_bias).to(cdt) if attn_bias is not None else None
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
                                        float(scale), seed, chunk_size, for_backward)
        return out.to(q.dtype)
