"""Dropout with 16-bit CPU masks: rate, scaling, gradients, reproducibility, fallbacks."""

from __future__ import annotations

import pytest
import torch
from torch.utils.checkpoint import checkpoint

from bridgetower.layers.dropout import Dropout, random_keep_mask


@pytest.mark.parametrize("p", [0.1, 0.5, 5 / 65536])
def test_keep_mask_rate_is_p_rounded_to_16_bits_in_every_lane(p):
    g = torch.Generator().manual_seed(4)
    keep = random_keep_mask((64, 4096), p, "cpu", g)  # 262144 decisions, 65536 per lane
    assert keep.dtype == torch.uint8 and set(keep.unique().tolist()) <= {0, 1}
    rate = round(p * 65536) / 65536
    lanes = (1 - keep.reshape(-1, 4).double())  # dropped = 1
    std = (rate * (1 - rate) / lanes.shape[0]) ** 0.5
    for lane in range(4):  # the top 16 bits of each draw included
        assert abs(lanes[:, lane].mean().item() - rate) < 5 * std + 1e-9
    if p > 0.05:  # neighbouring decisions independent
        both = (lanes[:, 0] * lanes[:, 3]).mean().item()
        assert abs(both - rate * rate) < 5 * (rate * rate / lanes.shape[0]) ** 0.5


def test_keep_mask_extreme_rates_and_odd_sizes():
    g = torch.Generator().manual_seed(0)
    assert random_keep_mask((7, 3), 1e-6, "cpu", g).all()  # below 2**-17: rounds to 0
    assert random_keep_mask((100, 1000), 1 - 1e-6, "cpu", g).sum() < 20  # capped, not wrapped
    assert random_keep_mask((5,), 0.5, "cpu", g).shape == (5,)  # not a multiple of 4
    with pytest.raises(ValueError, match=r"p must be in \[0, 1\], got 1.5"):
        random_keep_mask((4,), 1.5, "cpu")
    with pytest.raises(TypeError, match="shape must be a tuple of non-negative ints"):
        random_keep_mask((4, 2.0), 0.1, "cpu")


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
