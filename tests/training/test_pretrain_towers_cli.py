"""``bridgetower pretrain --vision-pretrained FILE --text-pretrained DIR``: a short run on a
folder of pairs starts from locally saved open_clip / RoBERTa weights and their tokenizer."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from bridgetower.cli import main
from bridgetower.data import make_scene
from bridgetower.models import get_config
from bridgetower.models.tokenizer import build_wordlevel_tokenizer

open_clip = pytest.importorskip("open_clip")
transformers = pytest.importorskip("transformers")


def _pairs(folder, n=8):
    folder.mkdir()
    lines, words = [], set()
    for i in range(n):
        image, scene = make_scene(7, i)
        image.save(folder / f"img{i}.png")
        lines.append(json.dumps({"image": f"img{i}.png", "caption": scene.caption}))
        words |= set(scene.caption.replace(".", " ").split())
    (folder / "index.jsonl").write_text("\n".join(lines) + "\n")
    return sorted(words)


def test_pretrain_starts_from_local_pretrained_towers(tmp_path, capsys):
    words = _pairs(tmp_path / "pairs")
    torch.manual_seed(0)
    clip = open_clip.model.CLIP(
        embed_dim=32, quick_gelu=True,
        vision_cfg={"image_size": 64, "layers": 4, "width": 128, "head_width": 64, "patch_size": 16},
        text_cfg={"context_length": 8, "vocab_size": 50, "width": 64, "heads": 2, "layers": 1})
    torch.save({"state_dict": clip.state_dict()}, tmp_path / "clip.pt")
    text_dir = tmp_path / "roberta"
    tok = build_wordlevel_tokenizer(words, text_dir)
    roberta = transformers.RobertaModel(transformers.RobertaConfig(
        vocab_size=len(tok), hidden_size=128, num_hidden_layers=4, num_attention_heads=4,
        intermediate_size=512, max_position_embeddings=66, type_vocab_size=1, pad_token_id=1))
    roberta.save_pretrained(text_dir)
    out = tmp_path / "run"
    args = ["pretrain", "--data", str(tmp_path / "pairs"), "--output-dir", str(out), "--model", "bridgetower-tiny",
            "--steps", "1", "--batch-size", "4", "--grad-accum", "1", "--max-text-len", "32",
            "--progress", "off", "--quiet", "--vision-pretrained", str(tmp_path / "clip.pt"),
            "--text-pretrained", str(text_dir)]
    assert main(args) == 0
    got = load_file(str(out / "model" / "model.safetensors"))
    # one optimizer step at lr 1e-5 (the official recipe) moves a weight by about 1e-5
    vis, txt = clip.visual.state_dict(), roberta.state_dict()
    for ours, src in (("bridgetower.vision_model.visual.transformer.resblocks.3.mlp.c_fc.weight",
                       vis["transformer.resblocks.3.mlp.c_fc.weight"]),
                      ("bridgetower.text_model.model.encoder.layer.2.attention.self.query.weight",
                       txt["encoder.layer.2.attention.self.query.weight"])):
        assert (got[ours] - src).abs().max() < 1e-4
        assert (got[ours] - src).abs().max() > 0  # and it trained
    saved = transformers.AutoTokenizer.from_pretrained(str(out / "model"))
    assert saved.get_vocab() == tok.get_vocab()  # the text tower's tokenizer came along

    # a config that does not match the source is a flag error naming the override
    cfg = get_config("bridgetower-tiny").to_dict()
    cfg["vision"].update(width=64, heads=1)
    (tmp_path / "narrow.json").write_text(json.dumps(cfg))
    bad = [a if a != "bridgetower-tiny" else str(tmp_path / "narrow.json") for a in args]
    bad[bad.index(str(out))] = str(tmp_path / "run2")
    assert main(bad) == 2
    err = capsys.readouterr().err
    assert "--vision-pretrained:" in err and "vision.width=64 but the source has 128" in err


def test_finetune_with_augmentation_and_loader_workers(tmp_path):
    pytest.importorskip("torchvision")
    short = ["--steps", "2", "--batch-size", "4", "--eval-size", "4", "--train-size", "16", "--log-every", "1",
             "--progress", "off", "--quiet", "--recipe", "official", "--image-size", "64"]
    out = tmp_path / "ft"
    assert main(["finetune", "snli-ve", "--output-dir", str(out), "--augment", "randaug", "--num-workers", "2",
                 *short]) == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["split"] == "train"]
    assert len(train) == 2 and all(0 <= r["data_wait_share"] <= 1 and r["samples_per_s"] > 0 for r in train)
    with pytest.raises(SystemExit):
        main(["finetune", "snli-ve", "--output-dir", str(tmp_path / "bad"), "--augment", "autoaugment", *short])
