"""A fine-tuning run says what it skipped (issue 19): the bad rows of an official table are
counted per reason, printed at the end and written to ``finetune_summary.json``."""

from __future__ import annotations

import io
import json

import torch

from bridgetower.cli import main
from bridgetower.data import build_scene_tokenizer, write_arrow_table
from bridgetower.data.downstream import VQA_ANSWERS, SceneVQADataset
from bridgetower.models import BridgeTowerForPretraining, get_config


def _png(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def test_finetune_counts_the_bad_rows_of_its_table(tmp_path, capsys):
    tok = build_scene_tokenizer()
    cfg = get_config("bridgetower-tiny").replace(
        **{"text.vocab_size": len(tok), "vision.layers": 2, "text.num_layers": 2, "itc_dim": 16}
    )
    torch.manual_seed(0)
    BridgeTowerForPretraining(cfg).save_pretrained(tmp_path / "pre" / "model")
    tok.save_pretrained(str(tmp_path / "pre" / "model"))
    scenes = SceneVQADataset(6, seed=3)
    rows = []
    for i in range(6):
        s = scenes[i]
        rows.append({"image": _png(s["image"]), "questions": [s["caption"]], "answers": [[s["answer"]]],
                     "answer_labels": [[VQA_ANSWERS.index(s["answer"])]], "answer_scores": [[1.0]],
                     "image_id": i, "question_id": [i], "split": "train"})
    rows[1]["image"] = b"\x89PNG\r\n\x1a\n not a picture"  # unreadable_image
    rows[4]["questions"] = ["   "]  # empty_caption
    table = write_arrow_table(tmp_path / "vqa.arrow", rows, "vqa")
    out = tmp_path / "run"
    assert main(["finetune", "vqa", "--pretrained", str(tmp_path / "pre"), "--train-data", str(table),
                 "--num-answers", "16", "--image-size", "64", "--steps", "1", "--batch-size", "6",
                 "--output-dir", str(out), "--progress", "off", "--quiet"]) == 0
    summary = json.loads((out / "finetune_summary.json").read_text())
    assert summary["skipped"] == {"missing_file": 0, "unreadable_image": 1, "empty_caption": 1, "bad_record": 0}
    assert "skipped 2 samples: unreadable_image=1, empty_caption=1" in capsys.readouterr().out
