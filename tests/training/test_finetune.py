"""Fine-tuning objectives (hand-computed losses), the task registry, pretrained-encoder loading."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from bridgetower.models import (
    BridgeTowerForIRTR,
    BridgeTowerForNLVR2,
    BridgeTowerForPretraining,
    BridgeTowerForSNLIVE,
    BridgeTowerForVisualQuestionAnswering,
    get_config,
)
from bridgetower.training.finetune import (
    OFFICIAL_RECIPES,
    TASKS,
    IRTRObjective,
    NLVR2Objective,
    SNLIVEObjective,
    TaskSpec,
    VQAObjective,
    build_task_model,
    get_task,
    register_task,
)


class _Fixed(nn.Module):
    """Returns fixed logits and records what it was called with."""

    def __init__(self, logits):
        super().__init__()
        self.logits = torch.tensor(logits, dtype=torch.float64)
        self.calls = []

    def forward(self, *args, **kwargs):
        self.calls.append((args, kwargs))
        return SimpleNamespace(logits=self.logits)


def _batch(b, **extra):
    return {"input_ids": torch.zeros(b, 3, dtype=torch.long), "attention_mask": torch.ones(b, 3, dtype=torch.long),
            "pixel_values": torch.zeros(b, 3, 8, 8), **extra}


def _bce(x, y):
    return max(x, 0.0) - x * y + math.log1p(math.exp(-abs(x)))


def _ce(row, label):
    return math.log(sum(math.exp(v) for v in row)) - row[label]


def test_vqa_objective_is_bce_times_num_answers():
    logits = [[2.0, -1.0, 0.5], [0.0, 3.0, -2.0]]
    targets = [[1.0, 0.3, 0.0], [0.0, 0.6, 0.9]]
    model = _Fixed(logits)
    loss, metrics = VQAObjective()(model, _batch(2, targets=torch.tensor(targets, dtype=torch.float64)))
    # mean over the 6 entries, times 3 answers = sum / 2
    expect = sum(_bce(x, y) for lr, tr in zip(logits, targets, strict=True) for x, y in zip(lr, tr, strict=True)) / 6 * 3
    assert float(loss) == pytest.approx(expect, rel=1e-6)
    # predicted answers 0 and 1 score 1.0 and 0.6
    assert float(metrics["vqa_score"]) == pytest.approx((1.0 + 0.6) / 2)
    args, _ = model.calls[0]
    assert args[0].shape == (2, 3) and args[2].shape == (2, 3, 8, 8)


def test_nlvr2_objective_is_ce_and_passes_the_second_image():
    logits = [[0.3, -0.2], [1.5, 2.5], [-1.0, 0.0]]
    labels = [0, 0, 1]
    model = _Fixed(logits)
    second = torch.ones(3, 3, 8, 8)
    loss, metrics = NLVR2Objective()(model, _batch(3, labels=torch.tensor(labels), pixel_values_2=second))
    assert float(loss) == pytest.approx(sum(_ce(r, y) for r, y in zip(logits, labels, strict=True)) / 3, rel=1e-6)
    assert float(metrics["accuracy"]) == pytest.approx(2 / 3)
    assert model.calls[0][1]["pixel_values_2"] is second
    with pytest.raises(ValueError, match="pixel_values_2"):
        NLVR2Objective()(model, _batch(3, labels=torch.tensor(labels)))


def test_nlvr2_objective_gives_each_image_its_own_mask():
    model = _Fixed([[0.0, 1.0]])
    mask, mask_2 = torch.ones(1, 8, 8, dtype=torch.long), torch.zeros(1, 8, 8, dtype=torch.long)
    batch = _batch(1, labels=torch.tensor([1]), pixel_values_2=torch.ones(1, 3, 8, 8), pixel_mask=mask,
                   pixel_mask_2=mask_2)
    NLVR2Objective()(model, batch)
    args, kwargs = model.calls[0]
    assert args[3] is mask and kwargs["pixel_mask_2"] is mask_2
    NLVR2Objective()(model, _batch(1, labels=torch.tensor([1]), pixel_values_2=torch.ones(1, 3, 8, 8)))
    assert model.calls[1][1]["pixel_mask_2"] is None


def test_snli_ve_objective_is_three_way_ce():
    logits = [[0.1, 0.2, 0.3], [2.0, -1.0, 0.0]]
    labels = [2, 1]
    loss, metrics = SNLIVEObjective()(_Fixed(logits), _batch(2, labels=torch.tensor(labels)))
    assert float(loss) == pytest.approx((_ce(logits[0], 2) + _ce(logits[1], 1)) / 2, rel=1e-6)
    assert float(metrics["accuracy"]) == 0.5


def test_irtr_objective_is_group_ce_with_the_true_text_first():
    logits = [[1.0, 0.0, -1.0, 0.5], [0.0, 2.0, 0.0, 0.0]]
    loss, metrics = IRTRObjective()(_Fixed(logits), _batch(2))
    assert float(loss) == pytest.approx((_ce(logits[0], 0) + _ce(logits[1], 0)) / 2, rel=1e-6)
    assert float(metrics["accuracy"]) == 0.5


@pytest.fixture(scope="module")
def tiny():
    return get_config("bridgetower-tiny").replace(
        **{"text.vocab_size": 30, "vision.layers": 2, "text.num_layers": 2, "itc_dim": 16}
    )


def _inputs(b, length=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 30, (b, length), generator=g)
    return ids, torch.ones_like(ids), torch.randn(b, 3, 64, 64, generator=g)


@pytest.mark.parametrize(
    "cls,objective,extra",
    [
        (BridgeTowerForVisualQuestionAnswering, VQAObjective,
         lambda b: {"targets": torch.rand(b, 16, generator=torch.Generator().manual_seed(1))}),
        (BridgeTowerForSNLIVE, SNLIVEObjective, lambda b: {"labels": torch.tensor([0, 1, 2])}),
        (BridgeTowerForNLVR2, NLVR2Objective,
         lambda b: {"labels": torch.tensor([1, 0, 1]), "pixel_values_2": torch.randn(b, 3, 64, 64)}),
    ],
)
def test_objective_matches_the_task_model_loss(tiny, cls, objective, extra):
    torch.manual_seed(0)
    model = cls(tiny).eval()
    ids, mask, px = _inputs(3)
    batch = {"input_ids": ids, "attention_mask": mask, "pixel_values": px, **extra(3)}
    loss, _ = objective()(model, batch)
    labels = batch.get("targets", batch.get("labels"))
    kw = {"pixel_values_2": batch["pixel_values_2"]} if "pixel_values_2" in batch else {}
    ref = model(ids, mask, px, labels=labels, **kw).loss
    torch.testing.assert_close(loss, ref)


def test_irtr_objective_matches_the_model_loss(tiny):
    torch.manual_seed(0)
    model = BridgeTowerForIRTR(tiny).eval()
    ids, mask, px = _inputs(6)
    batch = {"input_ids": ids.view(2, 3, 5), "attention_mask": mask.view(2, 3, 5), "pixel_values": px[:2]}
    loss, _ = IRTRObjective()(model, batch)
    torch.testing.assert_close(loss, model(batch["input_ids"], batch["attention_mask"], px[:2], labels=True).loss)


def test_registry():
    assert {"vqa", "nlvr2", "snli-ve", "irtr", "image-cls", "text-cls-pair"} <= set(TASKS)
    assert all("_" not in name for name in TASKS) and set(TASKS) <= set(OFFICIAL_RECIPES)
    assert get_task("snli_ve") is TASKS["snli-ve"]
    bad = TaskSpec("snli_ve2", BridgeTowerForSNLIVE, SNLIVEObjective, synthetic=None, arrow=None, collate=lambda *a: None)
    with pytest.raises(ValueError, match="hyphens"):
        register_task(bad)
    with pytest.raises(ValueError, match="registered tasks"):
        get_task("captioning")
    with pytest.raises(ValueError, match="already registered"):
        register_task(TASKS["vqa"])
    spec = TaskSpec("toy-cls", BridgeTowerForSNLIVE, SNLIVEObjective, synthetic=None, arrow=None,
                    collate=lambda *a: None, description="a test task")
    try:
        assert register_task(spec) is get_task("toy-cls")
    finally:
        TASKS.pop("toy-cls")
    assert OFFICIAL_RECIPES["vqa"].head_lr_mult == 50 and OFFICIAL_RECIPES["nlvr2"].lr == 5e-6
    with pytest.raises(ValueError, match="unknown recipe fields"):
        OFFICIAL_RECIPES["vqa"].replace(learning_rate=1.0)


def test_pretrained_encoder_is_copied_and_adapted(tiny):
    torch.manual_seed(0)
    source = BridgeTowerForPretraining(tiny).eval()
    src = source.bridgetower.state_dict()

    nlvr2, report = build_task_model("nlvr2", pretrained=source, vocab_size=34)
    dst = nlvr2.bridgetower.state_dict()
    words = "text_model.model.embeddings.word_embeddings.weight"
    torch.testing.assert_close(dst[words][:30], src[words], rtol=0, atol=0)
    assert dst[words].shape[0] == 34
    tt = dst["token_type_embeddings.weight"]
    torch.testing.assert_close(tt[:2], src["token_type_embeddings.weight"], rtol=0, atol=0)
    torch.testing.assert_close(tt[2], tt[1], rtol=0, atol=0)
    for key in ("fusion.text_layers.0.self_attn.query.weight", "cross_modal_image_transform.weight"):
        torch.testing.assert_close(dst[key], src[key], rtol=0, atol=0)
    assert len(report["extended"]) == 2 and any("row 2 = row 1" in e for e in report["extended"])
    assert set(report) == {"pretrained", "copied", "extended", "head"} and len(report["copied"]) >= len(dst) - 2

    irtr, _ = build_task_model("irtr", pretrained=source)
    torch.testing.assert_close(irtr.rank_output.fc.weight, source.itm_score.fc.weight[1:2], rtol=0, atol=0)
    torch.testing.assert_close(irtr.rank_output.fc.bias, source.itm_score.fc.bias[1:2], rtol=0, atol=0)

    with pytest.raises(ValueError, match="smaller than the pretrained vocabulary"):
        build_task_model("vqa", pretrained=source, vocab_size=10)
    with pytest.raises(ValueError, match="pretrained checkpoint or a config"):
        build_task_model("vqa")
    scratch, report = build_task_model("vqa", config=tiny, num_answers=7)
    assert scratch.vqa_classifier.num_answers == 7 and report["pretrained"] is None
