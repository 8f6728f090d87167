"""A deterministic, resumable stream of training batches.

:class:`BatchStream` turns a dataset and a collate function into an endless sequence of
batches whose content depends only on ``seed`` and the batch's index in the stream, so a run
resumed from a checkpoint sees exactly the batches the uninterrupted run would have seen:

* a map-style dataset (``__len__`` + ``__getitem__``) is read in a fresh permutation per
  epoch, drawn from ``seed`` and the epoch number (``shuffle=False``: in order); the last
  incomplete batch of an epoch is dropped (``drop_last``) so every batch has the same size;
* an iterable dataset (e.g. WebDataset shards) is iterated again per epoch (its
  ``set_epoch(epoch)`` is called when it has one); resuming re-reads and discards the
  batches already consumed in the current epoch, so the dataset must itself be deterministic
  (shard shuffling with a fixed seed);
* the collate function's own randomness (MLM masking, ITM negatives) comes from a
  ``torch.Generator`` seeded from ``(seed, batch index)`` and passed as ``generator=`` when
  the collate function accepts that keyword.  A collate function that uses the global RNG
  instead is still exact on resume, because the trainer checkpoints the global RNG states.

Loading runs in the training process (no worker processes): the synthetic and small data
of this package are cheap to produce compared with a training step.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from typing import Any

import torch

__all__ = ["BatchStream"]

_MIX = 0x9E3779B97F4A7C15  # odd 64-bit constant: mixes (seed, index) into one seed


def _accepts_generator(fn: Callable) -> bool:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return False
    return "generator" in sig.parameters or any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values()
    )


class BatchStream:
    """Endless, reproducible batches of ``batch_size`` samples; see the module doc."""

    def __init__(
        self,
        dataset: Any,
        collate_fn: Callable[..., Any],
        batch_size: int,
        *,
        seed: int = 0,
        shuffle: bool = True,
        drop_last: bool = True,
    ) -> None:
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if not callable(collate_fn):
            raise TypeError(f"collate_fn must be callable, got {type(collate_fn).__name__}")
        self.dataset = dataset
        self.collate_fn = collate_fn
        self.batch_size = batch_size
        self.seed = int(seed)
        self.shuffle = shuffle
        self.drop_last = drop_last
        self._map_style = hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__")
        if self._map_style:
            n = len(dataset)
            if n == 0 or (drop_last and n < batch_size):
                raise ValueError(
                    f"the dataset has {n} samples, fewer than one batch of {batch_size}"
                )
        elif not hasattr(dataset, "__iter__"):
            raise TypeError(
                f"dataset must be map-style (__len__/__getitem__) or iterable, got {type(dataset).__name__}"
            )
        self._pass_generator = _accepts_generator(collate_fn)
        self.epoch = 0
        self.position = 0  # batches consumed in the current epoch
        self.consumed = 0  # batches consumed in total
        self._order: torch.Tensor | None = None
        self._iter: Iterator | None = None

    # -------------------------------------------------------------------------- state
    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, "consumed": self.consumed}

    def load_state_dict(self, state: dict) -> None:
        self.epoch = int(state["epoch"])
        self.position = int(state["position"])
        self.consumed = int(state["consumed"])
        self._order = None
        self._iter = None

    # ---------------------------------------------------------------------------- data
    def _epoch_order(self) -> torch.Tensor:
        n = len(self.dataset)
        if not self.shuffle:
            return torch.arange(n)
        g = torch.Generator().manual_seed((self.seed * 1_000_003 + self.epoch) % (2**63))
        return torch.randperm(n, generator=g)

    def _batches_per_epoch(self) -> int:
        n = len(self.dataset)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def _next_samples_map(self) -> list:
        if self.position >= self._batches_per_epoch():
            self.epoch += 1
            self.position = 0
            self._order = None
        if self._order is None:
            self._order = self._epoch_order()
        start = self.position * self.batch_size
        idx = self._order[start : start + self.batch_size].tolist()
        return [self.dataset[i] for i in idx]

    def _start_iter(self) -> None:
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(self.epoch)
        self._iter = iter(self.dataset)
        for _ in range(self.position * self.batch_size):  # fast-forward after a resume
            next(self._iter)

    def _next_samples_iter(self) -> list:
        if self._iter is None:
            self._start_iter()
        samples: list = []
        for _ in range(2):  # at most one epoch change per batch
            assert self._iter is not None
            for sample in self._iter:
                samples.append(sample)
                if len(samples) == self.batch_size:
                    return samples
            if samples and not self.drop_last:
                return samples
            if self.position == 0 and not samples:
                raise ValueError("the iterable dataset yielded no samples")
            self.epoch += 1
            self.position = 0
            samples = []
            self._start_iter()
        raise ValueError(f"the iterable dataset yields fewer than one batch of {self.batch_size}")

    def batch_generator(self, index: int) -> torch.Generator:
        """The generator handed to the collate function for the ``index``-th batch."""
        return torch.Generator().manual_seed((self.seed * _MIX + index) % (2**63))

    def __iter__(self) -> BatchStream:
        return self

    def __next__(self) -> Any:
        samples = self._next_samples_map() if self._map_style else self._next_samples_iter()
        if self._pass_generator:
            batch = self.collate_fn(samples, generator=self.batch_generator(self.consumed))
        else:
            batch = self.collate_fn(samples)
        self.position += 1
        self.consumed += 1
        return batch
