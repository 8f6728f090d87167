"""What the model entry points refuse (issue 19), each with an error naming the argument and the
limit, and that the limits are exact: the longest text the position table holds runs, and gives
``transformers``' result."""

from __future__ import annotations

import pytest
import torch
import transformers
from hf_reference import batch, hf_config, perturbed  # tests/models/hf_reference.py

from bridgetower.models import BridgeTowerForImageAndTextRetrieval


@pytest.fixture(scope="module")
def models():
    hf = perturbed(transformers.BridgeTowerForImageAndTextRetrieval, hf_config())  # vocab 99, 40 positions
    return hf, BridgeTowerForImageAndTextRetrieval.from_pretrained(hf)


def test_the_longest_text_the_position_table_holds_runs_as_in_transformers(models):
    hf, ours = models
    ids, mask, px = batch(length=38)  # RoBERTa positions start after the padding id: 40 - 1 - 1
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask, pixel_values=px).logits
        assert (ours(ids, mask, px).logits - ref).abs().max() < 1e-4
    long_ids, long_mask, _ = batch(length=39)
    with pytest.raises(ValueError, match=r"input_ids has 39 tokens, more than the 38 .*max_position_embeddings=40"):
        ours(long_ids, long_mask, px)
    with pytest.raises(ValueError, match="more than the 38"):
        ours.score(px, long_ids, long_mask)


@pytest.mark.parametrize(
    "change, error, message",
    [
        (lambda ids, mask, px: (ids[:0], mask[:0], px[:0]), ValueError, r"input_ids is an empty batch \(B = 0\)"),
        (lambda ids, mask, px: (ids[:, :0], mask[:, :0], px), ValueError, r"input_ids has no tokens \(L = 0\)"),
        (lambda ids, mask, px: (ids, mask * torch.tensor([[1], [0], [1]]), px), ValueError,
         r"attention_mask is all zeros for text\(s\) \[1\]"),
        (lambda ids, mask, px: (ids + 90, mask, px), ValueError, r"outside the vocabulary \[0, 99\) \(vocab_size\)"),
        (lambda ids, mask, px: (ids - 5, mask, px), ValueError, r"id -5, outside the vocabulary"),
        (lambda ids, mask, px: (ids, mask, (px * 255).clamp(0, 255).to(torch.uint8)), TypeError,
         r"pixel_values must be floating point .* got torch.uint8"),
        (lambda ids, mask, px: (ids, mask, px[:, :, :8]), ValueError, r"image size 8x32 is smaller than one patch"),
    ],
)
def test_entry_points_refuse_bad_inputs(models, change, error, message):
    _, ours = models
    ids, mask, px = change(*batch())
    with pytest.raises(error, match=message):
        ours(ids, mask, px)
    if px.shape[0] and ids.shape[0]:
        with pytest.raises(error, match=message):
            ours.score(px, ids, mask)  # the scoring path checks the same


def test_downstream_entry_points_check_their_own_arguments():
    from bridgetower.models import create_model

    ids, mask, px = batch(vocab=60)
    nlvr2 = create_model("bridgetower-tiny", task="nlvr2", fusion={"num_layers": 2}).eval()
    with pytest.raises(ValueError, match=r"batch sizes differ: input_ids \(3, 10\) and each image \(2, 3, 32, 32\)"):
        nlvr2(ids, mask, px[:2], pixel_values_2=px[:2])
    with pytest.raises(TypeError, match="pixel_values_2 must be a tensor, got list"):
        nlvr2(ids, mask, px, pixel_values_2=px.tolist())
    with pytest.raises(TypeError, match="pixel_values must be floating point"):
        nlvr2(ids, mask, px, pixel_values_2=px.to(torch.uint8))
    irtr = create_model("bridgetower-tiny", task="irtr", fusion={"num_layers": 2}).eval()
    with pytest.raises(ValueError, match=r"attention_mask must have the shape of input_ids \(3, 1, 10\)"):
        irtr(ids[:, None], mask[:, None, :4], px)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        irtr(ids[:, None] + 60, mask[:, None], px)
