"""Parity with ``transformers``' BridgeTower (identical weights, float32, eval) and HF interop.

The reference is the ``transformers`` implementation itself: random HF models (weights
perturbed so no LayerNorm is the identity and no bias zero) are loaded into ours with
``from_pretrained(hf_model)`` and both run on the same padded batches.
"""

from __future__ import annotations

import json

import pytest
import torch
import transformers
from hf_reference import PAIRS, batch, hf_config, perturbed  # tests/models/hf_reference.py

from bridgetower.models import (
    BridgeTowerForContrastiveLearning,
    BridgeTowerForImageAndTextRetrieval,
    BridgeTowerForMaskedLM,
    BridgeTowerForPretraining,
    BridgeTowerModel,
    create_model,
)
from bridgetower.models.convert import (
    config_from_hf,
    config_to_hf,
    convert_hf_state_dict,
    convert_to_hf_state_dict,
    load_converted_state_dict,
)


def outputs(task, model, ids, mask, px, hf):
    if hf:
        out = model(input_ids=ids, attention_mask=mask, pixel_values=px)
    else:
        out = model(ids, mask, px)
    if task == "base":
        return {"text": out.text_features, "image": out.image_features, "pooler": out.pooler_output}
    return {"logits": out.logits}


def check_parity(task, config, *, grads=True, atol=1e-4, image=32):
    hf_cls, our_cls = PAIRS[task]
    hf = perturbed(hf_cls, config)
    ours = our_cls.from_pretrained(hf).eval()
    assert ours.load_report.ok and not ours.load_report.unused_heads
    ids, mask, px = batch(image=image)
    a = outputs(task, hf, ids, mask, px, hf=True)
    b = outputs(task, ours, ids, mask, px, hf=False)
    for k in a:
        assert (a[k] - b[k]).abs().max() < atol, (task, k, (a[k] - b[k]).abs().max())
    if not grads:
        return
    weights = {k: torch.randn_like(v) for k, v in a.items()}
    sum((a[k] * weights[k]).sum() for k in a).backward()
    sum((b[k] * weights[k]).sum() for k in b).backward()
    ours_grads = {n: p.grad for n, p in ours.named_parameters() if p.grad is not None}
    prefix = "" if task == "base" else "bridgetower."
    mapped = convert_to_hf_state_dict(ours_grads, encoder_prefix=prefix, hf_prefix=prefix)
    assert not mapped.unknown
    hf_params = dict(hf.named_parameters())
    hf_used = {n for n, p in hf_params.items() if p.grad is not None}
    assert set(mapped.state_dict) == hf_used  # the same parameters get gradients
    for name, g in mapped.state_dict.items():
        ref = hf_params[name].grad
        scale = max(1.0, ref.abs().max().item())
        assert (g - ref).abs().max() < atol * scale, (task, name, (g - ref).abs().max())


@pytest.mark.parametrize("task", list(PAIRS))
def test_parity_tiny(task):
    check_parity(task, hf_config())


@pytest.mark.parametrize("link", ["scaled_add", "interpolate"])
def test_parity_link_types(link):
    check_parity("itm", hf_config(link=link))


def test_parity_base_widths():
    # base widths (768, 12 heads, FFN 1536 here), fewer layers; vision 768 as in ViT-B/16
    check_parity("mlm", hf_config(hidden=768, heads=12, text_layers=2, vision_layers=2, cross=2), grads=True)


def test_parity_vision_wider_than_fusion():
    # the HF ITM/MLM path supports vision width != cross width (the official base: 768 vs 768,
    # the official tiny: 128 vs 64); HF's contrastive class does not, ours does
    check_parity("itm", hf_config(vision_width=128))
    m = BridgeTowerForContrastiveLearning.from_pretrained(perturbed(transformers.BridgeTowerModel, hf_config(vision_width=128)), strict=False)
    ids, mask, px = batch()
    assert m(ids, mask, px).logits.shape == (3, 3, 32)


def test_parity_other_image_size_interpolates_positions():
    config = hf_config(image=32)
    hf = perturbed(transformers.BridgeTowerForImageAndTextRetrieval, config)
    ours = BridgeTowerForImageAndTextRetrieval.from_pretrained(hf).eval()
    ids, mask, px = batch(image=64)
    ref = hf(input_ids=ids, attention_mask=mask, pixel_values=px, interpolate_pos_encoding=True).logits
    assert (ours(ids, mask, px).logits - ref).abs().max() < 1e-4


def test_config_roundtrip_and_eps():
    hc = hf_config()
    ours = config_from_hf(hc)
    assert ours.fusion.layer_norm_eps == hc.text_config.layer_norm_eps == 1e-5
    assert ours.head_layer_norm_eps == ours.fusion.bridge_layer_norm_eps == hc.layer_norm_eps
    assert (ours.fusion.num_heads, ours.fusion.ffn_size) == (4, 128)
    back = config_to_hf(ours)
    assert config_from_hf(back) == ours
    with pytest.raises(ValueError, match="text.hidden_size"):
        config_to_hf(create_model("bridgetower-tiny").config.replace(text={"hidden_size": 64, "num_heads": 4}))


def test_save_hf_loads_in_transformers_and_roundtrips(tmp_path):
    hf = perturbed(transformers.BridgeTowerForMaskedLM, hf_config())
    ours = BridgeTowerForMaskedLM.from_pretrained(hf).eval()
    ours.save_pretrained(tmp_path / "hf", format="hf")
    cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert cfg["model_type"] == "bridgetower" and cfg["architectures"] == ["BridgeTowerForMaskedLM"]
    again = transformers.BridgeTowerForMaskedLM.from_pretrained(tmp_path / "hf").eval()
    ids, mask, px = batch()
    ref = hf(input_ids=ids, attention_mask=mask, pixel_values=px).logits
    assert (again(input_ids=ids, attention_mask=mask, pixel_values=px).logits - ref).abs().max() < 1e-5
    # ours -> HF dir -> ours: identical tensors
    back = BridgeTowerForMaskedLM.from_pretrained(tmp_path / "hf")
    for (k, v), (k2, v2) in zip(ours.state_dict().items(), back.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(v, v2), k
    # the HF directory also loads into the ITM model (its head missing -> strict error)
    with pytest.raises(ValueError, match=r"missing: itm_score.fc.bias, itm_score.fc.weight"):
        BridgeTowerForImageAndTextRetrieval.from_pretrained(tmp_path / "hf")
    itm = BridgeTowerForImageAndTextRetrieval.from_pretrained(tmp_path / "hf", strict=False)
    assert itm.load_report.missing == ["itm_score.fc.bias", "itm_score.fc.weight"]
    assert "mlm_score.bias" in itm.load_report.unused_heads


def test_hf_pytorch_bin_is_read_with_weights_only(tmp_path):
    hf = perturbed(transformers.BridgeTowerModel, hf_config())
    hf.config.save_pretrained(tmp_path)
    torch.save(hf.state_dict(), tmp_path / "pytorch_model.bin")
    ours = BridgeTowerModel.from_pretrained(tmp_path).eval()
    ids, mask, px = batch()
    ref = hf(input_ids=ids, attention_mask=mask, pixel_values=px).pooler_output
    assert (ours(ids, mask, px).pooler_output - ref).abs().max() < 1e-4


def test_mismatched_checkpoint_reports_keys(caplog):
    hf = perturbed(transformers.BridgeTowerForImageAndTextRetrieval, hf_config())
    sd = dict(hf.state_dict())
    sd["bridgetower.some_new_module.weight"] = torch.zeros(3)
    del sd["bridgetower.cross_modal_text_pooler.dense.bias"]
    sd["itm_score.fc.weight"] = torch.zeros(2, 64)  # wrong shape (2, 128) expected
    model = BridgeTowerForImageAndTextRetrieval(config_from_hf(hf.config))
    with pytest.raises(ValueError) as err:
        load_converted_state_dict(model, convert_hf_state_dict(sd))
    msg = str(err.value)
    assert "bridgetower.some_new_module.weight" in msg
    assert "bridgetower.cross_modal_text_pooler.dense.bias" in msg
    assert "itm_score.fc.weight" in msg
    with caplog.at_level("WARNING"):
        report = load_converted_state_dict(model, convert_hf_state_dict(sd), strict=False)
    assert report.unexpected == ["bridgetower.some_new_module.weight"]
    assert report.missing == ["bridgetower.cross_modal_text_pooler.dense.bias"]
    assert report.mismatched == [("itm_score.fc.weight", (2, 64), (2, 128))]
    assert "does not match" in caplog.text
    # what did load is the checkpoint's
    torch.testing.assert_close(
        model.bridgetower.cross_modal_text_pooler.dense.weight, sd["bridgetower.cross_modal_text_pooler.dense.weight"]
    )


def test_pretraining_model_exports_to_hf_without_itc(tmp_path, caplog):
    model = create_model("bridgetower-tiny", task="pretraining", text={"hidden_size": 128})
    with caplog.at_level("WARNING"):
        model.save_pretrained(tmp_path, format="hf")
    assert "ITC" in caplog.text
    itm = transformers.BridgeTowerForImageAndTextRetrieval.from_pretrained(tmp_path).eval()
    ids, mask, px = batch(image=64, vocab=60)
    model.eval()
    ours = model(ids, mask, px).itm_logits
    # our tiny config uses official eps (1e-12) that HF cannot express: small differences
    assert (itm(input_ids=ids, attention_mask=mask, pixel_values=px).logits - ours).abs().max() < 1e-3
    assert isinstance(BridgeTowerForPretraining.from_pretrained(tmp_path, strict=False), BridgeTowerForPretraining)
