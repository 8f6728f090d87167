"""The Hugging Face rename tables of the cross layers and link towers (models/layer_keys.py):
round trips, unknown keys, and HF modules loading into our layers (and back) by them."""

from __future__ import annotations

import pytest
import torch

from bridgetower.layers.bridge import create_bridge
from bridgetower.layers.co_attention import CoAttentionLayer
from bridgetower.models.layer_keys import (
    convert_hf_cross_layer_state_dict,
    convert_hf_link_tower_state_dict,
    hf_cross_layer_key_map,
    hf_link_tower_key_map,
    rename_hf_link_tower_key,
)

hf_bt = pytest.importorskip(
    "transformers.models.bridgetower.modeling_bridgetower",
    reason="transformers' BridgeTower is the reference for these tests",
)
from transformers import BridgeTowerConfig, BridgeTowerTextConfig  # noqa: E402

DIM, HEADS = 24, 4


def _randomise(module):
    """Non-trivial values in every parameter (so LN affine, scale, beta all matter)."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.5 + (1.0 if p.ndim <= 1 else 0.0))


def _hf_cross_layer(seed):
    torch.manual_seed(seed)
    cfg = BridgeTowerTextConfig(hidden_size=DIM, num_attention_heads=HEADS, intermediate_size=4 * DIM,
                                num_hidden_layers=1, vocab_size=10)
    return hf_bt.BridgeTowerBertCrossLayer(cfg)


def _hf_link_tower(kind, dim, eps):
    cfg = BridgeTowerConfig(hidden_size=dim, layer_norm_eps=eps, link_tower_type=kind)
    return hf_bt.BridgeTowerLinkTower(cfg)


@pytest.mark.parametrize("kind", ["add", "scaled_add", "interpolate"])
def test_matches_hf_link_tower(kind):
    eps = 1e-5
    hf = _hf_link_tower(kind, DIM, eps)
    _randomise(hf)
    ours = create_bridge(kind, DIM, eps=eps)
    ours.load_state_dict(convert_hf_link_tower_state_dict(hf.state_dict()), strict=True)

    x = torch.randn(2, 6, DIM)
    z = torch.randn(2, 6, DIM)
    xa, za = x.clone().requires_grad_(), z.clone().requires_grad_()
    xb, zb = x.clone().requires_grad_(), z.clone().requires_grad_()
    out = ours(xa, za)
    ref = hf(xb, zb, None)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)

    go = torch.randn_like(out)
    out.backward(go)
    ref.backward(go)
    torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(za.grad, zb.grad, rtol=1e-5, atol=1e-5)
    hf_grads = convert_hf_link_tower_state_dict({k: p.grad for k, p in hf.named_parameters()})
    for k, p in ours.named_parameters():
        torch.testing.assert_close(p.grad, hf_grads[k], rtol=1e-5, atol=1e-5, msg=k)

    # and back: our state dict loads into HF under the reverse rename
    hf2 = _hf_link_tower(kind, DIM, eps)
    hf2.load_state_dict(convert_hf_link_tower_state_dict(ours.state_dict(), reverse=True), strict=True)
    torch.testing.assert_close(hf2(x, z, None), ours(x, z), rtol=1e-6, atol=1e-6)


def test_key_map_and_rename():
    assert hf_link_tower_key_map() == {
        "LayerNorm.weight": "weight", "LayerNorm.bias": "bias", "scaled_factor": "scale", "beta": "beta"
    }
    assert rename_hf_link_tower_key("cross_modal_text_link_tower.3.LayerNorm.bias") == "cross_modal_text_link_tower.3.bias"
    assert rename_hf_link_tower_key("a.0.scaled_factor") == "a.0.scale"
    assert rename_hf_link_tower_key("a.0.scale", reverse=True) == "a.0.scaled_factor"
    assert rename_hf_link_tower_key("a.0.dense.weight") is None
    with pytest.raises(ValueError, match="dense.weight"):
        convert_hf_link_tower_state_dict({"dense.weight": torch.zeros(1)})


def test_key_map_round_trip_and_unknown_keys():
    hf = _hf_cross_layer(2)
    sd = {f"cross_modal_image_layers.3.{k}": v for k, v in hf.state_dict().items()}
    ours = convert_hf_cross_layer_state_dict(sd)
    assert "cross_modal_image_layers.3.self_norm.weight" in ours
    assert "cross_modal_image_layers.3.mlp.fc2.bias" in ours
    assert "cross_modal_image_layers.3.cross_attn.proj.weight" in ours
    back = convert_hf_cross_layer_state_dict(ours, reverse=True)
    assert set(back) == set(sd)
    # The table covers exactly our parameter names.
    ours_names = {k.rpartition(".")[0] for k in CoAttentionLayer(DIM, HEADS).state_dict()}
    assert ours_names == set(hf_cross_layer_key_map().values())
    with pytest.raises(ValueError, match="not in the cross-layer rename table"):
        convert_hf_cross_layer_state_dict({"attention.self.rotary.weight": torch.zeros(1)})
