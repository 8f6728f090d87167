"""Task models: heads, losses, the pre-training API, two-image and ranking models, our format."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from bridgetower.models import (
    BridgeTowerForImageAndTextRetrieval,
    BridgeTowerForIRTR,
    BridgeTowerForMaskedLM,
    BridgeTowerForNLVR2,
    BridgeTowerForPretraining,
    BridgeTowerModel,
    create_model,
    get_config,
)


def _config(**kw):
    return get_config(
        "bridgetower-tiny",
        vision={"width": 64, "layers": 2, "heads": 2, "image_size": 32},
        text={"vocab_size": 40, "hidden_size": 32, "num_layers": 2, "num_heads": 2,
              "intermediate_size": 64, "max_position_embeddings": 20},
        fusion={"hidden_size": 32, "num_layers": 2, "num_heads": 2, "intermediate_size": 64},
        itc_dim=16, vqa_num_labels=7, **kw,
    )


def _inputs(b=4, length=8):
    ids = torch.randint(3, 40, (b, length))
    mask = torch.ones(b, length, dtype=torch.long)
    mask[1, 4:] = 0
    ids[mask == 0] = 1
    return ids, mask, torch.randn(b, 3, 32, 32)


def test_pretraining_forward_logits_and_losses():
    model = BridgeTowerForPretraining(_config()).eval()
    ids, mask, px = _inputs()
    labels = torch.full_like(ids, -100)
    labels[:, 2] = ids[:, 2]
    itm = torch.tensor([1, 0, 1, 0])
    out = model(ids, mask, px, mlm_labels=labels, itm_labels=itm, return_itc_loss=True)
    assert out.mlm_logits.shape == (4, 8, 40) and out.itm_logits.shape == (4, 2)
    assert out.itc_text_embeds.shape == (4, 16)
    torch.testing.assert_close(out.itc_text_embeds.norm(dim=-1), torch.ones(4))
    torch.testing.assert_close(out.mlm_loss, F.cross_entropy(out.mlm_logits[:, 2], ids[:, 2]))
    torch.testing.assert_close(out.itm_loss, F.cross_entropy(out.itm_logits, itm))
    sim = out.itc_text_embeds @ out.itc_image_embeds.T / 0.07
    ref_itc = (F.cross_entropy(sim, torch.arange(4)) + F.cross_entropy(sim.T, torch.arange(4))) / 2
    torch.testing.assert_close(out.itc_loss, ref_itc)
    torch.testing.assert_close(out.loss, out.mlm_loss + out.itm_loss + out.itc_loss)
    assert out.logits is out.itm_logits
    # no labels: logits only
    bare = model(ids, mask, px)
    assert bare.loss is None and bare.mlm_loss is None
    torch.testing.assert_close(bare.itm_logits, out.itm_logits)


def _pretraining_batch(ids, mask, px, pixel_mask=None):
    masked = ids.clone()
    masked[:, 2] = 3
    labels = torch.full_like(ids, -100)
    labels[:, 2] = ids[:, 2]
    batch = {
        "input_ids": ids, "attention_mask": mask, "pixel_values": px,
        "mlm_input_ids": masked, "mlm_labels": labels,
        "itm_image_index": torch.tensor([0, 2, 2, 1]), "itm_labels": torch.tensor([1, 0, 1, 0]),
    }
    if pixel_mask is not None:
        batch["pixel_mask"] = pixel_mask
    return batch


def test_pretraining_step_matches_separate_fusions_and_trains_every_parameter():
    model = BridgeTowerForPretraining(_config()).train()
    for m in model.modules():  # deterministic comparison
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    ids, mask, px = _inputs()
    batch = _pretraining_batch(ids, mask, px)
    out = model.pretraining_step(batch, itc=True)
    out.loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    idx = batch["itm_image_index"]
    with torch.no_grad():
        mlm_ref = model(batch["mlm_input_ids"], mask, px, mlm_labels=batch["mlm_labels"]).mlm_loss
        itm_ref = model(ids, mask, px[idx], itm_labels=batch["itm_labels"]).itm_loss
        itc_ref = model(ids, mask, px, return_itc_loss=True).itc_loss
    torch.testing.assert_close(out.mlm_loss, mlm_ref)
    torch.testing.assert_close(out.itm_loss, itm_ref)
    torch.testing.assert_close(out.itc_loss, itc_ref)
    torch.testing.assert_close(out.loss, mlm_ref + itm_ref + itc_ref)
    batch.pop("mlm_input_ids")
    with pytest.raises(ValueError, match="mlm_input_ids"):
        model.pretraining_step(batch)
    with pytest.raises(ValueError, match="at least one"):
        model.pretraining_step(batch, mlm=False, itm=False)


def test_pretraining_step_applies_the_pixel_mask():
    """A padded image's padding patches are masked in the step exactly as in forward."""
    model = BridgeTowerForPretraining(_config()).eval()
    model.set_image_padding_mask(True)
    ids, mask, px = _inputs()
    pixel_mask = torch.ones(4, 32, 32, dtype=torch.long)
    pixel_mask[2, :, 16:] = 0  # image 2: right half is padding
    px[2, :, :, 16:] = 0
    batch = _pretraining_batch(ids, mask, px, pixel_mask)
    with torch.no_grad():
        out = model.pretraining_step(batch)
        idx = batch["itm_image_index"]
        ref = model(ids, mask, px[idx], pixel_mask[idx]).itm_logits
        unmasked = model(ids, mask, px[idx]).itm_logits
    torch.testing.assert_close(out.itm_logits, ref)
    assert not torch.allclose(out.itm_logits[1:3], unmasked[1:3])  # rows that use image 2


def test_nlvr2_uses_token_types_1_and_2():
    model = BridgeTowerForNLVR2(_config()).eval()
    assert model.bridgetower.token_type_embeddings.num_embeddings == 3
    ids, mask, px = _inputs()
    px2 = torch.randn_like(px)
    out = model(ids, mask, torch.stack([px, px2], 1), labels=torch.tensor([0, 1, 1, 0]))
    assert out.logits.shape == (4, 2) and out.loss is not None
    bt = model.bridgetower
    with torch.no_grad():
        p1 = bt(ids, mask, px, image_token_type_idx=1).pooler_output
        p2 = bt(ids, mask, px2, image_token_type_idx=2).pooler_output
        torch.testing.assert_close(out.logits, model.nlvr2_classifier(torch.cat([p1, p2], -1)))
        model.init_token_type_from_pretrained()
        same = bt(ids, mask, px, image_token_type_idx=2).pooler_output
    torch.testing.assert_close(same, p1)
    torch.testing.assert_close(model(ids, mask, px, pixel_values_2=px2).logits.shape, out.logits.shape)
    with pytest.raises(ValueError, match=r"\(B, 2, 3, H, W\)"):
        model(ids, mask, px)


def test_nlvr2_masks_each_image_with_its_own_pixel_mask():
    model = BridgeTowerForNLVR2(_config()).eval()
    ids, mask, px = _inputs()
    px2 = torch.randn_like(px)
    m1 = torch.ones(4, 32, 32, dtype=torch.long)
    m2 = torch.ones(4, 32, 32, dtype=torch.long)
    m2[:, 16:, :] = 0  # only the second image is padded
    model.set_image_padding_mask(True)
    bt = model.bridgetower
    with torch.no_grad():
        out = model(ids, mask, px, m1, pixel_values_2=px2, pixel_mask_2=m2).logits
        stacked = model(ids, mask, torch.stack([px, px2], 1), torch.stack([m1, m2], 1)).logits
        p1 = bt(ids, mask, px, m1, image_token_type_idx=1).pooler_output
        p2 = bt(ids, mask, px2, m2, image_token_type_idx=2).pooler_output
        wrong = bt(ids, mask, px2, m1, image_token_type_idx=2).pooler_output
    want = model.nlvr2_classifier(p1, p2)
    torch.testing.assert_close(out, want)
    torch.testing.assert_close(stacked, want)
    assert not torch.allclose(out, model.nlvr2_classifier(p1, wrong))
    with pytest.raises(ValueError, match="both images"):
        model(ids, mask, px, m1, pixel_values_2=px2)


def test_irtr_scores_each_text_against_its_image():
    model = BridgeTowerForIRTR(_config()).eval()
    itm = BridgeTowerForImageAndTextRetrieval(_config())
    model.init_from_itm(itm.itm_score)
    ids, mask, px = _inputs(b=6)
    ids3, mask3 = ids.reshape(2, 3, 8), mask.reshape(2, 3, 8)
    out = model(ids3, mask3, px[:2], labels=True)
    assert out.logits.shape == (2, 3)
    with torch.no_grad():
        single = model.rank_output(model.bridgetower(ids[4:5], mask[4:5], px[1:2]).pooler_output)
    torch.testing.assert_close(out.logits[1, 1], single[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.loss, F.cross_entropy(out.logits, torch.zeros(2, dtype=torch.long)))
    torch.testing.assert_close(model.rank_output.fc.weight, itm.itm_score.fc.weight[1:2])


@pytest.mark.parametrize("task, labels", [("vqa", "soft"), ("snli-ve", "class"), ("snli_ve", "class"), ("mlm", "tokens")])
def test_downstream_heads(task, labels):
    model = create_model("bridgetower-tiny", task=task, **{k: v for k, v in _config().to_dict().items()}).eval()
    ids, mask, px = _inputs()
    px = torch.randn(4, 3, 32, 32)
    y = {"soft": torch.rand(4, 7), "class": torch.tensor([0, 1, 2, 1]), "tokens": ids}[labels]
    out = model(ids, mask, px, labels=y)
    if task == "vqa":
        torch.testing.assert_close(out.loss, F.binary_cross_entropy_with_logits(out.logits, y) * 7)
    elif task.startswith("snli"):
        torch.testing.assert_close(out.loss, F.cross_entropy(out.logits, y))
    else:
        torch.testing.assert_close(out.loss, F.cross_entropy(out.logits.reshape(-1, 40), ids.reshape(-1)))


def test_own_format_roundtrip_and_retarget(tmp_path):
    model = BridgeTowerForPretraining(_config()).eval()
    model.save_pretrained(tmp_path / "pt")
    meta = json.loads((tmp_path / "pt" / "config.json").read_text())
    assert meta["format"] == "bridgetower" and meta["task"] == "pretraining"
    again = BridgeTowerForPretraining.from_pretrained(tmp_path / "pt").eval()
    ids, mask, px = _inputs()
    torch.testing.assert_close(again(ids, mask, px).mlm_logits, model(ids, mask, px).mlm_logits, rtol=0, atol=0)
    # the pre-training checkpoint starts the MLM model and the bare encoder
    mlm = BridgeTowerForMaskedLM.from_pretrained(tmp_path / "pt")
    assert mlm.load_report.ok and "itm_score.fc.weight" in mlm.load_report.unused_heads
    enc = BridgeTowerModel.from_pretrained(tmp_path / "pt").eval()
    torch.testing.assert_close(enc(ids, mask, px).pooler_output, model.bridgetower(ids, mask, px).pooler_output)
    # NLVR2 from the pre-training checkpoint: the token-type table grows to 3 rows (2 := 1)
    nlvr2 = BridgeTowerForNLVR2.from_pretrained(tmp_path / "pt", strict=False)
    assert nlvr2.load_report.resized == ["bridgetower.token_type_embeddings.weight"]
    assert nlvr2.load_report.missing == sorted(k for k in nlvr2.state_dict() if k.startswith("nlvr2_classifier."))
    tt = nlvr2.bridgetower.token_type_embeddings.weight
    torch.testing.assert_close(tt[:2], model.bridgetower.token_type_embeddings.weight)
    torch.testing.assert_close(tt[2], tt[1])
    # and back: encoder-only checkpoint into a task model -> heads missing (strict) / reported
    enc.save_pretrained(tmp_path / "enc")
    with pytest.raises(ValueError, match="missing: itm_score"):
        BridgeTowerForImageAndTextRetrieval.from_pretrained(tmp_path / "enc")
    with pytest.raises(ValueError, match="format must be"):
        model.save_pretrained(tmp_path / "x", format="onnx")
    with pytest.raises(ValueError, match="not a bridgetower"):
        BridgeTowerModel.from_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        BridgeTowerModel.from_pretrained(tmp_path / "missing")
