"""The run skeleton shared by the pretraining and fine-tuning drivers.

A *run* writes into one output directory: the :class:`~bridgetower.training.trainer.Trainer`'s
``checkpoints/``, ``metrics.jsonl`` / ``.csv`` and final ``model/`` (with the tokenizer), plus
the driver's ``run_config.json`` and a summary JSON with the held-out metrics before and
after training.  The pieces here are those every driver needs:

* :func:`clear_previous_run` -- a new run replaces an old one in the same directory (the
  files each driver names), with one warning;
* :func:`tokenizer_saver` -- the ``extra_save`` hook that puts the tokenizer next to every
  checkpoint and the final model;
* :func:`write_json` -- ``run_config.json`` and the summary;
* :func:`eval_before_after` -- the held-out metrics before the first and after the last step;
* :func:`resolve_model_dir`, :func:`saved_tokenizer`, :func:`load_saved_model` -- finding a
  saved model (a run directory, its ``model/``, or a checkpoint) and what was saved with it;
* :class:`ArgumentError` -- a bad driver argument, naming it (the command line turns it into
  a message about the flag of the same name).
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from torch import nn

logger = logging.getLogger(__name__)

__all__ = [
    "ArgumentError",
    "clear_previous_run",
    "eval_before_after",
    "load_saved_model",
    "resolve_model_dir",
    "saved_tokenizer",
    "tokenizer_saver",
    "write_json",
]


class ArgumentError(ValueError):
    """A bad value of the driver argument ``argument``: ``str(e)`` is ``"argument: message"``."""

    def __init__(self, argument: str, message: str) -> None:
        super().__init__(f"{argument}: {message}")
        self.argument = argument
        self.message = message


def clear_previous_run(
    output_dir: str | Path, *, remove: Sequence[str], detect: Sequence[str], resume_hint: str
) -> bool:
    """Remove the files and folders ``remove`` of a previous run from ``output_dir``; warn
    (once, with ``resume_hint``) when any of ``detect`` existed.  Returns whether one did."""
    out = Path(output_dir)
    found = any((out / name).exists() for name in detect)
    if found:
        logger.warning("replacing the previous run in %s (%s)", out, resume_hint)
    for name in remove:
        target = out / name
        if target.is_dir():
            shutil.rmtree(target, ignore_errors=True)
        else:
            target.unlink(missing_ok=True)
    return found


def tokenizer_saver(tokenizer: Any) -> Callable[[Path], None]:
    """``extra_save(directory)`` for the Trainer: ``tokenizer.save_pretrained(directory)``."""

    def save_tokenizer(directory: Path) -> None:
        tokenizer.save_pretrained(str(directory))

    return save_tokenizer


def write_json(path: str | Path, data: Any) -> Path:
    """Write ``data`` as indented JSON (non-JSON values as ``str``) with a final newline."""
    path = Path(path)
    path.write_text(json.dumps(data, indent=1, default=str) + "\n")
    return path


def eval_before_after(records: Iterable[dict]) -> tuple[dict | None, dict | None]:
    """``(before, after)``: the held-out metrics of the step-0 evaluation (``None`` without
    one) and of the last evaluation (``None`` without any), without ``step`` / ``split``."""
    evals = [r for r in records if r.get("split") == "eval"]

    def strip(r: dict) -> dict:
        return {k: v for k, v in r.items() if k not in ("step", "split")}

    before = strip(evals[0]) if evals and evals[0]["step"] == 0 else None
    return before, (strip(evals[-1]) if evals else None)


def resolve_model_dir(path: str | Path) -> Path:
    """A saved model directory: ``path`` itself, its ``model/`` (a run output dir), or the
    newest checkpoint under it.  ``FileNotFoundError`` otherwise."""
    path = Path(path)
    for cand in (path, path / "model"):
        if (cand / "config.json").is_file() and any(cand.glob("*.safetensors")):
            return cand
    from .checkpoint import find_checkpoint

    try:
        return find_checkpoint(path)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"no model found at {str(path)!r} (expected config.json + *.safetensors, a model/ folder or a "
            "checkpoints/ folder); train one with `bridgetower pretrain`"
        ) from None


def saved_tokenizer(model_dir: str | Path) -> Any:
    """The ``transformers`` tokenizer saved in ``model_dir``, or ``None`` when there is none."""
    model_dir = Path(model_dir)
    if not ((model_dir / "tokenizer.json").is_file() or (model_dir / "tokenizer_config.json").is_file()):
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model_dir))


def load_saved_model(model_dir: str | Path) -> nn.Module:
    """The task model saved in ``model_dir`` (its class from the ``task`` of ``config.json``,
    ``"itm"`` when absent); ``ValueError`` for an unknown task."""
    from ..models import TASK_MODELS

    model_dir = Path(model_dir)
    task = json.loads((model_dir / "config.json").read_text()).get("task", "itm")
    cls = TASK_MODELS.get(task)
    if cls is None:
        raise ValueError(f"{model_dir} holds an unknown task {task!r} (known: {sorted(TASK_MODELS)})")
    return cls.from_pretrained(model_dir)
