"""random_keep_mask: the rate in every 16-bit lane, independence, extreme rates, errors."""

from __future__ import annotations

import pytest
import torch

from bridgetower.kernels import random_keep_mask


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
