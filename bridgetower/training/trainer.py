"""The :class:`Trainer`: a plain PyTorch training loop with exact resume.

What it does per optimizer step: ``grad_accum_steps`` micro-batches from a
:class:`~bridgetower.training.stream.BatchStream`, each through ``objective(model, batch) ->
(loss, metrics)`` under autocast (``bf16`` on CPU or GPU; ``fp16`` with a ``GradScaler`` on
GPU only), backward of ``loss / grad_accum_steps``; then gradient clipping, the optimizer and
scheduler steps.  Every ``log_every`` steps the averaged metrics go to the
:class:`~bridgetower.training.metrics.MetricsLogger` (JSONL + CSV, and the selected
experiment trackers: TensorBoard, W&B) and to a progress bar (``tqdm`` on a terminal, a log line otherwise); every
``eval_every`` steps ``eval_fn(model)`` is run (with the RNG states preserved, so evaluating
does not change the training run); every ``checkpoint_every`` steps and at the end a
checkpoint is written atomically (:mod:`~bridgetower.training.checkpoint`).  At the end a
PNG of the loss and accuracy curves is drawn.

:meth:`Trainer.resume` restores model, optimizer, scheduler, scaler, the RNG states and the
data position, so that a run killed after a checkpoint and resumed finishes with the same
parameters as the run that was never interrupted.

The loop is single-process; for multi-process jobs wrap the model in DDP/FSDP under
``torchrun`` before handing it over (the objective only calls ``model(...)``).
"""

from __future__ import annotations

import contextlib
import logging
import random
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..data.stats import SkipStats
from .checkpoint import clean_interrupted_writes, load_checkpoint, save_checkpoint, save_model
from .metrics import MetricsLogger, plot_metrics
from .stream import BatchStream

logger = logging.getLogger(__name__)

__all__ = ["MAX_EMPTY_BATCHES", "PRECISIONS", "Trainer", "TrainerConfig", "UnreadableDataError", "move_to_device",
           "seed_everything"]

PRECISIONS = ("fp32", "bf16", "fp16")

#: Batches in a row in which every sample was skipped before the run stops: the data is then
#: unreadable as a whole, not one bad sample at a time.
MAX_EMPTY_BATCHES = 1000

Objective = Callable[[nn.Module, Any], "tuple[torch.Tensor, Mapping[str, Any]]"]


class UnreadableDataError(RuntimeError):
    """Batch after batch without a usable sample: the training data cannot be read."""


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def move_to_device(batch: Any, device: torch.device) -> Any:
    """Move every tensor of a (nested) dict/list/tuple batch to ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return {k: move_to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(move_to_device(v, device) for v in batch)
    return batch


@dataclass
class TrainerConfig:
    """Settings of a :class:`Trainer` run.

    ``max_steps`` counts optimizer steps; one step consumes ``grad_accum_steps``
    micro-batches.  ``max_grad_norm=None`` (or ``<= 0``) disables clipping.
    ``checkpoint_every=0`` writes only the final checkpoint; ``eval_every=0`` evaluates
    only before the first and after the last step.  ``progress=None`` shows a bar only when
    stderr is a terminal.  ``trackers``: experiment trackers besides the JSONL/CSV log
    (``"tensorboard"``, ``"wandb"``; see :mod:`~bridgetower.training.tracking`), closed when
    :meth:`Trainer.train` completes.  ``tensorboard=True`` is an older spelling of adding
    ``"tensorboard"`` to ``trackers`` (the trackers are the one TensorBoard switch).
    """

    output_dir: str | Path
    max_steps: int
    grad_accum_steps: int = 1
    max_grad_norm: float | None = 1.0
    precision: str = "fp32"
    gradient_checkpointing: bool = False
    checkpoint_every: int = 0
    keep_checkpoints: int = 2
    log_every: int = 10
    eval_every: int = 0
    seed: int = 0
    device: str = "cpu"
    progress: bool | None = None
    tensorboard: bool = False  # deprecated spelling of trackers=("tensorboard",)
    plot: bool = True
    extra: dict = field(default_factory=dict)
    trackers: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        def _int(name: str, minimum: int) -> None:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
                raise ValueError(f"TrainerConfig.{name} must be an int >= {minimum}, got {v!r}")

        _int("max_steps", 1)
        _int("grad_accum_steps", 1)
        _int("checkpoint_every", 0)
        _int("log_every", 1)
        _int("eval_every", 0)
        _int("keep_checkpoints", 0)
        if self.precision not in PRECISIONS:
            raise ValueError(
                f"TrainerConfig.precision must be one of {PRECISIONS}, got {self.precision!r}"
            )
        if self.max_grad_norm is not None and not isinstance(self.max_grad_norm, (int, float)):
            raise TypeError(f"TrainerConfig.max_grad_norm must be a number or None, got {self.max_grad_norm!r}")
        from .tracking import parse_trackers

        self.trackers = parse_trackers(self.trackers)  # "tensorboard,wandb" / list / None -> tuple
        if self.tensorboard and "tensorboard" not in self.trackers:
            self.trackers = (*self.trackers, "tensorboard")
        self.tensorboard = False  # folded into trackers (so that dataclasses.replace stays exact)

    def to_json_dict(self) -> dict:
        d = asdict(self)
        d["output_dir"] = str(self.output_dir)
        return d


def _say(message: str, *args: Any, level: int = logging.INFO) -> None:
    """Log ``message``; when nothing would show it (no handler configured anywhere, as in a
    plain Python session), print it to stderr instead, so training is never silent."""
    if logger.hasHandlers():
        logger.log(level, message, *args)
    else:
        print(message % args if args else message, file=sys.stderr, flush=True)


class _Progress:
    """A tqdm bar on a terminal, log lines otherwise (printed to stderr when logging is not
    configured: :func:`_say`)."""

    def __init__(self, total: int, initial: int, enabled: bool | None) -> None:
        if enabled is None:
            enabled = sys.stderr.isatty()
        self._bar = None
        if enabled:
            try:
                from tqdm.auto import tqdm

                self._bar = tqdm(total=total, initial=initial, desc="pretrain", unit="step", dynamic_ncols=True)
            except ImportError:  # pragma: no cover - tqdm is a dependency
                self._bar = None
        self.total = total

    def update(self, step: int, values: Mapping[str, float]) -> None:
        text = {k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in values.items()}
        if self._bar is not None:
            self._bar.n = step
            self._bar.set_postfix(text, refresh=True)
        else:
            _say("step %d/%d %s", step, self.total, " ".join(f"{k}={v}" for k, v in text.items()))

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


class Trainer:
    """Train ``model`` on ``stream`` with ``objective``; see the module doc.

    Args:
        model: the module to train (moved to ``config.device``).
        objective: ``objective(model, batch) -> (loss, metrics)``; ``metrics`` values are
            floats or 0-d tensors, averaged over the micro-batches of a step.
        optimizer, scheduler: built over ``model``'s parameters (the scheduler is stepped once
            per optimizer step; ``None`` keeps the learning rate constant).
        stream: the :class:`BatchStream` of training batches.
        config: :class:`TrainerConfig`.
        eval_fn: optional ``eval_fn(model) -> dict[str, float]`` for held-out metrics.
        extra_save: optional ``extra_save(directory)`` writing additional files (e.g. the
            tokenizer) into every checkpoint and the final model directory.
    """

    def __init__(
        self,
        model: nn.Module,
        objective: Objective,
        optimizer: torch.optim.Optimizer,
        stream: BatchStream,
        config: TrainerConfig,
        *,
        scheduler: Any = None,
        eval_fn: Callable[[nn.Module], Mapping[str, float]] | None = None,
        extra_save: Callable[[Path], None] | None = None,
    ) -> None:
        if not isinstance(config, TrainerConfig):
            raise TypeError(f"config must be a TrainerConfig, got {type(config).__name__}")
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        self.config = config
        self.device = torch.device(config.device)
        if config.precision == "fp16" and self.device.type != "cuda":
            raise ValueError(
                "precision 'fp16' needs a CUDA device (it uses a GradScaler); on "
                f"{self.device.type} use 'bf16' or 'fp32'"
            )
        self.model = model.to(self.device)
        self.objective = objective
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.stream = stream
        self.eval_fn = eval_fn
        self.extra_save = extra_save
        self.output_dir = Path(config.output_dir)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        if getattr(self, "ctx", None) is None or self.ctx.is_main:  # one writer per run directory
            clean_interrupted_writes(self.output_dir)
        self.scaler = torch.amp.GradScaler("cuda") if config.precision == "fp16" else None
        self.step = 0
        self.history: list[dict] = []
        #: samples skipped in the batches of this run (resumed runs included), by reason
        self.skipped = SkipStats()
        #: batches in which every sample was skipped (drawn again, not trained on)
        self.skipped_batches = 0
        self._window = _Window()
        self._last_eval_step: int | None = None
        from .tracking import create_trackers

        trackers = create_trackers(
            config.trackers, self.output_dir, run_name=self.output_dir.name, config=config.to_json_dict()
        )
        self.metrics = MetricsLogger(self.output_dir, trackers=trackers)
        self._set_gradient_checkpointing(config.gradient_checkpointing)

    # ----------------------------------------------------------------------------- setup
    def _set_gradient_checkpointing(self, enabled: bool) -> None:
        m = self.model
        if not enabled and not getattr(getattr(m, "config", None), "gradient_checkpointing", False):
            return  # nothing to switch off
        if hasattr(m, "set_gradient_checkpointing"):
            m.set_gradient_checkpointing(enabled)
            return
        if enabled and hasattr(m, "gradient_checkpointing_enable"):
            m.gradient_checkpointing_enable()
            return
        if not enabled and hasattr(m, "gradient_checkpointing_disable"):
            m.gradient_checkpointing_disable()
            return
        found = False
        for sub in m.modules():
            if hasattr(sub, "gradient_checkpointing") and isinstance(sub.gradient_checkpointing, bool):
                sub.gradient_checkpointing = enabled
                found = True
        if enabled and not found:
            raise ValueError(
                f"gradient checkpointing was requested but {type(m).__name__} has neither "
                "gradient_checkpointing_enable() nor a `gradient_checkpointing` flag"
            )

    def _autocast(self):
        if self.config.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.config.precision == "bf16" else torch.float16
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    # ---------------------------------------------------------------------------- resume
    def _trainer_state(self) -> dict:
        return {
            "step": self.step,
            "stream": self.stream.state_dict(),
            "config": self.config.to_json_dict(),
            # what makes a resumed run's log the uninterrupted one's
            "metrics_records": len(self.metrics.records),
            "log_window": self._window.state_dict(),
            "last_eval_step": self._last_eval_step,
            "skipped": self.skipped.as_dict(),
            "skipped_batches": self.skipped_batches,
        }

    def _load_trainer_state(self, state: Mapping[str, Any]) -> None:
        """The loop's state from a checkpoint's trainer state (older checkpoints lack the log
        window and the counts: they restart empty)."""
        self.step = int(state["step"])
        self.stream.load_state_dict(state["stream"])
        self.metrics.truncate_after(self.step, records=state.get("metrics_records"))
        self._window = _Window.from_state(state.get("log_window"))
        self._last_eval_step = state.get("last_eval_step")
        self.skipped = SkipStats()
        self.skipped.add_counts(state.get("skipped") or {})
        self.skipped_batches = int(state.get("skipped_batches", 0))

    def resume(self, path: str | Path | None = None) -> int:
        """Restore everything from a checkpoint (default: the newest usable one under the
        output dir, see :func:`~bridgetower.training.checkpoint.read_checkpoint`) and return
        the step to continue from."""
        state = load_checkpoint(
            path if path is not None else self.output_dir,
            model=self.model, optimizer=self.optimizer, scheduler=self.scheduler, scaler=self.scaler,
        )
        self._load_trainer_state(state)
        logger.info("resumed from %s at step %d", state["checkpoint_dir"], self.step)
        return self.step

    def save_checkpoint(self) -> Path:
        """Write a checkpoint of the current state (atomically)."""
        return save_checkpoint(
            self.output_dir,
            step=self.step,
            model=self.model,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            scaler=self.scaler,
            trainer_state=self._trainer_state(),
            extra=self.extra_save,
            keep=self.config.keep_checkpoints,
        )

    # -------------------------------------------------------------------------- evaluate
    def evaluate(self) -> dict[str, float]:
        """Run ``eval_fn`` in eval mode without gradients, leaving every RNG untouched."""
        if self.eval_fn is None:
            return {}
        was_training = self.model.training
        py_state, np_state = random.getstate(), np.random.get_state()
        devices = [torch.cuda.current_device()] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            self.model.eval()
            try:
                with torch.no_grad(), self._autocast():
                    values = dict(self.eval_fn(self.model))
            finally:
                self.model.train(was_training)
        random.setstate(py_state)
        np.random.set_state(np_state)
        record = self.metrics.log(self.step, values, split="eval")
        self.history.append(record)
        self._last_eval_step = self.step
        _say("eval at step %d: %s", self.step, " ".join(f"{k}={v:.4g}" for k, v in values.items()))
        return values

    # ----------------------------------------------------------------------------- train
    def _micro_step(self, batch: Any) -> dict[str, float]:
        batch = move_to_device(batch, self.device)
        with self._autocast():
            loss, metrics = self.objective(self.model, batch)
        if not torch.isfinite(loss.detach()):
            raise FloatingPointError(f"non-finite loss {loss.item()} at step {self.step}")
        scaled = loss / self.config.grad_accum_steps
        if self.scaler is not None:
            self.scaler.scale(scaled).backward()
        else:
            scaled.backward()
        out = {"loss": float(loss.detach())}
        for k, v in metrics.items():
            out[k] = float(v.detach()) if isinstance(v, torch.Tensor) else float(v)
        return out

    def next_batch(self) -> Any:
        """The next batch of the stream with at least one usable sample.  Skipped samples
        (``batch["skipped"]``, per reason) are added to :attr:`skipped`; a batch in which
        every sample was skipped is counted in :attr:`skipped_batches` and the next one is
        drawn (:class:`UnreadableDataError` after :data:`MAX_EMPTY_BATCHES` in a row)."""
        for _ in range(MAX_EMPTY_BATCHES):
            batch = next(self.stream)
            if not isinstance(batch, Mapping) or "skipped" not in batch:
                return batch
            self.skipped.add_counts(batch["skipped"])
            if any(k != "skipped" for k in batch):
                return batch
            self.skipped_batches += 1
            logger.warning("step %d: every sample of a batch was skipped (%s); drawing the next one",
                           self.step + 1, self.skipped.summary())
        raise UnreadableDataError(
            f"{MAX_EMPTY_BATCHES} batches in a row had no usable sample ({self.skipped.summary()}): "
            "the training data is unreadable"
        )

    def train_step(self) -> dict[str, float]:
        """One optimizer step (``grad_accum_steps`` micro-batches); returns its metrics."""
        cfg = self.config
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        sums: dict[str, float] = {}
        n_samples = 0
        data_s = 0.0  # time spent waiting for batches
        for i in range(cfg.grad_accum_steps):
            t = time.perf_counter()
            batch = self.next_batch()
            data_s += time.perf_counter() - t
            n_samples += _batch_size(batch)
            # gradients are communicated once per optimizer step: with the last micro-batch
            with self.gradient_sync(i == cfg.grad_accum_steps - 1):
                for k, v in self._micro_step(batch).items():
                    sums[k] = sums.get(k, 0.0) + v
        out = {k: v / cfg.grad_accum_steps for k, v in sums.items()}
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        if cfg.max_grad_norm is not None and cfg.max_grad_norm > 0:
            norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.max_grad_norm)
            out["grad_norm"] = float(norm)
        out["lr"] = float(self.optimizer.param_groups[0]["lr"])
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()
        self.step += 1
        out["samples"] = float(n_samples)
        out["data_s"] = data_s
        return out

    def gradient_sync(self, enabled: bool) -> contextlib.AbstractContextManager:
        """Context of one micro-batch's forward and backward: ``enabled`` for the last of an
        optimizer step.  A single process has nothing to synchronise; the distributed trainer
        skips the gradient communication of the other micro-batches."""
        return contextlib.nullcontext()

    def train(self, *, stop_after: int | None = None) -> list[dict]:
        """Train until ``config.max_steps`` (continuing from :attr:`step` after
        :meth:`resume`).  ``stop_after`` ends this call early after that many steps without
        a final checkpoint (as a killed job would; for tests and time-boxed runs).

        Returns the records logged by this call.
        """
        cfg = self.config
        self.history = []
        if self.step == 0 and self.eval_fn is not None and self._last_eval_step != 0:
            self.evaluate()
        bar = _Progress(cfg.max_steps, self.step, cfg.progress)
        window = self._window
        t0 = time.perf_counter()
        timed_steps, timed_samples, timed_data = 0, 0.0, 0.0  # the rates count the steps of this call only
        done_this_call = 0
        try:
            while self.step < cfg.max_steps:
                out = self.train_step()
                done_this_call += 1
                samples = out.pop("samples")
                timed_data += out.pop("data_s")
                timed_steps, timed_samples = timed_steps + 1, timed_samples + samples
                window.add(out)
                last = self.step == cfg.max_steps
                if self.step % cfg.log_every == 0 or last:
                    dt = max(time.perf_counter() - t0, 1e-9)
                    values = window.means()
                    values["lr"] = out["lr"]
                    values["samples_per_s"] = timed_samples / dt
                    values["steps_per_s"] = timed_steps / dt
                    # the share of the wall time spent waiting for batches: near 1 = input-bound
                    values["data_wait_share"] = min(timed_data / dt, 1.0)
                    self.history.append(self.metrics.log(self.step, values, split="train"))
                    bar.update(self.step, {k: values[k] for k in values if k.startswith(("loss", "acc")) or k in ("samples_per_s", "data_wait_share")})
                    window.reset()
                    t0, timed_steps, timed_samples, timed_data = time.perf_counter(), 0, 0.0, 0.0
                if cfg.eval_every and self.step % cfg.eval_every == 0 and not last:
                    self.evaluate()
                    t0, timed_steps, timed_samples, timed_data = time.perf_counter(), 0, 0.0, 0.0
                if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0 and not last:
                    self.save_checkpoint()
                    self.metrics.flush()
                    t0, timed_steps, timed_samples, timed_data = time.perf_counter(), 0, 0.0, 0.0
                if stop_after is not None and done_this_call >= stop_after and not last:
                    return self.history
            if self.eval_fn is not None and self._last_eval_step != self.step:  # not again after a resume
                self.evaluate()
            self.save_checkpoint()
            self.save_final_model()
            self.metrics.close()  # a finished run: close the trackers (the JSONL log stays usable)
            self.report_skipped()
        finally:
            bar.close()
            self.metrics.flush()
            close = getattr(self.stream, "close", None)
            if callable(close):  # loader workers stop; a later train() restarts them in place
                close()
        if cfg.plot:
            self.plot()
        return self.history

    def report_skipped(self) -> str:
        """Log (a warning when any) and return the skip counts of the run by reason."""
        text = self.skipped.summary()
        if self.skipped_batches:
            text += f"; {self.skipped_batches} batch(es) had no usable sample and were drawn again"
        _say(text, level=logging.WARNING if self.skipped.total else logging.INFO)
        return text

    def save_final_model(self) -> Path:
        """Write the model (and ``extra_save`` files) to ``<output_dir>/model`` atomically."""
        import os
        import shutil

        final = self.output_dir / "model"
        tmp = self.output_dir / f".model.tmp-{os.getpid()}"
        if tmp.exists():
            shutil.rmtree(tmp)
        try:
            save_model(self.model, tmp)
            if self.extra_save is not None:
                self.extra_save(tmp)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)  # a failed write (a full disk) leaves nothing
            raise
        if final.exists():
            old = self.output_dir / f".model.old-{os.getpid()}"
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
        return final

    def plot(self) -> Path | None:
        """Draw ``training_curves.png`` from the metrics log (``None`` without matplotlib)."""
        try:
            return plot_metrics(self.metrics.records, self.output_dir / "training_curves.png")
        except ImportError:
            logger.warning("matplotlib is not installed: no training_curves.png")
            return None


class _Window:
    """The metrics summed since the last training record (saved in checkpoints, so that the
    first record after a resume averages the same steps as the uninterrupted run's)."""

    def __init__(self, sums: Mapping[str, float] | None = None, steps: int = 0) -> None:
        self.sums: dict[str, float] = dict(sums or {})
        self.steps = int(steps)

    def add(self, values: Mapping[str, float]) -> None:
        for k, v in values.items():
            self.sums[k] = self.sums.get(k, 0.0) + v
        self.steps += 1

    def means(self) -> dict[str, float]:
        return {k: v / self.steps for k, v in self.sums.items()}

    def reset(self) -> None:
        self.sums, self.steps = {}, 0

    def state_dict(self) -> dict:
        return {"sums": dict(self.sums), "steps": self.steps}

    @classmethod
    def from_state(cls, state: Mapping[str, Any] | None) -> _Window:
        return cls(state.get("sums"), state.get("steps", 0)) if state else cls()


def _batch_size(batch: Any) -> int:
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0]) if batch.dim() else 1
    if isinstance(batch, Mapping):
        for key in ("pixel_values", "input_ids"):
            if key in batch and isinstance(batch[key], torch.Tensor):
                return int(batch[key].shape[0])
        for v in batch.values():
            n = _batch_size(v)
            if n:
                return n
        return 0
    if isinstance(batch, (list, tuple)) and batch:
        return _batch_size(batch[0])
    return 0
