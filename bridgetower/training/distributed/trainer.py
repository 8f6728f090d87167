"""The :class:`DistributedTrainer`: the :class:`~bridgetower.training.trainer.Trainer` loop on
a model prepared by :func:`~bridgetower.training.distributed.parallel.parallelize`.

Each rank trains on its shard of the global batch (:class:`ShardedBatchStream` with the
model's declared batch keys); logged metrics are averaged over the ranks (``samples`` is
summed).  Only rank 0 writes files (metrics, trackers, plots, checkpoints, the final model);
the other ranks' metrics logger is a no-op.  Checkpoints are rank-independent
(:mod:`~bridgetower.training.distributed.state`); every rank reads one on resume.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..checkpoint import CHECKPOINTS_DIR, read_checkpoint, restore_rng_state
from ..trainer import Trainer, TrainerConfig
from .parallel import ParallelModel
from .process_group import all_reduce_mean, barrier
from .sharding import ShardedBatchStream
from .state import (
    FixedStateDict,
    canonical_optimizer_state_dict,
    full_model_state_dict,
    full_state_copy,
    load_canonical_optimizer_state_dict,
    load_full_model_state_dict,
)

logger = logging.getLogger(__name__)

__all__ = ["DistributedTrainer"]


class _NullMetrics:
    """The metrics logger of ranks other than 0: records nothing, writes nothing."""

    records: list[dict] = []

    def log(self, step: int, values: Mapping[str, float], *, split: str = "train") -> dict:
        return {"step": int(step), "split": split, **{k: float(v) for k, v in values.items()}}

    def truncate_after(self, step: int, *, records: int | None = None) -> None:
        pass

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


class DistributedTrainer(Trainer):
    """A :class:`Trainer` for a model prepared by :func:`parallelize`; see the module doc.

    Args:
        parallel: the :class:`ParallelModel`.
        optimizer: built over ``parallel.module``'s parameters *after* :func:`parallelize`.
        stream: a :class:`~bridgetower.training.stream.BatchStream` of global batches (wrapped
            in a :class:`ShardedBatchStream` here) or an already sharded stream.
        config: :class:`TrainerConfig`; its ``device`` is replaced by ``parallel.ctx.device``;
            on ranks other than 0 the trackers, the progress bar and the plot are off.
        scheduler, eval_fn, extra_save: as for :class:`Trainer`.  ``eval_fn`` runs on rank 0
            only with DDP, on every rank (through the FSDP root) with FSDP; rank 0 logs it.
    """

    def __init__(
        self,
        parallel: ParallelModel,
        optimizer: torch.optim.Optimizer,
        stream: Any,
        config: TrainerConfig,
        *,
        scheduler: Any = None,
        eval_fn: Callable[[nn.Module], Mapping[str, float]] | None = None,
        extra_save: Callable[[Path], None] | None = None,
    ) -> None:
        if not isinstance(parallel, ParallelModel):
            raise TypeError(f"parallel must be a ParallelModel (from parallelize()), got {type(parallel).__name__}")
        if not isinstance(config, TrainerConfig):
            raise TypeError(f"config must be a TrainerConfig, got {type(config).__name__}")
        ctx = parallel.ctx
        self.parallel = parallel
        self.ctx = ctx
        changes: dict[str, Any] = {"device": str(ctx.device)}
        if not ctx.is_main:
            changes.update(trackers=(), progress=False, plot=False)
        config = dataclasses.replace(config, **changes)
        if not isinstance(stream, ShardedBatchStream):
            # the model declares which keys are images / image indices (None: split every key by rows)
            spec = getattr(parallel.module, "batch_spec", None)
            rank, world = (ctx.rank, ctx.world_size) if ctx.is_distributed else (0, 1)
            stream = ShardedBatchStream(stream, rank=rank, world_size=world, spec=spec)
        self._user_eval_fn = eval_fn
        if eval_fn is not None and parallel.strategy == "fsdp" and ctx.is_distributed:
            run_eval = parallel.run

            def eval_fn(model: nn.Module) -> Mapping[str, float]:  # noqa: F811 - through the root
                return run_eval(self._user_eval_fn)

        super().__init__(
            parallel.module, parallel.objective, optimizer, stream, config,
            scheduler=scheduler, eval_fn=eval_fn, extra_save=extra_save,
        )
        if not ctx.is_main:
            self.metrics = _NullMetrics()  # type: ignore[assignment]

    @property
    def _sharded(self) -> bool:
        return self.parallel.strategy == "fsdp" and self.ctx.is_distributed

    # ---------------------------------------------------------------------------- steps
    def train_step(self) -> dict[str, float]:
        out = super().train_step()
        return all_reduce_mean(out, sum_keys=("samples",))

    def gradient_sync(self, enabled: bool) -> contextlib.AbstractContextManager:
        """Micro-batches other than an optimizer step's last accumulate gradients locally
        (DDP ``no_sync``, FSDP2 ``set_requires_gradient_sync(False)``): one communication per
        optimizer step."""
        return self.parallel.gradient_sync(enabled)

    def evaluate(self) -> dict[str, float]:
        if self.eval_fn is None:
            return {}
        if self._sharded or self.ctx.is_main:
            values = super().evaluate()
        else:
            values = {}
        return values

    # ----------------------------------------------------------------------------- files
    @contextlib.contextmanager
    def _full_state(self) -> Iterator[bool]:
        """On rank 0 swap in a full-state model/optimizer for writing; yields ``is_main``.
        With FSDP every rank must enter (the gathers are collectives)."""
        if not self._sharded:
            yield self.ctx.is_main
            return
        model_sd = full_model_state_dict(self.model)
        optim_sd = canonical_optimizer_state_dict(self.model, self.optimizer)
        if not self.ctx.is_main:
            yield False
            return
        model, optimizer = self.model, self.optimizer
        self.model = full_state_copy(model, model_sd)
        self.optimizer = FixedStateDict(optim_sd)  # type: ignore[assignment]
        try:
            yield True
        finally:
            self.model, self.optimizer = model, optimizer

    def save_checkpoint(self) -> Path:
        """Rank 0 writes the full, rank-independent checkpoint; every rank returns its path."""
        with self._full_state() as main:
            if main:
                path = super().save_checkpoint()
        barrier()
        return path if self.ctx.is_main else self.output_dir / CHECKPOINTS_DIR / f"step-{self.step:08d}"

    def save_final_model(self) -> Path:
        with self._full_state() as main:
            if main:
                super().save_final_model()
        barrier()
        return self.output_dir / "model"

    def plot(self) -> Path | None:
        return super().plot() if self.ctx.is_main else None

    def resume(self, path: str | Path | None = None) -> int:
        """Every rank restores the (rank-independent) checkpoint; see :meth:`Trainer.resume`."""
        barrier()
        if not self._sharded:
            return super().resume(path)
        data = read_checkpoint(path if path is not None else self.output_dir)
        load_full_model_state_dict(self.model, data.model_state)
        blob = data.blob
        load_canonical_optimizer_state_dict(self.model, self.optimizer, blob["optimizer"])
        if self.scheduler is not None and blob.get("scheduler"):
            self.scheduler.load_state_dict(blob["scheduler"])
        if self.scaler is not None and blob.get("scaler"):
            self.scaler.load_state_dict(blob["scaler"])
        restore_rng_state(blob["rng"], data.trainer_state["rng"])
        self._load_trainer_state(data.trainer_state)
        ckpt = data.directory
        logger.info("resumed from %s at step %d", ckpt, self.step)
        return self.step
