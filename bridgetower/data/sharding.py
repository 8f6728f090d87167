"""Which part of a streamed dataset each (rank, ``DataLoader`` worker) reads.

The streaming readers (:class:`~bridgetower.data.WebDatasetPairs`: tar shards;
:class:`~bridgetower.data.ArrowDataset`: chunks of rows) cut their data into a list of units
and split it the same way, with :class:`WorkerShard`: first across ranks
(``units[rank::world_size]``), then across the workers of a rank (``[worker::num_workers]``).

So every unit is read by exactly one worker of one rank per epoch, the ranks' shares differ
by at most one unit, and what a rank reads does not depend on its number of workers. The
unit list itself (and its per-epoch shuffle, which must be the same on every rank) is the
dataset's business.

``rank`` / ``world_size`` default to ``torch.distributed`` when it is initialised, else 0
and 1; the worker comes from :func:`torch.utils.data.get_worker_info`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch
from torch.utils.data import get_worker_info

__all__ = ["WorkerShard", "check_rank_world", "current_shard"]

T = TypeVar("T")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_rank_world(rank: int | None, world_size: int | None) -> None:
    """``ValueError`` unless both are ``None`` or ints with ``0 <= rank < world_size``."""
    if (rank is None) != (world_size is None):
        raise ValueError("pass both rank and world_size, or neither")
    if world_size is not None and not (_is_int(rank) and _is_int(world_size) and 0 <= rank < world_size):
        raise ValueError(f"need ints 0 <= rank < world_size, got rank={rank!r}, world_size={world_size!r}")


@dataclass(frozen=True)
class WorkerShard:
    """Worker ``worker`` (of ``num_workers``) of rank ``rank`` (of ``world_size``)."""

    rank: int = 0
    world_size: int = 1
    worker: int = 0
    num_workers: int = 1

    def __post_init__(self) -> None:
        check_rank_world(self.rank, self.world_size)
        if not (_is_int(self.worker) and _is_int(self.num_workers) and 0 <= self.worker < self.num_workers):
            raise ValueError(
                f"need ints 0 <= worker < num_workers, got worker={self.worker!r}, num_workers={self.num_workers!r}"
            )

    def take(self, units: Sequence[T]) -> list[T]:
        """This worker's units: ``units[rank::world_size][worker::num_workers]``."""
        return list(units[self.rank :: self.world_size][self.worker :: self.num_workers])

    def __str__(self) -> str:
        return f"rank {self.rank} worker {self.worker} ({self.world_size} ranks x {self.num_workers} workers)"


def current_shard(rank: int | None = None, world_size: int | None = None) -> WorkerShard:
    """The shard of the calling process: ``rank``/``world_size`` when given, else those of
    ``torch.distributed`` when initialised, else 0 and 1; the ``DataLoader`` worker of this
    process (0 of 1 outside a worker)."""
    if world_size is None:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            rank, world_size = torch.distributed.get_rank(), torch.distributed.get_world_size()
        else:
            rank, world_size = 0, 1
    info = get_worker_info()
    if info is None:
        return WorkerShard(rank, world_size)
    return WorkerShard(rank, world_size, info.id, info.num_workers)
