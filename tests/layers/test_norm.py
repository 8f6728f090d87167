"""AddLayerNorm against LayerNorm(x + residual) written out in float64."""

from __future__ import annotations

import pytest
import torch

from bridgetower.layers.norm import AddLayerNorm

F64 = torch.float64


def _ln(s, w, b, eps):
    mu = s.mean(-1, keepdim=True)
    var = ((s - mu) ** 2).mean(-1, keepdim=True)
    out = (s - mu) / torch.sqrt(var + eps)
    return out if w is None else out * w + b


@pytest.mark.parametrize("shape", [(5, 24), (2, 3, 7, 24), (1, 1023)])
@pytest.mark.parametrize("eps", [1e-12, 1e-5])
def test_add_layer_norm_matches_formula(shape, eps):
    dim = shape[-1]
    norm = AddLayerNorm(dim, eps=eps, dtype=F64)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(dim, dtype=F64))
        norm.bias.copy_(torch.randn(dim, dtype=F64))
    x = torch.randn(shape, dtype=F64, requires_grad=True)
    r = torch.randn(shape, dtype=F64, requires_grad=True)
    out = norm(x, r)
    ref = _ln(x + r, norm.weight, norm.bias, eps)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    g = torch.randn_like(ref)
    ins = (x, r, norm.weight, norm.bias)
    for a, b in zip(torch.autograd.grad(out, ins, g), torch.autograd.grad(ref, ins, g), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_eps_matters_at_small_variance():
    x = torch.full((2, 8), 1.0, dtype=F64)
    x[:, 0] += 1e-4
    r = torch.zeros_like(x)
    a, b = AddLayerNorm(8, eps=1e-12, dtype=F64)(x, r), AddLayerNorm(8, eps=1e-5, dtype=F64)(x, r)
    assert (a - b).abs().max() > 0.1


def test_no_affine_and_state_dict_of_layernorm():
    x, r = torch.randn(3, 16), torch.randn(3, 16)
    n = AddLayerNorm(16, elementwise_affine=False)
    assert n.weight is None and n.bias is None and list(n.parameters()) == []
    torch.testing.assert_close(n(x, r), _ln(x + r, None, None, 1e-5))
    ln = torch.nn.LayerNorm(16, eps=1e-5)
    with torch.no_grad():
        ln.weight.normal_()
        ln.bias.normal_()
    m = AddLayerNorm(16)
    m.load_state_dict(ln.state_dict(), strict=True)
    torch.testing.assert_close(m(x, r), ln(x + r))
    m.reset_parameters()
    assert (m.weight == 1).all() and (m.bias == 0).all()
    assert repr(m) == "AddLayerNorm(16, eps=1e-05, elementwise_affine=True)"


def test_bad_inputs():
    """Checked once, by bridge_norm (x and z there are x and residual here)."""
    n = AddLayerNorm(8)
    with pytest.raises(ValueError, match=r"same shape, got x \(2, 8\) and z \(2, 7\)"):
        n(torch.randn(2, 8), torch.randn(2, 7))
    with pytest.raises(ValueError, match=r"weight must be shape \(6,\).*x of shape \(2, 6\)"):
        n(torch.randn(2, 6), torch.randn(2, 6))
    with pytest.raises(ValueError, match="positive int"):
        AddLayerNorm(0)


def test_backend_is_forwarded_to_bridge_norm():
    x, r = torch.randn(3, 16), torch.randn(3, 16)
    n = AddLayerNorm(16, backend="torch")
    assert "backend='torch'" in repr(n)
    torch.testing.assert_close(n(x, r), _ln(x + r, n.weight, n.bias, 1e-5))
    with pytest.raises(ValueError, match="unknown bridge_norm backend 'nope'"):
        AddLayerNorm(16, backend="nope")  # at construction


@pytest.mark.interpret
def test_add_layer_norm_on_the_triton_kernel_under_interpreter():
    """The automatic backend is the Triton kernel here: compare with the float64 formula."""
    dim = 48
    norm = AddLayerNorm(dim, eps=1e-12, backend="triton")
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    x = torch.randn(2, 5, dim, requires_grad=True)
    r = torch.randn(2, 5, dim, requires_grad=True)
    out = norm(x, r)
    ins = (x, r, norm.weight, norm.bias)
    ins64 = [t.detach().double().requires_grad_() for t in ins]
    ref = _ln(ins64[0] + ins64[1], ins64[2], ins64[3], 1e-12)
    torch.testing.assert_close(out.double(), ref, rtol=1e-4, atol=1e-4)
    g = torch.randn_like(ref)
    for a, b in zip(torch.autograd.grad(out, ins, g.float()), torch.autograd.grad(ref, ins64, g),
                    strict=True):
        torch.testing.assert_close(a.double(), b, rtol=1e-4, atol=1e-4)
