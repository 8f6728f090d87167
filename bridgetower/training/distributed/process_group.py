"""The process group: where this process sits in a ``torchrun`` job.

:func:`init_distributed` reads torchrun's environment (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``), creates the process group (gloo on CPU,
NCCL on GPU) and returns a :class:`DistributedContext`; without torchrun's variables the
context is the single process and nothing is initialised.  The small helpers
(:func:`get_rank`, :func:`barrier`, :func:`all_reduce_mean` ...) work with and without a
process group, so training code calls them unconditionally.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import os
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)

__all__ = [
    "DistributedContext",
    "all_reduce_mean",
    "barrier",
    "get_rank",
    "get_world_size",
    "init_distributed",
    "is_main_process",
    "launched_by_torchrun",
    "main_process_only",
    "start_data_parallel",
]

_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


def get_rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def get_world_size() -> int:
    """Number of processes (1 without a process group)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main_process() -> bool:
    """True on rank 0 (and in a plain single process)."""
    return get_rank() == 0


def barrier() -> None:
    """``dist.barrier()`` when a process group is up, nothing otherwise."""
    if get_world_size() > 1:
        dist.barrier()


def main_process_only(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Decorator: run ``fn`` on rank 0 only (returns ``None`` elsewhere; no synchronisation)."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs) if is_main_process() else None

    wrapper.__name__ = getattr(fn, "__name__", "wrapper")
    wrapper.__doc__ = fn.__doc__
    return wrapper


@dataclasses.dataclass(frozen=True)
class DistributedContext:
    """Where this process sits in the job: ``rank`` of ``world_size``, ``local_rank`` on its
    node, the ``device`` it trains on and the process-group ``backend`` (``None`` when the job
    is a single process without a process group).  ``shutdown()`` destroys the process group
    if :func:`init_distributed` created it; the context is also a context manager."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    def shutdown(self) -> None:
        """Synchronise and destroy the process group (if this context created it)."""
        if self.owns_group and dist.is_available() and dist.is_initialized():
            try:
                dist.barrier()
            finally:
                dist.destroy_process_group()

    def __enter__(self) -> DistributedContext:
        return self

    def __exit__(self, *exc: Any) -> None:
        if exc[0] is None:
            self.shutdown()
        elif self.owns_group and dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()  # no barrier: the other ranks may be gone


def _env_int(name: str) -> int | None:
    text = os.environ.get(name)
    if text is None or text == "":
        return None
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"environment variable {name}={text!r} is not an integer") from None


def launched_by_torchrun() -> bool:
    """True when ``WORLD_SIZE`` is set in the environment (torchrun and friends set it)."""
    return _env_int("WORLD_SIZE") is not None


def _pick_device(device: str | torch.device | None, local_rank: int) -> torch.device:
    if device is None:
        return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {str(device)!r} requested but CUDA is not available")
        if dev.index is None:
            dev = torch.device("cuda", local_rank)
    return dev


def init_distributed(
    *,
    backend: str | None = None,
    device: str | torch.device | None = None,
    timeout: float = 1800.0,
) -> DistributedContext:
    """Join the job torchrun started (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
    ``MASTER_ADDR``, ``MASTER_PORT`` from the environment) and return its context.

    ``device=None``: ``cuda:LOCAL_RANK`` when CUDA is available, else CPU; ``"cuda"`` also
    means ``cuda:LOCAL_RANK``.  ``backend=None``: NCCL for CUDA, gloo for CPU.  Without
    torchrun's variables (or with ``WORLD_SIZE=1``) no process group is created and the
    context is the single process.  An existing process group is reused (and not destroyed
    by :meth:`DistributedContext.shutdown`).  ``timeout``: seconds a collective may wait.
    """
    if not isinstance(timeout, (int, float)) or timeout <= 0:
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
    if backend is not None and backend not in ("gloo", "nccl"):
        raise ValueError(f"backend must be 'gloo', 'nccl' or None, got {backend!r}")
    rank, world, local = (_env_int(n) for n in _ENV)
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
        local = local if local is not None else rank
        dev = _pick_device(device, local)
        return DistributedContext(rank, world, local, dev, dist.get_backend(), owns_group=False)
    if world is None or world == 1:
        dev = _pick_device(device, local or 0)
        return DistributedContext(0, 1, local or 0, dev, None, owns_group=False)
    if rank is None:
        raise ValueError(f"WORLD_SIZE={world} is set but RANK is not; launch with torchrun")
    if not 0 <= rank < world:
        raise ValueError(f"need 0 <= RANK < WORLD_SIZE, got RANK={rank}, WORLD_SIZE={world}")
    local = rank if local is None else local
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        if not os.environ.get(name):
            raise ValueError(f"{name} is not set; launch with torchrun (it sets the rendezvous address)")
    if not dist.is_available():
        raise RuntimeError("this PyTorch build has no torch.distributed support")
    dev = _pick_device(device, local)
    if backend is None:
        backend = "nccl" if dev.type == "cuda" else "gloo"
    if backend == "nccl" and dev.type != "cuda":
        raise ValueError(f"backend 'nccl' needs a CUDA device, got {dev}")
    kwargs: dict[str, Any] = {}
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
        kwargs["device_id"] = dev
    dist.init_process_group(
        backend=backend, rank=rank, world_size=world, timeout=datetime.timedelta(seconds=float(timeout)), **kwargs
    )
    logger.info("rank %d/%d (local %d) on %s, backend %s", rank, world, local, dev, backend)
    return DistributedContext(rank, world, local, dev, backend, owns_group=True)


def all_reduce_mean(values: Mapping[str, float], *, sum_keys: tuple[str, ...] = ()) -> dict[str, float]:
    """Average a dict of floats over the ranks (``sum_keys`` are summed); the same keys must be
    given on every rank.  Without a process group returns a copy."""
    out = {k: float(v) for k, v in values.items()}
    world = get_world_size()
    if world == 1 or not out:
        return out
    keys = sorted(out)
    dev = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    t = torch.tensor([out[k] for k in keys], dtype=torch.float64, device=dev)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return {k: float(v) if k in sum_keys else float(v) / world for k, v in zip(keys, t.tolist(), strict=True)}




def start_data_parallel(
    strategy: str = "auto", *, device: str | torch.device | None = None
) -> tuple[DistributedContext | None, str]:
    """The context and data-parallel strategy of a training run: ``"none"`` -> ``(None,
    "none")``; ``"ddp"`` / ``"fsdp"`` -> :func:`init_distributed` and that strategy;
    ``"auto"`` -> ``"ddp"`` when ``torchrun`` started several processes, else ``"none"``.
    The caller shuts the context down (:meth:`DistributedContext.shutdown`)."""
    choices = ("auto", "none", "ddp", "fsdp")
    if strategy not in choices:
        raise ValueError(f"strategy must be one of {choices}, got {strategy!r}")
    if strategy == "none" or (strategy == "auto" and not launched_by_torchrun()):
        return None, "none"
    ctx = init_distributed(device=device)
    if strategy == "auto":
        return (ctx, "ddp") if ctx.is_distributed else (None, "none")
    return ctx, strategy
