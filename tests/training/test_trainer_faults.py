"""The Trainer when things go wrong or are small: a resumed run's log equals the uninterrupted
one's, batches without a usable sample are skipped and counted, progress shows without any
logging set-up, the curves of a short run are visible."""

from __future__ import annotations

import logging
import shutil

import numpy as np
import pytest
from PIL import Image
from toy_training import (  # tests/training/toy_training.py
    ToyData,
    make_trainer,
    toy_collate,
    toy_eval,
)

from bridgetower.data import SKIP_REASONS
from bridgetower.training import trainer as trainer_mod
from bridgetower.training.metrics import plot_metrics, read_jsonl
from bridgetower.training.stream import BatchStream
from bridgetower.training.trainer import UnreadableDataError

_TIMING = ("samples_per_s", "steps_per_s", "data_wait_share")
_RUN = {"max_steps": 7, "log_every": 3, "eval_every": 2, "checkpoint_every": 2, "eval_fn": toy_eval}


def _log(path):
    return [{k: v for k, v in r.items() if k not in _TIMING} for r in read_jsonl(path / "metrics.jsonl")]


@pytest.mark.parametrize("kill_after", [3, 5, "final"])
def test_a_resumed_runs_log_equals_the_uninterrupted_one(tmp_path, kill_after):
    make_trainer(tmp_path, "straight", **_RUN).train()
    killed = make_trainer(tmp_path, "resumed", **_RUN)
    if kill_after == "final":  # killed after the final checkpoint, before the final model
        killed.train()
        shutil.rmtree(tmp_path / "resumed" / "model")
    else:
        killed.train(stop_after=kill_after)
    fresh = make_trainer(tmp_path, "resumed", **_RUN)
    fresh.resume()
    fresh.train()
    # a mid-window kill: the first record after the resume averages the same steps (log_every=3)
    assert _log(tmp_path / "resumed") == _log(tmp_path / "straight")
    assert (tmp_path / "resumed" / "model" / "model.safetensors").is_file()


def _stream(bad, size=8):
    return BatchStream(ToyData(size, bad=bad), toy_collate, 4, seed=7, shuffle=False)  # in order


def test_batches_without_a_usable_sample_are_skipped_and_counted(tmp_path, caplog):
    # samples 0-3 (the first batch of every epoch) are unreadable, sample 5 is missing
    bad = {0: "unreadable_image", 1: "unreadable_image", 2: "missing_file", 3: "empty_caption", 5: "missing_file"}
    run = make_trainer(tmp_path, "run", max_steps=3, accum=1, checkpoint_every=2, data=ToyData(8, bad=bad))
    run.stream = _stream(bad)
    with caplog.at_level(logging.WARNING):
        run.train()
    assert run.step == 3 and run.skipped_batches == 3
    # 3 epochs drawn: each time 4 samples of the empty batch and sample 5
    assert run.skipped.as_dict() == {"missing_file": 6, "unreadable_image": 6, "empty_caption": 3, "bad_record": 0}
    assert "skipped 15 samples" in caplog.text and "3 batch(es) had no usable sample" in caplog.text
    # the counts are part of the checkpoint: a resumed run goes on counting
    again = make_trainer(tmp_path, "run", max_steps=4, accum=1, data=ToyData(8, bad=bad))
    again.stream = _stream(bad)
    again.resume()
    assert again.skipped.total == 15 and again.skipped_batches == 3


def test_data_without_any_usable_sample_stops_with_one_message(tmp_path, monkeypatch):
    monkeypatch.setattr(trainer_mod, "MAX_EMPTY_BATCHES", 5)
    bad = dict.fromkeys(range(8), "unreadable_image")
    run = make_trainer(tmp_path, "run", max_steps=2, accum=1, data=ToyData(8, bad=bad))
    with pytest.raises(UnreadableDataError, match="5 batches in a row had no usable sample.*unreadable_image=20"):
        run.train()
    assert list(SKIP_REASONS) == ["missing_file", "unreadable_image", "empty_caption", "bad_record"]


def test_progress_shows_without_any_logging_setup(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(logging.root, "handlers", [])  # a plain Python session (pytest adds one)
    monkeypatch.setattr(logging.getLogger("bridgetower"), "handlers", [])
    make_trainer(tmp_path, "run", max_steps=2, progress=None, eval_fn=toy_eval).train()
    err = capsys.readouterr().err
    assert "step 1/2 loss=" in err and "step 2/2" in err and "eval at step 2" in err and "no samples skipped" in err


def test_a_short_run_plots_visible_points(tmp_path):
    records = [{"step": 1, "split": "train", "loss": 2.0, "acc_itm": 0.5}, {"step": 1, "split": "eval", "acc_itm": 0.6}]
    path = plot_metrics(records, tmp_path / "curves.png")
    pixels = np.asarray(Image.open(path).convert("RGB"), dtype=np.int32)
    blue = np.abs(pixels - np.array([0x1F, 0x77, 0xB4])).sum(-1) < 40  # the loss curve's colour
    # the one point sits in the middle of the loss axes (the left 40%; its legend is further right)
    assert int(blue[:, : int(0.4 * blue.shape[1])].sum()) > 10
