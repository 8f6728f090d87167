"""Attention backends against float64 references, and the dispatcher
(bridgetower.kernels.attention_backends)."""

from __future__ import annotations

import logging
import sys
import types

import pytest
import torch

from bridgetower.kernels import dispatch
from bridgetower.kernels.attention_backends import (
    ATTENTION_BACKENDS,
    AttentionCall,
    api,
    attention,
    attention_math,
    available_attention_backends,
    check_attention_backend,
    chunked,
    chunked_dropout_keep_mask,
    default_chunk_size,
    select_attention_backend,
)
from bridgetower.kernels.attention_backends import xformers as xformers_backend

F64 = torch.float64
CPU_BACKENDS = ["math", "sdpa", "chunked"]  # xformers has no CPU operators


def _qkv(B, H, Lq, Lk, D, dtype=F64, Dv=None):
    q = torch.randn(B, H, Lq, D, dtype=dtype, requires_grad=True)
    k = torch.randn(B, H, Lk, D, dtype=dtype, requires_grad=True)
    v = torch.randn(B, H, Lk, Dv or D, dtype=dtype, requires_grad=True)
    return q, k, v


def _pad(B, Lk, lengths):
    m = torch.zeros(B, Lk, dtype=torch.bool)
    for b, n in enumerate(lengths):
        m[b, :n] = True
    return m


def _independent_reference(q, k, v, mask, bias, scale):
    """Per batch element, attend over the real keys only (sliced out): no -inf arithmetic."""
    outs = []
    for b in range(q.shape[0]):
        keep = mask[b] if mask is not None else torch.ones(k.shape[2], dtype=torch.bool)
        kb, vb = k[b][:, keep], v[b][:, keep]
        s = q[b] @ kb.transpose(-2, -1) * scale
        if bias is not None:
            s = s + bias.expand(q.shape[0], q.shape[1], q.shape[2], k.shape[2])[b][..., keep]
        outs.append(torch.softmax(s, -1) @ vb)
    return torch.stack(outs)


CASES = {
    # name: (B, H, Lq, Lk, D, lengths of keys or None, bias shape or None)
    "self": (2, 3, 9, 9, 8, None, None),
    "self_pad": (3, 2, 9, 9, 8, [9, 5, 1], None),
    "cross_pad": (3, 2, 7, 12, 16, [12, 3, 8], None),
    "cross_pad_bias_full": (2, 3, 7, 5, 8, [5, 2], (2, 3, 7, 5)),
    "cross_bias_rows": (2, 3, 6, 11, 8, None, (1, 3, 6, 1)),
    "self_pad_bias_keys": (2, 2, 10, 10, 4, [10, 6], (2, 1, 1, 10)),
    "bias_2d": (2, 2, 5, 7, 8, [7, 4], (5, 7)),
}


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("case", list(CASES))
def test_backend_matches_reference_fwd_bwd(backend, case):
    B, H, Lq, Lk, D, lengths, bshape = CASES[case]
    q, k, v = _qkv(B, H, Lq, Lk, D)
    mask = _pad(B, Lk, lengths) if lengths else None
    bias = torch.randn(bshape, dtype=F64, requires_grad=True) if bshape else None
    scale = D ** -0.5
    inputs = [t for t in (q, k, v, bias) if t is not None]

    ref = _independent_reference(q, k, v, mask, bias, scale)
    math_out = attention_math(q, k, v, key_padding_mask=mask, attn_bias=bias)
    torch.testing.assert_close(math_out, ref, rtol=1e-12, atol=1e-12)

    # a small chunk size so the chunked path really runs several chunks
    out = attention(q, k, v, key_padding_mask=mask, attn_bias=bias, backend=backend,
                    chunk_size=4)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    g = torch.randn_like(ref)
    for a, b in zip(torch.autograd.grad(out, inputs, g), torch.autograd.grad(ref, inputs, g), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_integer_mask_and_value_head_dim(backend):
    q, k, v = _qkv(2, 2, 5, 6, 8, Dv=4)
    m = _pad(2, 6, [6, 3])
    a = attention(q, k, v, key_padding_mask=m.long(), backend=backend)
    b = attention_math(q, k, v, key_padding_mask=m)
    assert a.shape == (2, 2, 5, 4)
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype,atol", [(torch.float32, 1e-5), (torch.bfloat16, 5e-2)])
@pytest.mark.parametrize("backend", ["sdpa", "chunked"])
def test_low_precision_within_twice_torch_error(backend, dtype, atol):
    """|ours - ref64| <= 2 |math_same_dtype - ref64| + atol, output and gradients."""
    q, k, v = _qkv(2, 4, 33, 40, 16)
    m = _pad(2, 40, [40, 17])
    g = torch.randn(2, 4, 33, 16, dtype=F64)

    def run(fn, dt):
        ins = [t.detach().to(dt).requires_grad_() for t in (q, k, v)]
        o = fn(*ins)
        return [o, *torch.autograd.grad(o, ins, g.to(dt))]

    ref = run(lambda a, b, c: attention_math(a, b, c, key_padding_mask=m), F64)
    base = run(lambda a, b, c: attention_math(a, b, c, key_padding_mask=m), dtype)
    ours = run(lambda a, b, c: attention(a, b, c, key_padding_mask=m, backend=backend,
                                         chunk_size=8), dtype)
    for o, t, r in zip(ours, base, ref, strict=True):
        assert o.dtype == dtype
        err = (o.double() - r).abs()
        bound = 2 * (t.double() - r).abs() + atol
        assert bool((err <= bound).all()), float((err - bound).max())


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_fully_masked_rows_give_zeros_not_nan(backend):
    q, k, v = _qkv(3, 2, 6, 5, 8)
    mask = _pad(3, 5, [5, 0, 2])  # batch element 1 has no real key
    bias = torch.zeros(1, 1, 6, 5, dtype=F64)
    bias[..., 3, :] = float("-inf")  # query row 3 masked everywhere by the bias
    bias.requires_grad_()
    out = attention(q, k, v, key_padding_mask=mask, attn_bias=bias, backend=backend,
                    chunk_size=4)
    assert torch.isfinite(out).all()
    assert (out[1] == 0).all() and (out[:, :, 3] == 0).all()
    live = _independent_reference(q[[0, 2]], k[[0, 2]], v[[0, 2]], mask[[0, 2]],
                                  bias.detach().expand(2, 2, 6, 5).clone().masked_fill(
                                      torch.isinf(bias.detach()).expand(2, 2, 6, 5), 0.0),
                                  8 ** -0.5)
    live[:, :, 3] = 0
    torch.testing.assert_close(out[[0, 2]], live, rtol=1e-12, atol=1e-12)
    grads = torch.autograd.grad(out.sum(), (q, k, v, bias))
    assert all(torch.isfinite(t).all() for t in grads)
    assert (grads[0][1] == 0).all() and (grads[0][:, :, 3] == 0).all()
    assert (grads[1][1] == 0).all() and (grads[2][1] == 0).all()


@pytest.mark.parametrize("backend", ["math", "chunked"])
def test_fully_masked_rows_with_dropout(backend):
    q, k, v = _qkv(2, 2, 5, 4, 8)
    mask = _pad(2, 4, [4, 0])
    out = attention(q, k, v, key_padding_mask=mask, dropout_p=0.3, backend=backend)
    assert torch.isfinite(out).all() and (out[1] == 0).all()
    assert all(torch.isfinite(g).all() for g in torch.autograd.grad(out.sum(), (q, k, v)))


# ---------------------------------------------------------------- chunked dropout


@pytest.mark.parametrize("keep_limit", [0, chunked.DROPOUT_MASK_KEEP_LIMIT],
                         ids=["mask-redrawn", "mask-kept"])
@pytest.mark.parametrize("chunk_size", [3, 16])
def test_chunked_dropout_matches_math_with_the_same_regenerated_mask(chunk_size, keep_limit,
                                                                     monkeypatch):
    """Forward and every gradient equal an explicit float64 computation with that mask,
    whether the backward keeps the forward's mask or draws it again from the seed."""
    monkeypatch.setattr(chunked, "DROPOUT_MASK_KEEP_LIMIT", keep_limit)
    B, H, Lq, Lk, D, p = 2, 3, 11, 7, 8, 0.3
    q, k, v = _qkv(B, H, Lq, Lk, D)
    mask = _pad(B, Lk, [7, 4])
    bias = torch.randn(B, 1, Lq, Lk, dtype=F64, requires_grad=True)
    out = attention(q, k, v, key_padding_mask=mask, attn_bias=bias, dropout_p=p,
                    backend="chunked", dropout_seed=1234, chunk_size=chunk_size)
    keep = chunked_dropout_keep_mask(1234, (B, H, Lq, Lk), p, chunk_size, "cpu")
    ref = attention_math(q, k, v, key_padding_mask=mask, attn_bias=bias, dropout_p=p,
                         dropout_keep=keep)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    g = torch.randn_like(out)
    for a, b in zip(torch.autograd.grad(out, (q, k, v, bias), g),
                    torch.autograd.grad(ref, (q, k, v, bias), g), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    # The dropout really acted, and the math backend given the seed applies the same mask.
    assert not (keep.all())
    same = attention(q, k, v, key_padding_mask=mask, attn_bias=bias, dropout_p=p,
                     backend="math", dropout_seed=1234, chunk_size=chunk_size)
    torch.testing.assert_close(same, out, rtol=1e-12, atol=1e-12)


def test_chunked_dropout_gradcheck():
    q, k, v = _qkv(1, 2, 5, 4, 3)
    mask = _pad(1, 4, [3])
    bias = torch.randn(1, 2, 5, 4, dtype=F64, requires_grad=True)

    def f(q, k, v, bias):
        return attention(q, k, v, key_padding_mask=mask, attn_bias=bias, dropout_p=0.25,
                         backend="chunked", dropout_seed=99, chunk_size=2)

    assert torch.autograd.gradcheck(f, (q, k, v, bias))


def test_chunked_dropout_statistics_and_reproducibility():
    p = 0.2
    keep = chunked_dropout_keep_mask(5, (2, 4, 64, 128), p, 16, "cpu")
    frac = keep.double().mean().item()
    assert abs(frac - (1 - p)) < 0.01  # 65536 draws: std of the mean is 0.0016
    chunks = keep.split(16, dim=2)
    assert not torch.equal(chunks[0], chunks[1])  # chunks draw different masks
    assert not torch.equal(keep, chunked_dropout_keep_mask(6, (2, 4, 64, 128), p, 16, "cpu"))

    # Unbiased: the mean over many dropout draws approaches the dropout-free output.
    q, k, v = (t.detach() for t in _qkv(1, 1, 4, 6, 4))
    clean = attention_math(q, k, v)
    draws = torch.stack([attention(q, k, v, dropout_p=p, backend="chunked", dropout_seed=s)
                         for s in range(400)])
    assert (draws.mean(0) - clean).abs().max() < 0.15 * clean.abs().max() + 0.05

    # Without a seed the mask comes from the default generator: torch.manual_seed repeats it.
    torch.manual_seed(3)
    a = attention(q, k, v, dropout_p=p, backend="chunked")
    torch.manual_seed(3)
    b = attention(q, k, v, dropout_p=p, backend="chunked")
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.allclose(a, clean)


def test_default_chunk_size_bounds():
    assert default_chunk_size(2, 12, 1297, 1297) == 128
    assert default_chunk_size(1, 1, 10, 10) == 10  # never more than Lq
    assert default_chunk_size(16, 16, 4096, 4096) == (1 << 24) // (256 * 4096)  # capped
    assert default_chunk_size(64, 16, 4096, 4096) == 16  # at least 16 rows


# ---------------------------------------------------------------- dispatcher


def _call(**kw):
    base = dict(device_type="cpu", dtype=torch.float32, head_dim=64, value_dim=64, batch=2,
                num_heads=12, len_q=325, len_k=50, has_key_padding_mask=True,
                has_attn_bias=False, bias_requires_grad=False, dropout_p=0.0,
                seeded_dropout=False, needs_grad=True)
    base.update(kw)
    return AttentionCall(**base)


def test_dispatch_choices_on_cpu():
    assert ATTENTION_BACKENDS == ("xformers", "sdpa", "chunked", "math")
    assert select_attention_backend(_call()).name == "sdpa"
    # dropout on CPU: sdpa would leave its flash kernel -> the O(N)-memory chunked path
    assert select_attention_backend(_call(dropout_p=0.1)).name == "chunked"
    assert select_attention_backend(_call(dropout_p=0.1, seeded_dropout=True)).name == "chunked"
    reasons = available_attention_backends(_call(dropout_p=0.1))
    assert any("CUDA" in r for r in reasons["xformers"])
    assert any("flash kernel" in r for r in reasons["sdpa"])
    assert reasons["chunked"] == [] and reasons["math"] == []


def test_forced_backend_refusals_list_reasons():
    q, k, v = _qkv(1, 2, 4, 4, 8)
    with pytest.raises(ValueError, match=r"attention backend 'xformers' does not fit.*device 'cpu' \(CUDA tensors only\)"):
        attention(q, k, v, backend="xformers")
    with pytest.raises(ValueError, match="sdpa cannot reproduce a dropout mask"):
        attention(q, k, v, dropout_p=0.1, dropout_seed=1, backend="sdpa")
    # several reasons are all listed
    with pytest.raises(ValueError) as info:
        select_attention_backend(
            _call(device_type="cpu", dtype=F64, head_dim=256, value_dim=256,
                  has_attn_bias=True, bias_requires_grad=True), "xformers")
    msg = str(info.value)
    assert "CUDA" in msg and "float64" in msg and "head dim 256" in msg and "attn_bias" in msg
    with pytest.raises(ValueError, match="unknown attention backend 'flash'.*'chunked'"):
        attention(q, k, v, backend="flash")
    # sdpa with dropout on CPU is not chosen automatically, but can be forced
    out = attention(q, k, v, dropout_p=0.5, backend="sdpa")
    assert out.shape == q.shape


def test_check_attention_backend():
    for name in (None, *ATTENTION_BACKENDS):
        check_attention_backend(name)
    with pytest.raises(ValueError) as info:
        check_attention_backend("flash9")
    assert str(info.value) == ("unknown attention backend 'flash9'; valid: None (automatic), "
                               "'xformers', 'sdpa', 'chunked', 'math'")


def test_xformers_chosen_first_when_it_fits(monkeypatch):
    monkeypatch.setattr(xformers_backend, "_xformers_import_problem", lambda: None)
    monkeypatch.setattr(xformers_backend, "_xformers_device_problem", lambda device: None)
    cuda = _call(device_type="cuda", dtype=torch.float16)
    assert select_attention_backend(cuda).name == "xformers"
    # a bias that needs a gradient is not declared: sdpa runs instead
    assert select_attention_backend(
        _call(device_type="cuda", has_attn_bias=True, bias_requires_grad=True)).name == "sdpa"
    monkeypatch.setattr(xformers_backend, "_xformers_device_problem",
                        lambda device: "xformers imports but its operators do not run on cuda")
    assert select_attention_backend(cuda).name == "sdpa"
    with pytest.raises(ValueError, match="operators do not run on cuda"):
        select_attention_backend(cuda, "xformers")


def test_xformers_detection_reports_missing_or_broken_operators(monkeypatch):
    """Run the real probe: with the installed xformers (no CPU operators), or a stand-in."""
    try:
        import xformers.ops  # noqa: F401
    except Exception:
        fake = types.ModuleType("xformers")
        fake.ops = types.ModuleType("xformers.ops")

        def _no_op(*a, **kw):
            raise NotImplementedError("No operator found for `memory_efficient_attention`")

        fake.ops.memory_efficient_attention = _no_op
        monkeypatch.setitem(sys.modules, "xformers", fake)
        monkeypatch.setitem(sys.modules, "xformers.ops", fake.ops)
    problem = xformers_backend._probe_xformers("cpu")
    assert problem is not None and "operators do not run on cpu" in problem

    monkeypatch.setitem(sys.modules, "xformers", None)  # import fails
    monkeypatch.setitem(sys.modules, "xformers.ops", None)
    xformers_backend._xformers_import_problem.cache_clear()
    try:
        assert "not importable" in xformers_backend._xformers_import_problem()
    finally:
        xformers_backend._xformers_import_problem.cache_clear()


def test_automatic_fallback_logged_once_at_debug(caplog):
    q, k, v = (t.detach() for t in _qkv(1, 2, 3, 3, 8))
    dispatch._log_once.cache_clear()
    with caplog.at_level(logging.DEBUG, logger="bridgetower.kernels.dispatch"):
        attention(q, k, v, dropout_p=0.1)
        attention(q, k, v, dropout_p=0.1)
    msgs = [r for r in caplog.records if "using 'chunked'" in r.getMessage()]
    assert len(msgs) == 1 and msgs[0].levelno == logging.DEBUG
    assert "skipped xformers" in msgs[0].getMessage() and "sdpa:" in msgs[0].getMessage()


def test_module_globals_untouched_by_forcing():
    before = api._BACKENDS
    q, k, v = (t.detach() for t in _qkv(1, 1, 3, 3, 4))
    attention(q, k, v, backend="math")
    assert select_attention_backend(_call()).name == "sdpa"
    assert api._BACKENDS == before and ATTENTION_BACKENDS == tuple(b.name for b in before)


def test_attention_input_validation():
    q, k, v = _qkv(2, 2, 4, 5, 8)
    with pytest.raises(ValueError, match=r"key_padding_mask must have shape \(B, Lk\) = \(2, 5\), got \(2, 4\)"):
        attention(q, k, v, key_padding_mask=torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(TypeError, match="bool or integer"):
        attention(q, k, v, key_padding_mask=torch.ones(2, 5))
    with pytest.raises(ValueError, match=r"attn_bias of shape \(3, 1, 4, 5\) is not broadcastable"):
        attention(q, k, v, attn_bias=torch.zeros(3, 1, 4, 5, dtype=F64))
    with pytest.raises(TypeError, match="attn_bias must be floating point"):
        attention(q, k, v, attn_bias=torch.zeros(2, 1, 4, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="q and k head dims differ"):
        attention(q, k[..., :4], v)
    with pytest.raises(ValueError, match="incompatible shapes"):
        attention(q, k, v[:, :, :3])
    with pytest.raises(ValueError, match=r"q must be \(B, H, L, Dh\)"):
        attention(q[0], k, v)
    with pytest.raises(TypeError, match="dtypes differ"):
        attention(q, k.float(), v)
    with pytest.raises(ValueError, match=r"dropout_p must be in \[0, 1\)"):
        attention(q, k, v, dropout_p=1.0)
    with pytest.raises(ValueError, match="chunk_size must be a positive int"):
        attention(q, k, v, chunk_size=0)


def test_xformers_backend_plumbing_with_a_stand_in_operator(monkeypatch):
    """xformers cannot run here: check our side of the call (BMHK layout, the bias storage
    aligned to 8, dead rows) against a stand-in that computes attention in that layout."""
    seen = {}

    def fake_mea(q, k, v, attn_bias=None, p=0.0, scale=None):
        seen.update(q=q.shape, bias=None if attn_bias is None else attn_bias.shape,
                    stride=None if attn_bias is None else attn_bias.stride(), p=p)
        s = torch.einsum("bmhk,bnhk->bhmn", q, k) * scale + attn_bias
        return torch.einsum("bhmn,bnhk->bmhk", torch.softmax(s, -1), v)  # (B, M, H, K)

    fake = types.ModuleType("xformers")
    fake.ops = types.ModuleType("xformers.ops")
    fake.ops.memory_efficient_attention = fake_mea
    monkeypatch.setitem(sys.modules, "xformers", fake)
    monkeypatch.setitem(sys.modules, "xformers.ops", fake.ops)
    B, H, Lq, Lk, D = 3, 2, 5, 11, 8
    q, k, v = _qkv(B, H, Lq, Lk, D)
    mask = _pad(B, Lk, [11, 0, 6])
    bias = torch.randn(1, H, Lq, Lk, dtype=F64)
    out = xformers_backend.XFormersBackend().run(q, k, v, mask, bias, 0.0, D ** -0.5, None, None)
    assert seen["q"] == (B, Lq, H, D) and seen["bias"] == (B, H, Lq, Lk)
    assert seen["stride"][2] % 8 == 0  # last-dim storage padded from 11 to 16
    assert (out[1] == 0).all()
    ref = attention_math(q, k, v, key_padding_mask=mask, attn_bias=bias)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    # a bias broadcast over the keys (last dim 1), no padding mask
    row_bias = torch.randn(B, 1, Lq, 1, dtype=F64)
    out = xformers_backend.XFormersBackend().run(q, k, v, None, row_bias, 0.0, D ** -0.5, None, None)
    torch.testing.assert_close(out, attention_math(q, k, v, attn_bias=row_bias),
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("p", [0.1, 0.5, 3 / 65536])
def test_chunked_dropout_rate_is_p_rounded_to_16_bits_in_every_lane(p):
    """Four 16-bit decisions come from each 64-bit draw: each lane position (the top one
    included) drops at the rate p (rounded to a multiple of 2**-16), and neighbouring
    decisions are independent."""
    shape = (4, 8, 96, 128)  # 393216 decisions, 98304 per lane position
    drop = ~chunked_dropout_keep_mask(11, shape, p, 96, "cpu")
    rate = round(p * 65536) / 65536
    lanes = drop.reshape(-1, 4).double()
    std = (rate * (1 - rate) / lanes.shape[0]) ** 0.5
    for lane in range(4):
        assert abs(lanes[:, lane].mean().item() - rate) < 5 * std + 1e-9
    if 0.05 < p < 0.95:  # both dropped: rate**2 if independent
        both = (lanes[:, 0] * lanes[:, 1]).mean().item()
        assert abs(both - rate * rate) < 5 * (rate * rate / lanes.shape[0]) ** 0.5


def test_chunked_dropout_kept_mask_is_freed_and_a_second_backward_redraws_it():
    """The mask kept for the backward is released by it; a retained graph's second backward
    draws the same mask again from the seed and gives the same gradients."""
    q, k, v = _qkv(2, 2, 9, 6, 4)
    out = attention(q, k, v, dropout_p=0.4, backend="chunked", dropout_seed=7, chunk_size=4)
    node = out.grad_fn
    while node is not None and "ChunkedAttention" not in type(node).__name__:
        node = node.next_functions[0][0]
    assert node is not None and len(node.kept_masks) == 3  # one per query chunk
    assert all(m.dtype == torch.uint8 for m in node.kept_masks)
    g = torch.randn_like(out)
    first = torch.autograd.grad(out, (q, k, v), g, retain_graph=True)
    assert node.kept_masks is None
    second = torch.autograd.grad(out, (q, k, v), g)
    for a, b in zip(first, second, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_chunked_dropout_keeps_no_mask_without_a_backward_or_above_the_limit(monkeypatch):
    q, k, v = _qkv(1, 2, 8, 5, 4)
    with torch.no_grad():  # no backward can follow: nothing kept
        out = attention(q, k, v, dropout_p=0.2, backend="chunked", dropout_seed=3)
    q2, k2, v2 = (t.detach().requires_grad_() for t in (q, k, v))
    monkeypatch.setattr(chunked, "DROPOUT_MASK_KEEP_LIMIT", 1 * 2 * 8 * 5 - 1)
    big = attention(q2, k2, v2, dropout_p=0.2, backend="chunked", dropout_seed=3)
    assert big.grad_fn.kept_masks is None  # one score over the limit: redrawn
    torch.testing.assert_close(big.detach(), out, rtol=0, atol=0)


def test_chunked_dropout_tiny_p_rounds_to_no_dropout():
    keep = chunked_dropout_keep_mask(3, (2, 2, 8, 16), 1e-6, 8, "cpu")  # < 2**-17
    assert keep.all()


def test_chunked_dropout_p_next_to_one_drops_almost_everything():
    # round(p * 2**16) = 2**16 would not fit the int16 comparison: capped at 1 - 2**-16
    keep = chunked_dropout_keep_mask(3, (4, 8, 64, 128), 1 - 1e-6, 64, "cpu")
    assert keep.sum().item() < 40  # 262144 decisions, expected 4 kept
