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
  the collate function accepts that keyword;
* the global ``torch`` RNG seen by the dataset and the collate function while one batch is
  made (random image augmentation) is seeded from ``(seed, batch index)`` too, inside
  ``torch.random.fork_rng``: the training process's own RNG stream (dropout) is untouched.

With ``num_workers=0`` loading runs in the training process.  With ``num_workers > 0`` the
batches are produced (read, decoded, collated) by ``DataLoader`` worker processes, with pinned
memory when CUDA is available, and are *the same batches in the same order*: worker ``w`` of
``N`` produces the batches ``w, w + N, ...`` of the stream and skips the others by index
(no reading; a map-style dataset only).  An iterable dataset (shards, Arrow tables) is one
sequence: it is read by one worker process (more are capped to one).  Workers start at the
stream's position, so a resumed run continues exactly; the parent keeps the position of the
batches it has handed out (prefetched ones are not counted).  Python's ``random`` and NumPy's
global RNGs are not seeded per batch: a dataset drawing from them differs between worker
counts (the package's datasets and collators do not).  Call :meth:`BatchStream.close` (the
trainer does at the end of ``train()``) to stop the workers at once.
"""

from __future__ import annotations

import inspect
import itertools
import logging
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

logger = logging.getLogger(__name__)

__all__ = ["BatchStream"]

_MIX = 0x9E3779B97F4A7C15  # odd 64-bit constant: mixes (seed, index) into one seed
_GLOBAL_SALT = 0x2545F4914F6CDD1D  # the global-RNG seed of a batch differs from its generator's


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
        num_workers: int = 0,
        pin_memory: bool | None = None,
    ) -> None:
        if not isinstance(num_workers, int) or isinstance(num_workers, bool) or num_workers < 0:
            raise ValueError(f"num_workers must be an int >= 0, got {num_workers!r}")
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
        if num_workers > 1 and not self._map_style:
            logger.info("an iterable dataset is one sequence: read by 1 worker process, not %d", num_workers)
            num_workers = 1
        self.num_workers = num_workers
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else bool(pin_memory)
        self._workers: Iterator | None = None  # the DataLoader iterator when num_workers > 0

    # -------------------------------------------------------------------------- state
    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, "consumed": self.consumed}

    def load_state_dict(self, state: dict) -> None:
        self.epoch = int(state["epoch"])
        self.position = int(state["position"])
        self.consumed = int(state["consumed"])
        self._order = None
        self._iter = None
        self.close()

    def close(self) -> None:
        """Stop the worker processes now (they restart at the current position when needed)."""
        workers, self._workers = getattr(self, "_workers", None), None
        shutdown = getattr(workers, "_shutdown_workers", None)
        if shutdown is not None:  # at once: left to the garbage collector it can take seconds
            shutdown()

    def __del__(self) -> None:
        self.close()

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_workers"] = None
        return state

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
        n = self.position * self.batch_size
        # fast-forward after a resume: a dataset with iter_from passes the samples over undecoded
        self._iter = self.dataset.iter_from(n) if n and hasattr(self.dataset, "iter_from") else iter(self.dataset)
        for _ in range(n):
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
        if self.num_workers == 0:
            return self._produce()
        if self._workers is None:
            loader = DataLoader(
                _WorkerBatches(self, self.state_dict()), batch_size=None, num_workers=self.num_workers,
                pin_memory=self.pin_memory, prefetch_factor=2,
                # the workers' base seed from a private generator: the global RNG stays untouched
                generator=torch.Generator().manual_seed(self.seed),
            )
            self._workers = iter(loader)
        batch, state = next(self._workers)
        self.epoch, self.position, self.consumed = state["epoch"], state["position"], state["consumed"]
        return batch

    def _skip(self) -> None:
        """Advance past the next batch of a map-style dataset without reading it."""
        if self.position >= self._batches_per_epoch():
            self.epoch += 1
            self.position = 0
            self._order = None
        self.position += 1
        self.consumed += 1

    def _produce(self) -> Any:
        """Read and collate the next batch in this process."""
        with torch.random.fork_rng(devices=[]):  # the per-batch global RNG (augmentation)
            torch.manual_seed((self.seed * _MIX + self.consumed) % (2**63) ^ _GLOBAL_SALT)
            samples = self._next_samples_map() if self._map_style else self._next_samples_iter()
            if self._pass_generator:
                batch = self.collate_fn(samples, generator=self.batch_generator(self.consumed))
            else:
                batch = self.collate_fn(samples)
        self.position += 1
        self.consumed += 1
        return batch


class _WorkerBatches(IterableDataset):
    """What a worker process of :class:`BatchStream` runs: a copy of the stream from ``state``
    producing every ``num_workers``-th batch (its own) with the stream state after it."""

    def __init__(self, stream: BatchStream, state: dict) -> None:
        self.stream = stream
        self.state = dict(state)

    def __iter__(self) -> Iterator[tuple[Any, dict]]:
        info = get_worker_info()
        worker, n = (info.id, info.num_workers) if info is not None else (0, 1)
        s = self.stream
        s.num_workers, s._workers = 0, None  # this copy produces in-process (never the parent's loader)
        s.load_state_dict(self.state)
        for j in itertools.count():
            if j % n == worker:
                batch = s._produce()
                yield batch, s.state_dict()
            else:
                s._skip()
