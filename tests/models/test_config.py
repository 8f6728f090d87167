"""Configs and the create_model registry."""

from __future__ import annotations

import json
from importlib import resources

import pytest
import torch

from bridgetower.models import (
    BridgeTowerConfig,
    BridgeTowerForPretraining,
    BridgeTowerModel,
    FusionConfig,
    VisionConfig,
    create_model,
    get_config,
    list_models,
)


def _json(name: str) -> dict:
    root = resources.files("bridgetower.models") / "configs"
    return json.loads((root / f"{name}.json").read_text())


@pytest.mark.parametrize("name", ["bridgetower-base", "bridgetower-large", "bridgetower-tiny"])
def test_named_configs_load_and_roundtrip(name):
    data = _json(name)
    config = BridgeTowerConfig.from_dict(data)
    assert BridgeTowerConfig(**data) == config  # plain dataclass construction, as STYLE.md says
    assert config.to_dict() == data  # every field is spelled out in the JSON
    assert name in list_models()


def test_published_sizes():
    base, large = get_config("bridgetower-base"), get_config("bridgetower-large")
    assert base.vision.num_tokens == 325 and base.vision.num_heads == 12
    assert large.vision.num_tokens == 442 and large.fusion.num_heads == 16
    assert base.fusion.layer_norm_eps == 1e-12 and base.head_layer_norm_eps == 1e-12
    tiny = get_config("bridgetower-tiny")
    assert (tiny.fusion.hidden_size, tiny.text.num_layers, tiny.text.num_heads) == (128, 4, 4)
    assert (tiny.text.intermediate_size, tiny.vision.layers, tiny.vision.patch_size) == (512, 4, 16)
    assert (tiny.vision.image_size, tiny.fusion.num_layers) == (64, 2)


def test_unknown_key_fails_with_close_matches():
    data = _json("bridgetower-tiny")
    data["fusion"]["num_layer"] = 3
    with pytest.raises(ValueError, match=r"num_layer.*did you mean 'num_layers'"):
        BridgeTowerConfig.from_dict(data)
    with pytest.raises(ValueError, match="did you mean 'fusion'"):
        BridgeTowerConfig.from_dict({**_json("bridgetower-tiny"), "fuson": {}})


def test_overrides_nested_and_dotted():
    c = get_config("bridgetower-tiny", fusion={"num_layers": 1}, **{"vision.image_size": 96})
    assert c.fusion.num_layers == 1 and c.vision.image_size == 96
    assert c.fusion.hidden_size == 128  # the rest of the sub-config is kept
    c2 = get_config("bridgetower-tiny", fusion=FusionConfig(hidden_size=64, num_heads=2, num_layers=2))
    assert c2.fusion.hidden_size == 64
    c3 = get_config("bridgetower-tiny", attn_backend="math", gradient_checkpointing=True)
    assert c3.attn_backend == "math" and c3.gradient_checkpointing
    with pytest.raises(ValueError, match="did you mean 'num_heads'"):
        get_config("bridgetower-tiny", **{"fusion.num_head": 2})
    with pytest.raises(ValueError, match="did you mean 'vision'"):
        get_config("bridgetower-tiny", visoin={"layers": 2})


def test_unknown_model_and_task_list_close_matches():
    with pytest.raises(ValueError, match="bridgetower-tiny"):
        create_model("bridgetower-tinny")
    with pytest.raises(ValueError, match="pretraining"):
        create_model("bridgetower-tiny", task="pretrain")


def test_invalid_values_rejected():
    with pytest.raises(ValueError, match="exceeds the uni-modal depth"):
        get_config("bridgetower-tiny", fusion={"num_layers": 5})
    with pytest.raises(ValueError, match="not divisible"):
        VisionConfig(width=100, heads=3)
    with pytest.raises(ValueError, match="smaller than patch_size"):
        VisionConfig(image_size=12, patch_size=16)
    assert VisionConfig(image_size=100, patch_size=16).num_tokens == 6 * 6 + 1  # floors, as HF
    with pytest.raises(TypeError, match="FusionConfig"):
        BridgeTowerConfig(fusion=3)


def test_from_open_clip_sizes():
    v = VisionConfig.from_open_clip("ViT-B-16-quickgelu", image_size=288)
    assert (v.width, v.layers, v.patch_size, v.image_size, v.quick_gelu) == (768, 12, 16, 288, True)
    assert v.num_heads == 12
    with pytest.raises(ValueError, match="close matches"):
        VisionConfig.from_open_clip("ViT-B-61")


def test_create_model_tasks():
    m = create_model("bridgetower-tiny")
    assert type(m) is BridgeTowerModel
    p = create_model("bridgetower-tiny", task="pretraining")
    assert isinstance(p, BridgeTowerForPretraining)
    n = sum(t.numel() for t in m.parameters())
    assert 2.5e6 < n < 3.2e6  # DEMO.md's ~2.9M-parameter tiny model


@pytest.mark.parametrize(
    "override, field",
    [
        ({"text.vocab_size": 0}, "TextConfig.vocab_size"),
        ({"text.vocab_size": 2.5}, "TextConfig.vocab_size"),
        ({"vision.layers": -1}, "VisionConfig.layers"),
        ({"vision.heads": 0}, "VisionConfig.heads"),
        ({"fusion.num_heads": 0}, "FusionConfig.num_heads"),
        ({"text.layer_norm_eps": -1e-5}, "TextConfig.layer_norm_eps"),
        ({"fusion.bridge_layer_norm_eps": float("nan")}, "FusionConfig.bridge_layer_norm_eps"),
        ({"vision.mlp_ratio": "four"}, "VisionConfig.mlp_ratio"),
        ({"text.dropout": 1.5}, "TextConfig.dropout"),
        ({"fusion.hidden_act": "gelux"}, "FusionConfig.hidden_act"),
        ({"fusion.bridge": "plus"}, "FusionConfig.bridge"),
        ({"attn_backend": "fast"}, "BridgeTowerConfig.attn_backend"),
        ({"itc_temperature": 0.0}, "BridgeTowerConfig.itc_temperature"),
        ({"text.pad_token_id": 70}, "TextConfig.pad_token_id"),
        ({"vision.quick_gelu": "yes"}, "VisionConfig.quick_gelu"),
    ],
)
def test_bad_fields_are_refused_naming_the_field(override, field):
    with pytest.raises((ValueError, TypeError), match=field.replace(".", r"\.")):
        get_config("bridgetower-tiny", **override)


@pytest.mark.parametrize("override", [{"text.vocab_size": 10**12}, {"text.num_layers": 10**6}])
def test_absurd_sizes_fail_before_any_allocation(override, monkeypatch):
    from bridgetower.models import BridgeTowerModel

    config = get_config("bridgetower-base", **override)
    allocated = []
    monkeypatch.setattr(torch, "empty", lambda *a, **k: allocated.append(a) or (_ for _ in ()).throw(AssertionError))
    with pytest.raises(ValueError, match="GiB for its parameters alone"):
        BridgeTowerModel(config)
    assert not allocated


def test_parameter_estimate_is_close_to_the_real_count():
    from bridgetower.models import create_model

    model = create_model("bridgetower-tiny", task="pretraining")
    est = sum(model.config.parameter_estimate().values())
    real = model.num_parameters()
    assert 0.8 < est / real < 1.25, (est, real)
