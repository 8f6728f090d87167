"""Training metrics: a JSONL log, a CSV table, the experiment trackers, and a PNG plot.

:class:`MetricsLogger` appends one JSON object per record to ``metrics.jsonl`` (``{"step":
.., "split": "train" | "eval", ...}``) and rewrites ``metrics.csv`` (the union of all keys as
columns) on :meth:`MetricsLogger.flush`.  On resume, :meth:`MetricsLogger.truncate_after`
drops the records written after the checkpoint, so a resumed run's log is the log of the
uninterrupted run.  :func:`plot_metrics` draws the loss and accuracy curves with matplotlib's
object API (no ``pyplot`` global state).
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

logger = logging.getLogger(__name__)

__all__ = ["MetricsLogger", "plot_metrics", "read_jsonl"]


def read_jsonl(path: str | Path) -> list[dict]:
    """The records of a JSONL metrics file (an empty list when it does not exist).  A line
    that is not a JSON object (a record cut short by a kill) is left out with a warning."""
    path = Path(path)
    if not path.exists():
        return []
    out = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                record = None
            if isinstance(record, dict):
                out.append(record)
            else:
                logger.warning("%s:%d is not a metrics record (cut short?); left out", path, lineno)
    return out


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8", newline="") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class MetricsLogger:
    """Write metric records under ``output_dir`` (``metrics.jsonl``, ``metrics.csv``).

    ``trackers``: :class:`~bridgetower.training.tracking.Tracker` objects (TensorBoard, W&B)
    that receive every record too; :meth:`close` closes them.  (TensorBoard is one of the
    trackers: there is no second switch for it here.)"""

    def __init__(self, output_dir: str | Path, *, trackers: Iterable = ()) -> None:
        self.trackers = list(trackers)
        self.output_dir = Path(output_dir)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.jsonl_path = self.output_dir / "metrics.jsonl"
        self.csv_path = self.output_dir / "metrics.csv"

    @property
    def records(self) -> list[dict]:
        return read_jsonl(self.jsonl_path)

    def log(self, step: int, values: Mapping[str, float], *, split: str = "train") -> dict:
        """Append one record; non-finite floats are written as ``null``."""
        record: dict = {"step": int(step), "split": split}
        for k, v in values.items():
            v = float(v)
            record[k] = v if math.isfinite(v) else None
        with open(self.jsonl_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        if self.trackers:
            scalars = {k: v for k, v in record.items() if k not in ("step", "split") and v is not None}
            for tracker in self.trackers:
                tracker.log(int(step), scalars, split=split)
        return record

    def truncate_after(self, step: int, *, records: int | None = None) -> None:
        """Drop the records with ``step`` greater than ``step`` (used on resume), and all but
        the first ``records`` records when given (the count a checkpoint saw: records of the
        checkpoint's own step written after it, such as a final evaluation, go too)."""
        kept = [r for r in self.records if r.get("step", 0) <= step]
        if records is not None:
            kept = kept[: int(records)]
        _atomic_write_text(self.jsonl_path, "".join(json.dumps(r) + "\n" for r in kept))
        self.flush()

    def flush(self) -> None:
        """Rewrite ``metrics.csv`` from the JSONL records."""
        records = self.records
        columns: list[str] = ["step", "split"]
        for r in records:
            for k in r:
                if k not in columns:
                    columns.append(k)
        tmp = self.csv_path.with_name(f".{self.csv_path.name}.tmp-{os.getpid()}")
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            w = csv.DictWriter(f, fieldnames=columns, restval="")
            w.writeheader()
            for r in records:
                w.writerow({k: ("" if v is None else v) for k, v in r.items()})
        os.replace(tmp, self.csv_path)
        for tracker in self.trackers:
            tracker.flush()

    def close(self) -> None:
        self.flush()
        trackers, self.trackers = self.trackers, []
        for tracker in trackers:
            tracker.close()


#: Curves with at most this many points are drawn with a marker on each point.
_MARKED_POINTS = 50


def _series(records: Iterable[dict], split: str, key: str) -> tuple[list[int], list[float]]:
    xs, ys = [], []
    for r in records:
        if r.get("split") == split and r.get(key) is not None:
            xs.append(r["step"])
            ys.append(r[key])
    return xs, ys


def plot_metrics(records: list[dict], path: str | Path, *, title: str | None = None) -> Path:
    """Draw the loss curves (left) and the accuracy curves (right) into a PNG at ``path``.

    Plots every ``train`` key starting with ``loss`` and every key containing ``acc`` of both
    splits (accuracies as percentages); evaluation curves, and every curve of at most 50
    points, have a marker on each point, so that a run of one logged step still shows it.
    """
    from .._optional import require

    require("matplotlib", "plot", needed_for="plot_metrics (training_curves.png)")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    fig = Figure(figsize=(13, 4.2), dpi=110)
    FigureCanvasAgg(fig)
    ax_loss, ax_acc = fig.subplots(1, 2)
    keys = []
    for r in records:
        for k in r:
            if k not in ("step", "split") and (r["split"], k) not in keys:
                keys.append((r["split"], k))
    for split, k in keys:
        xs, ys = _series(records, split, k)
        if not xs:
            continue
        # a short run has a few points (one: no line at all): mark each one
        marker = "o" if split == "eval" or len(xs) <= _MARKED_POINTS else None
        if split == "train" and k.startswith("loss"):
            ax_loss.plot(xs, ys, label=k, linewidth=1.2, marker=marker, markersize=3)
        elif "acc" in k:
            ax_acc.plot(xs, [100 * y for y in ys], label=f"{split}/{k}", linewidth=1.2, marker=marker, markersize=3)
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("loss")
    ax_loss.set_title("training losses")
    ax_acc.set_xlabel("step")
    ax_acc.set_ylabel("accuracy (%)")
    ax_acc.set_ylim(0, 101)
    ax_acc.set_title("accuracies")
    for ax in (ax_loss, ax_acc):
        ax.grid(True, alpha=0.3)
    if ax_loss.get_legend_handles_labels()[0]:
        ax_loss.legend(fontsize=7)
    if ax_acc.get_legend_handles_labels()[0]:  # many curves: the legend goes beside the axes
        ax_acc.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
    fig.savefig(tmp, format="png")
    os.replace(tmp, path)
    return path
