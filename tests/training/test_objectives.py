"""Pretraining objectives against hand-computed losses, and the demo's text-side negatives."""

from __future__ import annotations

import math

import pytest
import torch

from bridgetower.data import PretrainingCollator, SyntheticSceneDataset, build_scene_tokenizer
from bridgetower.data.transforms import ImageTransform
from bridgetower.models import create_model
from bridgetower.training.demo import SceneTextNegatives
from bridgetower.training.objectives import PretrainingObjective


@pytest.fixture(scope="module")
def setup():
    tok = build_scene_tokenizer()
    torch.manual_seed(0)
    model = create_model("bridgetower-tiny", task="pretraining", **{"text.vocab_size": len(tok)})
    ds = SyntheticSceneDataset(64, seed=5, transform=ImageTransform(64), tokenizer=tok)
    collator = PretrainingCollator.from_tokenizer(tok, mlm_probability=0.3)
    return tok, model, ds, collator


def _ce(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean cross-entropy in float64, by the formula."""
    logits = logits.double()
    total, n = 0.0, 0
    for row, y in zip(logits, labels.tolist(), strict=False):
        if y == -100:
            continue
        total += float(torch.logsumexp(row, 0) - row[y])
        n += 1
    return total / n


def test_objective_equals_hand_computed_weighted_sum(setup):
    tok, model, ds, collator = setup
    batch = collator([ds[i] for i in range(6)], generator=torch.Generator().manual_seed(1))
    assert (batch["itm_labels"] == 0).any() and (batch["itm_labels"] == 1).any()
    assert (batch["mlm_labels"] != -100).any()
    obj = PretrainingObjective(mlm_weight=0.7, itm_weight=1.3, itc_weight=0.5)
    loss, metrics = obj(model, batch)

    with torch.no_grad():
        am, px = batch["attention_mask"], batch["pixel_values"]
        mlm_out = model(batch["mlm_input_ids"], am, px)
        labels = batch["mlm_labels"]
        mlm = _ce(mlm_out.mlm_logits.reshape(-1, len(tok)), labels.reshape(-1))
        itm_out = model(batch["input_ids"], am, px[batch["itm_image_index"]])
        itm = _ce(itm_out.itm_logits, batch["itm_labels"])
        clean = model(batch["input_ids"], am, px)
        t, i = clean.itc_text_embeds.double(), clean.itc_image_embeds.double()
        sim = i @ t.t() / float(clean.itc_temperature)
        diag = torch.arange(len(t))
        itc = 0.5 * (_ce(sim, diag) + _ce(sim.t(), diag))
    assert metrics["loss_mlm"].item() == pytest.approx(mlm, rel=1e-4)
    assert metrics["loss_itm"].item() == pytest.approx(itm, rel=1e-4)
    assert metrics["loss_itc"].item() == pytest.approx(itc, rel=1e-4)
    assert loss.item() == pytest.approx(0.7 * mlm + 1.3 * itm + 0.5 * itc, rel=1e-4)
    want_acc = (itm_out.itm_logits.argmax(-1) == batch["itm_labels"]).float().mean().item()
    assert metrics["acc_itm"].item() == pytest.approx(want_acc)
    sel = labels != -100
    want_mlm_acc = ((mlm_out.mlm_logits.argmax(-1) == labels) & sel).sum().item() / sel.sum().item()
    assert metrics["acc_mlm"].item() == pytest.approx(want_mlm_acc)


def test_zero_weight_skips_objective_and_its_keys(setup):
    tok, model, ds, collator = setup
    batch = collator([ds[i] for i in range(4)], generator=torch.Generator().manual_seed(2))
    for key in ("mlm_input_ids", "mlm_labels"):
        batch.pop(key)
    loss, metrics = PretrainingObjective(mlm_weight=0.0)(model, batch)
    assert set(metrics) == {"loss_itm", "acc_itm"}
    assert loss.item() == pytest.approx(metrics["loss_itm"].item())
    with pytest.raises(ValueError, match="mlm_input_ids"):
        PretrainingObjective()(model, batch)


@pytest.mark.parametrize("kw", [{"mlm_weight": -1.0}, {"mlm_weight": 0, "itm_weight": 0, "itc_weight": 0}])
def test_bad_weights(kw):
    with pytest.raises(ValueError, match="weight"):
        PretrainingObjective(**kw)


def test_scene_text_negatives_alter_exactly_the_chosen_rows(setup):
    tok, model, ds, collator = setup
    wrap = SceneTextNegatives(collator, tok, fraction=1.0)
    samples = [ds[i] for i in range(16)]
    batch = wrap(samples, generator=torch.Generator().manual_seed(3))
    neg = batch["itm_labels"] == 0
    assert neg.sum() == 8
    changed = (batch["itm_input_ids"] != batch["input_ids"]).any(1)
    own = batch["itm_image_index"] == torch.arange(16)
    # every negative became a text-side negative with its own image; positives untouched
    assert torch.equal(changed, neg) and own.all()
    for r in torch.nonzero(neg).squeeze(1).tolist():
        n = int(batch["attention_mask"][r].sum())
        a = batch["input_ids"][r, :n].tolist()
        b = batch["itm_input_ids"][r, :n].tolist()
        diff = sum(x != y for x, y in zip(a, b, strict=False))
        assert 1 <= diff <= 2  # one colour / one shape word, or two position words swapped
    # reproducible from the generator
    again = wrap(samples, generator=torch.Generator().manual_seed(3))
    assert torch.equal(again["itm_input_ids"], batch["itm_input_ids"])
    # fraction 0 leaves the random negatives
    plain = SceneTextNegatives(collator, tok, fraction=0.0)(samples, generator=torch.Generator().manual_seed(3))
    assert torch.equal(plain["itm_input_ids"], plain["input_ids"])
    with pytest.raises(ValueError, match="attributes"):
        SceneTextNegatives(collator, tok, attributes={"size": 1.0})


def test_demo_learning_smoke(setup):
    """A few demo-recipe steps on synthetic scenes: the loss goes down."""
    from bridgetower.data import scene_attribute_token_ids
    from bridgetower.training import BatchStream, Trainer, TrainerConfig, build_optimizer

    tok, _, ds, _ = setup
    torch.manual_seed(0)
    model = create_model("bridgetower-tiny", task="pretraining", **{"text.vocab_size": len(tok)})
    ids = scene_attribute_token_ids(tok)
    collator = PretrainingCollator.from_tokenizer(
        tok, boost_token_ids=ids["colour"] + ids["shape"], boost_probability=0.5
    )
    stream = BatchStream(ds, SceneTextNegatives(collator, tok), 16, seed=0)
    opt = build_optimizer(model, lr=1e-3)
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        cfg = TrainerConfig(output_dir=d, max_steps=12, log_every=1, progress=False, plot=False)
        tr = Trainer(model, PretrainingObjective(), opt, stream, cfg)
        records = tr.train()
    losses = [r["loss"] for r in records]
    assert all(math.isfinite(v) for v in losses)
    assert sum(losses[-3:]) / 3 < 0.8 * sum(losses[:3]) / 3, losses
