"""What every sub-command of the ``bridgetower`` command line shares.

* :class:`CLIError` -- a user error, printed as ``bridgetower COMMAND: error: ...`` with exit
  status 2;
* :func:`setup_logging` -- one log format on stderr, INFO or (``--quiet``) WARNING;
* the ``argparse`` value types (:func:`positive_int`, :func:`probability`, :func:`warmup`
  ...), each rejecting bad text with a message that names what it expected, and
  :data:`VALUE_TYPES`, which maps a recipe knob's ``kind`` to its type;
* :func:`add_recipe_flags` / :func:`recipe_overrides` -- one flag per knob of a recipe
  class (:mod:`bridgetower.training.recipes`), so a knob is declared once;
* :func:`fmt` -- a value as the help texts print it;
* :func:`choose_device`, :func:`find_model_dir`, :func:`load_checkpoint_model`,
  :func:`check_paths` -- the checks of ``--device``, ``--checkpoint`` and path flags;
* :func:`add_dtype_flag` / :func:`place_model` -- ``--dtype`` of the commands that run a
  saved model (weights converted once, on the chosen device);
* :func:`raise_for_driver` -- a driver's :class:`~bridgetower.training.run.ArgumentError`
  as a message about the flag of the same name.
"""

from __future__ import annotations

import argparse
import logging
import pickle
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

__all__ = [
    "PROGRESS",
    "VALUE_TYPES",
    "CLIError",
    "add_dtype_flag",
    "add_recipe_flags",
    "beta",
    "check_paths",
    "choose_device",
    "driver_errors",
    "find_model_dir",
    "fmt",
    "format_skips",
    "load_checkpoint_model",
    "non_negative_float",
    "place_model",
    "non_negative_int",
    "positive_float",
    "positive_int",
    "probability",
    "raise_for_driver",
    "recipe_defaults",
    "recipe_overrides",
    "setup_logging",
    "warmup",
]

#: ``--progress`` -> the Trainer's ``progress`` (None: a bar only on a terminal).
PROGRESS: dict[str, bool | None] = {"auto": None, "on": True, "off": False}


class CLIError(Exception):
    """A user error: printed as ``bridgetower COMMAND: error: ...`` with exit status 2."""


def setup_logging(quiet: bool) -> None:
    """Log ``bridgetower.*`` to stderr (one handler on the root logger), at INFO, or WARNING
    when ``quiet``."""
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
        root.addHandler(handler)
    logging.getLogger("bridgetower").setLevel(logging.WARNING if quiet else logging.INFO)


# ------------------------------------------------------------------------------ value types


def _bounded(text: str, cast: type, *, minimum: float, strict: bool, what: str) -> Any:
    try:
        v = cast(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if (v <= minimum) if strict else (v < minimum):
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
    return v


def positive_int(text: str) -> int:
    return _bounded(text, int, minimum=1, strict=False, what="a positive integer")


def non_negative_int(text: str) -> int:
    return _bounded(text, int, minimum=0, strict=False, what="an integer >= 0")


def positive_float(text: str) -> float:
    return _bounded(text, float, minimum=0.0, strict=True, what="a number > 0")


def non_negative_float(text: str) -> float:
    return _bounded(text, float, minimum=0.0, strict=False, what="a number >= 0")


def probability(text: str) -> float:
    v = non_negative_float(text)
    if v > 1:
        raise argparse.ArgumentTypeError(f"expected a probability in [0, 1], got {text!r}")
    return v


def beta(text: str) -> float:
    """An AdamW beta: a number in [0, 1)."""
    v = non_negative_float(text)
    if v >= 1:
        raise argparse.ArgumentTypeError(f"a beta must be in [0, 1), got {text!r}")
    return v


def warmup(text: str) -> float | int:
    """A warm-up: a fraction of the steps (a number < 1) or a number of steps (>= 1)."""
    v = _bounded(text, float, minimum=0.0, strict=False, what="a warm-up >= 0 (a fraction < 1 or steps)")
    return v if v < 1 else int(v)


#: A recipe knob's ``kind`` -> its ``argparse`` type.
VALUE_TYPES: dict[str, Callable[[str], Any]] = {
    "float": float,
    "beta": beta,
    "non_negative_float": non_negative_float,
    "non_negative_int": non_negative_int,
    "positive_float": positive_float,
    "positive_int": positive_int,
    "probability": probability,
    "warmup": warmup,
}


def fmt(v: Any, none: str = "-") -> str:
    """A value as the help texts print it: ``1e-05``, ``0.9 0.98``, ``none`` for ``None``."""
    if v is None:
        return none
    if isinstance(v, tuple):
        return " ".join(fmt(x) for x in v)
    return f"{v:g}" if isinstance(v, float) else str(v)


def add_recipe_flags(group: Any, recipe_cls: type, defaults: Callable[[str], str]) -> None:
    """One flag per knob of ``recipe_cls`` (``--name-with-hyphens``, default ``None`` = the
    recipe's value), its help the knob's help followed by ``(defaults(name))``."""
    from ..training.recipes import knobs

    for f in knobs(recipe_cls):
        extra: dict[str, Any] = {"nargs": 2, "metavar": ("B1", "B2")} if f.metadata["pair"] else {}
        group.add_argument("--" + f.name.replace("_", "-"), type=VALUE_TYPES[f.metadata["kind"]], default=None,
                           help=f"{f.metadata['help']} ({defaults(f.name)})", **extra)


def recipe_overrides(args: argparse.Namespace, recipe_cls: type) -> dict[str, Any]:
    """The knob flags given on the command line (pairs as tuples), by field name."""
    from ..training.recipes import knobs

    out = {}
    for f in knobs(recipe_cls):
        v = getattr(args, f.name)
        if v is not None:
            out[f.name] = tuple(v) if f.metadata["pair"] else v
    return out


def recipe_defaults(recipes: dict[str, Any], name: str, none: str = "-") -> str:
    """``"t1 v1, t2 v2"``: the value of knob ``name`` in each recipe of ``recipes``."""
    return ", ".join(f"{t} {fmt(getattr(r, name), none)}" for t, r in recipes.items())


# ------------------------------------------------------------------------------ checks


def check_paths(flag: str, paths: Sequence[str] | None) -> None:
    """``CLIError`` naming ``flag`` for the first path that does not exist."""
    for p in paths or []:
        if not Path(p).exists():
            raise CLIError(f"{flag}: {p!r} does not exist")


def choose_device(arg: str | None, *, default_cuda: bool, precision: str | None = None) -> str:
    """The torch device of ``--device`` (default: ``cuda`` when ``default_cuda`` and CUDA is
    available, else ``cpu``); a ``CLIError`` for a bad name, CUDA without CUDA, or
    ``--precision fp16`` off CUDA."""
    import torch

    device = arg or ("cuda" if default_cuda and torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise CLIError(f"--device: {e}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise CLIError(f"--device {device}: CUDA is not available on this machine")
    if precision == "fp16" and dev.type != "cuda":
        raise CLIError("--precision fp16 needs a CUDA device (it uses loss scaling); use bf16 or fp32 on CPU")
    return device


#: ``--dtype`` names -> torch dtype names
DTYPES = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16",
          "fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def add_dtype_flag(parser: Any) -> None:
    """``--dtype`` on a command that runs a model (see :func:`place_model`)."""
    parser.add_argument("--dtype", choices=tuple(DTYPES), default="float32",
                        help="dtype of the weights: float32 (fp32), bfloat16 (bf16: about 2x faster on "
                             "CPUs with AVX512-BF16/AMX; LayerNorm statistics and softmax stay float32), "
                             "float16 (fp16, CUDA only) (default: float32)")


def place_model(model: Any, device_arg: str | None, dtype_arg: str = "float32", *, default_cuda: bool = False) -> Any:
    """``model`` moved to ``--device`` and converted once to ``--dtype`` (in evaluation mode);
    a ``CLIError`` for float16 off CUDA."""
    import torch

    device = choose_device(device_arg, default_cuda=default_cuda)
    name = DTYPES.get(dtype_arg)
    if name is None:
        raise CLIError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype_arg!r}")
    if name == "float16" and torch.device(device).type != "cuda":
        raise CLIError("--dtype float16 needs a CUDA device; use bfloat16 or float32 on CPU")
    return model.to(device=device, dtype=getattr(torch, name)).eval()


def find_model_dir(path: str | Path, flag: str = "--checkpoint") -> Path:
    """The saved model at ``path`` (a run dir, its ``model/``, or a checkpoint dir:
    :func:`~bridgetower.training.run.resolve_model_dir`), or a ``CLIError`` naming ``flag``."""
    from ..training.run import resolve_model_dir

    try:
        return resolve_model_dir(path)
    except FileNotFoundError as e:
        raise CLIError(f"{flag}: {e}") from None


def load_checkpoint_model(model_dir: Path, flag: str = "--checkpoint") -> tuple[Any, Any]:
    """``(model, tokenizer)`` saved in ``model_dir``; a ``CLIError`` naming ``flag`` when the
    tokenizer is missing or the task unknown."""
    from ..training.run import load_saved_model, saved_tokenizer

    tokenizer = saved_tokenizer(model_dir)
    if tokenizer is None:
        raise CLIError(f"{flag}: no tokenizer saved next to the model in {model_dir}")
    try:
        return load_saved_model(model_dir), tokenizer
    except (ValueError, OSError, pickle.UnpicklingError) as e:  # a refused pickle too: one line
        raise CLIError(f"{flag}: {model_dir}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None


def driver_errors() -> tuple[type[Exception], ...]:
    """What a driver raises that the command line prints as one line: bad arguments,
    unusable checkpoints, unreadable data, a full disk."""
    from ..training.checkpoint import CheckpointError
    from ..training.trainer import UnreadableDataError

    return (ValueError, OSError, pickle.UnpicklingError, CheckpointError, UnreadableDataError)


def format_skips(summary: dict[str, Any]) -> str:
    """One line: the samples a run skipped, per reason (``summary["skipped"]``)."""
    counts = {k: v for k, v in (summary.get("skipped") or {}).items() if v}
    text = (f"skipped {sum(counts.values())} samples: " + ", ".join(f"{k}={v}" for k, v in counts.items())
            if counts else "no samples skipped")
    if summary.get("skipped_batches"):
        text += f" ({summary['skipped_batches']} batch(es) without a usable sample drawn again)"
    return text


def raise_for_driver(error: Exception, flags: dict[str, str] | None = None) -> NoReturn:
    """A driver's error as a ``CLIError``: an ``ArgumentError`` about argument ``x_y`` names
    the flag ``--x-y`` (or ``flags[argument]``); another error keeps its message."""
    from ..training.run import ArgumentError

    if isinstance(error, ArgumentError):
        flag = (flags or {}).get(error.argument, "--" + error.argument.replace("_", "-"))
        raise CLIError(f"{flag}: {error.message}") from None
    raise CLIError(str(error)) from None

