"""The `bridgetower` command: a short pretrain run, score, resume, user data, bad input,
`--version`, `python -m bridgetower`."""

from __future__ import annotations

import json
import tarfile

import pytest
import torch
from safetensors.torch import load_file

from bridgetower.cli import main
from bridgetower.data import make_scene

_TINY = ["--steps", "4", "--batch-size", "8", "--eval-size", "8", "--eval-every", "2", "--num-scenes", "64",
         "--progress", "off", "--quiet", "--log-every", "1"]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    assert main(["pretrain", *_TINY, "--checkpoint-every", "2", "--output-dir", str(out)]) == 0
    return out


def test_pretrain_writes_checkpoint_log_and_plot(demo_run, capsys):
    out = demo_run
    for name in ("model/model.safetensors", "model/config.json", "model/tokenizer.json", "metrics.jsonl",
                 "metrics.csv", "training_curves.png", "summary.json", "run_config.json",
                 "checkpoints/latest"):
        assert (out / name).is_file(), name
    assert (out / "training_curves.png").read_bytes()[:4] == b"\x89PNG"
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["split"] == "train"] == [1, 2, 3, 4]
    assert [r["step"] for r in records if r["split"] == "eval"] == [0, 2, 4]
    assert {"itm_acc_random", "itm_acc_shape", "mlm_acc_colour"} <= set(records[0])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 4 and summary["before"]["itm_acc_random"] is not None
    cfg = json.loads((out / "run_config.json").read_text())
    assert cfg["recipe"] == "demo" and cfg["knobs"]["lr"] == 1e-3 and cfg["knobs"]["steps"] == 4


def test_score_prints_a_table(demo_run, tmp_path, capsys):
    image, scene = make_scene(99, 0)
    path = tmp_path / "scene.png"
    image.save(path)
    texts = [scene.caption, "a purple triangle at the top"]
    assert main(["score", str(path), *texts, "--checkpoint", str(demo_run)]) == 0
    out = capsys.readouterr().out
    assert all(t in out for t in texts) and "match prob" in out
    assert main(["score", str(path), *texts, "--checkpoint", str(demo_run), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["text"] for r in rows] == texts
    assert all(0.0 <= r["match_probability"] <= 1.0 for r in rows)


def test_score_dtype_bfloat16_close_to_float32(demo_run, tmp_path, capsys):
    image, scene = make_scene(98, 0)
    path = tmp_path / "scene.png"
    image.save(path)
    texts = [scene.caption, "a purple triangle at the top"]
    logits = {}
    for dtype in ("float32", "bf16"):
        assert main(["score", str(path), *texts, "--checkpoint", str(demo_run), "--json", "--dtype", dtype]) == 0
        logits[dtype] = [r["match_logit"] for r in json.loads(capsys.readouterr().out)]
    assert max(abs(a - b) for a, b in zip(logits["float32"], logits["bf16"], strict=True)) < 0.1
    assert main(["score", str(path), "a red circle", "--checkpoint", str(demo_run), "--dtype", "fp16"]) == 2
    assert "--dtype float16 needs a CUDA device" in capsys.readouterr().err


def test_cli_kill_and_resume_ends_with_identical_weights(demo_run, tmp_path, monkeypatch):
    from bridgetower.training import trainer as trainer_mod

    original = trainer_mod.Trainer.train

    def killed_after_3(self, **kw):  # the process dies after step 3 (checkpoint at step 2)
        return original(self, stop_after=3)

    out = tmp_path / "resumed"
    monkeypatch.setattr(trainer_mod.Trainer, "train", killed_after_3)
    assert main(["pretrain", *_TINY, "--checkpoint-every", "2", "--output-dir", str(out)]) == 0
    assert not (out / "model").exists()
    monkeypatch.setattr(trainer_mod.Trainer, "train", original)
    torch.manual_seed(1234)
    assert main(["pretrain", *_TINY, "--checkpoint-every", "2", "--output-dir", str(out), "--resume"]) == 0
    want = load_file(str(demo_run / "model" / "model.safetensors"))
    got = load_file(str(out / "model" / "model.safetensors"))
    assert want.keys() == got.keys()
    for k in want:
        assert torch.equal(want[k], got[k]), k


def _exit_code(argv) -> int:
    """The exit status of the command: bad flags exit through argparse, bad values return 2."""
    try:
        return main(argv)
    except SystemExit as e:
        return e.code


def _write_pairs(folder, n=6):
    folder.mkdir()
    lines = []
    for i in range(n):
        image, scene = make_scene(7, i)
        image.save(folder / f"img{i}.png")
        lines.append(json.dumps({"image": f"img{i}.png", "caption": scene.caption}))
    (folder / "index.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def test_pretrain_on_a_folder_and_on_tar_shards(tmp_path):
    folder = _write_pairs(tmp_path / "pairs")
    out = tmp_path / "run_folder"
    args = ["--steps", "2", "--batch-size", "4", "--grad-accum", "1", "--progress", "off", "--quiet"]
    assert main(["pretrain", "--data", str(folder), "--output-dir", str(out), *args]) == 0
    cfg = json.loads((out / "run_config.json").read_text())
    assert cfg["recipe"] == "official" and cfg["knobs"]["lr"] == 1e-5 and cfg["knobs"]["betas"] == [0.9, 0.98]
    assert (out / "model" / "model.safetensors").is_file()
    shard = tmp_path / "pairs-000.tar"
    with tarfile.open(shard, "w") as tf:
        for i in range(6):
            tf.add(folder / f"img{i}.png", arcname=f"{i:06d}.png")
            cap = tmp_path / f"{i}.txt"
            cap.write_text(make_scene(7, i)[1].caption)
            tf.add(cap, arcname=f"{i:06d}.txt")
    out2 = tmp_path / "run_shards"
    assert main(["pretrain", "--data", str(shard), "--output-dir", str(out2), *args]) == 0
    assert (out2 / "model" / "model.safetensors").is_file()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["pretrain", "--lr", "-1"], "expected a number >= 0"),
        (["pretrain", "--lr", "0"], "--lr must be > 0"),
        (["pretrain", "--steps", "0"], "positive integer"),
        (["pretrain", "--precision", "fp8"], "invalid choice"),
        (["pretrain", "--mlm-prob", "1.5"], "probability"),
        (["pretrain", "--data", "/nonexistent/pairs"], "does not exist"),
        (["pretrain", "--model", "bridgetower-tiniest"], "unknown model"),
        (["pretrain", "--model", "missing.json"], "does not exist"),
        (["pretrain", "--precision", "fp16", "--device", "cpu"], "fp16 needs a CUDA device"),
        (["pretrain", "--warmup", "50", "--steps", "10"], "exceeds --steps"),
        (["pretrain", "--eval-size", "7"], "must be even"),
        (["pretrain", "--mlm-weight", "0", "--itm-weight", "0", "--itc-weight", "0"], "must be > 0"),
        (["score", "nope.png", "a red circle"], "no model found"),
        (["pretrain", "--betas", "0.9"], "expected 2 arguments"),
    ],
)
def test_bad_flags_and_paths_give_clear_errors(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert _exit_code(argv) == 2
    assert message in capsys.readouterr().err


def test_resume_without_checkpoint_and_missing_image(demo_run, tmp_path, capsys):
    assert main(["pretrain", "--output-dir", str(tmp_path / "empty"), "--resume", *_TINY]) == 2
    assert "--resume: no training checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "empty").exists()  # a failed resume leaves nothing behind
    assert main(["score", str(tmp_path / "missing.png"), "a red circle", "--checkpoint", str(demo_run)]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_help_documents_every_flag(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["pretrain", "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--lr", "--betas", "--eps", "--weight-decay", "--warmup", "--steps", "--batch-size",
                 "--grad-accum", "--clip", "--cross-modal-lr-mult", "--head-lr-mult", "--mlm-prob",
                 "--max-text-len", "--mlm-weight", "--itm-weight", "--itc-weight", "--precision",
                 "--checkpoint-every", "--resume", "--seed", "--gradient-checkpointing", "--data", "--model",
                 "--release-freed-memory"):
        assert flag in text, flag
    assert "official: 1e-05; demo: 0.001" in " ".join(text.split())


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_device_without_cuda(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["pretrain", "--device", "cuda", *_TINY]) == 2
    assert "CUDA is not available" in capsys.readouterr().err


def test_release_freed_memory_flag_configures_the_allocator(tmp_path, monkeypatch):
    import bridgetower.training.cpu_memory as cpu_memory

    calls = []
    monkeypatch.setattr(cpu_memory, "release_freed_cpu_memory", lambda **kw: calls.append(kw) or True)
    args = ["pretrain", "--steps", "1", "--batch-size", "4", "--eval-size", "4", "--num-scenes", "16",
            "--progress", "off", "--quiet", "--output-dir", str(tmp_path)]
    assert main(args) == 0 and calls == []
    assert main([*args, "--output-dir", str(tmp_path / "b"), "--release-freed-memory"]) == 0
    assert calls == [{}]


def test_version_and_module_entry_points(capsys):
    import subprocess
    import sys

    import bridgetower

    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0 and capsys.readouterr().out.strip() == f"bridgetower {bridgetower.__version__}"
    for module in ("bridgetower", "bridgetower.cli"):
        done = subprocess.run([sys.executable, "-m", module, "--version"], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0 and done.stdout.strip() == f"bridgetower {bridgetower.__version__}", done.stderr
    assert main([]) == 2 and "pretrain" in capsys.readouterr().out


def test_every_pretrain_knob_is_a_flag_with_both_defaults(capsys):
    """A knob of PretrainRecipe is declared once; the flag, its type and its help follow."""
    import dataclasses

    from bridgetower.training.recipes import PRETRAIN_RECIPES, PretrainRecipe

    with pytest.raises(SystemExit):
        main(["pretrain", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    names = [f.name for f in dataclasses.fields(PretrainRecipe) if f.name != "name"]
    assert names and all(f"--{n.replace('_', '-')}" in text for n in names)
    assert "(official: 0.5; demo: 0.5)" in text  # --itm-negatives
    assert PRETRAIN_RECIPES["demo"].replace(steps=3).steps == 3 and PRETRAIN_RECIPES["demo"].lr == 1e-3
