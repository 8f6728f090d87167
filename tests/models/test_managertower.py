"""ManagerTower: the official converter against the official code's own outputs (the default
model, every manager variant and the per-manager intermediates), the configs, the task models,
the training-only noise, our checkpoint format.

The reference data lives in ``tests/data/managertower`` (see its README.txt).  Its
``state_dict.safetensors`` is not copied (the ``.ckpt`` holds the same tensors); the tests
that need a safetensors state dict derive it from the ``.ckpt``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from bridgetower.layers.manager import AdaptiveManager, Manager, StaticManager
from bridgetower.models import (
    BridgeTowerConfig,
    BridgeTowerForPretraining,
    BridgeTowerModel,
    ManagerConfig,
    ManagerTowerModel,
    create_model,
    get_config,
    list_models,
)
from bridgetower.models.convert import load_official_checkpoint
from bridgetower.models.managertower_convert import convert_official_managertower_state_dict

DATA = Path(__file__).resolve().parents[1] / "data" / "managertower"
CKPT = DATA / "ManagerTower_tiny_random.ckpt"
VARIANTS = ["SAUE_vector", "AAUE_scalar", "SAUE_scalar"]
MAIN = ("text_feats", "image_feats", "cls_feats", "itm_logits", "mlm_logits")


@pytest.fixture(scope="module")
def official_state_dict() -> dict[str, torch.Tensor]:
    return torch.load(CKPT, map_location="cpu", weights_only=True)["state_dict"]


@pytest.fixture(scope="module")
def inputs() -> dict[str, torch.Tensor]:
    return load_file(str(DATA / "inputs.safetensors"))


def _run_recording(model, inputs):
    """One eval forward; records every manager's inputs (its routing) and output."""
    calls: dict[str, tuple] = {}

    def hook(name):
        def record(module, args, kwargs, output):
            calls[name] = (module, args, output)
        return record

    fusion = model.bridgetower.fusion
    handles = [m.register_forward_hook(hook(f"{s}_manager_{i}"), with_kwargs=True)
               for s in ("text", "image") for i, m in enumerate(getattr(fusion, f"{s}_managers"))]
    try:
        with torch.no_grad():
            out = model.eval()(inputs["text_ids"], inputs["text_masks"], inputs["pixel_values"])
            enc = model.bridgetower(inputs["text_ids"], inputs["text_masks"], inputs["pixel_values"],
                                    output_hidden_states=True)
    finally:
        for h in handles:
            h.remove()
    return out, enc, calls


def _compare(model, inputs, ref, *, normed=True):
    """Every output and per-manager intermediate of ``ref`` that the model exposes, to 1e-5."""
    out, enc, calls = _run_recording(model, inputs)
    got = {"text_feats": out.encoder_output.text_features, "image_feats": out.encoder_output.image_features,
           "cls_feats": out.encoder_output.pooler_output, "itm_logits": out.itm_logits, "mlm_logits": out.mlm_logits}
    for stream in ("text", "image"):
        got[f"{stream}_manager_outputs"] = torch.stack([calls[f"{stream}_manager_{i}"][2] for i in range(3)])
        for i in range(3):
            manager, args, _ = calls[f"{stream}_manager_{i}"]
            routing = manager.routing(*args[1:])
            w = routing["weights"]
            got[f"{stream}_manager_{i}_routed_weights"] = w[None, :, None] if isinstance(manager, StaticManager) else w
            if isinstance(manager, AdaptiveManager):
                got[f"{stream}_manager_{i}_controller_logits"] = routing["controller_logits"]
                got[f"{stream}_manager_{i}_fusion_attention_scores"] = routing["attention_scores"]
                if normed:
                    got[f"{stream}_manager_{i}_extra_query_normed"] = manager.other_norm(args[2])
    if normed:
        got["cross_text_layer_outputs"] = torch.stack([t for t, _ in enc.cross_hidden_states])
        got["cross_image_layer_outputs"] = torch.stack([v for _, v in enc.cross_hidden_states])
    missing = [k for k in got if k not in ref]
    assert not missing, missing
    for name, value in got.items():
        want = ref[name]
        torch.testing.assert_close(value, want.reshape(value.shape), rtol=0, atol=1e-5, msg=name)
    return got


def test_ckpt_reproduces_official_outputs_and_intermediates(inputs):
    model = load_official_checkpoint(BridgeTowerForPretraining, CKPT)
    report = model.load_report
    assert report.ok and report.unused_heads == ["itc.temperature"]  # MLM + ITM: no ITC head
    assert "layer_embeddings_text.weight[0:1] (rows of unmanaged layers)" in report.dropped
    assert "cross_modal_image_manager_tower.2.manager_layer.softmax_temperature_cross" in report.dropped
    c = model.config
    assert c.manager == ManagerConfig(kind="adaptive", weights="vector", text_layers=3, image_layers=3)
    assert (c.fusion.layer_norm_eps, c.head_layer_norm_eps, c.fusion.num_layers, c.text.num_heads) == (1e-12, 1e-12, 3, 4)
    assert isinstance(model.bridgetower, ManagerTowerModel)
    assert [type(m).__name__ for m in model.bridgetower.fusion.text_managers] == [
        "StaticManager", "AdaptiveManager", "AdaptiveManager"]
    ref = load_file(str(DATA / "outputs.safetensors"))
    _compare(model, inputs, ref)
    # the managed uni-modal layers (1..3 of 0..3) and the manager inputs H
    enc = model.bridgetower(inputs["text_ids"], inputs["text_masks"], inputs["pixel_values"])
    for i in range(3):
        torch.testing.assert_close(enc.text_hidden_states[i], ref["text_layer_outputs"][i + 1], rtol=0, atol=1e-5)
        torch.testing.assert_close(enc.image_hidden_states[i], ref["vision_ln_post_all_layers"][i + 1], rtol=0, atol=1e-5)
    seen = {}
    handle = model.bridgetower.fusion.register_forward_pre_hook(lambda m, args: seen.update(h=args[:2]))
    with torch.no_grad():
        model.bridgetower(inputs["text_ids"], inputs["text_masks"], inputs["pixel_values"])
    handle.remove()
    torch.testing.assert_close(seen["h"][0], ref["manager_text_inputs"], rtol=0, atol=1e-5)
    torch.testing.assert_close(seen["h"][1], ref["manager_image_inputs"], rtol=0, atol=1e-5)


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_manager_variant_reproduces_its_outputs(variant, official_state_dict, inputs, tmp_path):
    """Default state dict minus its manager towers, plus the variant's (the README's recipe)."""
    vdir = DATA / "variants" / variant
    sd = {k: v for k, v in official_state_dict.items() if "_manager_tower." not in k}
    sd.update(load_file(str(vdir / "manager_state_dict.safetensors")))
    path = tmp_path / "state_dict.safetensors"
    save_file(sd, str(path))
    meta = {**json.loads((DATA / "config.json").read_text()),
            "mt_config": json.loads((vdir / "config.json").read_text())["mt_config"]}
    with pytest.raises(ValueError, match="no official ManagerTower config found"):
        load_official_checkpoint(BridgeTowerForPretraining, path)  # a bare state dict names no config
    model = load_official_checkpoint(BridgeTowerForPretraining, path, config_json=meta)
    assert model.load_report.ok
    kind, weights = variant.split("_")
    assert (model.config.manager.kind, model.config.manager.weights) == (
        {"SAUE": "static", "AAUE": "adaptive"}[kind], weights)
    got = _compare(model, inputs, load_file(str(vdir / "outputs.safetensors")), normed=False)
    assert all(k in got for k in MAIN)


def test_ckpt_alone_reads_its_hyper_parameters(tmp_path, inputs):
    """Without config.json beside it, the config comes from the .ckpt's hyper_parameters, which
    hold no tower config: the text heads are then width // 64 (roberta-base's), overridable."""
    path = tmp_path / "mt.ckpt"
    path.symlink_to(CKPT)
    model = load_official_checkpoint(BridgeTowerForPretraining, path)
    assert model.load_report.ok and model.config.manager == ManagerConfig(text_layers=3, image_layers=3)
    assert (model.config.text.num_heads, model.config.fusion.num_heads) == (1, 4)  # the tiny tower has 4
    model = load_official_checkpoint(BridgeTowerForPretraining, path, **{"text.num_heads": 4}).eval()
    ref = load_file(str(DATA / "outputs.safetensors"))
    with torch.no_grad():
        out = model(inputs["text_ids"], inputs["text_masks"], inputs["pixel_values"])
    torch.testing.assert_close(out.mlm_logits, ref["mlm_logits"], rtol=0, atol=1e-5)
    torch.testing.assert_close(out.encoder_output.pooler_output, ref["cls_feats"], rtol=0, atol=1e-5)


def test_rename_table_covers_every_key(official_state_dict):
    conv = convert_official_managertower_state_dict(official_state_dict, text_layers=3, image_layers=3)
    assert not conv.unknown
    sd = conv.state_dict
    assert sd["bridgetower.fusion.text_managers.0.scores"].shape == (3, 64)
    torch.testing.assert_close(sd["bridgetower.fusion.image_managers.1.prev_scale"],
                               official_state_dict["cross_modal_image_manager_tower.1.manager_layer.layer_scores_cross"][0, 0, 0])
    assert sd["bridgetower.fusion.text_managers.2.prev_norm.weight"] is \
        official_state_dict["cross_modal_text_manager_tower.2.manager_layer.LayerNorm.3.weight"]
    assert sd["bridgetower.fusion.text_managers.1.query.weight"] is \
        official_state_dict["cross_modal_text_manager_tower.1.manager_layer.fusion_attention.q_proj.weight"]
    torch.testing.assert_close(sd["bridgetower.layer_embeddings_image.weight"],
                               official_state_dict["layer_embeddings_image.weight"][1:])
    assert "bridgetower.fusion.text_layers.2.cross_attn.proj.weight" in sd
    assert not any("layernorm" in k or "bridges" in k for k in sd)  # no BridgeTower-only parts
    # a static manager after the first layer: its last layer score is the previous output's weight
    saue = load_file(str(DATA / "variants" / "SAUE_scalar" / "manager_state_dict.safetensors"))
    conv = convert_official_managertower_state_dict(saue, text_layers=3, image_layers=3, encoder_prefix="")
    scores = saue["cross_modal_text_manager_tower.1.manager_layer.layer_scores"]  # (1, 4, 1, 1)
    assert conv.state_dict["fusion.text_managers.1.scores"].shape == (3, 1)
    assert conv.state_dict["fusion.text_managers.1.prev_scale"].item() == scores[0, 3, 0, 0].item()


def test_base_encoder_and_factory_load_the_ckpt(inputs):
    ref = load_file(str(DATA / "outputs.safetensors"))
    for model in (BridgeTowerModel.from_pretrained(CKPT), ManagerTowerModel.from_pretrained(CKPT),
                  create_model("managertower-tiny", pretrained=CKPT)):
        assert type(model) is ManagerTowerModel and not model.training
        assert "mlm_score.decoder.weight" in model.load_report.unused_heads
        with torch.no_grad():
            out = model(inputs["text_ids"], inputs["text_masks"], inputs["pixel_values"])
        torch.testing.assert_close(out.pooler_output, ref["cls_feats"], rtol=0, atol=1e-5)
    itm = create_model("managertower-tiny", task="itm", pretrained=CKPT)
    with torch.no_grad():
        logits = itm(inputs["text_ids"], inputs["text_masks"], inputs["pixel_values"]).logits
    torch.testing.assert_close(logits, ref["itm_logits"], rtol=0, atol=1e-5)


def test_our_format_roundtrip_and_no_hf_export(tmp_path, inputs):
    model = load_official_checkpoint(BridgeTowerForPretraining, CKPT).eval()
    model.save_pretrained(tmp_path / "mt")
    meta = json.loads((tmp_path / "mt" / "config.json").read_text())
    assert meta["config"]["manager"]["kind"] == "adaptive"
    again = BridgeTowerForPretraining.from_pretrained(tmp_path / "mt")
    assert again.load_report.ok and isinstance(again.bridgetower, ManagerTowerModel)
    with torch.no_grad():
        a = model(inputs["text_ids"], inputs["text_masks"], inputs["pixel_values"]).mlm_logits
        b = again(inputs["text_ids"], inputs["text_masks"], inputs["pixel_values"]).mlm_logits
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert type(ManagerTowerModel.from_pretrained(tmp_path / "mt")) is ManagerTowerModel
    with pytest.raises(ValueError, match="no HF names"):
        model.save_pretrained(tmp_path / "hf", format="hf")


# ---------------------------------------------------------------- configs


def test_named_configs():
    assert {"managertower-base", "managertower-tiny"} <= set(list_models())
    for name in ("managertower-base", "managertower-tiny"):
        data = json.loads((Path(__file__).resolve().parents[2] / "bridgetower" / "models" / "configs"
                           / f"{name}.json").read_text())
        config = BridgeTowerConfig.from_dict(data)
        assert config.to_dict() == data and config.architecture == "managertower"
    base = get_config("managertower-base")
    assert (base.manager.text_layers, base.manager.image_layers, base.fusion.num_layers) == (6, 6, 6)
    bt = get_config("bridgetower-tiny")
    assert bt.manager is None and "manager" not in bt.to_dict() and bt.architecture == "bridgetower"
    # one override switches the architecture, and back
    mt = bt.replace(manager={"text_layers": 3, "image_layers": 3})
    assert mt.manager == ManagerConfig(text_layers=3, image_layers=3)
    assert mt.replace(**{"manager.kind": "SAUE"}).manager.kind == "static"
    assert mt.replace(manager=None) == bt


@pytest.mark.parametrize(
    "overrides,exc,match",
    [
        ({"manager": {"kind": "dynamic"}}, ValueError, "ManagerConfig.kind must be one of static, adaptive"),
        ({"manager": {"weights": "matrix"}}, ValueError, "ManagerConfig.weights must be one of vector, scalar"),
        ({"manager": {"text_layers": 0}}, ValueError, "ManagerConfig.text_layers must be a positive int"),
        ({"manager": {"temperature": -1.0}}, ValueError, "ManagerConfig.temperature must be"),
        ({"manager": {"noise": "yes"}}, TypeError, "ManagerConfig.noise must be True or False"),
        ({"manager": {"image_layers": 5}}, ValueError, r"manager.image_layers=5 exceeds the uni-modal depth \(4"),
        ({"manager": {"layers": 2}}, ValueError, "unknown ManagerConfig key"),
        ({"manager": 3}, TypeError, "BridgeTowerConfig.manager must be a ManagerConfig or dict"),
    ],
)
def test_config_errors(overrides, exc, match):
    with pytest.raises(exc, match=match):
        get_config("managertower-tiny", **overrides)


def test_managertower_needs_managers():
    with pytest.raises(ValueError, match="ManagerTowerModel needs config.manager"):
        ManagerTowerModel(get_config("bridgetower-tiny"))


# ---------------------------------------------------------------- task models and training


@pytest.mark.parametrize("task", ["itm", "mlm", "contrastive", "vqa", "nlvr2", "snli-ve", "irtr"])
def test_every_task_model_builds_a_managertower(task):
    over = {"fusion.num_token_types": 3} if task == "nlvr2" else {}
    model = create_model("managertower-tiny", task=task, **over).eval()
    assert isinstance(model.bridgetower, ManagerTowerModel)
    ids = torch.randint(5, 64, (2, 7))
    mask = torch.ones_like(ids)
    px = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        if task == "nlvr2":
            out = model(ids, mask, px, pixel_values_2=px.flip(0))
        elif task == "irtr":
            out = model(ids[None], mask[None], px[:1])
        else:
            out = model(ids, mask, px)
    assert torch.isfinite(out.logits).all()


def test_pretraining_step_declarations_and_noise():
    model = create_model("managertower-tiny", task="pretraining")
    enc = model.bridgetower
    roles = model.parameter_roles()
    assert roles["bridgetower.layer_embeddings_text.weight"] == "uni_modal"
    assert roles["bridgetower.fusion.text_managers.1.controller.weight"] == "cross_modal"
    assert roles["mlm_score.decoder.weight"] == "head"
    nwd = model.no_weight_decay()
    assert "bridgetower.fusion.image_managers.0.norms.2.weight" in nwd
    assert "bridgetower.fusion.image_managers.0.scores" not in nwd
    assert Manager in model.fsdp_unit_types() and not hasattr(enc, "cross_modal_text_layernorm")
    model.set_attention_backend("math")
    assert enc.fusion.text_managers[1].attn_backend == "math"
    ids = torch.randint(5, 64, (4, 9))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "pixel_values": torch.randn(4, 3, 64, 64),
             "mlm_input_ids": ids, "mlm_labels": ids, "itm_image_index": torch.tensor([1, 0, 2, 3]),
             "itm_labels": torch.tensor([0, 0, 1, 1])}
    model.train()
    model.pretraining_step(batch, itc=True).loss.backward()
    assert enc.fusion.text_managers[1].controller.weight.grad.abs().sum() > 0
    assert enc.layer_embeddings_image.weight.grad.abs().sum() > 0
    # the noise keys on nn.Module.training (the towers and fusion have no dropout here)
    with torch.no_grad():
        pooled = [model(ids, batch["attention_mask"], batch["pixel_values"]).encoder_output.pooler_output
                  for _ in range(2)]
        assert (pooled[0] - pooled[1]).abs().max() > 1e-6  # training: a new draw each call
        model.eval()
        clean = model(ids, batch["attention_mask"], batch["pixel_values"]).encoder_output.pooler_output
        short = model.bridgetower(ids, batch["attention_mask"], batch["pixel_values"], pooled_only=True)
    torch.testing.assert_close(short.pooler_output, clean, rtol=0, atol=1e-6)
    quiet = create_model("managertower-tiny", task="pretraining", **{"manager.noise": False})
    quiet.load_state_dict(model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(quiet.train()(ids, batch["attention_mask"], batch["pixel_values"])
                                   .encoder_output.pooler_output, clean, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="does not support output_attentions"):
        enc.fuse(enc.encode_text(ids), enc.encode_image(batch["pixel_values"]), output_attentions=True)
    with pytest.raises(ValueError, match="fuse expects 3 text and 3 image states"):
        enc.fuse(enc.encode_text(ids)[:2], enc.encode_image(batch["pixel_values"]))


def test_pretrain_driver_trains_a_managertower(tmp_path):
    """``bridgetower pretrain --model managertower-tiny``'s driver, a few demo steps: the loss
    falls and the saved model reloads as a ManagerTower (the demo's accuracies: docs)."""
    from bridgetower.training.pretrain import pretrain
    from bridgetower.training.recipes import PRETRAIN_RECIPES
    from bridgetower.training.run import load_saved_model

    recipe = PRETRAIN_RECIPES["demo"].replace(steps=12, batch_size=4, warmup=2, eval_every=0, checkpoint_every=0,
                                              log_every=4)
    summary = pretrain(tmp_path, model="managertower-tiny", recipe=recipe, eval_size=4, progress=False)
    assert summary["steps"] == 12
    losses = [json.loads(line).get("loss") for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    losses = [x for x in losses if x is not None]
    assert len(losses) == 3 and losses[-1] < losses[0]
    again = load_saved_model(tmp_path / "model")
    assert isinstance(again.bridgetower, ManagerTowerModel) and again.config.manager.kind == "adaptive"
