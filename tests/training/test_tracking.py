"""Experiment trackers: TensorBoard event files and W&B offline runs are written and read back;
a selected tracker that is not installed fails with a clear error."""

from __future__ import annotations

import sys

import pytest

from bridgetower.training.tracking import (
    TensorBoardTracker,
    TrackerUnavailableError,
    WandbTracker,
    create_trackers,
    parse_trackers,
    read_wandb_run,
)


def test_parse_trackers():
    assert parse_trackers(None) == ()
    assert parse_trackers("none") == ()
    assert parse_trackers("tensorboard") == ("tensorboard",)
    assert parse_trackers("wandb, TensorBoard") == ("wandb", "tensorboard")
    assert parse_trackers(["tensorboard", "wandb,tensorboard"]) == ("tensorboard", "wandb")
    with pytest.raises(ValueError, match="unknown tracker.*mlflow.*choose from none, tensorboard, wandb"):
        parse_trackers("tensorboard,mlflow")
    with pytest.raises(ValueError, match="cannot be combined"):
        parse_trackers(["none", "wandb"])
    with pytest.raises(TypeError, match="strings"):
        parse_trackers([1])


def test_tensorboard_event_file_is_readable(tmp_path):
    pytest.importorskip("tensorboard", reason="the tensorboard package is an optional dependency")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (tracker,) = create_trackers("tensorboard", tmp_path, config={"lr": 0.001, "task": "image-cls"})
    assert isinstance(tracker, TensorBoardTracker)
    losses = [2.5, 1.25, 0.625]
    for step, loss in enumerate(losses, start=1):
        tracker.log(step, {"loss": loss, "accuracy": step / 10, "skipped": None}, split="train")
    tracker.log(3, {"accuracy": 0.75, "loss": float("nan")}, split="eval")
    tracker.close()
    with pytest.raises(RuntimeError, match="closed"):
        tracker.log(4, {"loss": 1.0})
    events = list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert len(events) == 1
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    assert set(acc.Tags()["scalars"]) == {"train/loss", "train/accuracy", "eval/accuracy"}
    assert [(e.step, e.value) for e in acc.Scalars("train/loss")] == [(1, 2.5), (2, 1.25), (3, 0.625)]
    assert [(e.step, pytest.approx(e.value)) for e in acc.Scalars("eval/accuracy")] == [(3, 0.75)]
    (text,) = acc.Tensors("config/text_summary")
    assert b'"task": "image-cls"' in text.tensor_proto.string_val[0]


@pytest.fixture
def wandb_offline(tmp_path, monkeypatch):
    """W&B in offline mode with every directory it writes inside ``tmp_path``."""
    pytest.importorskip("wandb", reason="the wandb package is an optional dependency")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    for var, sub in (("WANDB_DIR", "wandb-dir"), ("WANDB_CONFIG_DIR", "wandb-config"),
                     ("WANDB_CACHE_DIR", "wandb-cache"), ("WANDB_DATA_DIR", "wandb-data")):
        (tmp_path / sub).mkdir()
        monkeypatch.setenv(var, str(tmp_path / sub))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    return tmp_path


def test_wandb_offline_run_holds_the_metrics(wandb_offline):
    out = wandb_offline / "run"
    (tracker,) = create_trackers(["wandb"], out, run_name="unit", config={"lr": 0.001, "steps": 3})
    assert isinstance(tracker, WandbTracker)
    run_dir = tracker.run_dir
    assert run_dir.parent == out / "wandb" and run_dir.name.startswith("offline-run-")
    for step, loss in ((1, 2.5), (2, 1.25), (3, 0.625)):
        tracker.log(step, {"loss": loss, "accuracy": None}, split="train")
    tracker.log(3, {"accuracy": 0.75}, split="eval")
    tracker.log_config({"note": "after start"})
    tracker.close()
    run = read_wandb_run(run_dir)  # waits for W&B's asynchronous writer to finish the file
    assert run["finished"]
    history = {h["_step"]: {k: v for k, v in h.items() if not k.startswith("_")} for h in run["history"]}
    assert history == {1: {"train/loss": 2.5}, 2: {"train/loss": 1.25}, 3: {"train/loss": 0.625, "eval/accuracy": 0.75}}
    assert run["config"]["lr"] == 0.001 and run["config"]["steps"] == 3 and run["config"]["note"] == "after start"
    assert run["summary"]["train/loss"] == 0.625


def test_wandb_bad_mode(wandb_offline):
    with pytest.raises(ValueError, match="mode"):
        WandbTracker(wandb_offline, mode="cloud")


def test_read_wandb_run_rejects_other_files(tmp_path):
    pytest.importorskip("wandb", reason="the wandb package is an optional dependency")
    (tmp_path / "run-x.wandb").write_bytes(b"not a run")
    with pytest.raises(ValueError, match="not a W&B run file"):
        read_wandb_run(tmp_path)
    with pytest.raises(FileNotFoundError):
        read_wandb_run(tmp_path / "missing")


@pytest.mark.parametrize("name, package", [("wandb", "wandb"), ("tensorboard", "tensorboard")])
def test_uninstalled_tracker_is_a_clear_error(name, package, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, package, None)  # makes `import package` fail
    with pytest.raises(TrackerUnavailableError, match=rf"the '{name}' tracker needs the '{package}' package.*pip install {package}"):
        create_trackers("tensorboard,wandb" if name == "wandb" else name, tmp_path)
    assert isinstance(TrackerUnavailableError("x"), ImportError)
    assert not (tmp_path / "tensorboard").exists()  # nothing half-created before the check failed


def test_tracker_cli_flag(capsys):
    import argparse

    from bridgetower.training.tracking import add_tracker_argument

    parser = argparse.ArgumentParser(prog="x")
    add_tracker_argument(parser)
    assert parser.parse_args([]).tracker == ()
    assert parser.parse_args(["--tracker", "none"]).tracker == ()
    assert parser.parse_args(["--tracker", "wandb", "--tracker", "tensorboard,wandb"]).tracker == ("wandb", "tensorboard")
    with pytest.raises(SystemExit):
        parser.parse_args(["--tracker", "mlflow"])
    assert "unknown tracker(s) ['mlflow']" in capsys.readouterr().err


def test_trainer_sends_records_to_trackers(wandb_offline):
    pytest.importorskip("tensorboard", reason="the tensorboard package is an optional dependency")
    import json

    import torch
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from bridgetower.training import BatchStream, Trainer, TrainerConfig

    data = [{"x": torch.tensor([float(i)]), "y": torch.tensor([2.0 * i])} for i in range(8)]

    def collate(samples):
        return {"x": torch.stack([s["x"] for s in samples]), "y": torch.stack([s["y"] for s in samples])}

    def objective(model, batch):
        err = model(batch["x"]) - batch["y"]
        return (err**2).mean(), {"abs_err": err.abs().mean()}

    out = wandb_offline / "trainer"
    cfg = TrainerConfig(output_dir=out, max_steps=4, log_every=1, progress=False, plot=False,
                        trackers="tensorboard,wandb")
    assert cfg.trackers == ("tensorboard", "wandb")
    model = torch.nn.Linear(1, 1)
    trainer = Trainer(model, objective, torch.optim.SGD(model.parameters(), lr=0.01),
                      BatchStream(data, collate, 4, seed=0), cfg, eval_fn=lambda m: {"score": 0.5})
    (wb,) = [t for t in trainer.metrics.trackers if t.name == "wandb"]
    run_dir = wb.run_dir
    trainer.train()
    assert trainer.metrics.trackers == []  # closed at the end of the run
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["split"] == "train"]
    acc = EventAccumulator(str(out / "tensorboard"))
    acc.Reload()
    assert [(e.step, pytest.approx(e.value)) for e in acc.Scalars("train/loss")] == [(r["step"], r["loss"]) for r in train]
    assert len(list((out / "tensorboard").glob("events.out.tfevents.*"))) == 1  # one writer, not two
    run = read_wandb_run(run_dir)
    logged = {h["_step"]: h for h in run["history"]}
    assert [logged[r["step"]]["train/loss"] for r in train] == pytest.approx([r["loss"] for r in train])
    assert logged[4]["eval/score"] == 0.5 and run["config"]["max_steps"] == 4
    with pytest.raises(ValueError, match="unknown tracker"):
        TrainerConfig(output_dir=out, max_steps=1, trackers="mlflow")
