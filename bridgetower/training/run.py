"""The run skeleton shared by the pretraining and fine-tuning drivers.

A *run* writes into one output directory: the :class:`~bridgetower.training.trainer.Trainer`'s
``checkpoints/``, ``metrics.jsonl`` / ``.csv`` and final ``model/`` (with the tokenizer), plus
the driver's ``run_config.json`` and a summary JSON with the held-out metrics before and
after training.  The pieces here are those every driver needs:

* :func:`previous_run`, :func:`check_output_dir`, :func:`replace_previous_run` -- an
  existing run in the output directory is kept unless the caller says to replace it
  (``overwrite``); then only the files and folders the library writes go (:data:`RUN_FILES`,
  the checkpoints, the saved model's files, the demo's ``search/`` example), each one named in a warning;
* :func:`load_run_config`, :func:`resume_settings`, :func:`record_resume` -- a resumed run
  takes its settings from its ``run_config.json``; a setting given again must agree;
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
import re
import shutil
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from torch import nn

logger = logging.getLogger(__name__)

__all__ = [
    "RUN_CONFIG",
    "RUN_FILES",
    "ArgumentError",
    "check_output_dir",
    "eval_before_after",
    "load_run_config",
    "previous_run",
    "record_resume",
    "replace_previous_run",
    "resume_settings",
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


RUN_CONFIG = "run_config.json"

#: The files a run writes at the top of its output directory (the drivers' and the Trainer's).
RUN_FILES = ("metrics.jsonl", "metrics.csv", "training_curves.png", RUN_CONFIG, "summary.json",
             "finetune_summary.json")

# what the library writes inside the folders of a run: a saved model (save_pretrained + the
# tokenizer and processor files), TensorBoard event files, checkpoints (checkpoint.py's names)
_FOLDER_FILES = {
    "model": re.compile(r"^(config\.json|preprocessor_config\.json|processor_config\.json|.+\.safetensors"
                        r"|.+\.safetensors\.index\.json|tokenizer\.json|tokenizer_config\.json"
                        r"|special_tokens_map\.json|added_tokens\.json|vocab\.json|vocab\.txt|merges\.txt"
                        r"|spiece\.model|sentencepiece\.bpe\.model|chat_template\.jinja)$"),
    "tensorboard": re.compile(r"^events\.out\.tfevents\..+$"),
    "checkpoints": re.compile(r"^(step-\d{8,}|latest)$"),
    # the demo's search example (bridgetower.search.demo.run_search_demo)
    "search": re.compile(r"^(scenes|index|explain\.png|search-\d+\.png)$"),
}


def previous_run(output_dir: str | Path) -> list[str]:
    """What a previous run left in ``output_dir``: the library's files and folders there
    (``[]`` for a new or empty directory, or one holding only other files)."""
    out = Path(output_dir)
    found = [name for name in RUN_FILES if (out / name).is_file()]
    for folder, pattern in _FOLDER_FILES.items():
        d = out / folder
        if d.is_dir() and not d.is_symlink() and any(pattern.match(p.name) for p in d.iterdir()):
            found.append(folder + "/")
    return found


def check_output_dir(output_dir: str | Path, *, resume: bool, overwrite: bool) -> list[str]:
    """Refuse to start a new run over a previous one unless ``overwrite``; returns what the
    previous run left (:func:`previous_run`).  Nothing is removed here: the drivers call
    :func:`replace_previous_run` once every other argument has been checked."""
    if resume and overwrite:
        raise ArgumentError("overwrite", "cannot be combined with resume (continue the run, or replace it)")
    out = Path(output_dir)
    if out.exists() and not out.is_dir():
        raise ArgumentError("output_dir", f"{str(out)!r} is a file, not a directory")
    found = [] if resume else previous_run(out)
    if found and not overwrite:
        raise ArgumentError(
            "output_dir",
            f"{str(out)!r} holds a previous run ({', '.join(found)}); continue it with resume (--resume), "
            "or replace it with overwrite (--overwrite: only the files bridgetower wrote are removed), "
            "or choose another output directory",
        )
    return found


def replace_previous_run(output_dir: str | Path) -> list[str]:
    """Remove the files a previous run of the library wrote into ``output_dir`` (see
    :func:`previous_run`; inside ``model/``, ``checkpoints/``, ``tensorboard/`` and ``search/`` only the
    entries the library writes, then the folder when it is empty) and the leftovers of
    interrupted writes.  Everything else stays.  Returns the removed paths, also logged."""
    from .checkpoint import clean_interrupted_writes

    out = Path(output_dir)
    clean_interrupted_writes(out)
    removed: list[str] = []
    for name in RUN_FILES:
        if (out / name).is_file():
            (out / name).unlink()
            removed.append(name)
    kept: list[str] = []
    for folder, pattern in _FOLDER_FILES.items():
        d = out / folder
        if not d.is_dir() or d.is_symlink():
            continue
        for entry in sorted(d.iterdir()):
            if not pattern.match(entry.name):
                kept.append(f"{folder}/{entry.name}")
            elif entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
                removed.append(f"{folder}/{entry.name}/")
            else:
                entry.unlink()
                removed.append(f"{folder}/{entry.name}")
        if not any(d.iterdir()):
            d.rmdir()
    if removed:
        logger.warning("replacing the previous run in %s: removed %s%s", out, ", ".join(removed),
                       f"; kept {', '.join(kept)} (not written by bridgetower)" if kept else "")
    return removed


def load_run_config(output_dir: str | Path) -> dict[str, Any] | None:
    """The ``run_config.json`` of a run directory (``None`` when there is none)."""
    path = Path(output_dir) / RUN_CONFIG
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        logger.warning("%s cannot be read (%s): the run's settings cannot be checked", path, e)
        return None
    return data if isinstance(data, dict) else None


def _same(a: Any, b: Any) -> bool:
    """Equal as JSON would store them (tuples as lists, paths as strings, 1 == 1.0)."""
    return json.loads(json.dumps(a, default=str)) == json.loads(json.dumps(b, default=str))


def resume_settings(recorded: Mapping[str, Any], given: Mapping[str, Any], *,
                    flags: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The settings of a resumed run: ``recorded`` (from its ``run_config.json``) for every
    name of ``given``; a given value (not ``None``) that differs from the recorded one is an
    :class:`ArgumentError` naming it (the run keeps its settings: its steps, schedule, batch,
    seed and data decide where it stands).  A name the run did not record takes the given
    value."""
    out: dict[str, Any] = {}
    for name, value in given.items():
        if name not in recorded:
            out[name] = value
            continue
        if value is not None and not _same(value, recorded[name]):
            raise ArgumentError(
                name,
                f"the run was started with {recorded[name]!r}, not {value!r}; a resumed run keeps its "
                "settings (leave the flag out, or start a new run in another output directory)",
            )
        out[name] = recorded[name]
    return out


def record_resume(output_dir: str | Path, run_config: dict[str, Any], *, step: int,
                  changed: Mapping[str, tuple[Any, Any]]) -> None:
    """Append ``{"step", "changed": {name: [before, now]}}`` to the ``resumes`` of
    ``run_config.json`` (the settings a resumed run may change: device, trackers ...), with a
    warning for each change."""
    changes = {k: [a, b] for k, (a, b) in changed.items() if not _same(a, b)}
    for k, (a, b) in changes.items():
        logger.warning("resuming with %s %r (the run had %r)", k, b, a)
    run_config.setdefault("resumes", []).append({"step": int(step), "changed": changes})
    write_json(Path(output_dir) / RUN_CONFIG, run_config)


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
