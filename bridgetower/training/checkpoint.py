"""Training checkpoints: written atomically, read back for an exact resume.

A checkpoint is a directory ``<output_dir>/checkpoints/step-<NNNNNNNN>/`` holding

* the model -- ``model.save_pretrained(dir)`` when the model has it (safetensors + JSON
  config), otherwise ``model.safetensors`` written by :func:`safetensors.torch.save_model`;
* ``trainer_state.json`` -- the step, the data position, the trainer settings, the Python and
  NumPy RNG states;
* ``training_state.pt`` -- optimizer, scheduler and gradient-scaler state dicts and the torch
  CPU/CUDA RNG states, all plain tensors and containers, read with
  ``torch.load(weights_only=True)``;
* whatever the ``extra`` callback writes (the CLI puts the tokenizer there).

It is written into a temporary sibling directory, every file flushed to disk, and then moved
into place with one :func:`os.replace`; ``checkpoints/latest`` (the name of the newest
checkpoint) is replaced the same way afterwards.  A run killed at any moment leaves either the
previous checkpoint or the new one, never a half-written one.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

logger = logging.getLogger(__name__)

__all__ = [
    "CHECKPOINTS_DIR",
    "capture_rng_state",
    "find_checkpoint",
    "load_checkpoint",
    "load_model_weights",
    "restore_rng_state",
    "save_checkpoint",
    "save_model",
]

CHECKPOINTS_DIR = "checkpoints"
TRAINER_STATE = "trainer_state.json"
TRAINING_STATE = "training_state.pt"
LATEST = "latest"


# ----------------------------------------------------------------------------------- RNG state
def capture_rng_state() -> tuple[dict, dict]:
    """``(tensors, json_safe)``: torch CPU/CUDA states and the Python/NumPy states."""
    tensors: dict[str, Any] = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        tensors["torch_cuda"] = torch.cuda.get_rng_state_all()
    py = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    json_safe = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)],
    }
    return tensors, json_safe


def restore_rng_state(tensors: dict, json_safe: dict) -> None:
    """Inverse of :func:`capture_rng_state`."""
    torch.set_rng_state(tensors["torch_cpu"])
    if "torch_cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(tensors["torch_cuda"])
    v, keys, gauss = json_safe["python"]
    random.setstate((v, tuple(keys), gauss))
    kind, keys, pos, has_gauss, cached = json_safe["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))


# ------------------------------------------------------------------------------------- model
def save_model(model: nn.Module, directory: str | Path) -> None:
    """Write the model weights (safetensors) and config (JSON) into ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if hasattr(model, "save_pretrained"):
        model.save_pretrained(directory)
    else:
        from safetensors.torch import save_model as st_save_model

        st_save_model(model, str(directory / "model.safetensors"))


def load_model_weights(model: nn.Module, directory: str | Path) -> None:
    """Load the weights written by :func:`save_model` into ``model`` (strict)."""
    from safetensors.torch import load_file

    directory = Path(directory)
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors weights in {directory}")
    state: dict[str, torch.Tensor] = {}
    for f in files:
        state.update(load_file(str(f)))
    own = model.state_dict()
    # safetensors stores a tied tensor once: fill the aliases from the stored name
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing:
        ptr_to_name = {}
        for k, t in own.items():
            ptr_to_name.setdefault(t.data_ptr(), k)
        still = []
        for k in missing:
            src = ptr_to_name.get(own[k].data_ptr())
            if src is not None and src in state:
                state[k] = state[src]
            else:
                still.append(k)
        missing = still
    if missing or unexpected:
        raise ValueError(
            f"checkpoint {directory} does not match the model: missing {missing[:8]}"
            f"{'...' if len(missing) > 8 else ''}, unexpected {unexpected[:8]}"
            f"{'...' if len(unexpected) > 8 else ''}"
        )
    with torch.no_grad():
        for k, t in own.items():
            t.copy_(state[k])


# ------------------------------------------------------------------------------- checkpoints
def _fsync_tree(directory: Path) -> None:
    for p in directory.rglob("*"):
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())


def _write_json(path: Path, data: dict) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1)
        f.write("\n")


def save_checkpoint(
    output_dir: str | Path,
    *,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any = None,
    scaler: Any = None,
    trainer_state: dict | None = None,
    extra: Callable[[Path], None] | None = None,
    keep: int = 2,
) -> Path:
    """Write ``<output_dir>/checkpoints/step-<step>/`` atomically and point ``latest`` at it.

    Keeps the newest ``keep`` checkpoints (``keep <= 0`` keeps all).  Returns its path.
    """
    root = Path(output_dir) / CHECKPOINTS_DIR
    root.mkdir(parents=True, exist_ok=True)
    name = f"step-{step:08d}"
    final = root / name
    tmp = root / f".{name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    save_model(model, tmp)
    rng_tensors, rng_json = capture_rng_state()
    blob = {
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else {},
        "scaler": scaler.state_dict() if scaler is not None else {},
        "rng": rng_tensors,
    }
    torch.save(blob, tmp / TRAINING_STATE)
    state = dict(trainer_state or {})
    state["step"] = int(step)
    state["rng"] = rng_json
    _write_json(tmp / TRAINER_STATE, state)
    if extra is not None:
        extra(tmp)
    _fsync_tree(tmp)
    if final.exists():  # a re-run over the same step: replace it
        old = root / f".{name}.old-{os.getpid()}"
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    latest_tmp = root / f".{LATEST}.tmp-{os.getpid()}"
    latest_tmp.write_text(name + "\n", encoding="utf-8")
    os.replace(latest_tmp, root / LATEST)
    if keep > 0:
        existing = sorted(p for p in root.glob("step-*") if p.is_dir())
        for old in existing[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    logger.info("checkpoint written: %s", final)
    return final


def find_checkpoint(path: str | Path) -> Path:
    """Resolve ``path`` to a checkpoint directory.

    Accepts a checkpoint directory itself (it has ``trainer_state.json``), a
    ``checkpoints/`` folder, or a run output directory (its ``checkpoints/latest``).
    """
    path = Path(path)
    if (path / TRAINER_STATE).is_file():
        return path
    for root in (path, path / CHECKPOINTS_DIR):
        latest = root / LATEST
        if latest.is_file():
            cand = root / latest.read_text(encoding="utf-8").strip()
            if (cand / TRAINER_STATE).is_file():
                return cand
        steps = sorted(p for p in root.glob("step-*") if (p / TRAINER_STATE).is_file()) if root.is_dir() else []
        if steps:
            return steps[-1]
    raise FileNotFoundError(
        f"no training checkpoint found at {path} (looked for {TRAINER_STATE}, "
        f"{CHECKPOINTS_DIR}/{LATEST} and {CHECKPOINTS_DIR}/step-*)"
    )


def load_checkpoint(
    path: str | Path,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    scaler: Any = None,
    restore_rng: bool = True,
) -> dict:
    """Load a checkpoint (see :func:`find_checkpoint`) into the given objects.

    Returns the trainer state (``step``, data position, settings).
    """
    ckpt = find_checkpoint(path)
    load_model_weights(model, ckpt)
    blob = torch.load(ckpt / TRAINING_STATE, map_location="cpu", weights_only=True)
    if optimizer is not None:
        optimizer.load_state_dict(blob["optimizer"])
    if scheduler is not None and blob.get("scheduler"):
        scheduler.load_state_dict(blob["scheduler"])
    if scaler is not None and blob.get("scaler"):
        scaler.load_state_dict(blob["scaler"])
    with open(ckpt / TRAINER_STATE, encoding="utf-8") as f:
        state = json.load(f)
    if restore_rng:
        restore_rng_state(blob["rng"], state["rng"])
    state["checkpoint_dir"] = str(ckpt)
    return state
