"""Explanations: cross-modal attention maps, the relevance map of the ITM score, the overlay
PNG and ``bridgetower explain``; with the small trained checkpoint of tests/data/search_model
(benchmarks/make_search_test_model.py), relevance for "a red circle" lands on the red circle."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from bridgetower.cli import main
from bridgetower.data.scenes import build_scene_tokenizer, make_scene
from bridgetower.explain import cross_attention_maps, explain, relevance_map, save_overlay
from bridgetower.models import create_model
from bridgetower.search.demo import box_mean, red_circle_relevance_fraction, red_circle_scenes

SEARCH_MODEL = Path(__file__).parent / "data" / "search_model"


@pytest.fixture(scope="module")
def random_model():
    torch.manual_seed(0)
    tok = build_scene_tokenizer()
    m = create_model("bridgetower-tiny", task="pretraining", text={"vocab_size": len(tok)}).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return m, tok


@pytest.fixture(scope="module")
def trained():
    from bridgetower.training.run import load_saved_model, saved_tokenizer

    model = load_saved_model(SEARCH_MODEL).float().eval()
    return model, saved_tokenizer(SEARCH_MODEL)


def _inputs(tok, text="a red circle on the left"):
    from bridgetower.data.transforms import ImageTransform

    image, scene = make_scene(5, 1)
    enc = tok([text], return_tensors="pt")
    return image, ImageTransform(64)(image), enc["input_ids"][0], enc["attention_mask"][0]


def test_attention_maps_are_the_models_cross_attentions(random_model):
    m, tok = random_model
    _, px, ids, mask = _inputs(tok)
    maps = cross_attention_maps(m, px, ids, mask)
    assert maps.shape == (2, 4, ids.numel(), 4, 4)
    out = m.bridgetower(ids[None], mask[None], px[None], output_attentions=True)
    full = out.cross_attentions[1][0][0]  # last layer, text -> image, (heads, L, 1 + P)
    assert torch.allclose(full.sum(-1), torch.ones_like(full.sum(-1)), atol=1e-5)  # probabilities
    assert torch.allclose(maps[1], full[:, :, 1:].reshape(4, -1, 4, 4))


def test_relevance_is_the_gradient_weighted_attention(random_model):
    m, tok = random_model
    _, px, ids, mask = _inputs(tok)
    per_token = relevance_map(m, px, ids, mask, per_token=True)
    whole = relevance_map(m, px, ids, mask)
    assert per_token.shape == (ids.numel(), 4, 4) and whole.shape == (4, 4)
    assert torch.allclose(per_token.sum(0), whole) and (whole >= 0).all() and whole.sum() > 0
    # reference: float64 copy of the model, gradients by .backward() on retained attentions
    m64 = create_model("bridgetower-tiny", task="pretraining", text={"vocab_size": len(tok)}).double().eval()
    m64.load_state_dict(m.state_dict())
    out = m64.bridgetower(ids[None], mask[None], px[None].double(), output_attentions=True)
    attn = [layer[0] for layer in out.cross_attentions]
    for a in attn:
        a.retain_grad()
    logits = m64.itm_score(out.pooler_output)[0]
    (logits[1] - logits[0]).backward()
    ref = sum((a.grad * a).mean(1).clamp_min(0)[0, :, 1:] for a in attn).reshape(-1, 4, 4)
    assert torch.allclose(per_token.double(), ref, atol=1e-5, rtol=1e-3)


def test_explain_writes_an_overlay_and_checks_inputs(random_model, tmp_path):
    m, tok = random_model
    image, *_ = _inputs(tok)
    res = explain(m, tok, image, "a red circle on the left", token="circle", out=tmp_path / "o.png")
    assert res.tokens[res.tokens.index("circle")] == "circle"
    assert torch.allclose(res.relevance, res.token_relevance[res.tokens.index("circle")])
    from PIL import Image

    with Image.open(tmp_path / "o.png") as im:
        assert im.size == (256, 256) and im.mode == "RGB"
    with pytest.raises(ValueError, match="text must be a non-empty string"):
        explain(m, tok, image, " ")
    with pytest.raises(ValueError, match="token 'hexagon' is not among"):
        explain(m, tok, image, "a red circle", token="hexagon")
    with pytest.raises(TypeError, match="ITM head"):
        explain(create_model("bridgetower-tiny", task="contrastive"), tok, image, "a red circle")
    with pytest.raises(ValueError, match="pixel_values must be one image"):
        relevance_map(m, torch.randn(2, 3, 64, 64), torch.tensor([0, 7, 2]))
    with pytest.raises(ValueError, match="relevance must be a"):
        save_overlay(image, torch.zeros(4), tmp_path / "x.png")


def test_box_mean_weights_patches_by_overlap():
    rel = np.arange(16, dtype=float).reshape(4, 4)
    assert box_mean(rel, (0, 0, 16, 16), 64) == 0.0
    assert box_mean(rel, (16, 0, 48, 16), 64) == pytest.approx(1.5)
    assert box_mean(rel, (8, 8, 24, 24), 64) == pytest.approx((0 + 1 + 4 + 5) / 4)


@pytest.mark.skipif(not (SEARCH_MODEL / "config.json").is_file(), reason="tests/data/search_model is missing")
def test_trained_model_relevance_falls_on_the_red_circle(trained):
    model, tok = trained
    frac, pairs = red_circle_relevance_fraction(model, tok, red_circle_scenes(60))
    assert len(pairs) == 60
    assert frac >= 0.65, (frac, pairs)  # chance 0.5; P(>= 0.65 by chance) ~ 1 %


@pytest.mark.skipif(not (SEARCH_MODEL / "config.json").is_file(), reason="tests/data/search_model is missing")
def test_cli_explain(tmp_path, capsys):
    image, _ = red_circle_scenes(1)[0]
    image.save(tmp_path / "scene.png")
    assert main(["explain", str(tmp_path / "scene.png"), "a red circle", "--checkpoint", str(SEARCH_MODEL)]) == 0
    assert (tmp_path / "scene-explain.png").read_bytes()[:4] == b"\x89PNG"
    out32 = capsys.readouterr().out
    assert "relevance of the whole text over a 4x4 patch grid" in out32
    # --dtype bf16: the weights converted once; the match logit within 0.1 of float32's
    assert main(["explain", str(tmp_path / "scene.png"), "a red circle", "--checkpoint", str(SEARCH_MODEL),
                 "--dtype", "bf16", "--out", str(tmp_path / "bf16.png")]) == 0
    out16 = capsys.readouterr().out
    logit = [float(o.split("match logit ")[1].split(";")[0]) for o in (out32, out16)]
    assert abs(logit[0] - logit[1]) < 0.1 and (tmp_path / "bf16.png").is_file(), (out32, out16)
    assert main(["explain", str(tmp_path / "missing.png"), "a red circle", "--checkpoint", str(SEARCH_MODEL)]) == 2


def test_scene_object_boxes_bound_the_drawn_pixels():
    from bridgetower.data.scenes import COLOURS

    checked = 0
    for i in range(40):
        image, scene = make_scene(11, i)
        px = np.asarray(image).astype(int)
        for obj in scene.objects:
            ys, xs = np.nonzero(np.abs(px - np.array(COLOURS[obj.colour])).sum(-1) == 0)
            if len(xs) == 0 or any(o is not obj and o.colour == obj.colour for o in scene.objects):
                continue
            x0, y0, x1, y1 = obj.box
            assert x0 - 1 <= xs.min() and xs.max() <= x1 + 1 and y0 - 1 <= ys.min() and ys.max() <= y1 + 1
            assert xs.min() <= x0 + 2 and xs.max() >= x1 - 2 and ys.min() <= y0 + 2 and ys.max() >= y1 - 2
            checked += 1
    assert checked >= 40
