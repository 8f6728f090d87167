"""`bridgetower finetune TASK` and `bridgetower evaluate-retrieval`: short runs and bad input."""

from __future__ import annotations

import argparse
import json

import pytest
import torch

from bridgetower.cli import main
from bridgetower.data import build_scene_tokenizer
from bridgetower.models import BridgeTowerForPretraining, get_config

_SHORT = ["--steps", "2", "--batch-size", "4", "--eval-size", "4", "--train-size", "16", "--log-every", "1",
          "--progress", "off", "--quiet"]


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A (randomly initialised) pretraining checkpoint with its scene tokenizer, as the demo writes."""
    out = tmp_path_factory.mktemp("pretrained")
    tok = build_scene_tokenizer()
    cfg = get_config("bridgetower-tiny").replace(
        **{"text.vocab_size": len(tok), "vision.layers": 2, "text.num_layers": 2, "itc_dim": 16}
    )
    torch.manual_seed(0)
    BridgeTowerForPretraining(cfg).save_pretrained(out / "model")
    tok.save_pretrained(str(out / "model"))
    return out


def _records(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize(
    "task,metric,extra",
    [
        ("vqa", "vqa_score", []),
        ("nlvr2", "accuracy", []),
        ("snli-ve", "accuracy", []),
        ("irtr", "accuracy", ["--false-texts", "2", "--retrieval-eval-size", "4"]),
    ],
)
def test_finetune_each_task(pretrained, tmp_path, capsys, task, metric, extra):
    out = tmp_path / task
    assert main(["finetune", task, "--pretrained", str(pretrained), "--output-dir", str(out), *_SHORT, *extra]) == 0
    for name in ("model/model.safetensors", "model/config.json", "model/tokenizer.json", "metrics.jsonl",
                 "metrics.csv", "run_config.json", "finetune_summary.json", "checkpoints/latest"):
        assert (out / name).is_file(), name
    assert json.loads((out / "model/config.json").read_text())["task"].replace("_", "-") == task
    records = _records(out)
    assert [r["step"] for r in records if r["split"] == "train"] == [1, 2]
    evals = [r for r in records if r["split"] == "eval"]
    assert [r["step"] for r in evals] == [0, 2] and metric in evals[0] and "loss" in evals[0]
    summary = json.loads((out / "finetune_summary.json").read_text())
    assert summary["steps"] == 2 and summary["metric"] == metric and summary["pretrained"] == str(pretrained)
    run = json.loads((out / "run_config.json").read_text())
    assert run["recipe"]["steps"] == 2 and run["recipe"]["batch_size"] == 4
    if task == "irtr":
        assert "t2i_r1" in evals[-1] and run["recipe"]["false_texts"] == 2
    if task == "nlvr2":
        assert any("row 2 = row 1" in e for e in run["load"]["extended"])
    assert f"{task}: 2 steps" in capsys.readouterr().out


def test_finetune_from_scratch_with_the_official_recipe(tmp_path, capsys):
    out = tmp_path / "scratch"
    assert main(["finetune", "snli-ve", "--recipe", "official", "--image-size", "64", "--head-lr-mult", "7",
                 "--output-dir", str(out), *_SHORT, "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["pretrained"] is None and 0 <= summary["after"]["accuracy"] <= 1
    run = json.loads((out / "run_config.json").read_text())
    recipe = run["recipe"]
    assert run["model"] == "bridgetower-tiny" and run["load"] == {"pretrained": None}
    # the published SNLI-VE values, except the flags given
    assert (recipe["lr"], recipe["weight_decay"], recipe["warmup"], recipe["cross_modal_lr_mult"]) == (3e-6, 0.01, 0.06, 5)
    assert (recipe["head_lr_mult"], recipe["batch_size"], recipe["steps"], recipe["image_size"]) == (7, 4, 2, 64)
    # a second run into the same directory is refused; with --overwrite it replaces the first one's records
    assert main(["finetune", "snli-ve", "--output-dir", str(out), *_SHORT]) == 2
    assert "holds a previous run" in capsys.readouterr().err
    assert main(["finetune", "snli-ve", "--output-dir", str(out), *_SHORT, "--overwrite"]) == 0
    assert [r["step"] for r in _records(out) if r["split"] == "train"] == [1, 2]


def test_evaluate_retrieval_writes_json(pretrained, tmp_path, capsys):
    target = tmp_path / "r.json"
    assert main(["evaluate-retrieval", "--checkpoint", str(pretrained), "--size", "6", "--k", "3",
                 "--ks", "1", "3", "10", "--output", str(target)]) == 0
    result = json.loads(target.read_text())
    assert result["images"] == result["texts"] == 6 and result["k"] == 3
    rec = result["recall"]
    assert {"i2t_r1", "i2t_r3", "i2t_r10", "t2i_r1", "itc_t2i_r1"} <= set(rec)
    # only the 3 ITC candidates of a query can be found: recall@10 after re-ranking = ITC recall@3
    assert rec["i2t_r10"] == rec["itc_i2t_r3"] and rec["t2i_r10"] == rec["itc_t2i_r3"]
    assert "image -> text" in capsys.readouterr().out


def test_bad_input(pretrained, tmp_path, capsys):
    assert main(["finetune", "vqa", "--pretrained", str(tmp_path / "missing"), "--output-dir", str(tmp_path)]) == 2
    assert "--pretrained" in capsys.readouterr().err
    assert main(["finetune", "vqa", "--val-data", str(tmp_path), "--output-dir", str(tmp_path)]) == 2
    assert "--val-data needs --train-data" in capsys.readouterr().err
    assert main(["finetune", "vqa", "--steps", "3", "--warmup", "5", "--output-dir", str(tmp_path)]) == 2
    assert "exceeds --steps" in capsys.readouterr().err
    assert main(["evaluate-retrieval", "--checkpoint", str(tmp_path / "none")]) == 2
    assert "--checkpoint" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["finetune", "captioning"])
    assert e.value.code == 2


def test_a_tracker_not_installed_names_the_flag(tmp_path, capsys, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "wandb", None)  # makes `import wandb` fail
    assert main(["finetune", "snli-ve", "--output-dir", str(tmp_path / "f"), *_SHORT, "--tracker", "wandb"]) == 2
    assert "bridgetower finetune: error: --tracker: the 'wandb' tracker needs" in capsys.readouterr().err
    assert main(["pretrain", "--output-dir", str(tmp_path / "p"), "--steps", "1", "--batch-size", "4", "--eval-size", "4",
                 "--num-scenes", "8", "--quiet", "--tracker", "wandb"]) == 2
    assert "bridgetower pretrain: error: --tracker: the 'wandb' tracker needs" in capsys.readouterr().err


def test_every_flag_has_help():
    from bridgetower.cli import add_parsers

    parser = argparse.ArgumentParser(prog="bridgetower")
    sub = parser.add_subparsers(dest="command")
    add_parsers(sub)
    for name in ("pretrain", "score", "finetune", "evaluate-retrieval"):
        p = sub.choices[name]
        for action in p._actions:
            assert action.help, (name, action.option_strings or action.dest)
        assert "--pretrained" in p.format_help() or name != "finetune"


@pytest.fixture(scope="module")
def tables(tmp_path_factory):
    """Small tables in the official layouts, built from synthetic scenes."""
    from bridgetower.data import make_scene, write_arrow_table
    from bridgetower.data.downstream import VQA_ANSWERS, SceneVQADataset

    d = tmp_path_factory.mktemp("tables")
    vqa = SceneVQADataset(8, seed=11)
    vqa_rows = []
    for i in range(8):
        s = vqa[i]
        vqa_rows.append({"image": s["image"], "questions": [s["caption"]], "answers": [[s["answer"]]],
                         "answer_labels": [[VQA_ANSWERS.index(s["answer"])]], "answer_scores": [[1.0]],
                         "image_id": i, "question_id": [i], "split": "train"})
    caption_rows = []
    for i in range(8):
        image, scene = make_scene(12, i)
        other = make_scene(13, i)[1].caption
        caption_rows.append({"image": image, "caption": [scene.caption, other], "image_id": str(i), "split": "test"})
    return {"vqa": write_arrow_table(d / "vqa.arrow", vqa_rows, "vqa"),
            "caption": write_arrow_table(d / "captions.arrow", caption_rows, "caption")}


def test_finetune_and_evaluate_on_official_tables(pretrained, tables, tmp_path, capsys):
    common = ["--pretrained", str(pretrained), "--image-size", "64", "--steps", "2", "--batch-size", "4",
              "--progress", "off", "--quiet", "--log-every", "1"]
    out = tmp_path / "vqa"
    assert main(["finetune", "vqa", "--train-data", str(tables["vqa"]), "--val-data", str(tables["vqa"]),
                 "--num-answers", "16", "--output-dir", str(out), *common]) == 0
    run = json.loads((out / "run_config.json").read_text())
    assert run["recipe"]["lr"] == 1e-5 and run["recipe"]["head_lr_mult"] == 50  # the published VQA recipe
    summary = json.loads((out / "finetune_summary.json").read_text())
    assert 0 <= summary["after"]["vqa_score"] <= 1
    out = tmp_path / "irtr"
    assert main(["finetune", "irtr", "--train-data", str(tables["caption"]), "--false-texts", "2",
                 "--output-dir", str(out), *common]) == 0
    assert json.loads((out / "model/config.json").read_text())["task"] == "irtr"
    target = tmp_path / "r.json"
    assert main(["evaluate-retrieval", "--checkpoint", str(out), "--data", str(tables["caption"]),
                 "--output", str(target)]) == 0
    result = json.loads(target.read_text())
    assert result["images"] == 8 and result["texts"] == 16 and result["candidates"] == "auto"
