"""The command line as an unlucky user meets it: a typo never costs a previous run, a resumed
run keeps its settings, remote data needs a flag, mistakes get one line, not a traceback."""

from __future__ import annotations

import io
import json
import logging
import tarfile

import pytest
import torch
from safetensors.torch import load_file

from bridgetower.cli import main
from bridgetower.data import make_scene

_RUN = ["--steps", "3", "--batch-size", "4", "--eval-size", "4", "--eval-every", "0", "--num-scenes", "32",
        "--checkpoint-every", "1", "--log-every", "2", "--progress", "off", "--quiet"]


def _tree(folder):
    """Every path under ``folder`` with its size and modification time."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    out = tmp_path_factory.mktemp("straight")
    assert main(["pretrain", *_RUN, "--output-dir", str(out)]) == 0
    return out


def _weights(out):
    return load_file(str(out / "model" / "model.safetensors"))


def test_a_previous_run_survives_typos_and_is_replaced_only_on_request(tmp_path, capsys, caplog):
    run = tmp_path / "run"
    assert main(["pretrain", *_RUN, "--output-dir", str(run)]) == 0
    (run / "notes.txt").write_text("mine")
    (run / "mydata").mkdir()
    (run / "mydata" / "x.png").write_bytes(b"mine")
    (run / "checkpoints" / "README").write_text("mine")
    before = _tree(run)
    capsys.readouterr()
    for argv, message in [
        ([], "holds a previous run"),  # no flag: the run is kept
        (["--data", str(tmp_path / "no-such-data")], "holds a previous run"),
        # --overwrite: every other flag is checked before anything goes
        (["--overwrite", "--tokenizer", str(tmp_path / "no-such-tokenizer")], "--tokenizer"),
        (["--overwrite", "--data", str(tmp_path / "no-such-data")], "--data"),
        (["--overwrite", "--model", "bridgetower-tiniest"], "--model"),
    ]:
        assert main(["pretrain", *_RUN, "--output-dir", str(run), *argv]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, err
        assert _tree(run) == before
    with caplog.at_level(logging.WARNING):
        assert main(["pretrain", *_RUN, "--output-dir", str(run), "--overwrite", "--seed", "1"]) == 0
    assert "removed" in caplog.text and "kept checkpoints/README" in caplog.text
    assert (run / "notes.txt").read_text() == "mine" and (run / "mydata" / "x.png").read_bytes() == b"mine"
    assert (run / "checkpoints" / "README").is_file()
    assert json.loads((run / "run_config.json").read_text())["seed"] == 1


def test_resume_takes_the_runs_settings_and_refuses_others(straight, tmp_path, monkeypatch, capsys):
    from bridgetower.training import trainer as trainer_mod

    original = trainer_mod.Trainer.train
    monkeypatch.setattr(trainer_mod.Trainer, "train", lambda self, **kw: original(self, stop_after=2))
    out = tmp_path / "run"
    assert main(["pretrain", *_RUN, "--output-dir", str(out)]) == 0  # "killed" after step 2
    monkeypatch.setattr(trainer_mod.Trainer, "train", original)
    capsys.readouterr()
    for flag, value in (("--steps", "5"), ("--lr", "0.01"), ("--batch-size", "8"), ("--seed", "3"),
                        ("--precision", "bf16"), ("--num-scenes", "64")):
        assert main(["pretrain", "--output-dir", str(out), "--resume", flag, value, "--quiet"]) == 2
        err = capsys.readouterr().err
        assert f"{flag}: the run was started with" in err and "Traceback" not in err, err
    # no flag again (or the same values): the run's 3 steps, batch, schedule and data
    assert main(["pretrain", "--output-dir", str(out), "--resume", "--steps", "3", "--progress", "off", "--quiet"]) == 0
    assert "3 steps" in capsys.readouterr().out
    want, got = _weights(straight), _weights(out)
    assert all(torch.equal(want[k], got[k]) for k in want)
    run = json.loads((out / "run_config.json").read_text())
    assert run["knobs"]["steps"] == 3 and run["resumes"] == [{"step": 2, "changed": {}}]


def _shard(path, n, seed=7):
    with tarfile.open(path, "w") as tf:
        for i in range(n):
            image, scene = make_scene(seed, i)
            png = path.parent / f"{path.stem}-{i}.png"
            image.save(png)
            tf.add(png, arcname=f"{i:06d}.png")
            txt = path.parent / f"{path.stem}-{i}.txt"
            txt.write_text(scene.caption)
            tf.add(txt, arcname=f"{i:06d}.txt")
    return path


def test_remote_shards_need_a_flag_and_mistakes_get_one_line(tmp_path, capsys):
    shard = _shard(tmp_path / "pairs-000.tar", 4)
    args = ["--steps", "1", "--batch-size", "4", "--grad-accum", "1", "--progress", "off", "--quiet"]
    pipe = f"pipe:cat {shard}"
    assert main(["pretrain", "--data", pipe, "--output-dir", str(tmp_path / "a"), *args]) == 2
    err = capsys.readouterr().err
    assert "--allow-remote-data" in err and "Traceback" not in err
    assert not (tmp_path / "a").exists()
    assert main(["pretrain", "--data", pipe, "--allow-remote-data", "--output-dir", str(tmp_path / "a"), *args]) == 0
    # a mistyped shard pattern, a malformed index line: one line naming the file (and line)
    assert main(["pretrain", "--data", str(tmp_path / "pairs-{000..003}.tar"), "--output-dir", str(tmp_path / "b"),
                 *args]) == 2
    err = capsys.readouterr().err
    assert "--data: 3 of the 4 shards" in err and "pairs-001.tar" in err and "Traceback" not in err
    index = tmp_path / "index.jsonl"
    index.write_text(json.dumps({"image": "x.png", "caption": "a red circle"}) + "\n{oops\n")
    for extra in ([], ["--tokenizer", str(tmp_path / "a" / "model")]):
        assert main(["pretrain", "--data", str(index), "--output-dir", str(tmp_path / "c"), *args, *extra]) == 2
        err = capsys.readouterr().err
        assert f"--data: {index}:2: not valid JSON" in err and len(err.strip().splitlines()) == 1, err


def test_wandb_without_an_api_key_says_what_to_do(tmp_path, capsys, monkeypatch):
    pytest.importorskip("wandb")
    for name in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_DIR", "NETRC"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc, no wandb settings
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    assert main(["pretrain", *_RUN, "--output-dir", str(tmp_path / "w"), "--tracker", "wandb"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "wandb login" in err and "WANDB_MODE=offline" in err, err


def test_score_warns_about_texts_of_unknown_words(straight, tmp_path, capsys):
    image, scene = make_scene(99, 0)
    image.save(tmp_path / "scene.png")
    assert main(["score", str(tmp_path / "scene.png"), scene.caption, "zebra xylophone quantum",
                 "--checkpoint", str(straight)]) == 0
    err = capsys.readouterr().err
    assert "warning:" in err and "zebra xylophone quantum" in err and scene.caption not in err


def _tar_member(tar, name, data: bytes):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def test_a_corrupt_data_set_reports_exactly_its_bad_samples(tmp_path, capsys):
    """Every kind of bad sample, a known number of each: the run goes on and its summary (and
    output) counts exactly those, for a folder with a JSONL index and for WebDataset shards."""
    args = ["--steps", "1", "--grad-accum", "1", "--progress", "off", "--quiet"]
    folder = tmp_path / "pairs"
    folder.mkdir()
    lines = []
    for i in range(4):
        image, scene = make_scene(7, i)
        image.save(folder / f"{i}.png")
        lines.append(json.dumps({"image": f"{i}.png", "caption": scene.caption}).encode())
    (folder / "broken.png").write_bytes((folder / "0.png").read_bytes()[:80])
    lines += [json.dumps({"image": "missing.png", "caption": "a red circle"}).encode(),
              json.dumps({"image": "broken.png", "caption": "a red circle"}).encode(),
              json.dumps({"image": "1.png", "caption": "  "}).encode(),
              b'{"image": "2.png", "caption": "a r\xe9d circle"}']
    (folder / "index.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    out = tmp_path / "run-folder"
    assert main(["pretrain", "--data", str(folder), "--batch-size", "8", "--output-dir", str(out), *args]) == 0
    want = {"missing_file": 1, "unreadable_image": 1, "empty_caption": 1, "bad_record": 1}
    assert json.loads((out / "summary.json").read_text())["skipped"] == want
    assert "skipped 4 samples: missing_file=1, unreadable_image=1, empty_caption=1, bad_record=1" in capsys.readouterr().out

    good = tmp_path / "good.tar"
    _shard(good, 3)
    png, caption = (folder / "3.png").read_bytes(), b"a red circle on the left"
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in [("s0.png", png), ("s0.txt", caption), ("s1.txt", caption),  # s1: no image
                           ("s2.png", png[:100]), ("s2.txt", caption),  # s2: a truncated picture
                           ("s3.png", png), ("s3.txt", caption)]:
            _tar_member(tar, name, data)
    whole = buf.getvalue()
    cut = whole.index(png, whole.index(b"s3.png")) + 50  # the shard ends inside s3's picture
    (tmp_path / "bad.tar").write_bytes(whole[:cut])
    out = tmp_path / "run-shards"  # the tokenizer is built from the (broken) shards too
    assert main(["pretrain", "--data", str(tmp_path / "{good,bad}.tar"), "--batch-size", "7", "--output-dir",
                 str(out), *args]) == 0
    want = {"missing_file": 0, "unreadable_image": 1, "empty_caption": 0, "bad_record": 2}
    assert json.loads((out / "summary.json").read_text())["skipped"] == want


def test_finetune_resume_keeps_the_runs_settings(tmp_path, monkeypatch, capsys, caplog):
    from bridgetower.training import trainer as trainer_mod

    args = ["snli-ve", "--steps", "3", "--batch-size", "4", "--eval-size", "4", "--train-size", "16",
            "--checkpoint-every", "1", "--log-every", "2", "--progress", "off", "--quiet"]
    assert main(["finetune", *args, "--output-dir", str(tmp_path / "straight")]) == 0
    original = trainer_mod.Trainer.train
    monkeypatch.setattr(trainer_mod.Trainer, "train", lambda self, **kw: original(self, stop_after=2))
    out = tmp_path / "run"
    assert main(["finetune", *args, "--output-dir", str(out)]) == 0  # "killed" after step 2
    monkeypatch.setattr(trainer_mod.Trainer, "train", original)
    assert main(["finetune", *args, "--output-dir", str(out)]) == 2  # not over the interrupted run
    assert "holds a previous run" in capsys.readouterr().err
    for flag, value in (("--lr", "0.5"), ("--seed", "2"), ("--train-size", "32"), ("--model", "bridgetower-base")):
        assert main(["finetune", "snli-ve", "--output-dir", str(out), "--resume", flag, value, "--quiet"]) == 2
        assert f"{flag}: the run was started with" in capsys.readouterr().err
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert main(["finetune", "snli-ve", "--output-dir", str(out), "--resume", "--progress", "off", "--quiet"]) == 0
    assert "from scratch" not in caplog.text and "snli-ve: 3 steps" in capsys.readouterr().out
    want, got = _weights(tmp_path / "straight"), _weights(out)
    assert all(torch.equal(want[k], got[k]) for k in want)
    strip = ("samples_per_s", "steps_per_s", "data_wait_share")
    logs = [[{k: v for k, v in json.loads(line).items() if k not in strip}
             for line in (d / "metrics.jsonl").read_text().splitlines()] for d in (tmp_path / "straight", out)]
    assert logs[0] == logs[1]
