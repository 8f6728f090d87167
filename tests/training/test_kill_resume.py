"""SIGKILL at random moments and in the middle of checkpoint writes, then resume: the run
ends with the weights and the log of the run that was never interrupted.

Each attempt is a forked child process (torch is already imported: no start-up cost) running
the small stand-in model with a checkpoint after every step, so that most of its time is
spent writing checkpoints; the parent kills it with SIGKILL, then starts the next attempt,
which resumes from whatever the killed one left."""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import time

import pytest
import torch
from toy_training import make_trainer, toy_eval  # tests/training/toy_training.py

from bridgetower.training import checkpoint as ckpt_mod
from bridgetower.training.metrics import read_jsonl
from bridgetower.training.run import replace_previous_run

_RUN = {"max_steps": 16, "log_every": 5, "eval_every": 4, "checkpoint_every": 1, "eval_fn": toy_eval, "accum": 1}
_FORK = multiprocessing.get_context("fork")


def _attempt(tmp_path, pause: str | None, at_step: int | None, ready) -> None:
    """One process's go at the run: resume when there is a checkpoint, else start afresh;
    with ``pause``, stop (to be killed) at that point of the second checkpoint write; with
    ``at_step``, tell the parent when that step is done and go on (to be killed soon after)."""
    torch.set_num_threads(1)
    calls = {"fsync": 0, "rename": 0}
    if pause == "files written":  # every file of the checkpoint written, not yet renamed
        real = ckpt_mod._fsync_tree

        def fsync_then_wait(directory):
            real(directory)
            calls["fsync"] += 1
            if calls["fsync"] == 2:
                ready.set()
                time.sleep(60)

        ckpt_mod._fsync_tree = fsync_then_wait
    if pause == "renamed, latest not":  # the checkpoint in place, `latest` still names the previous one
        real_replace = os.replace

        def replace_then_wait(src, dst):
            real_replace(src, dst)
            if str(src).rsplit("/", 1)[-1].startswith(".step-"):
                calls["rename"] += 1
                if calls["rename"] == 2:
                    ready.set()
                    time.sleep(60)

        ckpt_mod.os.replace = replace_then_wait
    trainer = make_trainer(tmp_path, "run", **_RUN)
    try:
        trainer.resume()
    except FileNotFoundError:
        replace_previous_run(tmp_path / "run")  # killed before its first checkpoint: start again
    if at_step is not None:
        step = trainer.train_step

        def step_and_tell():
            out = step()
            if trainer.step == at_step:
                ready.set()
            return out

        trainer.train_step = step_and_tell
    trainer.train()
    ready.set()
    os._exit(0)


def _run_attempt(tmp_path, pause=None, at_step=None, kill_after=0.0) -> int:
    ready = _FORK.Event()
    child = _FORK.Process(target=_attempt, args=(tmp_path, pause, at_step, ready))
    child.start()
    if ready.wait(30) and (pause is not None or at_step is not None):
        time.sleep(kill_after)
        os.kill(child.pid, signal.SIGKILL)
    child.join(60)
    return child.exitcode


def _log(path):
    return [{k: v for k, v in r.items() if k not in ("samples_per_s", "steps_per_s", "data_wait_share")}
            for r in read_jsonl(path / "metrics.jsonl")]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_sigkill_anywhere_then_resume_ends_as_the_uninterrupted_run(tmp_path):
    # the attempts run on one thread; so does the reference run (a reduction split over another
    # number of threads rounds differently in the last bit)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        straight = make_trainer(tmp_path, "straight", **_RUN)
        t0 = time.perf_counter()
        straight.train()
        duration = time.perf_counter() - t0
    finally:
        torch.set_num_threads(threads)
    run = tmp_path / "run"
    ck = run / "checkpoints"
    assert _run_attempt(tmp_path, pause="files written") == -signal.SIGKILL
    assert [p.name for p in ck.iterdir() if p.name.startswith(".step-")] == [p.name for p in ck.iterdir()
                                                                            if ".step-00000002.tmp-" in p.name]
    assert _run_attempt(tmp_path, pause="renamed, latest not") == -signal.SIGKILL
    newest = max(p.name for p in ck.iterdir() if p.name.startswith("step-"))
    assert (ck / "latest").read_text().strip() < newest  # the next attempt resumes from the older one
    rng = random.Random(0)
    per_step = duration / _RUN["max_steps"]
    kills = 0
    for at_step in (5, 8, 11, 14):  # then at random moments within the next steps and checkpoint writes
        kills += _run_attempt(tmp_path, at_step=at_step, kill_after=rng.uniform(0, 1.5 * per_step)) == -signal.SIGKILL
    assert _run_attempt(tmp_path) == 0  # the last attempt runs to the end (or resumes a finished run)
    got = make_trainer(tmp_path, "check", **_RUN).model
    from bridgetower.training.checkpoint import load_model_weights

    load_model_weights(got, run / "model")
    want = straight.model.state_dict()
    assert all(torch.equal(v, want[k]) for k, v in got.state_dict().items())
    assert _log(run) == _log(tmp_path / "straight")
    assert not [p for p in run.rglob(".*") if ".tmp-" in p.name or ".old-" in p.name]
    assert kills >= 2
