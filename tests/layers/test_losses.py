"""The task losses (bridgetower.layers.losses) against explicit float64 formulas."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from bridgetower.layers.losses import (
    irtr_loss,
    itc_loss,
    itm_loss,
    mlm_loss,
    nlvr2_loss,
    snli_loss,
    vqa_loss,
)

V = 37


def _ce_rows(logits, targets):
    """Explicit mean over rows of -log softmax(logits)[target], in float64 Python arithmetic."""
    total = 0.0
    for row, t in zip(logits.double().tolist(), targets.tolist(), strict=True):
        m = max(row)
        lse = m + math.log(sum(math.exp(v - m) for v in row))
        total += lse - row[t]
    return total / len(targets)


def test_mlm_loss_formula_and_ignore_index():
    logits = torch.randn(2, 3, V)
    labels = torch.tensor([[5, -100, 7], [-100, -100, 36]])
    keep = labels.view(-1) != -100
    ref = _ce_rows(logits.view(-1, V)[keep], labels.view(-1)[keep])
    assert mlm_loss(logits, labels).item() == pytest.approx(ref, rel=1e-5)


def test_mlm_loss_no_masked_token_is_zero_with_grad():
    logits = torch.randn(2, 3, V, requires_grad=True)
    loss = mlm_loss(logits, torch.full((2, 3), -100))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.all(logits.grad == 0)


def test_itm_nlvr2_snli_losses_formula():
    for fn, c in ((itm_loss, 2), (nlvr2_loss, 2), (snli_loss, 3)):
        logits = torch.randn(5, c)
        labels = torch.randint(0, c, (5,))
        assert fn(logits, labels).item() == pytest.approx(_ce_rows(logits, labels), rel=1e-5)


def test_vqa_loss_formula():
    x = torch.randn(3, 11)
    t = torch.rand(3, 11) * (torch.rand(3, 11) > 0.6)
    sig = torch.sigmoid(x.double())
    bce = -(t * torch.log(sig) + (1 - t) * torch.log(1 - sig)).mean() * 11
    assert vqa_loss(x, t).item() == pytest.approx(bce.item(), rel=1e-5)


def _itc_ref(t, i, all_t, all_i, temp, labels):
    li2t = (i.double() @ all_t.double().T) / temp
    lt2i = (t.double() @ all_i.double().T) / temp
    return (_ce_rows(li2t, labels) + _ce_rows(lt2i, labels)) / 2


def test_itc_loss_with_gather_uses_rank_offset():
    b, e = 3, 6
    t = torch.nn.functional.normalize(torch.randn(b, e), dim=-1)
    i = torch.nn.functional.normalize(torch.randn(b, e), dim=-1)
    other_t = torch.nn.functional.normalize(torch.randn(b, e), dim=-1)
    other_i = torch.nn.functional.normalize(torch.randn(b, e), dim=-1)
    # simulated world of 2 ranks; we are rank 1
    gather = lambda x: torch.cat([other_t if x is t else other_i, x], dim=0)
    loss = itc_loss(t, i, 0.1, gather=gather, rank=1)
    ref = _itc_ref(t, i, torch.cat([other_t, t]), torch.cat([other_i, i]), 0.1, torch.arange(b) + b)
    assert loss.item() == pytest.approx(ref, rel=1e-5)
    with pytest.raises(ValueError, match="rank 2 out of range"):
        itc_loss(t, i, 0.1, gather=gather, rank=2)


def test_itc_soft_labels_equal_hard_when_one_hot():
    t = torch.nn.functional.normalize(torch.randn(3, 5), dim=-1)
    i = torch.nn.functional.normalize(torch.randn(3, 5), dim=-1)
    hard = itc_loss(t, i, 0.2)
    soft = itc_loss(t, i, 0.2, labels=torch.eye(3))
    torch.testing.assert_close(hard, soft)


def test_itc_loss_takes_the_rank_and_asks_no_process_group(monkeypatch):
    """The rank is an argument (default 0); torch.distributed is never consulted."""

    def no_dist(*a, **k):
        raise AssertionError("itc_loss consulted torch.distributed")

    monkeypatch.setattr(torch.distributed, "is_initialized", no_dist)
    monkeypatch.setattr(torch.distributed, "get_rank", no_dist)
    b, e = 2, 4
    t = torch.nn.functional.normalize(torch.randn(b, e), dim=-1)
    i = torch.nn.functional.normalize(torch.randn(b, e), dim=-1)
    gather = lambda x: torch.cat([x, torch.zeros_like(x)], dim=0)  # noqa: E731 - we are block 0
    loss = itc_loss(t, i, 0.1, gather=gather)
    ref = _itc_ref(t, i, torch.cat([t, torch.zeros_like(t)]), torch.cat([i, torch.zeros_like(i)]),
                   0.1, torch.arange(b))
    assert loss.item() == pytest.approx(ref, rel=1e-5)
    with pytest.raises(ValueError, match="rank must be an int >= 0, got -1"):
        itc_loss(t, i, 0.1, gather=gather, rank=-1)


def test_no_torch_distributed_in_layers():
    import bridgetower.layers as layers_pkg

    for path in Path(layers_pkg.__file__).parent.glob("*.py"):
        assert "torch.distributed" not in path.read_text(), path.name


def test_irtr_loss_formula_flat_and_grouped():
    scores = torch.randn(3, 4)  # 1 positive + 3 false texts
    ref = _ce_rows(scores, torch.zeros(3, dtype=torch.long))
    assert irtr_loss(scores).item() == pytest.approx(ref, rel=1e-5)
    assert irtr_loss(scores.reshape(-1), group_size=4).item() == pytest.approx(ref, rel=1e-5)


def test_bad_loss_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="labels must be"):
        itm_loss(torch.randn(4, 2), torch.zeros(3, dtype=torch.long))
    with pytest.raises(TypeError, match="integer"):
        itm_loss(torch.randn(4, 2), torch.zeros(4))
    with pytest.raises(ValueError, match="3 classes"):
        snli_loss(torch.randn(4, 2), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="shape of logits"):
        mlm_loss(torch.randn(2, 3, V), torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="num_answers"):
        vqa_loss(torch.randn(2, 5), torch.rand(2, 6))
    with pytest.raises(TypeError, match="soft scores"):
        vqa_loss(torch.randn(2, 5), torch.ones(2, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="group_size"):
        irtr_loss(torch.randn(7), group_size=4)
    with pytest.raises(ValueError, match="K >= 1"):
        irtr_loss(torch.randn(3, 1))
    with pytest.raises(ValueError, match="both be"):
        itc_loss(torch.randn(3, 4), torch.randn(2, 4), 0.1)
