"""The all-pairs scoring entry point refuses zero images or zero texts, naming the argument
(issue 19; the forward entry points are covered by test_model_inputs.py)."""

from __future__ import annotations

import pytest
import torch

from bridgetower.models import create_model


def test_score_refuses_zero_texts_and_zero_images():
    model = create_model("bridgetower-tiny", task="itm", fusion={"num_layers": 2}).eval()
    px = torch.randn(2, 3, 32, 32)
    ids = torch.randint(5, 50, (3, 6))
    mask = torch.ones_like(ids)
    assert model.score(px, ids, mask).shape == (2, 3)
    with pytest.raises(ValueError, match=r"input_ids is an empty batch \(B = 0\)"):
        model.score(px, ids[:0], mask[:0])
    with pytest.raises(ValueError, match=r"pixel_values is an empty batch \(B = 0\)"):
        model.score(px[:0], ids, mask)
    with pytest.raises(ValueError, match=r"attention_mask is all zeros for text\(s\) \[1\]"):
        model.score(px, ids, mask * torch.tensor([[1], [0], [1]]))
