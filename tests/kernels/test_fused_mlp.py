"""The memory-saving autograd nodes of ``bridgetower.kernels.fused_mlp`` against float64
autograd of their formulas, ``gradcheck``, and their plain (no-grad / autocast) paths."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bridgetower.kernels import (
    ACTIVATIONS,
    act_linear,
    check_activation,
    layer_norm_linear,
    quick_gelu,
)
from bridgetower.kernels.fused_mlp import _ActLinearFn, _LayerNormLinearFn, _QuickGELUFn

F64 = torch.float64


def _act_ref(name: str, h: torch.Tensor) -> torch.Tensor:
    """The activations written out (HF's ``ACT2FN`` definitions)."""
    kind = check_activation(name)
    if kind == "gelu":
        return 0.5 * h * (1 + torch.erf(h / 2**0.5))
    if kind == "gelu_tanh":
        return 0.5 * h * (1 + torch.tanh((2 / torch.pi) ** 0.5 * (h + 0.044715 * h**3)))
    if kind == "quick_gelu":
        return h * torch.sigmoid(1.702 * h)
    if kind == "relu":
        return h.clamp_min(0)
    return h * torch.sigmoid(h)


def _linear(d_in, d_out, seed=0):
    torch.manual_seed(seed)
    return torch.nn.Linear(d_in, d_out, dtype=F64)


@pytest.mark.parametrize("act", ACTIVATIONS)
def test_act_linear_matches_the_formula_and_gradchecks(act):
    h = (torch.randn(2, 3, 6, dtype=F64) * 2).requires_grad_()
    lin = _linear(6, 4)
    out = act_linear(h, lin, act)
    assert out.grad_fn is not None and "ActLinear" in type(out.grad_fn).__name__
    ref = F.linear(_act_ref(act, h), lin.weight, lin.bias)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    ins = (h, lin.weight, lin.bias)
    g = torch.randn_like(ref)
    for a, b in zip(torch.autograd.grad(out, ins, g), torch.autograd.grad(ref, ins, g), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    kind = check_activation(act)
    h_nz = h.detach().clone()
    h_nz[h_nz.abs() < 1e-2] = 0.5  # relu's kink is not differentiable
    h_nz.requires_grad_()
    assert torch.autograd.gradcheck(lambda h, w, b: _ActLinearFn.apply(h, w, b, kind),
                                    (h_nz, lin.weight, lin.bias))
    w, b = lin.weight.detach(), lin.bias.detach()  # frozen layer: only dL/dh is computed
    assert torch.autograd.gradcheck(lambda h: _ActLinearFn.apply(h, w, b, kind), (h_nz,))


@pytest.mark.parametrize("act", ["gelu", "quick", "relu"])
def test_act_linear_plain_paths(act):
    h = torch.randn(4, 6, dtype=F64)
    lin = _linear(6, 3)
    ref = F.linear(_act_ref(act, h), lin.weight, lin.bias)
    with torch.no_grad():  # inference: the plain composition
        out = act_linear(h, lin, act)
    assert out.grad_fn is None
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast: plain, in bf16
        out = act_linear(h.float().requires_grad_(), lin.float(), act)
    assert out.dtype == torch.bfloat16 and "ActLinear" not in type(out.grad_fn).__name__


def test_unknown_activation_lists_the_valid_names():
    with pytest.raises(ValueError, match=r"unknown activation 'gelu_exact'; valid: gelu, gelu_new"):
        act_linear(torch.randn(2, 3), torch.nn.Linear(3, 2), "gelu_exact")
    with pytest.raises(ValueError, match="unknown activation None"):
        check_activation(None)


def test_act_linear_agrees_with_transformers_act2fn():
    activations = pytest.importorskip("transformers.activations")
    h = torch.randn(64, dtype=F64) * 3
    for name in ("gelu", "gelu_new", "gelu_pytorch_tanh", "gelu_fast", "quick_gelu", "relu", "silu"):
        ours = act_linear(h[None], _identity(64), name)  # act(h) through an identity Linear
        torch.testing.assert_close(ours[0], activations.ACT2FN[name](h), rtol=1e-6, atol=1e-7,
                                   msg=name)


def _identity(d):
    lin = torch.nn.Linear(d, d, bias=False, dtype=F64)
    with torch.no_grad():
        lin.weight.copy_(torch.eye(d, dtype=F64))
    return lin


@pytest.mark.parametrize("affine", [True, False])
def test_layer_norm_linear_matches_and_gradchecks(affine):
    torch.manual_seed(0)
    D, out = 7, 5
    x = torch.randn(2, 3, D, dtype=F64, requires_grad=True)
    lw = (torch.randn(D, dtype=F64) if affine else None)
    lb = (torch.randn(D, dtype=F64) if affine else None)
    lw, lb = (t.requires_grad_() if t is not None else None for t in (lw, lb))
    w = torch.randn(out, D, dtype=F64, requires_grad=True)
    b = torch.randn(out, dtype=F64, requires_grad=True)
    got = layer_norm_linear(x, lw, lb, 1e-5, w, b)
    assert "LayerNormLinear" in type(got.grad_fn).__name__
    ref = F.linear(F.layer_norm(x, (D,), lw, lb, 1e-5), w, b)
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)
    ins = [t for t in (x, lw, lb, w, b) if t is not None]
    g = torch.randn_like(ref)
    for a, c in zip(torch.autograd.grad(got, ins, g), torch.autograd.grad(ref, ins, g), strict=True):
        torch.testing.assert_close(a, c, rtol=1e-10, atol=1e-12)
    assert torch.autograd.gradcheck(
        lambda x, w, b: _LayerNormLinearFn.apply(x, lw, lb, 1e-5, w, b), (x, w, b))
    if affine:
        assert torch.autograd.gradcheck(
            lambda lw, lb: _LayerNormLinearFn.apply(x.detach(), lw, lb, 1e-5, w.detach(), None),
            (lw, lb))
    with torch.no_grad():
        torch.testing.assert_close(layer_norm_linear(x, lw, lb, 1e-5, w, b), ref.detach())


def test_quick_gelu_matches_and_gradchecks():
    x = torch.randn(3, 17, dtype=F64, requires_grad=True)
    y = quick_gelu(x)
    assert "QuickGELU" in type(y.grad_fn).__name__
    ref = x * torch.sigmoid(1.702 * x)
    torch.testing.assert_close(y, ref, rtol=1e-12, atol=1e-12)
    g = torch.randn_like(ref)
    torch.testing.assert_close(torch.autograd.grad(y, x, g)[0], torch.autograd.grad(ref, x, g)[0],
                               rtol=1e-10, atol=1e-12)
    assert torch.autograd.gradcheck(_QuickGELUFn.apply, (x,))
    assert torch.autograd.gradgradcheck(_QuickGELUFn.apply, (x,))
    with torch.no_grad():
        torch.testing.assert_close(quick_gelu(x), ref.detach())
