"""Task heads: shapes, HF parity where HF has the head, the losses of ITC and contrastive
heads against explicit formulas (the loss functions alone: test_losses.py)."""

from __future__ import annotations

import math

import pytest
import torch

from bridgetower.layers.heads import (
    ContrastiveHeads,
    IRTRHead,
    ITCHead,
    ITMHead,
    MLMHead,
    NLVR2Head,
    Pooler,
    SNLIVEHead,
    VQAHead,
)
from bridgetower.layers.losses import contrastive_loss

H, V = 16, 37


def _ce_rows(logits, targets):
    """Mean cross-entropy in float64 (the loss functions' own formulas: test_losses.py)."""
    return torch.nn.functional.cross_entropy(logits.double(), targets).item()


def _hf_config(eps=1e-5):
    from transformers import BridgeTowerConfig

    return BridgeTowerConfig(hidden_size=H, layer_norm_eps=eps, text_config={"vocab_size": V, "hidden_size": H})


def _randomise(module, scale=0.3):
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * scale)


# ------------------------------------------------------------------ pooler / MLM / ITM vs HF


def test_pooler_matches_hf():
    pytest.importorskip("transformers")
    from transformers.models.bridgetower.modeling_bridgetower import BridgeTowerPooler

    ours = Pooler(H)
    hf = BridgeTowerPooler(_hf_config())
    hf.load_state_dict(ours.state_dict(), strict=True)
    x = torch.randn(3, 5, H)
    out = ours(x)
    assert out.shape == (3, H)
    torch.testing.assert_close(out, hf(x))


@pytest.mark.parametrize("eps", [1e-5, 1e-12])
def test_mlm_head_matches_hf(eps):
    pytest.importorskip("transformers")
    from transformers.models.bridgetower.modeling_bridgetower import BridgeTowerMLMHead

    ours = MLMHead(H, V, eps=eps)
    _randomise(ours)
    hf = BridgeTowerMLMHead(_hf_config(eps))
    # the exact HF key names load with no rename
    hf.load_state_dict(ours.state_dict(), strict=True)
    assert set(ours.state_dict()) == {
        "transform.dense.weight", "transform.dense.bias", "transform.LayerNorm.weight",
        "transform.LayerNorm.bias", "decoder.weight", "bias",
    }
    x = torch.randn(2, 4, H)
    out = ours(x)
    assert out.shape == (2, 4, V)
    torch.testing.assert_close(out, hf(x), rtol=1e-5, atol=1e-5)


def test_mlm_head_tying():
    emb = torch.nn.Embedding(V, H)
    head = MLMHead(H, V, weight=emb.weight)
    assert head.decoder.weight is emb.weight and head.is_tied
    head.reset_parameters()  # must not re-initialise the shared embedding
    assert head.decoder.weight is emb.weight
    with pytest.raises(ValueError, match=r"\(37, 16\)"):
        MLMHead(H, V).tie_weights(torch.nn.Parameter(torch.zeros(V, H + 1)))


def test_itm_head_matches_hf():
    pytest.importorskip("transformers")
    from transformers.models.bridgetower.modeling_bridgetower import BridgeTowerITMHead

    ours = ITMHead(H)
    hf = BridgeTowerITMHead(2 * H)
    hf.load_state_dict(ours.state_dict(), strict=True)
    x = torch.randn(4, 2 * H)
    torch.testing.assert_close(ours(x), hf(x))


def test_reset_parameters_uses_bridgetower_init():
    head = VQAHead(64, 50)
    w = head.classifier[0].weight
    assert abs(w.std().item() - 0.02) < 0.003
    assert torch.all(head.classifier[0].bias == 0) and torch.all(head.classifier[1].weight == 1)


def test_vqa_head_shape():
    head = VQAHead(H, num_answers=11)
    assert head.classifier[0].in_features == 2 * H and head.classifier[0].out_features == 4 * H
    logits = head(torch.randn(3, 2 * H))
    assert logits.shape == (3, 11)


def test_nlvr2_head_pair_equals_concat():
    head = NLVR2Head(H)
    assert head.classifier[0].in_features == 4 * H and head.classifier[0].out_features == 3 * H
    a, b = torch.randn(2, 2 * H), torch.randn(2, 2 * H)
    out = head(a, b)
    assert out.shape == (2, 2)
    torch.testing.assert_close(out, head(torch.cat([a, b], -1)))


def test_snli_head_shape():
    head = SNLIVEHead(H)
    assert head.classifier[0].out_features == 2 * H
    assert head(torch.randn(4, 2 * H)).shape == (4, 3)


# ------------------------------------------------------------------ ITC (official)


def _itc_ref(t, i, all_t, all_i, temp, labels):
    li2t = (i.double() @ all_t.double().T) / temp
    lt2i = (t.double() @ all_i.double().T) / temp
    return (_ce_rows(li2t, labels) + _ce_rows(lt2i, labels)) / 2


def test_itc_head_forward_and_loss():
    head = ITCHead(H, 8)
    assert head.temperature.item() == pytest.approx(0.07)
    t, i = head(torch.randn(4, H), torch.randn(4, H))
    assert t.shape == (4, 8)
    torch.testing.assert_close(t.norm(dim=-1), torch.ones(4))
    torch.testing.assert_close(i.norm(dim=-1), torch.ones(4))
    loss = head.loss(t, i)
    ref = _itc_ref(t, i, t, i, 0.07, torch.arange(4))
    assert loss.item() == pytest.approx(ref, rel=1e-5)
    # text and vision widths may differ (e.g. RoBERTa-large text, ViT-B vision)
    wide = ITCHead(H, 8, image_hidden_size=H + 4)
    assert wide.itc_image_head.fc.in_features == H + 4
    assert wide(torch.randn(2, H), torch.randn(2, H + 4))[1].shape == (2, 8)


def test_itc_temperature_clamp():
    head = ITCHead(H, 8)
    with torch.no_grad():
        head.temperature.fill_(2.0)
    assert head.effective_temperature().item() == pytest.approx(0.5)
    head.clamp_temperature_()
    assert head.temperature.item() == pytest.approx(0.5)
    with torch.no_grad():
        head.temperature.fill_(1e-5)
    head.clamp_temperature_()
    assert head.temperature.item() == pytest.approx(0.001)
    # inside the range the temperature gets a gradient; outside it does not
    with torch.no_grad():
        head.temperature.fill_(0.1)
    t, i = head(torch.randn(4, H), torch.randn(4, H))
    head.loss(t, i).backward()
    assert head.temperature.grad.abs().item() > 0
    head.zero_grad()
    with torch.no_grad():
        head.temperature.fill_(0.9)
    t, i = head(torch.randn(4, H), torch.randn(4, H))
    head.loss(t, i).backward()
    assert head.temperature.grad.item() == 0


# ------------------------------------------------------------------ HF contrastive


def test_contrastive_heads_and_loss():
    heads = ContrastiveHeads(H, 12)
    assert heads.logit_scale.item() == pytest.approx(2.6592)
    assert heads.itc_cross_modal_head.fc.in_features == 2 * H
    out = heads(torch.randn(4, H), torch.randn(4, H), torch.randn(4, 2 * H))
    assert out.logits.shape == (4, 3, 12)
    torch.testing.assert_close(out.logits[:, 2], out.cross_embeds)
    s = math.exp(2.6592)
    labels = torch.arange(4)
    ref = (
        _ce_rows(out.text_embeds @ out.image_embeds.T * s, labels)
        + _ce_rows(out.text_embeds @ out.cross_embeds.T * s, labels)
        + _ce_rows(out.image_embeds @ out.cross_embeds.T * s, labels)
    ) / 3
    assert heads.loss(out).item() == pytest.approx(ref, rel=1e-5)
    assert contrastive_loss(*out[:3], heads.logit_scale).item() == pytest.approx(ref, rel=1e-5)


def test_contrastive_heads_hf_names():
    pytest.importorskip("transformers")
    from transformers.models.bridgetower.modeling_bridgetower import BridgeTowerContrastiveHead

    heads = ContrastiveHeads(H, 12)
    hf = BridgeTowerContrastiveHead(2 * H, 12)
    sub = {k.split("itc_cross_modal_head.")[1]: v for k, v in heads.state_dict().items() if "cross_modal" in k}
    hf.load_state_dict(sub, strict=True)
    x = torch.randn(2, 2 * H)
    torch.testing.assert_close(hf(x), heads.itc_cross_modal_head(x))


# ------------------------------------------------------------------ IRTR


def test_irtr_init_from_itm():
    itm = ITMHead(H)
    with torch.no_grad():
        itm.fc.bias.normal_()
    irtr = IRTRHead(H)
    irtr.init_from_itm(itm)
    x = torch.randn(5, 2 * H)
    torch.testing.assert_close(irtr(x), itm(x)[:, 1])
    assert irtr.fc.weight.data_ptr() != itm.fc.weight.data_ptr()  # a copy, not a view


# ------------------------------------------------------------------ errors


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match=r"last dimension 32"):
        ITMHead(H)(torch.randn(2, H))
    with pytest.raises(ValueError, match="3 dims"):
        Pooler(H)(torch.randn(2, H))
    with pytest.raises(ValueError, match="temperature"):
        ITCHead(H, temperature=0.9)
    with pytest.raises(ValueError, match="pair shapes"):
        NLVR2Head(H)(torch.randn(2, 2 * H), torch.randn(3, 2 * H))
    with pytest.raises(ValueError, match="hidden_size must be a positive int"):
        VQAHead(0)
    with pytest.raises(ValueError, match="hidden sizes differ"):
        IRTRHead(H).init_from_itm(ITMHead(H + 1))
