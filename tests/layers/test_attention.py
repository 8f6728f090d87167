"""MultiHeadAttention against torch.nn.MultiheadAttention (same weights), its conventions,
and the functional names it re-exports (the backends: tests/kernels/test_attention.py)."""

from __future__ import annotations

import pytest
import torch

import bridgetower.kernels as kernels
from bridgetower.layers.attention import ATTENTION_BACKENDS, MultiHeadAttention, attention

F64 = torch.float64
CPU_BACKENDS = ["math", "sdpa", "chunked"]  # xformers has no CPU operators


def _pad(B, Lk, lengths):
    m = torch.zeros(B, Lk, dtype=torch.bool)
    for b, n in enumerate(lengths):
        m[b, :n] = True
    return m


def test_old_functional_names_still_import_from_the_layer_module():
    assert attention is kernels.attention and ATTENTION_BACKENDS == kernels.ATTENTION_BACKENDS


@pytest.mark.parametrize("backend", [None, *CPU_BACKENDS])
@pytest.mark.parametrize("kv_dim", [None, 12])
def test_multihead_attention_matches_torch_mha(backend, kv_dim):
    """Against torch.nn.MultiheadAttention with the same weights (its mask: True = ignore)."""
    dim, heads = 16, 4
    mha = MultiHeadAttention(dim, heads, kv_dim=kv_dim, backend=backend, dtype=F64)
    ref = torch.nn.MultiheadAttention(dim, heads, kdim=kv_dim, vdim=kv_dim, batch_first=True,
                                      dtype=F64)
    with torch.no_grad():
        if kv_dim is None:
            ref.in_proj_weight.copy_(torch.cat([mha.query.weight, mha.key.weight,
                                                mha.value.weight]))
        else:
            ref.q_proj_weight.copy_(mha.query.weight)
            ref.k_proj_weight.copy_(mha.key.weight)
            ref.v_proj_weight.copy_(mha.value.weight)
        ref.in_proj_bias.copy_(torch.cat([mha.query.bias, mha.key.bias, mha.value.bias]))
        ref.out_proj.weight.copy_(mha.proj.weight)
        ref.out_proj.bias.copy_(mha.proj.bias)
    x = torch.randn(3, 6, dim, dtype=F64, requires_grad=True)
    ctx = x if kv_dim is None else torch.randn(3, 8, kv_dim, dtype=F64, requires_grad=True)
    mask = _pad(3, ctx.shape[1], [ctx.shape[1], 2, 4])
    out = mha(x, None if kv_dim is None else ctx, key_padding_mask=mask)
    exp = ref(x, ctx, ctx, key_padding_mask=~mask, need_weights=False)[0]
    torch.testing.assert_close(out, exp, rtol=1e-12, atol=1e-12)
    gx = torch.autograd.grad(out.sum(), x)[0]
    torch.testing.assert_close(gx, torch.autograd.grad(exp.sum(), x)[0], rtol=1e-10, atol=1e-12)


def test_multihead_attention_module_conventions():
    mha = MultiHeadAttention(16, 4, kv_dim=8, dropout=0.1, backend="chunked")
    assert [n for n, _ in mha.named_children()] == ["query", "key", "value", "proj"]
    assert mha.key.weight.shape == (16, 8) and mha.value.weight.shape == (16, 8)
    assert "kv_dim=8" in repr(mha) and "backend='chunked'" in repr(mha)
    with torch.no_grad():
        mha.query.weight.fill_(3.0)
    mha.reset_parameters()
    assert mha.query.weight.std().item() < 0.05 and (mha.query.bias == 0).all()
    x, ctx = torch.randn(2, 5, 16), torch.randn(2, 3, 8)
    mha.eval()
    torch.testing.assert_close(mha(x, ctx), mha(x, ctx))
    mha.train()
    assert not torch.allclose(mha(x, ctx), mha(x, ctx))
    with pytest.raises(ValueError, match="num_heads .* dividing dim"):
        MultiHeadAttention(18, 4)
    with pytest.raises(ValueError, match="self-attention needs kv_dim == dim"):
        mha(x)
    with pytest.raises(ValueError, match=r"context must be \(B=2, Lk, 8\)"):
        mha(x, torch.randn(2, 3, 16))
    with pytest.raises(ValueError, match=r"x must be \(B, Lq, 16\)"):
        mha(torch.randn(2, 5, 8), ctx)
    with pytest.raises(ValueError, match="unknown attention backend"):
        MultiHeadAttention(16, 4, backend="nope")
    with pytest.raises(ValueError, match="key_padding_mask must have shape"):
        mha(x, ctx, key_padding_mask=torch.ones(2, 5, dtype=torch.bool))


def test_backend_is_a_plain_attribute_set_once_by_the_owner():
    mha = MultiHeadAttention(8, 2, dtype=F64).eval()
    x = torch.randn(2, 3, 8, dtype=F64)
    ref = mha(x)
    for name in CPU_BACKENDS:
        mha.backend = name  # what a model's set_attention_backend does, after validating
        torch.testing.assert_close(mha(x), ref, rtol=1e-12, atol=1e-12)
