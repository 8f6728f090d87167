"""What the models declare to training code (roles, weight decay, FSDP units, batch keys),
and the transformers-like conveniences every model has (outputs, counts, switches)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bridgetower.layers import AddLayerNorm, Bridge, CoAttentionLayer
from bridgetower.models import (
    PARAMETER_ROLES,
    BatchSpec,
    BridgeTowerForImageAndTextRetrieval,
    BridgeTowerForNLVR2,
    BridgeTowerForPretraining,
    BridgeTowerModel,
    create_model,
)
from bridgetower.models.unimodal import (
    BridgeTowerForImageClassification,
    BridgeTowerForTextClassification,
)


@pytest.fixture(scope="module")
def pretraining():
    return create_model("bridgetower-tiny", task="pretraining")


def test_roles_cover_every_parameter_with_the_recipe_rule(pretraining):
    roles = pretraining.parameter_roles()
    assert set(roles) == {n for n, _ in pretraining.named_parameters()}
    assert set(roles.values()) == set(PARAMETER_ROLES)
    for name, role in roles.items():
        parts = name.split(".")
        if parts[0] != "bridgetower":
            assert role == "head", name
        elif parts[1] in ("vision_model", "text_model", "token_type_embeddings"):
            assert role == "uni_modal", name
        else:
            assert parts[1] == "fusion" or parts[1].startswith("cross_modal"), name
            assert role == "cross_modal", name


def test_no_weight_decay_is_biases_and_norm_affines(pretraining):
    no_decay = pretraining.no_weight_decay()
    modules = dict(pretraining.named_modules())
    for name, _ in pretraining.named_parameters():
        owner = modules[name.rpartition(".")[0]]
        own = name.rpartition(".")[2]
        norm = isinstance(owner, (nn.LayerNorm, AddLayerNorm, Bridge))
        assert (name in no_decay) == (own == "bias" or (own == "weight" and norm)), name
    assert "bridgetower.vision_model.visual.ln_post.weight" in no_decay
    assert "bridgetower.fusion.text_layers.0.self_norm.weight" in no_decay
    assert "bridgetower.fusion.text_layers.0.mlp.fc1.weight" not in no_decay


def test_fsdp_unit_types_are_module_types(pretraining):
    types = pretraining.fsdp_unit_types()
    assert CoAttentionLayer in types and Bridge in types
    text_layer = type(pretraining.bridgetower.text_model.model.encoder.layer[0])
    vision_block = type(pretraining.bridgetower.vision_model.visual.transformer.resblocks[0])
    assert text_layer in types and vision_block in types
    assert all(isinstance(t, type) and issubclass(t, nn.Module) for t in types)


def test_batch_specs():
    spec = BridgeTowerForPretraining.batch_spec
    assert {"mlm_input_ids", "itm_image_index", "pixel_mask"} <= set(spec.keys)
    assert spec.image_keys == ("pixel_values", "pixel_mask")
    assert spec.image_index_keys == ("itm_image_index",)
    assert "pixel_mask_2" in BridgeTowerForNLVR2.batch_spec.image_keys
    assert BridgeTowerForImageAndTextRetrieval.batch_spec.image_index_keys == ()
    assert BridgeTowerForTextClassification.batch_spec.image_keys == ()
    assert BridgeTowerForImageClassification.batch_spec.image_keys == ("pixel_values",)
    with pytest.raises(ValueError, match="not in keys"):
        BatchSpec(keys=("a",), image_keys=("b",))


def test_unimodal_roles():
    model = create_model("bridgetower-tiny")
    clf = BridgeTowerForImageClassification.from_bridgetower(model, num_labels=3)
    roles = clf.parameter_roles()
    assert {r for n, r in roles.items() if n.startswith("vision_model.")} == {"uni_modal"}
    assert {r for n, r in roles.items() if n.startswith("image_classifier.")} == {"head"}


def test_outputs_behave_like_transformers_model_output():
    model = BridgeTowerForImageAndTextRetrieval(create_model("bridgetower-tiny").config).eval()
    ids = torch.randint(5, 60, (2, 6))
    px = torch.randn(2, 3, 64, 64)
    labels = torch.tensor([1, 0])
    with torch.no_grad():
        out = model(ids, None, px, labels=labels)
        bare = model(ids, None, px)
    assert isinstance(out, dict)  # what transformers.Trainer checks
    assert out["loss"] is out.loss and out[0] is out.loss and out[1] is out.logits
    assert list(out.keys())[:2] == ["loss", "logits"]
    assert out.to_tuple()[1] is out.logits
    assert bare[0] is bare.logits and "loss" not in bare


def test_counts_and_switches():
    model = BridgeTowerModel(create_model("bridgetower-tiny").config)
    assert model.num_parameters() == sum(p.numel() for p in model.parameters())
    model.vision_model.visual.conv1.weight.requires_grad_(False)
    assert model.num_parameters(only_trainable=True) == model.num_parameters() - model.vision_model.visual.conv1.weight.numel()
    model.gradient_checkpointing_enable()
    assert model.fusion.gradient_checkpointing and model.vision_model.gradient_checkpointing
    model.gradient_checkpointing_disable()
    assert not model.fusion.gradient_checkpointing
    assert model.dtype == torch.float32 and model.device.type == "cpu"


def test_fusion_hidden_act_reaches_the_cross_layers():
    base = create_model("bridgetower-tiny").config
    relu = BridgeTowerModel(base.replace(fusion={"hidden_act": "relu"})).eval()
    gelu = BridgeTowerModel(base).eval()
    gelu.load_state_dict(relu.state_dict())
    ids = torch.randint(5, 60, (2, 6))
    px = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        a, b = relu(ids, None, px).pooler_output, gelu(ids, None, px).pooler_output
    assert not torch.allclose(a, b)


def test_task_names_take_hyphens_and_underscores():
    from bridgetower.models.tasks import TASK_MODELS, get_task_model

    assert "snli-ve" in TASK_MODELS and "snli_ve" not in TASK_MODELS
    assert get_task_model("snli_ve") is get_task_model("snli-ve")
    with pytest.raises(ValueError, match="Valid tasks"):
        get_task_model("snli")
