"""Task heads: shapes, HF parity where HF has the head, losses against explicit formulas."""

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
    contrastive_loss,
    irtr_loss,
    itc_loss,
    itm_loss,
    mlm_loss,
    nlvr2_loss,
    snli_loss,
    vqa_loss,
)

H, V = 16, 37


def _ce_rows(logits, targets):
    """Explicit mean over rows of -log softmax(logits)[target], in float64 Python arithmetic."""
    total = 0.0
    for row, t in zip(logits.double().tolist(), targets.tolist(), strict=True):
        m = max(row)
        lse = m + math.log(sum(math.exp(v - m) for v in row))
        total += lse - row[t]
    return total / len(targets)


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


# ------------------------------------------------------------------ losses


def test_mlm_loss_formula_and_ignore_index():
    logits = torch.randn(2, 3, V)
    labels = torch.tensor([[5, -100, 7], [-100, -100, 36]])
    keep = labels.view(-1) != -100
    ref = _ce_rows(logits.view(-1, V)[keep], labels.view(-1)[keep])
    assert mlm_loss(logits, labels).item() == pytest.approx(ref, rel=1e-5)


def test_mlm_loss_no_masked_token_is_zero_with_grad():
    logits = torch.randn(2, 3, V, requires_grad=True)
    loss = mlm_loss(logits, torch.full((2, 3), -100))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.all(logits.grad == 0)


def test_itm_nlvr2_snli_losses_formula():
    for fn, c in ((itm_loss, 2), (nlvr2_loss, 2), (snli_loss, 3)):
        logits = torch.randn(5, c)
        labels = torch.randint(0, c, (5,))
        assert fn(logits, labels).item() == pytest.approx(_ce_rows(logits, labels), rel=1e-5)


def test_vqa_head_and_loss_formula():
    head = VQAHead(H, num_answers=11)
    assert head.classifier[0].in_features == 2 * H and head.classifier[0].out_features == 4 * H
    logits = head(torch.randn(3, 2 * H))
    assert logits.shape == (3, 11)
    x = torch.randn(3, 11)
    t = torch.rand(3, 11) * (torch.rand(3, 11) > 0.6)
    sig = torch.sigmoid(x.double())
    bce = -(t * torch.log(sig) + (1 - t) * torch.log(1 - sig)).mean() * 11
    assert vqa_loss(x, t).item() == pytest.approx(bce.item(), rel=1e-5)


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


def test_itc_loss_with_gather_uses_rank_offset():
    b, e = 3, 6
    t = torch.nn.functional.normalize(torch.randn(b, e), dim=-1)
    i = torch.nn.functional.normalize(torch.randn(b, e), dim=-1)
    other_t = torch.nn.functional.normalize(torch.randn(b, e), dim=-1)
    other_i = torch.nn.functional.normalize(torch.randn(b, e), dim=-1)
    # simulated world of 2 ranks; we are rank 1
    gather = lambda x: torch.cat([other_t if x is t else other_i, x], dim=0)
    loss = itc_loss(t, i, 0.1, gather=gather, rank=1)
    ref = _itc_ref(t, i, torch.cat([other_t, t]), torch.cat([other_i, i]), 0.1, torch.arange(b) + b)
    assert loss.item() == pytest.approx(ref, rel=1e-5)
    with pytest.raises(ValueError, match="rank 2 out of range"):
        itc_loss(t, i, 0.1, gather=gather, rank=2)


def test_itc_soft_labels_equal_hard_when_one_hot():
    t = torch.nn.functional.normalize(torch.randn(3, 5), dim=-1)
    i = torch.nn.functional.normalize(torch.randn(3, 5), dim=-1)
    hard = itc_loss(t, i, 0.2)
    soft = itc_loss(t, i, 0.2, labels=torch.eye(3))
    torch.testing.assert_close(hard, soft)


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


def test_irtr_loss_formula_flat_and_grouped():
    scores = torch.randn(3, 4)  # 1 positive + 3 false texts
    ref = _ce_rows(scores, torch.zeros(3, dtype=torch.long))
    assert irtr_loss(scores).item() == pytest.approx(ref, rel=1e-5)
    assert irtr_loss(scores.reshape(-1), group_size=4).item() == pytest.approx(ref, rel=1e-5)


# ------------------------------------------------------------------ errors


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match=r"last dimension 32"):
        ITMHead(H)(torch.randn(2, H))
    with pytest.raises(ValueError, match="3 dims"):
        Pooler(H)(torch.randn(2, H))
    with pytest.raises(ValueError, match="labels must be"):
        itm_loss(torch.randn(4, 2), torch.zeros(3, dtype=torch.long))
    with pytest.raises(TypeError, match="integer"):
        itm_loss(torch.randn(4, 2), torch.zeros(4))
    with pytest.raises(ValueError, match="3 classes"):
        snli_loss(torch.randn(4, 2), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="shape of logits"):
        mlm_loss(torch.randn(2, 3, V), torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="num_answers"):
        vqa_loss(torch.randn(2, 5), torch.rand(2, 6))
    with pytest.raises(TypeError, match="soft scores"):
        vqa_loss(torch.randn(2, 5), torch.ones(2, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="group_size"):
        irtr_loss(torch.randn(7), group_size=4)
    with pytest.raises(ValueError, match="K >= 1"):
        irtr_loss(torch.randn(3, 1))
    with pytest.raises(ValueError, match="both be"):
        itc_loss(torch.randn(3, 4), torch.randn(2, 4), 0.1)
    with pytest.raises(ValueError, match="temperature"):
        ITCHead(H, temperature=0.9)
    with pytest.raises(ValueError, match="pair shapes"):
        NLVR2Head(H)(torch.randn(2, 2 * H), torch.randn(3, 2 * H))
    with pytest.raises(ValueError, match="hidden_size must be a positive int"):
        VQAHead(0)
    with pytest.raises(ValueError, match="hidden sizes differ"):
        IRTRHead(H).init_from_itm(ITMHead(H + 1))
