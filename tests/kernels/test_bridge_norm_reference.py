"""Tests of the pure-PyTorch references in ``bridgetower.kernels.reference``."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bridgetower.kernels import BRIDGE_NORM_MODES, bridge_norm, bridge_norm_eager, bridge_norm_ref


def _coef(mode, d, dtype=torch.float64):
    if mode in ("scaled_add", "interpolate"):
        return (torch.rand((), dtype=dtype) * 0.8 + 0.1).requires_grad_()
    if mode in ("scaled_add_tensor", "interpolate_tensor"):
        return (torch.rand(d, dtype=dtype) * 0.8 + 0.1).requires_grad_()
    return None


@pytest.mark.parametrize("mode", BRIDGE_NORM_MODES)
def test_reference_gradcheck(mode):
    d = 7
    x = torch.randn(2, 3, d, dtype=torch.float64, requires_grad=True)
    z = torch.randn(2, 3, d, dtype=torch.float64, requires_grad=True)
    w = torch.randn(d, dtype=torch.float64, requires_grad=True)
    b = torch.randn(d, dtype=torch.float64, requires_grad=True)
    c = _coef(mode, d)
    inputs = (x, z, w, b, c)
    assert torch.autograd.gradcheck(lambda *a: bridge_norm_ref(*a, mode=mode, eps=1e-5), inputs)


@pytest.mark.parametrize("mode", BRIDGE_NORM_MODES)
def test_reference_matches_explicit_formula(mode):
    d = 33
    x = torch.randn(4, 5, d, dtype=torch.float64)
    z = torch.randn(4, 5, d, dtype=torch.float64)
    w, b = torch.randn(d, dtype=torch.float64), torch.randn(d, dtype=torch.float64)
    c = _coef(mode, d)
    c = c.detach() if c is not None else None
    a_, b_ = {
        "add": (1.0, 1.0),
        "scaled_add": (c, 1.0),
        "interpolate": (None if c is None else 1 - c, c),
        "scaled_add_tensor": (c, 1.0),
        "interpolate_tensor": (None if c is None else 1 - c, c),
    }[mode]
    s = a_ * x + b_ * z
    mean = s.sum(-1, keepdim=True) / d
    var = ((s - mean) ** 2).sum(-1, keepdim=True) / d  # biased variance, as LayerNorm
    want = (s - mean) / torch.sqrt(var + 1e-5) * w + b
    torch.testing.assert_close(
        bridge_norm_ref(x, z, w, b, c, mode=mode), want, rtol=1e-12, atol=1e-12
    )
    torch.testing.assert_close(
        bridge_norm_eager(x, z, w, b, c, mode=mode), want, rtol=1e-12, atol=1e-12
    )


def test_reference_computes_low_precision_in_float32():
    x = torch.randn(6, 64).to(torch.bfloat16)
    z = torch.randn(6, 64).to(torch.bfloat16)
    got = bridge_norm_ref(x, z)
    assert got.dtype == torch.bfloat16
    want = torch.nn.functional.layer_norm(x.float() + z.float(), (64,)).to(torch.bfloat16)
    assert torch.equal(got, want)


def test_bridge_norm_promotes_mixed_dtypes_under_autocast():
    # a bf16 Linear output meets a float32 residual stream inside torch.autocast
    x = torch.randn(3, 5, 16, dtype=torch.bfloat16)
    z = torch.randn(3, 5, 16)
    w, b = torch.randn(16), torch.randn(16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = bridge_norm(x, z, w, b, backend="torch")
    assert out.dtype == torch.float32
    expected = F.layer_norm(x.double() + z.double(), (16,), w.double(), b.double(), 1e-5)
    torch.testing.assert_close(out.double(), expected, atol=1e-5, rtol=1e-5)
    with pytest.raises(TypeError, match="same dtype"):  # outside autocast it stays an error
        bridge_norm(x, z, w, b)
