"""Pretrained uni-modal towers, offline: small open_clip / transformers models with random
weights are saved locally, loaded through ``create_model(vision_pretrained=, text_pretrained=)``
and every copied tensor is compared with the source."""

from __future__ import annotations

import json

import pytest
import torch

from bridgetower.models import create_model
from bridgetower.models.pretrained_towers import load_tokenizer, parse_vision_source
from bridgetower.models.tokenizer import build_wordlevel_tokenizer

open_clip = pytest.importorskip("open_clip")
transformers = pytest.importorskip("transformers")

# bridgetower-tiny's towers: ViT width 128, 4 layers, 2 heads, patch 16, QuickGELU; RoBERTa
# 128 wide, 4 layers, 4 heads, 512 MLP, 66 positions
VISION_CFG = {"image_size": 32, "layers": 4, "width": 128, "head_width": 64, "patch_size": 16}
TEXT_CFG = {"context_length": 8, "vocab_size": 50, "width": 64, "heads": 2, "layers": 1}


def _clip():
    torch.manual_seed(0)
    return open_clip.model.CLIP(embed_dim=32, vision_cfg=VISION_CFG, text_cfg=TEXT_CFG, quick_gelu=True)


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("towers")
    clip = _clip()
    clip_file = root / "clip.pt"
    torch.save(clip.state_dict(), clip_file)
    torch.manual_seed(1)
    roberta = transformers.RobertaModel(transformers.RobertaConfig(
        vocab_size=60, hidden_size=128, num_hidden_layers=4, num_attention_heads=4,
        intermediate_size=512, max_position_embeddings=66, type_vocab_size=1, pad_token_id=1,
    ))
    text_dir = root / "roberta"
    roberta.save_pretrained(text_dir)
    build_wordlevel_tokenizer(["a", "red", "cube"], text_dir)
    return {"clip": clip, "clip_file": clip_file, "roberta": roberta, "text_dir": text_dir, "root": root}


def _model(sources, **kw):
    return create_model("bridgetower-tiny", task="pretraining", vision_pretrained=sources["clip_file"],
                        text_pretrained=str(sources["text_dir"]), **kw)


def test_every_copied_tensor_equals_the_source(sources):
    model = _model(sources, **{"vision.ln_separate": True})
    report = model.pretrained_towers_report
    enc = model.bridgetower
    visual_src = sources["clip"].visual.state_dict()
    vis = enc.vision_model.state_dict()
    # the source grid is 2x2 (32 px), ours 4x4 (64 px): the position table is resized, not copied
    assert report.vision.resized == ["visual.positional_embedding: 5 -> 17 positions"]
    assert len(report.vision.copied) == len(visual_src) - 2  # all but proj and the position table
    for key in report.vision.copied:
        torch.testing.assert_close(vis[key], visual_src[key.removeprefix("visual.")], rtol=0, atol=0)
    assert sorted(report.vision.new) == sorted(k for k in vis if k.startswith("ln_separate."))
    assert report.vision.unused == ["visual.proj"]
    # the resized table keeps the CLS position
    torch.testing.assert_close(vis["visual.positional_embedding"][0], visual_src["positional_embedding"][0],
                               rtol=0, atol=0)

    text_src = sources["roberta"].state_dict()
    txt = enc.text_model.state_dict()
    for key in report.text.copied:
        torch.testing.assert_close(txt[key], text_src[key.removeprefix("model.")], rtol=0, atol=0)
    # our vocabulary (64) is larger than the source's (60): the new rows keep their init
    assert report.text.extended == ["model.embeddings.word_embeddings.weight: rows 60 -> 64"]
    torch.testing.assert_close(txt["model.embeddings.word_embeddings.weight"][:60],
                               text_src["embeddings.word_embeddings.weight"], rtol=0, atol=0)
    assert {k for k in report.text.unused} == {k for k in (f"model.{k}" for k in text_src) if "pooler" in k}
    assert not [k for k in report.text.new if not k.endswith("_ids")]  # only buffers, if any

    # the model-level report: everything outside the two towers is new, nothing of the towers
    new = set(report.new)
    assert any(k.startswith("bridgetower.cross_modal") or "fusion" in k for k in new)
    assert not any(k.startswith("bridgetower.text_model.model.encoder") for k in new)
    assert not any(k.startswith("bridgetower.vision_model.visual.transformer") for k in new)
    copied = len(report.vision.copied) + len(report.text.copied) + 2
    assert len(new) + copied == len(model.state_dict())


def test_named_open_clip_model_with_a_local_tag(sources):
    root = sources["root"]
    cfg_file = root / "bt-test-tiny-vit.json"
    cfg_file.write_text(json.dumps({"embed_dim": 32, "quick_gelu": True, "vision_cfg": VISION_CFG,
                                    "text_cfg": TEXT_CFG}))
    open_clip.add_model_config(cfg_file)
    model = create_model("bridgetower-tiny", vision_pretrained=("bt-test-tiny-vit", str(sources["clip_file"])))
    vis = model.vision_model.state_dict()
    src = sources["clip"].visual.state_dict()
    report = model.pretrained_towers_report
    assert report.text is None and len(report.vision.copied) == len(src) - 2
    for key in report.vision.copied:
        torch.testing.assert_close(vis[key], src[key.removeprefix("visual.")], rtol=0, atol=0)
    # the named config is checked for what weights do not show (heads, activation)
    with pytest.raises(ValueError, match=r"vision\.heads=4 .* has 2"):
        create_model("bridgetower-tiny", vision_pretrained="bt-test-tiny-vit:" + str(sources["clip_file"]),
                     **{"vision.heads": 4})


def test_config_mismatches_name_the_field_and_the_override(sources):
    with pytest.raises(ValueError, match=r"vision\.width=256 but the source has 128.*\"vision\.width\": 128"):
        create_model("bridgetower-tiny", vision_pretrained=sources["clip_file"], **{"vision.width": 256})
    with pytest.raises(ValueError, match=r"vision\.patch_size=32 but the source has 16"):
        create_model("bridgetower-tiny", vision_pretrained=sources["clip_file"], **{"vision.patch_size": 32})
    with pytest.raises(ValueError, match=r"text\.num_layers=2 but the source has 4"):
        create_model("bridgetower-tiny", text_pretrained=str(sources["text_dir"]), **{"text.num_layers": 2})
    with pytest.raises(ValueError, match=r"text\.vocab_size=32 but the source has 60"):
        create_model("bridgetower-tiny", text_pretrained=str(sources["text_dir"]), **{"text.vocab_size": 32})
    with pytest.raises(ValueError, match="not both"):
        create_model("bridgetower-tiny", pretrained="x", text_pretrained=str(sources["text_dir"]))


def test_bad_sources_raise_clear_errors(sources, tmp_path):
    with pytest.raises(ValueError, match="MODEL:TAG"):
        parse_vision_source("no-such-file.pt")
    bad = tmp_path / "bad.pt"
    torch.save({"foo.weight": torch.zeros(2)}, bad)
    with pytest.raises(ValueError, match="no open_clip ViT weights"):
        create_model("bridgetower-tiny", vision_pretrained=bad)
    truncated = tmp_path / "truncated.pt"
    state = sources["clip"].state_dict()
    torch.save({k: v for k, v in state.items() if "resblocks.3." not in k}, truncated)
    with pytest.raises(ValueError, match="vision.layers=4 but the source has 3"):
        create_model("bridgetower-tiny", vision_pretrained=truncated)
    with pytest.raises(ValueError, match="transformers config"):
        create_model("bridgetower-tiny", text_pretrained=str(tmp_path / "missing-dir"))


def test_tokenizer_from_a_directory(sources):
    tok = load_tokenizer(sources["text_dir"])
    assert tok("a red cube")["input_ids"][1:-1] == [tok.convert_tokens_to_ids(w) for w in ("a", "red", "cube")]
    with pytest.raises(ValueError, match="could not load a tokenizer"):
        load_tokenizer(sources["root"] / "nothing-here")
