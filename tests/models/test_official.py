"""The official-checkpoint converter against the official code's own outputs.

The reference data lives in ``tests/data/official`` (see its README.txt). The data set's
``state_dict.safetensors`` is not copied (it holds the same tensors as the ``.ckpt``); the
``official_safetensors`` fixture rebuilds it from the ``.ckpt``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from bridgetower.models import BridgeTowerForPretraining, BridgeTowerModel
from bridgetower.models.convert import convert_official_state_dict, load_official_checkpoint

DATA = Path(__file__).resolve().parents[1] / "data" / "official"


@pytest.fixture(scope="module")
def official_safetensors(tmp_path_factory) -> Path:
    """The official ``state_dict.safetensors``: the ``.ckpt``'s state dict, saved as safetensors."""
    ckpt = torch.load(DATA / "BridgeTower_tiny_random.ckpt", map_location="cpu", weights_only=True)
    path = tmp_path_factory.mktemp("official") / "state_dict.safetensors"
    save_file(ckpt["state_dict"], str(path))
    return path


def _run(model):
    inputs = load_file(str(DATA / "inputs.safetensors"))
    with torch.no_grad():
        return model.eval()(inputs["text_ids"], inputs["text_masks"], inputs["pixel_values"])


def test_ckpt_reproduces_official_outputs():
    model = load_official_checkpoint(BridgeTowerForPretraining, DATA / "BridgeTower_tiny_random.ckpt")
    report = model.load_report
    assert report.ok and report.unused_heads == ["itc.temperature"]  # MLM+ITM model: no ITC head
    assert "text_transformer.pooler.dense.weight" in report.dropped
    assert "vit_model.ln_final.weight" in report.dropped
    c = model.config
    assert (c.fusion.layer_norm_eps, c.head_layer_norm_eps, c.fusion.bridge_layer_norm_eps) == (1e-12, 1e-12, 1e-5)
    assert (c.vision.width, c.text.hidden_size, c.fusion.hidden_size, c.fusion.num_layers) == (128, 64, 64, 3)
    out = _run(model)
    ref = load_file(str(DATA / "outputs.safetensors"))
    enc = out.encoder_output
    got = {
        "text_feats": enc.text_features,
        "image_feats": enc.image_features,
        "cls_feats": enc.pooler_output,
        "itm_logits": out.itm_logits,
        "mlm_logits": out.mlm_logits,
    }
    for name, value in got.items():
        torch.testing.assert_close(value, ref[name], rtol=0, atol=1e-5, msg=name)
    # intermediates: tapped uni-modal layers (split index 1: layers 1..3 of 0..3)
    for i in range(3):
        torch.testing.assert_close(enc.text_hidden_states[i], ref["text_layer_outputs"][i + 1], rtol=0, atol=1e-5)
        torch.testing.assert_close(
            enc.image_hidden_states[i], ref["vision_ln_post_all_layers"][i + 1], rtol=0, atol=1e-5
        )


def test_safetensors_state_dict_and_config_json(official_safetensors):
    meta = json.loads((DATA / "config.json").read_text())
    model = load_official_checkpoint(BridgeTowerModel, official_safetensors, config_json=meta)
    ref = load_file(str(DATA / "outputs.safetensors"))
    out = _run(model)
    torch.testing.assert_close(out.pooler_output, ref["cls_feats"], rtol=0, atol=1e-5)
    # the base model takes no heads: they are reported, not loaded
    assert "mlm_score.decoder.weight" in model.load_report.unused_heads


def test_official_rename_table_covers_every_key(official_safetensors):
    sd = load_file(str(official_safetensors))
    conv = convert_official_state_dict(sd)
    assert not conv.unknown
    assert len(conv.state_dict) + len(conv.dropped) == len(sd)
    assert conv.state_dict["bridgetower.vision_model.visual.conv1.weight"] is sd["vit_model.visual.conv1.weight"]
    assert "bridgetower.fusion.text_bridges.1.weight" in conv.state_dict
    assert "bridgetower.fusion.image_layers.2.cross_attn.proj.weight" in conv.state_dict


def test_hf_eps_changes_outputs_as_documented():
    # with the HF port's eps (1e-5) the MLM logits move by ~4e-4: the eps must follow the source
    model = load_official_checkpoint(
        BridgeTowerForPretraining, DATA / "BridgeTower_tiny_random.ckpt", head_layer_norm_eps=1e-5,
        fusion={"layer_norm_eps": 1e-5},
    )
    ref = load_file(str(DATA / "outputs.safetensors"))
    diff = (_run(model).mlm_logits - ref["mlm_logits"]).abs().max().item()
    assert 1e-5 < diff < 1e-3
