"""The Dropout module (16-bit CPU masks): scaling, gradients, reproducibility, fallbacks.

The masks themselves: tests/kernels/test_dropout_mask.py."""

from __future__ import annotations

import pytest
import torch
from torch.utils.checkpoint import checkpoint

from bridgetower.layers.dropout import Dropout


def test_training_forward_and_backward_are_the_scaled_mask():
    torch.manual_seed(0)
    drop = Dropout(0.3).train()
    x = torch.randn(6, 50, 32, dtype=torch.float64, requires_grad=True)
    y = drop(x)
    kept = y != 0
    scale = 1 / (1 - 0.3)
    torch.testing.assert_close(y[kept], x[kept] * scale, rtol=0, atol=1e-15)
    assert abs(kept.double().mean().item() - 0.7) < 0.02
    g = torch.randn_like(y)
    (gx,) = torch.autograd.grad(y, x, g)
    torch.testing.assert_close(gx, g * kept * scale, rtol=0, atol=1e-15)
    # unbiased: the mean over many draws approaches the input
    xs = torch.ones(200_000)
    assert abs(drop(xs).mean().item() - 1.0) < 0.01


def test_seeded_reproducibility_and_checkpoint_recompute():
    drop = Dropout(0.25).train()
    x = torch.randn(4, 33, requires_grad=True)
    torch.manual_seed(11)
    a = drop(x)
    torch.manual_seed(11)
    torch.testing.assert_close(drop(x), a, rtol=0, atol=0)
    assert not torch.equal(drop(x), a)  # the generator moved on

    def f(t):
        return drop(t * 2.0).sin()

    torch.manual_seed(3)
    ref = f(x)
    (g_ref,) = torch.autograd.grad(ref.sum(), x)
    torch.manual_seed(3)
    out = checkpoint(f, x, use_reentrant=False)  # the recompute must draw the same mask
    (g,) = torch.autograd.grad(out.sum(), x)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    torch.testing.assert_close(g, g_ref, rtol=0, atol=0)


def test_eval_and_fallbacks_are_nn_dropout():
    x = torch.randn(3, 8)
    assert torch.equal(Dropout(0.5).eval()(x), x)
    assert torch.equal(Dropout(0.0).train()(x), x)
    assert torch.equal(Dropout(1.0).train()(x), torch.zeros_like(x))
    # inplace keeps nn.Dropout's semantics (the input itself is overwritten)
    y = x.clone()
    torch.manual_seed(0)
    out = Dropout(0.5, inplace=True).train()(y)
    assert out.data_ptr() == y.data_ptr()
    with pytest.raises(ValueError, match="dropout probability"):
        Dropout(1.5)
    assert Dropout(0.1).state_dict() == {}  # no parameters or buffers: checkpoints unchanged
