"""Trainer machinery on a small stand-in module: exact resume, atomic checkpoints, logs."""

from __future__ import annotations

import json

import pytest
import torch
from toy_training import Toy as _Toy  # tests/training/toy_training.py
from toy_training import ToyData as _Data
from toy_training import make_trainer as _make
from toy_training import toy_collate as _collate
from toy_training import toy_eval as _eval
from toy_training import toy_objective as _objective

from bridgetower.training.checkpoint import find_checkpoint, load_checkpoint, save_checkpoint
from bridgetower.training.metrics import read_jsonl
from bridgetower.training.optim import build_optimizer
from bridgetower.training.stream import BatchStream
from bridgetower.training.trainer import Trainer, TrainerConfig, seed_everything


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_kill_and_resume_matches_uninterrupted_run(tmp_path, precision):
    straight = _make(tmp_path, "straight", precision=precision, eval_fn=_eval, eval_every=2)
    straight.train()
    want = {k: v.clone() for k, v in straight.model.state_dict().items()}

    killed = _make(tmp_path, "resumed", precision=precision, eval_fn=_eval, eval_every=2, checkpoint_every=3)
    killed.train(stop_after=4)  # dies after step 4; the last checkpoint is step 3
    assert killed.step == 4
    torch.manual_seed(999)  # the new process would start from other RNG states
    del killed

    fresh = _make(tmp_path, "resumed", precision=precision, eval_fn=_eval, eval_every=2, checkpoint_every=3)
    with torch.no_grad():
        for p in fresh.model.parameters():
            p.add_(1.0)  # whatever the new process initialised, resume overwrites it
    assert fresh.resume() == 3
    fresh.train()
    got = fresh.model.state_dict()
    for k in want:
        assert torch.equal(got[k], want[k]), k
    # the resumed log is the log of the straight run (steps 4.. re-logged once)
    def _key(path):
        return [(r["step"], r["split"], r.get("loss")) for r in read_jsonl(path / "metrics.jsonl")]

    assert _key(tmp_path / "resumed") == _key(tmp_path / "straight")


def test_checkpoint_contents_and_logs(tmp_path):
    tr = _make(tmp_path, "run", max_steps=4, checkpoint_every=2, keep_checkpoints=1)
    tr.config.plot = True
    tr.train()
    out = tmp_path / "run"
    ckpt = find_checkpoint(out)
    assert ckpt.name == "step-00000004"
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["latest", "step-00000004"]
    assert {p.name for p in ckpt.iterdir()} == {"model.safetensors", "trainer_state.json", "training_state.pt"}
    state = json.loads((ckpt / "trainer_state.json").read_text())
    assert state["step"] == 4 and state["stream"]["consumed"] == 8  # 4 steps x 2 micro-batches
    blob = torch.load(ckpt / "training_state.pt", weights_only=True)
    assert set(blob) == {"optimizer", "scheduler", "scaler", "rng"}
    records = read_jsonl(out / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert {"loss", "acc_sign", "lr", "grad_norm", "samples_per_s"} <= set(records[0])
    header = (out / "metrics.csv").read_text().splitlines()[0].split(",")
    assert header[:2] == ["step", "split"] and "loss" in header
    png = (out / "training_curves.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "model" / "model.safetensors").is_file()


def test_checkpoint_write_is_atomic(tmp_path):
    tr = _make(tmp_path, "run", max_steps=4)
    tr.train_step()
    first = tr.save_checkpoint()
    tr.train_step()

    def _crash(directory):
        raise KeyboardInterrupt("killed while writing")

    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path / "run", step=2, model=tr.model, optimizer=tr.optimizer, extra=_crash)
    # the interrupted write is invisible: latest still names the complete first checkpoint
    assert find_checkpoint(tmp_path / "run") == first
    assert not (tmp_path / "run" / "checkpoints" / "step-00000002").exists()
    model = _Toy()
    state = load_checkpoint(first, model=model, restore_rng=False)
    assert state["step"] == 1


def test_trainer_config_and_resume_errors(tmp_path):
    with pytest.raises(ValueError, match="precision"):
        TrainerConfig(output_dir=tmp_path, max_steps=1, precision="fp8")
    with pytest.raises(ValueError, match="max_steps"):
        TrainerConfig(output_dir=tmp_path, max_steps=0)
    with pytest.raises(ValueError, match="fp16"):
        _make(tmp_path, "x", precision="fp16", device="cpu")
    with pytest.raises(FileNotFoundError, match="no training checkpoint"):
        _make(tmp_path, "empty").resume()
    with pytest.raises(ValueError, match="fewer than one batch"):
        BatchStream(_Data(), _collate, 11)


def test_gradient_checkpointing_switch(tmp_path):
    class _WithFlag(_Toy):
        def set_gradient_checkpointing(self, enable=True):
            self.flag = enable

    seed_everything(0)
    m = _WithFlag()
    opt = build_optimizer(m, lr=1e-3)
    cfg = TrainerConfig(output_dir=tmp_path, max_steps=1, gradient_checkpointing=True, progress=False)
    Trainer(m, _objective, opt, BatchStream(_Data(), _collate, 2), cfg)
    assert m.flag is True
    with pytest.raises(ValueError, match="gradient checkpointing"):
        Trainer(_Toy(), _objective, opt, BatchStream(_Data(), _collate, 2), cfg)
