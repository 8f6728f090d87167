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
previous checkpoint or the new one, never a half-written one; a write that fails (a full
disk) removes its temporary directory, and :func:`clean_interrupted_writes` (called when a
:class:`~bridgetower.training.trainer.Trainer` starts) removes what a killed one left.

Reading back (:func:`read_checkpoint`) checks every file of a checkpoint before anything is
loaded into the model; in a run directory a damaged checkpoint (a truncated safetensors file,
a trainer state that is not JSON, an empty, truncated or hostile ``training_state.pt``) is
passed over for the next newest, saying which and why.  ``latest`` is followed only to a
``step-N`` directory of the same ``checkpoints/`` folder.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

logger = logging.getLogger(__name__)

__all__ = [
    "CHECKPOINTS_DIR",
    "CHECKPOINT_NAME",
    "CheckpointData",
    "CheckpointError",
    "apply_model_state",
    "capture_rng_state",
    "checkpoint_candidates",
    "clean_interrupted_writes",
    "find_checkpoint",
    "load_checkpoint",
    "load_model_weights",
    "read_checkpoint",
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
    apply_model_state(model, state, directory)


def apply_model_state(model: nn.Module, state: dict[str, torch.Tensor], where: str | Path = "checkpoint") -> None:
    """Copy ``state`` (as :func:`save_model` wrote it) into ``model``, strictly; ``where``
    names its origin in the error."""
    state = dict(state)
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
            f"checkpoint {where} does not match the model: missing {missing[:8]}"
            f"{'...' if len(missing) > 8 else ''}, unexpected {unexpected[:8]}"
            f"{'...' if len(unexpected) > 8 else ''}"
        )
    with torch.no_grad():
        for k, t in own.items():
            t.copy_(state[k])


# ------------------------------------------------------------------------------- checkpoints
#: The name of a checkpoint directory: ``step-`` and the zero-padded step.
CHECKPOINT_NAME = re.compile(r"^step-\d{8,}$")
# what an interrupted write leaves behind: ``.step-N.tmp-PID``, ``.step-N.old-PID`` (the
# checkpoint being replaced), ``.latest.tmp-PID``; and in the run directory the final model's
# ``.model.tmp-PID`` / ``.model.old-PID`` and the logs' ``.NAME.tmp-PID[.png]``
_TEMP_IN_CHECKPOINTS = re.compile(r"^\.(?P<name>step-\d{8,}|latest)\.(?P<kind>tmp|old)-\d+$")
_TEMP_IN_RUN = re.compile(r"^\.(?P<name>model|metrics\.jsonl|metrics\.csv|training_curves)\.(?P<kind>tmp|old)-\d+(?:\.png)?$")


def _fsync_tree(directory: Path) -> None:
    for p in directory.rglob("*"):
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())


def _write_json(path: Path, data: dict) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1)
        f.write("\n")


class CheckpointError(RuntimeError):
    """No usable checkpoint: ``str(e)`` names each checkpoint tried and what is wrong with it."""


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def clean_interrupted_writes(output_dir: str | Path) -> list[str]:
    """Remove what checkpoint and model writes killed half-way (or failed, e.g. on a full
    disk) left in ``output_dir`` and its ``checkpoints/``; a checkpoint that was being
    replaced when the kill came is put back.  Returns what was done, one line per entry
    (also logged as a warning).  Only one process may write into an output directory."""
    out = Path(output_dir)
    done: list[str] = []
    for folder, pattern in ((out, _TEMP_IN_RUN), (out / CHECKPOINTS_DIR, _TEMP_IN_CHECKPOINTS)):
        if not folder.is_dir():
            continue
        for entry in sorted(folder.iterdir()):
            m = pattern.match(entry.name)
            if m is None:
                continue
            target = folder / m["name"]
            if m["kind"] == "old" and not target.exists() and entry.is_dir():
                os.replace(entry, target)  # killed between the two renames: the old copy is the only one
                done.append(f"restored {target} from {entry.name}")
            else:
                _remove(entry)
                done.append(f"removed {entry}")
    for line in done:
        logger.warning("interrupted write: %s", line)
    return done


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

    Keeps the newest ``keep`` checkpoints (``keep <= 0`` keeps all).  Returns its path.  A
    write that fails (a full disk: ``OSError``) or is interrupted removes its temporary
    directory before the error propagates; ``latest`` then still names the previous one.
    """
    root = Path(output_dir) / CHECKPOINTS_DIR
    root.mkdir(parents=True, exist_ok=True)
    name = f"step-{step:08d}"
    final = root / name
    tmp = root / f".{name}.tmp-{os.getpid()}"
    latest_tmp = root / f".{LATEST}.tmp-{os.getpid()}"
    try:
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
        latest_tmp.write_text(name + "\n", encoding="utf-8")
        os.replace(latest_tmp, root / LATEST)
    except BaseException as e:
        _remove(tmp)
        _remove(latest_tmp)
        if isinstance(e, OSError):
            logger.error("writing checkpoint %s failed (%s); its partial files were removed", final, e)
        raise
    if keep > 0:
        existing = sorted(p for p in root.glob("step-*") if p.is_dir() and CHECKPOINT_NAME.match(p.name))
        for old in existing[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    logger.info("checkpoint written: %s", final)
    return final


def _latest_name(root: Path) -> str | None:
    """The checkpoint ``root/latest`` names, when it is one of this run's (a plain
    ``step-N`` name); anything else (an absolute path, ``../``) is ignored with a warning."""
    latest = root / LATEST
    if not latest.is_file():
        return None
    try:
        text = latest.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as e:
        logger.warning("%s is unreadable (%s); looking for the newest checkpoint instead", latest, e)
        return None
    if CHECKPOINT_NAME.match(text):
        return text
    logger.warning("%s names %r, which is not a checkpoint inside %s; ignored", latest, text[:200], root)
    return None


def _inside(path: Path, root: Path) -> bool:
    try:
        return path.resolve().parent == root.resolve()
    except OSError:
        return False


def checkpoint_candidates(path: str | Path) -> tuple[list[Path], bool]:
    """``(candidates, explicit)``: the checkpoints ``path`` stands for, the preferred first.

    ``path`` is a checkpoint directory (it has ``trainer_state.json``; ``explicit``), a
    ``checkpoints/`` folder or a run output directory: then the one ``latest`` names, followed
    by every ``step-N`` directory, newest first.  Only directories inside that folder count:
    a ``latest`` or a ``step-N`` link that leads elsewhere is ignored."""
    path = Path(path)
    if (path / TRAINER_STATE).is_file():
        return [path], True
    for root in (path, path / CHECKPOINTS_DIR):
        if not root.is_dir():
            continue
        steps = sorted((p for p in root.iterdir() if CHECKPOINT_NAME.match(p.name) and p.is_dir()), reverse=True)
        named = _latest_name(root)
        ordered = ([root / named] if named is not None and (root / named).is_dir() else []) + steps
        found = list(dict.fromkeys(p for p in ordered if _inside(p, root)))
        if found:
            return found, False
    return [], False


def find_checkpoint(path: str | Path) -> Path:
    """Resolve ``path`` to a checkpoint directory (see :func:`checkpoint_candidates`): the
    checkpoint itself, or the newest of a run that has its ``trainer_state.json`` (its
    contents are checked by :func:`read_checkpoint`)."""
    candidates, _ = checkpoint_candidates(path)
    for cand in candidates:
        if (cand / TRAINER_STATE).is_file():
            return cand
    raise FileNotFoundError(
        f"no training checkpoint found at {path} (looked for {TRAINER_STATE}, "
        f"{CHECKPOINTS_DIR}/{LATEST} and {CHECKPOINTS_DIR}/step-*)"
    )


@dataclass
class CheckpointData:
    """What :func:`read_checkpoint` read: the directory, the model weights, the
    ``training_state.pt`` blob and the trainer state."""

    directory: Path
    model_state: dict[str, torch.Tensor]
    blob: dict[str, Any]
    trainer_state: dict[str, Any]


def _read_one(ckpt: Path) -> CheckpointData:
    from safetensors.torch import load_file

    where = ckpt / TRAINER_STATE
    try:
        with open(where, encoding="utf-8") as f:
            state = json.load(f)
        if not isinstance(state, dict) or not isinstance(state.get("step"), int) or "rng" not in state:
            raise ValueError("not a trainer state (no integer 'step' and 'rng')")
        files = sorted(ckpt.glob("*.safetensors"))
        if not files:
            raise FileNotFoundError("no *.safetensors weights")
        weights: dict[str, torch.Tensor] = {}
        for where in files:
            weights.update(load_file(str(where)))
        where = ckpt / TRAINING_STATE
        blob = torch.load(where, map_location="cpu", weights_only=True)
        if not isinstance(blob, dict) or "optimizer" not in blob or "rng" not in blob:
            raise ValueError("not a training state (no 'optimizer' and 'rng')")
    except Exception as e:  # noqa: BLE001 - every way a file can be broken
        raise CheckpointError(f"{where.name}: {type(e).__name__}: {str(e)[:300] or 'empty'}") from e
    return CheckpointData(ckpt, weights, blob, state)


def read_checkpoint(path: str | Path) -> CheckpointData:
    """Read a checkpoint (see :func:`checkpoint_candidates`) into memory, checking every file.

    For a run directory a checkpoint that cannot be read (a truncated safetensors file,
    a trainer state that is not JSON, an empty or hostile ``training_state.pt``) is passed
    over for the next newest, with a warning saying which and why.  A checkpoint directory
    given explicitly is used or refused, never replaced.  :class:`CheckpointError` (naming
    each checkpoint and its fault) when none is usable; ``FileNotFoundError`` when there is
    none at all.
    """
    candidates, explicit = checkpoint_candidates(path)
    if not candidates:
        find_checkpoint(path)  # raises the FileNotFoundError
    faults: list[str] = []
    for cand in candidates:
        try:
            data = _read_one(cand)
        except CheckpointError as e:
            faults.append(f"{cand}: {e}")
            if explicit:
                break
            logger.warning("checkpoint %s is unusable (%s); trying the next newest", cand, e)
            continue
        if faults:
            logger.warning("resuming from %s instead (%d newer checkpoint(s) unusable)", cand.name, len(faults))
        return data
    raise CheckpointError("no usable training checkpoint: " + "; ".join(faults))


def load_checkpoint(
    path: str | Path,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    scaler: Any = None,
    restore_rng: bool = True,
) -> dict:
    """Load a checkpoint (see :func:`read_checkpoint`: the newest usable one of a run) into
    the given objects.  Returns the trainer state (``step``, data position, settings) with
    ``checkpoint_dir``."""
    data = read_checkpoint(path)
    apply_model_state(model, data.model_state, data.directory)
    blob, state = data.blob, data.trainer_state
    if optimizer is not None:
        optimizer.load_state_dict(blob["optimizer"])
    if scheduler is not None and blob.get("scheduler"):
        scheduler.load_state_dict(blob["scheduler"])
    if scaler is not None and blob.get("scaler"):
        scaler.load_state_dict(blob["scaler"])
    if restore_rng:
        restore_rng_state(blob["rng"], state["rng"])
    state["checkpoint_dir"] = str(data.directory)
    return state
