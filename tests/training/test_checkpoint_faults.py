"""Checkpoints under faults: leftovers of killed or failed writes, a full disk, damaged
checkpoints (resume falls back to the newest intact one), `latest` pointing out of the run."""

from __future__ import annotations

import errno
import logging
import os

import pytest
import torch
from toy_training import make_trainer  # tests/training/toy_training.py

from bridgetower.training import checkpoint as ckpt_mod
from bridgetower.training import trainer as trainer_mod
from bridgetower.training.checkpoint import CheckpointError, find_checkpoint, read_checkpoint


def _names(folder):
    return sorted(p.name for p in folder.iterdir())


def test_leftovers_of_killed_writes_are_cleaned_on_start(tmp_path, caplog):
    run = make_trainer(tmp_path, "run", checkpoint_every=2)
    run.train(stop_after=2)
    out, ck = tmp_path / "run", tmp_path / "run" / "checkpoints"
    (ck / ".step-00000004.tmp-99999").mkdir()  # killed while writing step 4
    (ck / ".step-00000004.tmp-99999" / "model.safetensors").write_bytes(b"\0" * 1000)
    (ck / ".latest.tmp-99999").write_text("step-00000004\n")
    os.replace(ck / "step-00000002", ck / ".step-00000002.old-4242")  # killed between the two renames
    (out / ".model.tmp-77").mkdir()
    (out / ".metrics.csv.tmp-77").write_text("step\n")
    (ck / "my-notes.txt").write_text("mine")  # not the library's: stays
    (out / ".model.tmp-77-mine").mkdir()
    with caplog.at_level(logging.WARNING):
        fresh = make_trainer(tmp_path, "run", checkpoint_every=2)
    assert _names(ck) == ["latest", "my-notes.txt", "step-00000002"]
    assert not (out / ".model.tmp-77").exists() and not (out / ".metrics.csv.tmp-77").exists()
    assert (out / ".model.tmp-77-mine").is_dir()
    assert "restored" in caplog.text and ".step-00000004.tmp-99999" in caplog.text
    assert fresh.resume() == 2


def test_a_full_disk_leaves_no_partial_checkpoint(tmp_path, monkeypatch):
    run = make_trainer(tmp_path, "run")
    run.train_step()
    first = run.save_checkpoint()
    run.train_step()
    real_save = torch.save

    def full_disk(obj, f, *a, **kw):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt_mod.torch, "save", full_disk)
    with pytest.raises(OSError, match="No space left"):
        run.save_checkpoint()
    ck = tmp_path / "run" / "checkpoints"
    assert _names(ck) == ["latest", "step-00000001"] and find_checkpoint(tmp_path / "run") == first

    def full_disk_model(model, directory):
        (directory / "model.safetensors").write_bytes(b"\0" * 100)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(trainer_mod, "save_model", full_disk_model)
    with pytest.raises(OSError):
        run.save_final_model()
    assert not [p for p in (tmp_path / "run").iterdir() if p.name.startswith(".model")]
    monkeypatch.setattr(ckpt_mod.torch, "save", real_save)
    assert make_trainer(tmp_path, "run").resume() == 1


def _truncate_weights(d):
    f = d / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


def _bad_json(d):
    (d / "trainer_state.json").write_text('{"step": 4, "rng": ')


def _empty_state(d):
    (d / "training_state.pt").write_bytes(b"")


@pytest.mark.parametrize("damage, file", [(_truncate_weights, "model.safetensors"), (_bad_json, "trainer_state.json"),
                                          (_empty_state, "training_state.pt")])
def test_resume_falls_back_to_the_newest_intact_checkpoint(tmp_path, caplog, damage, file):
    straight = make_trainer(tmp_path, "straight", max_steps=6)
    straight.train()
    killed = make_trainer(tmp_path, "run", max_steps=6, checkpoint_every=2, keep_checkpoints=0)
    killed.train(stop_after=5)
    damage(tmp_path / "run" / "checkpoints" / "step-00000004")
    with caplog.at_level(logging.WARNING):
        fresh = make_trainer(tmp_path, "run", max_steps=6, checkpoint_every=2, keep_checkpoints=0)
        assert fresh.resume() == 2
    assert "step-00000004" in caplog.text and file in caplog.text and "step-00000002" in caplog.text
    # a damaged checkpoint named explicitly is refused, naming the file
    with pytest.raises(CheckpointError, match=file):
        read_checkpoint(tmp_path / "run" / "checkpoints" / "step-00000004")
    fresh.train()  # from step 2: the weights of the run that never stopped
    want = straight.model.state_dict()
    assert all(torch.equal(v, want[k]) for k, v in fresh.model.state_dict().items())
    for step in ("00000002", "00000004", "00000006"):  # none usable: each one named
        damage(tmp_path / "run" / "checkpoints" / f"step-{step}")
    with pytest.raises(CheckpointError, match="step-00000006.*step-00000004.*step-00000002"):
        make_trainer(tmp_path, "run", max_steps=6).resume()


def test_latest_is_followed_only_inside_the_run(tmp_path, caplog):
    other = make_trainer(tmp_path, "other", checkpoint_every=2)
    other.train(stop_after=4)
    mine = make_trainer(tmp_path, "mine", checkpoint_every=2)
    mine.train(stop_after=2)
    ck = tmp_path / "mine" / "checkpoints"
    foreign = tmp_path / "other" / "checkpoints" / "step-00000004"
    for text in (str(foreign), "../../other/checkpoints/step-00000004", "step-00000004/../../../other"):
        (ck / "latest").write_text(text + "\n")
        with caplog.at_level(logging.WARNING):
            assert find_checkpoint(tmp_path / "mine") == ck / "step-00000002"
        assert "not a checkpoint inside" in caplog.text
    (ck / "step-00000009").symlink_to(foreign, target_is_directory=True)
    assert find_checkpoint(tmp_path / "mine") == ck / "step-00000002"
    assert make_trainer(tmp_path, "mine", checkpoint_every=2).resume() == 2
