"""Experiment trackers: TensorBoard and Weights & Biases, beside the JSONL/CSV metrics log.

A :class:`Tracker` receives what :class:`~bridgetower.training.metrics.MetricsLogger` writes
to ``metrics.jsonl`` -- one record of floats per ``(step, split)`` -- under the tag
``"{split}/{name}"`` (``train/loss``, ``eval/accuracy``), plus the run configuration once.
The JSONL/CSV log stays the source of truth (resume truncates it; the trackers only append).

===================== ===================================== ===============================
name                  backend                               where
===================== ===================================== ===============================
``"tensorboard"``     ``torch.utils.tensorboard``           ``<output_dir>/tensorboard/``
                      ``SummaryWriter`` (needs the
                      ``tensorboard`` package)
``"wandb"``           ``wandb.init`` / ``run.log``          ``<output_dir>/wandb/``; online,
                                                            or offline with
                                                            ``WANDB_MODE=offline`` /
                                                            ``mode="offline"``
===================== ===================================== ===============================

Select them by name (:func:`parse_trackers` reads ``"none"``, ``"tensorboard"``,
``"tensorboard,wandb"`` or a list of those, as the ``--tracker`` flag of the command line
gives them) and build them with :func:`create_trackers`.  A selected tracker whose package
is not installed is a :class:`TrackerUnavailableError` naming the package to install;
nothing is silently skipped.  :func:`read_wandb_run` reads the history back from a W&B run
directory (offline runs have no summary file).
"""

from __future__ import annotations

import abc
import json
import logging
import math
import os
import struct
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .._optional import require

logger = logging.getLogger(__name__)

__all__ = [
    "TRACKERS",
    "TensorBoardTracker",
    "Tracker",
    "TrackerUnavailableError",
    "WandbTracker",
    "add_tracker_argument",
    "check_trackers",
    "create_trackers",
    "parse_trackers",
    "read_wandb_run",
]


class TrackerUnavailableError(ImportError):
    """A selected tracker's package is not installed, or the tracker cannot start (W&B
    without an API key in online mode): the message says what to do."""


def _require(module: str, tracker: str, package: str) -> Any:
    return require(module, "tracking", needed_for=f"the {tracker!r} tracker", package=package,
                   hint="choose another --tracker", error=TrackerUnavailableError)


def _scalars(values: Mapping[str, Any]) -> dict[str, float]:
    """The finite float values of a record (``None`` / NaN / inf are left out)."""
    out = {}
    for k, v in values.items():
        if v is None or isinstance(v, (str, bool)):
            continue
        v = float(v)
        if math.isfinite(v):
            out[k] = v
    return out


class Tracker(abc.ABC):
    """An experiment tracker: ``log_config`` once, ``log`` per metrics record, ``close``."""

    #: the name :func:`create_trackers` knows it by.
    name: str = ""

    @abc.abstractmethod
    def log(self, step: int, values: Mapping[str, float], *, split: str = "train") -> None:
        """Record ``values`` at ``step`` under the tags ``"{split}/{key}"``."""

    def log_config(self, config: Mapping[str, Any]) -> None:  # noqa: B027 - optional hook
        """Record the run configuration (a JSON-able mapping)."""

    def flush(self) -> None:  # noqa: B027 - optional hook
        """Push buffered records to disk (or the server)."""

    @abc.abstractmethod
    def close(self) -> None:
        """Flush and release the backend; further ``log`` calls are errors."""

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class TensorBoardTracker(Tracker):
    """Scalars to a TensorBoard event file in ``log_dir`` (``torch.utils.tensorboard``); the
    configuration as a JSON text summary under the tag ``config``."""

    name = "tensorboard"

    def __init__(self, log_dir: str | os.PathLike) -> None:
        _require("tensorboard", self.name, "tensorboard")
        from torch.utils.tensorboard import SummaryWriter

        self.log_dir = Path(log_dir)
        self._writer = SummaryWriter(log_dir=str(self.log_dir))

    def _open(self):
        if self._writer is None:
            raise RuntimeError(f"{type(self).__name__} for {self.log_dir} is closed")
        return self._writer

    def log(self, step: int, values: Mapping[str, float], *, split: str = "train") -> None:
        w = self._open()
        for k, v in _scalars(values).items():
            w.add_scalar(f"{split}/{k}", v, int(step))

    def log_config(self, config: Mapping[str, Any]) -> None:
        text = json.dumps(dict(config), indent=1, default=str)
        self._open().add_text("config", "```\n" + text + "\n```", 0)

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(log_dir={str(self.log_dir)!r})"


class WandbTracker(Tracker):
    """A Weights & Biases run (``wandb.init(project, name, dir, mode, config)``).

    Args:
        directory: the run's local files go to ``directory/wandb/``.
        project: the W&B project (default ``"bridgetower"``, or ``WANDB_PROJECT``).
        run_name: the run's display name (default: W&B's).
        mode: ``"online"``, ``"offline"`` or ``"disabled"``; ``None`` lets ``WANDB_MODE``
            decide (offline runs are uploaded later with ``wandb sync``).
        config: the run configuration.
        group, tags: W&B grouping.

    Steps must not decrease (W&B drops records of an earlier step): the trainer logs in step
    order; records of a resumed run continue where the checkpoint was.
    """

    name = "wandb"

    def __init__(
        self,
        directory: str | os.PathLike,
        *,
        project: str | None = None,
        run_name: str | None = None,
        mode: str | None = None,
        config: Mapping[str, Any] | None = None,
        group: str | None = None,
        tags: Sequence[str] | None = None,
    ) -> None:
        if mode is not None and mode not in ("online", "offline", "disabled"):
            raise ValueError(f"mode must be 'online', 'offline', 'disabled' or None, got {mode!r}")
        wandb = _require("wandb", self.name, "wandb")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        kwargs: dict[str, Any] = {
            "project": project or os.environ.get("WANDB_PROJECT") or "bridgetower",
            "name": run_name,
            "dir": str(self.directory),
            "config": dict(config) if config is not None else None,
            "group": group,
            "tags": list(tags) if tags else None,
            "reinit": "create_new",
            "settings": wandb.Settings(console="off"),
        }
        if mode is not None:
            kwargs["mode"] = mode
        try:
            self._run = wandb.init(**kwargs)
        except Exception as e:  # noqa: BLE001 - wandb.errors.* and what its service raises
            # wandb keeps the settings of its first setup (mode, directories) in a process-wide
            # singleton; tear it down so that a retry in this process reads the environment anew
            teardown = getattr(wandb, "teardown", None)
            if teardown is not None:
                teardown()
            raise TrackerUnavailableError(
                f"the 'wandb' tracker cannot start ({type(e).__name__}: {str(e).strip() or 'no message'}); "
                "log in with `wandb login` (or set WANDB_API_KEY), or log offline with WANDB_MODE=offline "
                "and upload later with `wandb sync`, or choose another --tracker"
            ) from e

    @property
    def run(self) -> Any:
        """The ``wandb`` run object (``None`` once closed)."""
        return self._run

    @property
    def run_dir(self) -> Path:
        """The local directory of the run (``.../wandb/<run>/``)."""
        return Path(self._open().dir).parent

    def _open(self):
        if self._run is None:
            raise RuntimeError(f"{type(self).__name__} in {self.directory} is closed")
        return self._run

    def log(self, step: int, values: Mapping[str, float], *, split: str = "train") -> None:
        scalars = _scalars(values)
        if scalars:
            self._open().log({f"{split}/{k}": v for k, v in scalars.items()}, step=int(step))

    def log_config(self, config: Mapping[str, Any]) -> None:
        self._open().config.update(dict(config), allow_val_change=True)

    def close(self) -> None:
        if self._run is not None:
            self._run.finish()
            self._run = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(directory={str(self.directory)!r})"


#: Tracker name -> class.
TRACKERS: dict[str, type[Tracker]] = {"tensorboard": TensorBoardTracker, "wandb": WandbTracker}


def parse_trackers(spec: str | Iterable[str] | None) -> tuple[str, ...]:
    """Tracker names from ``spec``: ``None``/``"none"``/``""`` -> ``()``; ``"a,b"`` or a list
    of such strings (a repeated ``--tracker`` flag) -> the distinct names in order.  An unknown
    name is a ``ValueError`` listing the valid ones; ``none`` mixed with a tracker too."""
    if spec is None:
        return ()
    parts: list[str] = []
    for item in [spec] if isinstance(spec, str) else list(spec):
        if not isinstance(item, str):
            raise TypeError(f"tracker names are strings, got {type(item).__name__}: {item!r}")
        parts += [p.strip().lower() for p in item.split(",") if p.strip()]
    unknown = [p for p in parts if p not in TRACKERS and p != "none"]
    if unknown:
        raise ValueError(f"unknown tracker(s) {unknown}; choose from none, {', '.join(TRACKERS)}")
    names = [p for p in parts if p != "none"]
    if names and "none" in parts:
        raise ValueError(f"tracker 'none' cannot be combined with {names}")
    return tuple(dict.fromkeys(names))


def check_trackers(names: str | Iterable[str] | None) -> tuple[str, ...]:
    """The tracker names of ``names`` (:func:`parse_trackers`), once every selected tracker's
    package is known to be installed (:class:`TrackerUnavailableError` otherwise).  The
    drivers call it before they change anything on disk."""
    selected = parse_trackers(names)
    for name in selected:
        _require(name, name, name)
    return selected


def create_trackers(
    names: str | Iterable[str] | None,
    output_dir: str | os.PathLike,
    *,
    run_name: str | None = None,
    config: Mapping[str, Any] | None = None,
    project: str | None = None,
    wandb_mode: str | None = None,
) -> list[Tracker]:
    """Build the trackers ``names`` (see :func:`parse_trackers`) for a run writing to
    ``output_dir``: TensorBoard into ``output_dir/tensorboard``, W&B into
    ``output_dir/wandb``.  ``config`` is logged to each.  Every package is checked before any
    tracker is created, so a missing one fails fast with :class:`TrackerUnavailableError`.
    In a ``torch.distributed`` job only rank 0 gets trackers (other ranks: ``[]``)."""
    selected = parse_trackers(names)
    for name in selected:
        _require(name, name, name)
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_rank() != 0:
        return []  # trackers live on rank 0 only (one W&B run, one event file per job)
    out = Path(output_dir)
    trackers: list[Tracker] = []
    try:
        for name in selected:
            if name == "tensorboard":
                t: Tracker = TensorBoardTracker(out / "tensorboard")
                if config is not None:
                    t.log_config(config)
            else:
                t = WandbTracker(out, project=project, run_name=run_name, mode=wandb_mode, config=config)
            trackers.append(t)
    except BaseException:
        for t in trackers:
            t.close()
        raise
    return trackers


def add_tracker_argument(parser: Any) -> None:
    """Add ``--tracker NAME[,NAME]`` (repeatable; ``none``, ``tensorboard``, ``wandb``) to an
    ``argparse`` parser or argument group; the parsed value (``args.tracker``) is the tuple of
    :func:`parse_trackers`, ``()`` by default."""
    import argparse

    def one(text: str) -> tuple[str, ...]:
        try:
            return parse_trackers(text) or ("none",)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    class _Collect(argparse.Action):
        def __call__(self, parser, namespace, values, option_string=None):
            have = [n for n in (getattr(namespace, self.dest, None) or ()) if n != "none"]
            merged = tuple(dict.fromkeys(have + [n for n in values if n != "none"]))
            setattr(namespace, self.dest, merged)

    parser.add_argument(
        "--tracker", type=one, action=_Collect, default=(), metavar="NAME[,NAME]",
        help="experiment trackers beside metrics.jsonl/.csv: none (default), tensorboard "
        "(<output-dir>/tensorboard), wandb (<output-dir>/wandb; offline with WANDB_MODE=offline); "
        "repeat the flag or give a comma list",
    )


# ------------------------------------------------------------------------------ W&B files


_WANDB_HEADER = b":W&B"
_BLOCK = 32 * 1024  # the records are a LevelDB-style log of 32 KiB blocks


def _wandb_records(path: Path) -> list[bytes]:
    """The raw records of a ``run-*.wandb`` file: a 7-byte header (``:W&B``, magic, version),
    then blocks of ``[crc32c u32][length u16][type u8][data]`` chunks (type 1 = a whole
    record, 2/3/4 = its first/middle/last piece); a block tail shorter than 7 bytes is padding."""
    data = path.read_bytes()
    if len(data) < 7 and _WANDB_HEADER.startswith(data[:4]):  # just created: nothing written yet
        return []
    if not data.startswith(_WANDB_HEADER):
        raise ValueError(f"{path}: not a W&B run file (no {_WANDB_HEADER!r} header)")
    records: list[bytes] = []
    pos, pending = 7, b""
    while pos + 7 <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < 7:
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0 and length == 0:  # zero padding up to the end of the block
            pos += left
            continue
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == 1:
            records.append(chunk)
        elif kind == 2:
            pending = chunk
        elif kind == 3:
            pending += chunk
        elif kind == 4:
            records.append(pending + chunk)
            pending = b""
        else:
            raise ValueError(f"{path}: corrupt record type {kind} at byte {pos}")
    return records


def read_wandb_run(run_dir: str | os.PathLike, *, timeout: float = 10.0) -> dict[str, Any]:
    """Read a local W&B run directory (e.g. ``out/wandb/offline-run-*``): ``{"history":
    [{"_step": .., "train/loss": ..}, ...], "summary": {...}, "config": {...}, "finished":
    bool}``.

    Parses the run's ``run-*.wandb`` record file with ``wandb``'s own protobuf classes, so it
    works for offline runs (which write no summary file until synced).  W&B's service writes
    that file asynchronously -- it can still be incomplete just after ``run.finish()``
    returns -- so this waits up to ``timeout`` seconds for the run's exit record; after that
    (or with ``timeout=0``) it returns what is there, with ``finished`` False.
    """
    _require("wandb", "wandb", "wandb")
    from wandb.proto import wandb_internal_pb2 as pb

    run_dir = Path(run_dir)
    files = sorted(run_dir.glob("run-*.wandb")) if run_dir.is_dir() else [run_dir]
    if not files or not files[0].is_file():
        raise FileNotFoundError(f"no run-*.wandb file in {run_dir}")
    history: list[dict[str, Any]] = []
    summary: dict[str, Any] = {}
    config: dict[str, Any] = {}

    def key_of(item) -> str:
        return item.key or "/".join(item.nested_key)

    deadline = time.monotonic() + max(0.0, timeout)
    while True:
        records = []
        for raw in _wandb_records(files[0]):
            rec = pb.Record()
            rec.ParseFromString(raw)
            records.append(rec)
        finished = any(r.WhichOneof("record_type") == "exit" for r in records)
        if finished or time.monotonic() >= deadline:
            break
        time.sleep(0.05)
    for rec in records:
        kind = rec.WhichOneof("record_type")
        if kind == "history":
            history.append({key_of(i): json.loads(i.value_json) for i in rec.history.item})
        elif kind == "summary":
            for i in rec.summary.update:
                summary[key_of(i)] = json.loads(i.value_json)
        elif kind in ("run", "config"):  # the config given to init, then updates
            for i in (rec.run.config if kind == "run" else rec.config).update:
                config[key_of(i)] = json.loads(i.value_json)
    return {"history": history, "summary": summary, "config": config, "finished": finished}
