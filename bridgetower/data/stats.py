"""Counting the samples a dataset skips, so bad data never stops a run and is never silent.

A dataset that meets an unreadable image, a missing file or an empty caption returns (or
yields) a :class:`Skipped` marker instead of a sample and counts it in its own
:class:`SkipStats`. The collator drops markers and puts their counts in the batch
(``batch["skipped"]``, one count per reason of :data:`SKIP_REASONS`), so the training process
sees the counts even when the dataset runs in ``DataLoader`` worker processes:
``stats.add_counts(batch["skipped"])`` per batch and ``stats.report(logger, epoch)`` at the
end of an epoch.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass

import torch

__all__ = ["SKIP_REASONS", "Skipped", "SkipStats"]

#: Why a sample was skipped. The order is the layout of ``batch["skipped"]``.
SKIP_REASONS: tuple[str, ...] = (
    "missing_file",  # the image file does not exist
    "unreadable_image",  # not an image, truncated or corrupt
    "empty_caption",  # caption missing, empty or only whitespace
    "bad_record",  # a shard entry without an image or a caption, or a broken tar member
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Skipped:
    """Stands in for a sample that could not be used."""

    reason: str
    source: str = ""

    def __post_init__(self) -> None:
        if self.reason not in SKIP_REASONS:
            raise ValueError(f"unknown skip reason {self.reason!r}; valid: {SKIP_REASONS}")


class SkipStats:
    """Counts of skipped samples per reason, with a few example sources per reason."""

    def __init__(self, max_examples: int = 5) -> None:
        self.counts: Counter[str] = Counter()
        self.examples: dict[str, list[str]] = {}
        self.max_examples = max_examples

    def add(self, reason: str, source: str = "") -> Skipped:
        """Count one skipped sample; returns the :class:`Skipped` marker for it."""
        marker = Skipped(reason, source)
        self.counts[reason] += 1
        ex = self.examples.setdefault(reason, [])
        if source and len(ex) < self.max_examples:
            ex.append(source)
        logger.debug("skipped %s (%s)", source, reason)
        return marker

    def add_counts(self, counts: torch.Tensor | Mapping[str, int]) -> None:
        """Add per-reason counts: a ``batch["skipped"]`` tensor or a ``{reason: n}`` mapping."""
        if isinstance(counts, torch.Tensor):
            if counts.shape != (len(SKIP_REASONS),):
                raise ValueError(
                    f"skip counts must have shape ({len(SKIP_REASONS)},), got {tuple(counts.shape)}"
                )
            counts = dict(zip(SKIP_REASONS, counts.tolist(), strict=True))
        for reason, n in counts.items():
            if reason not in SKIP_REASONS:
                raise ValueError(f"unknown skip reason {reason!r}; valid: {SKIP_REASONS}")
            if n:
                self.counts[reason] += int(n)

    def merge(self, other: SkipStats) -> None:
        self.add_counts(other.counts)
        for reason, ex in other.examples.items():
            mine = self.examples.setdefault(reason, [])
            mine.extend(ex[: max(0, self.max_examples - len(mine))])

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def as_dict(self) -> dict[str, int]:
        return {reason: int(self.counts.get(reason, 0)) for reason in SKIP_REASONS}

    def since(self, before: Mapping[str, int]) -> SkipStats:
        """The counts added after ``before`` (an earlier :meth:`as_dict`), e.g. one epoch's."""
        out = SkipStats(self.max_examples)
        out.add_counts({r: self.counts[r] - before.get(r, 0) for r in SKIP_REASONS})
        return out

    def reset(self) -> None:
        self.counts.clear()
        self.examples.clear()

    def summary(self) -> str:
        if not self.total:
            return "no samples skipped"
        parts = []
        for reason in SKIP_REASONS:
            n = self.counts.get(reason, 0)
            if n:
                ex = self.examples.get(reason)
                parts.append(f"{reason}={n}" + (f" (e.g. {', '.join(ex)})" if ex else ""))
        return f"skipped {self.total} samples: " + "; ".join(parts)

    def report(self, log: logging.Logger | None = None, epoch: int | None = None) -> str:
        """Log the summary (a warning when anything was skipped) and return it."""
        log = log or logger
        text = (f"epoch {epoch}: " if epoch is not None else "") + self.summary()
        log.log(logging.WARNING if self.total else logging.INFO, text)
        return text

    def __repr__(self) -> str:
        return f"SkipStats({self.as_dict()})"
