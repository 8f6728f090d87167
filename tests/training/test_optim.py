"""Optimizer groups (which parameter gets which lr / weight decay) and the lr schedule."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bridgetower.layers.bridge import create_bridge
from bridgetower.models.base import no_weight_decay_names
from bridgetower.training.optim import (
    WarmupLinearDecay,
    build_optimizer,
    build_scheduler,
    param_groups,
)


class _Tower(nn.Module):
    def __init__(self):
        super().__init__()
        self.dense = nn.Linear(4, 4)
        self.LayerNorm = nn.LayerNorm(4)
        self.class_embedding = nn.Parameter(torch.zeros(4))


class _Fusion(nn.Module):
    def __init__(self):
        super().__init__()
        self.layer = nn.Linear(4, 4)
        self.bridge = create_bridge("scaled_add", 4)


class _Heads(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 2)


class _Standin(nn.Module):
    """Parameter names shaped like BridgeTowerForPretraining's; declares its roles the way
    the real models do (by submodule)."""

    def __init__(self):
        super().__init__()
        self.bridgetower = nn.Module()
        self.bridgetower.text_model = _Tower()
        self.bridgetower.vision_model = _Tower()
        self.bridgetower.cross_modal_text_transform = nn.Linear(4, 4)
        self.bridgetower.cross_modal_text_layernorm = nn.LayerNorm(4)
        self.bridgetower.token_type_embeddings = nn.Embedding(2, 4)
        self.bridgetower.fusion = _Fusion()
        self.itm_score = _Heads()
        self.mlm_score = nn.Module()
        self.mlm_score.transform = _Tower()
        self.frozen = nn.Linear(2, 2)
        self.frozen.requires_grad_(False)

    def parameter_roles(self):
        def role(name):
            parts = name.split(".")
            if parts[0] != "bridgetower":
                return "head"
            return "uni_modal" if parts[1] in ("text_model", "vision_model", "token_type_embeddings") else "cross_modal"

        return {n: role(n) for n, _ in self.named_parameters()}

    def no_weight_decay(self):
        return no_weight_decay_names(self)


def _lookup(groups):
    out = {}
    for g in groups:
        for name in g["names"]:
            out[name] = (g["lr"], g["weight_decay"])
    return out


def test_param_groups_lr_and_weight_decay_per_parameter():
    model = _Standin()
    groups = param_groups(model, lr=1e-3, weight_decay=0.01, cross_modal_multiplier=5.0, head_multiplier=7.0)
    got = _lookup(groups)
    base, cm, head = 1e-3, 5e-3, 7e-3
    expected = {
        # uni-modal towers: base lr; Linear weight and class embedding decay, bias/LN do not
        "bridgetower.text_model.dense.weight": (base, 0.01),
        "bridgetower.text_model.dense.bias": (base, 0.0),
        "bridgetower.text_model.LayerNorm.weight": (base, 0.0),
        "bridgetower.text_model.LayerNorm.bias": (base, 0.0),
        "bridgetower.text_model.class_embedding": (base, 0.01),
        "bridgetower.vision_model.dense.weight": (base, 0.01),
        # cross-modal: 5x
        "bridgetower.cross_modal_text_transform.weight": (cm, 0.01),
        "bridgetower.cross_modal_text_transform.bias": (cm, 0.0),
        "bridgetower.cross_modal_text_layernorm.weight": (cm, 0.0),
        "bridgetower.token_type_embeddings.weight": (base, 0.01),  # official: not cross_modal*
        "bridgetower.fusion.layer.weight": (cm, 0.01),
        "bridgetower.fusion.bridge.weight": (cm, 0.0),  # the bridge's LayerNorm affine
        "bridgetower.fusion.bridge.bias": (cm, 0.0),
        "bridgetower.fusion.bridge.scale": (cm, 0.01),  # learnable scalar decays
        # heads: their own multiplier, LN inside a head still exempt from decay
        "itm_score.fc.weight": (head, 0.01),
        "itm_score.fc.bias": (head, 0.0),
        "mlm_score.transform.dense.weight": (head, 0.01),
        "mlm_score.transform.LayerNorm.weight": (head, 0.0),
    }
    for name, value in expected.items():
        assert got[name] == pytest.approx(value), name
    # every trainable parameter is in exactly one group; frozen ones are not
    names = [n for g in groups for n in g["names"]]
    assert len(names) == len(set(names))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert set(names) == trainable
    assert not any(n.startswith("frozen") for n in names)


def test_build_optimizer_defaults_follow_the_recipe():
    opt = build_optimizer(_Standin())
    assert isinstance(opt, torch.optim.AdamW)
    lrs = sorted({g["lr"] for g in opt.param_groups})
    assert lrs == pytest.approx([1e-5, 5e-5])
    for g in opt.param_groups:
        assert g["betas"] == (0.9, 0.98) and g["eps"] == 1e-8
        assert g["weight_decay"] in (0.0, 0.01)


def test_undeclared_model_trains_at_the_base_rate_with_the_default_decay_rule():
    class Plain(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(2, 2)
            self.norm = nn.LayerNorm(2)
            self.bridge = create_bridge("add", 2)

    groups = param_groups(Plain(), lr=1e-3, weight_decay=0.01)
    got = _lookup(groups)
    assert got == {
        "fc.weight": (1e-3, 0.01),
        "fc.bias": (1e-3, 0.0),
        "norm.weight": (1e-3, 0.0),
        "norm.bias": (1e-3, 0.0),
        "bridge.weight": (1e-3, 0.0),
        "bridge.bias": (1e-3, 0.0),
    }


def test_no_weight_decay_names():
    m = nn.Sequential(nn.Linear(2, 2), nn.LayerNorm(2), create_bridge("scaled_add", 2))
    assert no_weight_decay_names(m) == {"0.bias", "1.weight", "1.bias", "2.weight", "2.bias"}


def test_unknown_role_is_refused():
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(2, 2)

        def parameter_roles(self):
            return {"fc.weight": "fusion", "fc.bias": "head"}

    with pytest.raises(ValueError, match="unknown roles"):
        param_groups(Odd(), lr=1.0)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"lr": 0.0}, "lr must be"),
        ({"lr": 1e-3, "weight_decay": -1.0}, "weight_decay"),
        ({"lr": 1e-3, "cross_modal_multiplier": 0}, "cross_modal_multiplier"),
    ],
)
def test_param_groups_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        param_groups(_Standin(), **kwargs)


def test_schedule_values_at_chosen_steps():
    f = WarmupLinearDecay(warmup_steps=10, total_steps=110)
    # warm-up: step / 10; decay: (110 - step) / 100; zero at and after the end
    for step, want in [(0, 0.0), (1, 0.1), (5, 0.5), (10, 1.0), (11, 0.99), (60, 0.5), (109, 0.01), (110, 0.0), (200, 0.0)]:
        assert f(step) == pytest.approx(want), step


def test_scheduler_drives_every_group_with_its_multiplier():
    model = _Standin()
    opt = build_optimizer(model, lr=1e-3)
    sched = build_scheduler(opt, total_steps=20, warmup=0.1)  # 2 warm-up steps
    seen = []
    for _ in range(20):
        seen.append({g["lr_multiplier"]: g["lr"] for g in opt.param_groups})
        opt.step()
        sched.step()
    expected_factor = [0.0, 0.5] + [(20 - s) / 18 for s in range(2, 20)]
    for s, lrs in enumerate(seen):
        assert lrs[1.0] == pytest.approx(1e-3 * expected_factor[s])
        assert lrs[5.0] == pytest.approx(5e-3 * expected_factor[s])
    sched2 = build_scheduler(build_optimizer(model, lr=1e-3), total_steps=20, warmup=4)
    assert sched2.lr_lambdas[0].warmup_steps == 4


@pytest.mark.parametrize("warmup", [1.5, -0.1, 30, True])
def test_scheduler_bad_warmup(warmup):
    opt = build_optimizer(_Standin(), lr=1e-3)
    with pytest.raises((ValueError, TypeError), match="warmup"):
        build_scheduler(opt, total_steps=20, warmup=warmup)


def test_rule_on_the_real_pretraining_model():
    """Every parameter of BridgeTowerForPretraining: towers 1x, fusion 5x, heads 5x (here 3x);
    no decay exactly on biases and LayerNorm-like weights."""
    from bridgetower.models import create_model

    model = create_model("bridgetower-tiny", task="pretraining")
    groups = param_groups(model, lr=1.0, cross_modal_multiplier=5.0, head_multiplier=3.0)
    got = _lookup(groups)
    assert set(got) == {n for n, _ in model.named_parameters()}
    modules = dict(model.named_modules())
    for name, (lr, wd) in got.items():
        parts = name.split(".")
        if parts[0] in ("mlm_score", "itm_score", "itc"):
            assert lr == 3.0, name
        elif parts[1] == "fusion" or parts[1].startswith("cross_modal"):
            assert lr == 5.0, name
        else:
            assert parts[1] in ("vision_model", "text_model", "token_type_embeddings"), name
            assert lr == 1.0, name
        owner = modules[".".join(parts[:-1])]
        norm_like = isinstance(owner, nn.LayerNorm) or "norm" in type(owner).__name__.lower() or (
            len(parts) > 3 and parts[-3].endswith("_bridges")  # a bridge's own weight/bias is its LayerNorm affine
        )
        expect_no_decay = parts[-1] == "bias" or (parts[-1] == "weight" and norm_like)
        assert (wd == 0.0) == expect_no_decay, (name, type(owner).__name__)
    # the uni-modal CLIP/RoBERTa LayerNorms are recognised
    assert got["bridgetower.vision_model.visual.ln_post.weight"][1] == 0.0
    assert got["bridgetower.text_model.model.embeddings.LayerNorm.weight"][1] == 0.0
    assert got["bridgetower.fusion.text_layers.0.self_norm.weight"] == (5.0, 0.0)
    assert got["bridgetower.fusion.text_layers.0.mlp.fc1.weight"] == (5.0, 0.01)
