"""Uni-modal fine-tuning: heads, losses, tower copies, save/load, learning-rate groups, and
short runs through the Trainer on the synthetic sets."""

from __future__ import annotations

import json
import math
import re

import pytest
import torch

from bridgetower.data import ImageTransform, SceneConfig
from bridgetower.data.downstream import build_downstream_tokenizer
from bridgetower.models import BridgeTowerForPretraining, create_model
from bridgetower.models.towers.vision import resize_pos_embed
from bridgetower.models.unimodal import (
    BridgeTowerForImageClassification,
    BridgeTowerForTextClassification,
    ImageClassificationHead,
    TextClassificationHead,
    classification_loss,
)
from bridgetower.training import BatchStream, Trainer, TrainerConfig, build_scheduler
from bridgetower.training.finetune import (
    OFFICIAL_RECIPES,
    SYNTHETIC_RECIPES,
    TaskEvaluator,
    get_task,
)
from bridgetower.training.unimodal import (
    ImageClassificationObjective,
    TextClassificationObjective,
    UniModalTaskSpec,
    build_unimodal_model,
    build_unimodal_optimizer,
)


@pytest.fixture(scope="module")
def tok():
    return build_downstream_tokenizer()


@pytest.fixture(scope="module")
def vl(tok):
    """A vision-language model (random weights stand in for a pretrained one)."""
    torch.manual_seed(0)
    return create_model("bridgetower-tiny", task="pretraining", **{"text.vocab_size": len(tok)}).eval()


# ------------------------------------------------------------------------------ heads, loss


def test_image_head_is_linear_on_the_feature():
    head = ImageClassificationHead(5, 3).double()
    assert head.fc.bias.abs().max() == 0 and 0.01 < head.fc.weight.std() < 0.04
    x = torch.randn(4, 5, dtype=torch.float64)
    w, b = head.fc.weight.detach(), head.fc.bias.detach()
    ref = torch.stack([torch.stack([sum(x[i, k] * w[c, k] for k in range(5)) + b[c] for c in range(3)]) for i in range(4)])
    torch.testing.assert_close(head(x), ref)


def test_text_head_is_roberta_classification_head():
    head = TextClassificationHead(6, 2, dropout=0.5).double().eval()
    with torch.no_grad():
        for lin in (head.dense, head.out_proj):
            lin.bias.normal_()
    x = torch.randn(3, 6, dtype=torch.float64)
    h = torch.tanh(x @ head.dense.weight.T + head.dense.bias)
    torch.testing.assert_close(head(x), h @ head.out_proj.weight.T + head.out_proj.bias)
    head.train()
    torch.manual_seed(1)
    assert not torch.allclose(head(x), head.eval()(x))  # dropout is active in training
    with pytest.raises(ValueError, match="dropout"):
        TextClassificationHead(6, 2, dropout=1.0)
    with pytest.raises(ValueError, match="num_labels"):
        TextClassificationHead(6, 0)


def test_losses_against_hand_computed_values():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 0.5]])
    labels = torch.tensor([0, 2])
    ce0 = -(2.0 - math.log(math.exp(2.0) + 1.0 + math.exp(-1.0)))
    ce1 = math.log(3.0)
    assert classification_loss(logits, labels).item() == pytest.approx((ce0 + ce1) / 2, rel=1e-6)
    reg = classification_loss(torch.tensor([[1.0], [3.0]]), torch.tensor([0.5, 1.0]))
    assert reg.item() == pytest.approx((0.25 + 4.0) / 2)
    with pytest.raises(ValueError, match="labels must be"):
        classification_loss(logits, torch.tensor([0]))
    with pytest.raises(TypeError, match="integers"):
        classification_loss(logits, torch.tensor([0.0, 1.0]))


# ------------------------------------------------------------------------------ models


def test_image_model_reads_ln_post_cls_of_the_last_layer(vl):
    model = BridgeTowerForImageClassification.from_bridgetower(vl, num_labels=3).eval()
    prefixes = {k.split(".")[0] for k in model.state_dict()}
    assert prefixes == {"vision_model", "image_classifier"}  # only the needed tower
    n_tower = sum(p.numel() for p in vl.bridgetower.vision_model.parameters())
    assert sum(p.numel() for p in model.parameters()) == n_tower + 128 * 3 + 3
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out = model(x, labels=torch.tensor([0, 2]))
        # independent path: run the open_clip blocks of the VL model by hand, then ln_post
        v = vl.bridgetower.vision_model.visual
        h = vl.bridgetower.vision_model.embed(x)
        for block in v.transformer.resblocks:
            h = block(h)
        cls = v.ln_post(h)[:, 0]
    torch.testing.assert_close(out.features, cls)
    torch.testing.assert_close(out.logits, cls @ model.image_classifier.fc.weight.T + model.image_classifier.fc.bias)
    assert out.loss.item() == pytest.approx(classification_loss(out.logits, torch.tensor([0, 2])).item())


def test_text_model_reads_cls_of_the_last_text_layer(vl, tok):
    model = BridgeTowerForTextClassification.from_bridgetower(vl, num_labels=2).eval()
    assert {k.split(".")[0] for k in model.state_dict()} == {"text_model", "text_classifier"}
    enc = tok(["a red circle on the left", "a blue square"], ["the red circle is on the left", "a blue square at the top"],
              padding=True, return_tensors="pt")
    with torch.no_grad():
        out = model(enc["input_ids"], enc["attention_mask"])
        hf = vl.bridgetower.text_model.model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
    torch.testing.assert_close(out.features, hf.last_hidden_state[:, 0])
    with pytest.raises(ValueError, match="input_ids"):
        model(enc["input_ids"].float())
    with pytest.raises(ValueError, match="attention_mask"):
        model(enc["input_ids"], enc["attention_mask"][:, :2])


def test_from_bridgetower_extends_vocab_and_resizes_positions(vl):
    text = BridgeTowerForTextClassification.from_bridgetower(vl, num_labels=2, vocab_size=vl.config.text.vocab_size + 5)
    src = vl.bridgetower.text_model.word_embeddings.weight
    dst = text.text_model.word_embeddings.weight
    assert dst.shape[0] == src.shape[0] + 5 and torch.equal(dst[: src.shape[0]], src)
    assert text.load_report["extended"]
    img = BridgeTowerForImageClassification.from_bridgetower(vl, num_labels=3, image_size=96)
    want = resize_pos_embed(vl.bridgetower.vision_model.visual.positional_embedding.detach(), (6, 6))
    torch.testing.assert_close(img.vision_model.visual.positional_embedding.detach(), want)
    assert img(torch.randn(1, 3, 96, 96)).logits.shape == (1, 3)
    with pytest.raises(ValueError, match="smaller"):
        BridgeTowerForTextClassification.from_bridgetower(vl, num_labels=2, vocab_size=10)
    with pytest.raises(TypeError, match="BridgeTowerModel"):
        BridgeTowerForImageClassification.from_bridgetower(torch.nn.Linear(2, 2), num_labels=2)


def test_save_and_load(vl, tmp_path):
    vl.save_pretrained(tmp_path / "vl")
    img = BridgeTowerForImageClassification.from_pretrained(tmp_path / "vl", num_labels=4).eval()
    torch.testing.assert_close(
        img.vision_model.visual.conv1.weight, vl.bridgetower.vision_model.visual.conv1.weight
    )
    img.save_pretrained(tmp_path / "img")
    meta = json.loads((tmp_path / "img" / "config.json").read_text())
    assert meta["task"].replace("_", "-") == "image-cls" and meta["num_labels"] == 4
    again = BridgeTowerForImageClassification.from_pretrained(tmp_path / "img").eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(again(x).logits, img(x).logits, rtol=0, atol=0)
    text = BridgeTowerForTextClassification.from_pretrained(vl, num_labels=1, **{"text.vocab_size": vl.config.text.vocab_size + 2})
    text.save_pretrained(tmp_path / "txt")
    loaded = BridgeTowerForTextClassification.from_pretrained(tmp_path / "txt")
    assert loaded.num_labels == 1 and loaded.config.text.vocab_size == vl.config.text.vocab_size + 2
    for a, b in zip(loaded.state_dict().values(), text.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="num_labels is required"):
        BridgeTowerForImageClassification.from_pretrained(tmp_path / "vl")
    with pytest.raises(ValueError, match="4-label"):
        BridgeTowerForImageClassification.from_pretrained(tmp_path / "img", num_labels=5)
    with pytest.raises(ValueError, match="no vision tower"):
        BridgeTowerForImageClassification.from_pretrained(tmp_path / "txt", num_labels=2)
    with pytest.raises(ValueError, match="only format"):
        img.save_pretrained(tmp_path / "hf", format="hf")


# ------------------------------------------------------------------------------ optimizer


def test_learning_rate_groups_head_vs_tower(vl):
    model = BridgeTowerForTextClassification.from_bridgetower(vl, num_labels=2)
    recipe = SYNTHETIC_RECIPES["text-cls"].replace(lr=1e-3, head_lr_mult=7.0, weight_decay=0.05)
    opt = build_unimodal_optimizer(model, recipe)
    lr_of = {name: g["lr"] for g in opt.param_groups for name in g["names"]}
    wd_of = {name: g["weight_decay"] for g in opt.param_groups for name in g["names"]}
    assert set(lr_of) == {n for n, _ in model.named_parameters()}
    for name in lr_of:
        want = 7e-3 if name.startswith("text_classifier.") else 1e-3
        assert lr_of[name] == pytest.approx(want), name
    assert wd_of["text_classifier.dense.weight"] == 0.05 and wd_of["text_classifier.dense.bias"] == 0.0
    assert wd_of["text_model.model.embeddings.LayerNorm.weight"] == 0.0
    # the scheduler scales both groups alike: after one step of warm-up 0 the ratio stays 7
    sched = build_scheduler(opt, total_steps=10, warmup=0)
    opt.step()
    sched.step()
    ratios = {g["lr"] / recipe.lr / g["lr_multiplier"] for g in opt.param_groups}
    assert len(ratios) == 1


# ------------------------------------------------------------------------------ tasks and runs


def test_tasks_registered_with_recipes():
    for name, n in (("image-cls", 3), ("image-cls-colour", 6), ("text-cls", 2), ("text-cls-pair", 2)):
        spec = get_task(name)
        assert isinstance(spec, UniModalTaskSpec) and spec.num_labels == n
        assert name in OFFICIAL_RECIPES and name in SYNTHETIC_RECIPES
    assert OFFICIAL_RECIPES["image-cls"].lr == 2e-5 and OFFICIAL_RECIPES["image-cls"].image_size == 224
    assert OFFICIAL_RECIPES["text-cls"].weight_decay == 0.1 and OFFICIAL_RECIPES["text-cls"].eps == 1e-6


def test_objectives_validate_batches(vl):
    model = BridgeTowerForTextClassification.from_bridgetower(vl, num_labels=2)
    with pytest.raises(ValueError, match="lacks"):
        TextClassificationObjective()(model, {"input_ids": torch.zeros(1, 3, dtype=torch.long)})
    batch = {"input_ids": torch.zeros(2, 3, dtype=torch.long), "attention_mask": torch.ones(2, 3), "labels": torch.zeros(2)}
    with pytest.raises(ValueError, match="one output"):
        TextClassificationObjective(regression=True)(model, batch)
    with pytest.raises(TypeError, match="dict"):
        ImageClassificationObjective()(model, [1, 2])


def _run(task, vl, tok, out_dir, *, steps, lr, eval_size=0, batch_size=32):
    """A short run of a registered task through the Trainer, as `finetune` builds it."""
    spec = get_task(task)
    model, report = spec.build_model(pretrained=vl, vocab_size=len(tok))
    recipe = SYNTHETIC_RECIPES[task].replace(lr=lr, steps=steps, batch_size=batch_size, warmup=0.1)
    kw = {"transform": ImageTransform(64), "tokenizer": tok, "max_length": 50, "recipe": recipe,
          "config": SceneConfig(image_size=64)}
    collate = spec.collate(tok, 50, recipe)
    stream = BatchStream(spec.synthetic(4096, seed=0, **kw), collate, batch_size, seed=0)
    opt = build_unimodal_optimizer(model, recipe)
    cfg = TrainerConfig(output_dir=out_dir, max_steps=steps, max_grad_norm=recipe.clip, log_every=max(1, steps // 3),
                        progress=False, plot=False)
    trainer = Trainer(model, spec.objective(), opt, stream, cfg, scheduler=build_scheduler(opt, total_steps=steps, warmup=0.1),
                      extra_save=lambda d: tok.save_pretrained(str(d)))
    trainer.train()
    acc = None
    if eval_size:
        held_out = spec.synthetic(eval_size, seed=1_000_003, **kw)
        batches = [collate([held_out[i] for i in range(j, min(j + 64, eval_size))]) for j in range(0, eval_size, 64)]
        acc = TaskEvaluator(spec.objective(), batches)(model)["accuracy"] if task.startswith("image") else None
        if acc is None:  # the evaluator sizes batches by their images; text batches are averaged here
            obj = spec.objective()
            model.eval()
            with torch.no_grad():
                acc = sum(float(obj(model, b)[1]["accuracy"]) * b["labels"].numel() for b in batches) / eval_size
    return trainer, model, report, acc


@pytest.mark.parametrize("task", ["image-cls", "text-cls-pair"])
def test_short_finetune_writes_checkpoint_and_log(task, vl, tok, tmp_path):
    trainer, model, report, _ = _run(task, vl, tok, tmp_path, steps=3, lr=1e-4, batch_size=8)
    assert len(report["copied"]) > 10 and report["pretrained"] == "BridgeTowerForPretraining"
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["split"] == "train"] == [1, 2, 3]
    assert all(math.isfinite(r["loss"]) and 0 <= r["accuracy"] <= 1 for r in records)
    assert (tmp_path / "metrics.csv").is_file()
    assert any((tmp_path / "checkpoints").iterdir())
    cls = type(model)
    loaded = cls.from_pretrained(tmp_path / "model").eval()
    model.eval()
    for a, b in zip(loaded.state_dict().values(), model.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_vision_tower_learns_colour(vl, tok, tmp_path):
    _, _, _, acc = _run("image-cls-colour", vl, tok, tmp_path, steps=30, lr=1e-3, eval_size=192)
    assert acc > 0.35  # chance: 1/6


def test_text_tower_learns_mentions(vl, tok, tmp_path):
    _, _, _, acc = _run("text-cls", vl, tok, tmp_path, steps=30, lr=1e-3, eval_size=192)
    assert acc > 0.62  # chance: 1/2


def test_build_from_scratch_and_errors():
    model, report = build_unimodal_model(BridgeTowerForImageClassification, 3, config="bridgetower-tiny", image_size=32)
    assert report["pretrained"] is None and model.config.vision.image_size == 32
    with pytest.raises(ValueError, match="config"):
        build_unimodal_model(BridgeTowerForImageClassification, 3)
    with pytest.raises(TypeError, match="BridgeTowerConfig"):
        build_unimodal_model(BridgeTowerForImageClassification, 3, config=3)


def test_from_pretrained_run_directory(vl, tmp_path):
    # a `bridgetower pretrain` output dir: the model lives in model/
    vl.save_pretrained(tmp_path / "run" / "model")
    model, report = build_unimodal_model(BridgeTowerForTextClassification, 2, pretrained=tmp_path / "run")
    assert report["pretrained"] == str(tmp_path / "run")
    assert torch.equal(model.text_model.word_embeddings.weight, vl.bridgetower.text_model.word_embeddings.weight)
    assert isinstance(vl, BridgeTowerForPretraining)


def test_features_match_the_official_towers():
    """Loaded from the official tiny checkpoint, the classifiers read exactly what the official
    code computes: CLIP's ln_post CLS of the last layer, RoBERTa's last-layer <s> token."""
    from pathlib import Path

    from safetensors.torch import load_file

    root = Path(__file__).resolve().parents[1] / "data" / "official"
    inputs, outputs = load_file(str(root / "inputs.safetensors")), load_file(str(root / "outputs.safetensors"))
    img = BridgeTowerForImageClassification.from_pretrained(root / "BridgeTower_tiny_random.ckpt", num_labels=10).eval()
    txt = BridgeTowerForTextClassification.from_pretrained(root / "BridgeTower_tiny_random.ckpt", num_labels=2).eval()
    with torch.no_grad():
        image_cls = img(inputs["pixel_values"]).features
        text_cls = txt(inputs["text_ids"], inputs["text_masks"]).features
    torch.testing.assert_close(image_cls, outputs["vision_ln_post_all_layers"][-1][:, 0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(text_cls, outputs["text_layer_outputs"][-1][:, 0], rtol=1e-4, atol=1e-5)


def test_from_pretrained_returns_eval_mode(vl, tmp_path):
    model = BridgeTowerForTextClassification.from_pretrained(vl, num_labels=2)
    assert not model.training and not any(m.training for m in model.modules())
    model.train().save_pretrained(tmp_path)
    assert not BridgeTowerForTextClassification.from_pretrained(tmp_path).training
    assert BridgeTowerForTextClassification.from_bridgetower(vl, num_labels=2).training  # a new model: train mode


# ------------------------------------------------------------------------------ finetune / CLI


def test_finetune_api_runs_text_pair_task_with_evaluator(vl, tmp_path):
    from bridgetower.training.finetune import finetune

    recipe = SYNTHETIC_RECIPES["text-cls-pair"].replace(steps=2, batch_size=8)
    summary = finetune("text-cls-pair", tmp_path, pretrained=vl, recipe=recipe, train_size=32, eval_size=16,
                       log_every=1, progress=False)
    assert summary["metric"] == "accuracy" and summary["steps"] == 2
    assert set(summary["before"]) == {"loss", "accuracy"} and set(summary["after"]) == {"loss", "accuracy"}
    model = BridgeTowerForTextClassification.from_pretrained(tmp_path / "model")
    assert model.num_labels == 2 and (tmp_path / "model" / "tokenizer.json").is_file()
    run = json.loads((tmp_path / "run_config.json").read_text())
    assert run["task"] == "text-cls-pair" and run["load"]["copied"] > 10


def test_cli_finetune_image_task(vl, tok, tmp_path, capsys, caplog):
    import argparse
    import logging

    from bridgetower.cli import add_parsers

    vl.save_pretrained(tmp_path / "vl" / "model")
    tok.save_pretrained(str(tmp_path / "vl" / "model"))
    parser = argparse.ArgumentParser(prog="bridgetower")
    add_parsers(parser.add_subparsers(dest="command"))
    args = parser.parse_args([
        "finetune", "image-cls-colour", "--pretrained", str(tmp_path / "vl"), "--steps", "2", "--batch-size", "8",
        "--train-size", "32", "--eval-size", "16", "--log-every", "1", "--output-dir", str(tmp_path / "out"),
        "--device", "cpu", "--progress", "off", "--json", "--lr", "1e-4", "--head-lr-mult", "3",
        "--tracker", "tensorboard",
    ])
    with caplog.at_level(logging.INFO, logger="bridgetower"):
        assert args.handler(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["task"] == "image-cls-colour" and summary["steps"] == 2
    assert re.search(r"lr x3 \([^)]*0\.0003\), weight decay [\d.]+: 1 tensors, 768 parameters", caplog.text)  # the head: 128 x 6
    assert re.search(r"lr x1 \([^)]*0\.0001\)", caplog.text)  # the tower
    records = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["split"] == "train"] == [1, 2]
    assert BridgeTowerForImageClassification.from_pretrained(tmp_path / "out" / "model").num_labels == 6
    assert list((tmp_path / "out" / "tensorboard").glob("events.out.tfevents.*"))  # --tracker tensorboard
