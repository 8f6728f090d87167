"""A pickle whose unpickling would run code never runs it, whatever reads it: training
checkpoint resume, ``from_pretrained`` of our, the Hugging Face and the official formats,
the state-dict reader and the command line.  (Every ``torch.load`` of the package uses
``weights_only=True``; this test keeps it so.)"""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path

import pytest
import torch
from toy_training import make_trainer  # tests/training/toy_training.py

from bridgetower.cli import main
from bridgetower.models import (
    BridgeTowerForImageAndTextRetrieval,
    BridgeTowerForPretraining,
    get_config,
)
from bridgetower.models.convert import load_official_checkpoint, read_state_dict
from bridgetower.training.checkpoint import CheckpointError, read_checkpoint

ROOT = Path(__file__).resolve().parents[2]
# how a refused pickle is reported: torch's own error, or the package's "refused: ..." message
_REFUSED = (pickle.UnpicklingError, ValueError, OSError)
_REFUSAL = r"Weights only load failed|refused|posix\.mkdir"


class _Evil:
    """Unpickling this calls ``os.mkdir(marker)``: the proof that code ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def _hostile(path, marker, payload=None):
    torch.save(payload if payload is not None else {"state_dict": {"w": _Evil(marker)}}, path)
    return path


def test_every_torch_load_of_the_package_is_weights_only():
    calls = []
    for f in (ROOT / "bridgetower").rglob("*.py"):
        text = f.read_text()
        calls += [(f.name, m.group(0)) for m in re.finditer(r"torch\.load\(.*", text)]
    assert calls and all("weights_only=True" in c for _, c in calls), calls


def test_a_hostile_training_state_is_never_unpickled(tmp_path, caplog):
    marker = tmp_path / "pwned"
    run = make_trainer(tmp_path, "run", checkpoint_every=1, keep_checkpoints=0)
    run.train(stop_after=2)
    ck = tmp_path / "run" / "checkpoints"
    _hostile(ck / "step-00000002" / "training_state.pt", marker, {"optimizer": {}, "rng": _Evil(marker)})
    assert make_trainer(tmp_path, "run").resume() == 1  # passed over for the intact one
    assert "step-00000002" in caplog.text and not marker.exists()
    with pytest.raises(CheckpointError, match="training_state.pt"):
        read_checkpoint(ck / "step-00000002")
    assert not marker.exists()


def _tiny():
    cfg = get_config("bridgetower-tiny").replace(**{"vision.layers": 1, "text.num_layers": 1, "fusion.num_layers": 1, "text.vocab_size": 30})
    return BridgeTowerForPretraining(cfg)


def test_hostile_weight_files_are_never_unpickled(tmp_path, capsys):
    marker = tmp_path / "pwned"
    model = _tiny()
    for fmt in ("bridgetower", "hf"):  # a saved model whose weights became a hostile pickle
        d = tmp_path / fmt
        model.save_pretrained(d, format=fmt)
        for f in d.glob("*.safetensors"):
            f.unlink()
        _hostile(d / "pytorch_model.bin", marker)
        for cls in (BridgeTowerForPretraining, BridgeTowerForImageAndTextRetrieval):
            with pytest.raises(_REFUSED, match=_REFUSAL):
                cls.from_pretrained(d)
    ckpt = _hostile(tmp_path / "official.ckpt", marker)  # the official format
    for load in (lambda: read_state_dict(ckpt), lambda: BridgeTowerForPretraining.from_pretrained(ckpt),
                 lambda: load_official_checkpoint(BridgeTowerForPretraining, ckpt, config_json={"bt_config": {}})):
        with pytest.raises(_REFUSED, match=_REFUSAL):
            load()
    # the command line (score and evaluate-retrieval read safetensors only): one line, no code run
    assert main(["finetune", "vqa", "--pretrained", str(ckpt), "--output-dir", str(tmp_path / "f"), "--steps", "1",
                 "--quiet"]) == 2
    err = capsys.readouterr().err
    assert re.search(_REFUSAL, err) and "Traceback" not in err, err
    assert not marker.exists()
