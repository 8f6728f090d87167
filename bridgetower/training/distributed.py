"""Data-parallel training on PyTorch's own distributed engine (``torchrun``).

The pieces, in the order a training script uses them::

    ctx = init_distributed()                       # reads torchrun's env; gloo on CPU, NCCL on GPU
    model = BridgeTowerForPretraining(config)      # same seed on every rank
    objective = PretrainingObjective(itc_weight=1.0, itc_gather=all_gather_with_grad)
    par = parallelize(model, objective, ctx, strategy="ddp")   # or "fsdp" (FSDP2 fully_shard)
    optimizer = build_optimizer(model)             # after parallelize (FSDP swaps the parameters)
    stream = BatchStream(dataset, collate, global_batch_size, seed=seed)
    trainer = DistributedTrainer(par, optimizer, stream, TrainerConfig(...))
    trainer.train()
    ctx.shutdown()

**The global batch is split, not multiplied.**  Every rank draws the *same* global batch from
the same deterministic :class:`~bridgetower.training.stream.BatchStream` (same seed, same
collate randomness) and keeps its rows ``rank*B/W : (rank+1)*B/W`` (:func:`shard_batch`,
:class:`ShardedBatchStream`).  A run on ``W`` ranks therefore consumes exactly the samples of a
1-process run with the same ``batch_size`` and seed, step for step, and the data position in
a checkpoint is the same whatever ``W`` is: a run can be resumed on a different number of
ranks.  The price is that every rank loads and collates the whole global batch (cheap for the
bundled data; for heavy image decoding put it in the dataset's cache).  ``batch_size`` must be
divisible by the world size.

**Losses whose mean is over a variable-size subset.**  DDP/FSDP average the ranks' gradients.
That equals the gradient of the 1-process loss when every rank's loss is a mean over the same
number of rows (ITM, ITC: the shards are equal).  The MLM loss is a mean over the *masked
tokens*, whose number differs between shards, so :func:`shard_batch` adds
``mlm_normalizer`` = (masked tokens in the global batch) / ``W`` and the objective uses
``sum of the local token losses / mlm_normalizer``; averaged over the ranks this is the
global mean over all masked tokens.  (Without it each rank would weight its tokens by its own
count -- a different, if similar, loss.)

**ITM negatives pointing into another rank's shard.**  The collator pairs text ``i`` with image
``itm_image_index[i]`` anywhere in the global batch.  :func:`shard_batch` appends the images a
shard needs but does not own after its own ``B/W`` images (``pixel_values`` then has more rows
than the texts) and renumbers ``itm_image_index``; those extra images go through the vision
tower again on this rank, and their gradient contributions add up exactly as in one process.

**ITC across ranks.**  :func:`all_gather_with_grad` concatenates a ``(b, E)`` tensor from all
ranks (rank order) and, in the backward pass, sums the gradients of the gathered copies back
to their owner, so the contrastive loss sees all ``B`` pairs and the gradient is the
1-process one.

**DDP / FSDP.**  The objective calls model methods other than ``forward`` (``encode_image``,
``fuse_pairs``...), so :func:`parallelize` wraps a small :class:`ObjectiveModule` whose
``forward(batch)`` runs ``objective(model, batch)``: DDP's gradient hooks and FSDP's
all-gathers are driven by that forward.  With ``strategy="fsdp"`` every layer of each layer
list (``nn.ModuleList`` item; the co-attention layers per sub-block, see :func:`fsdp_units`)
gets its own ``fully_shard`` unit and the wrapper is the root unit; the optimizer must be
built after :func:`parallelize`.

**Checkpoints are rank-independent.**  They hold the full model (safetensors + JSON, written by
rank 0 only) and the optimizer state keyed by parameter index exactly as a 1-process
``optimizer.state_dict()`` (for FSDP gathered with
:func:`torch.distributed.checkpoint.state_dict.get_model_state_dict` /
``get_optimizer_state_dict`` with ``full_state_dict=True, cpu_offload=True``), the RNG states of
rank 0 (every rank runs with the same RNG states) and the global data position.  So a
checkpoint of a 2-process run resumes on 1 process (plain :class:`Trainer`) and vice versa.
Every rank reads the checkpoint on resume: the output directory must be on a file system
shared by the nodes.

Only rank 0 writes files (metrics, TensorBoard, plots, checkpoints, the final model); the
other ranks' :class:`~bridgetower.training.metrics.MetricsLogger` is replaced by a no-op.
Logged metrics are averaged over the ranks (``samples`` is summed).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import logging
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from .checkpoint import TRAINER_STATE, TRAINING_STATE, find_checkpoint, restore_rng_state
from .trainer import Trainer, TrainerConfig

logger = logging.getLogger(__name__)

__all__ = [
    "STRATEGIES",
    "DistributedContext",
    "DistributedTrainer",
    "ObjectiveModule",
    "ParallelModel",
    "ShardedBatchStream",
    "all_gather_with_grad",
    "all_reduce_mean",
    "barrier",
    "canonical_optimizer_state_dict",
    "full_model_state_dict",
    "fsdp_units",
    "get_rank",
    "get_world_size",
    "init_distributed",
    "is_main_process",
    "launched_by_torchrun",
    "load_canonical_optimizer_state_dict",
    "load_full_model_state_dict",
    "main_process_only",
    "parallelize",
    "shard_batch",
    "shard_range",
]

STRATEGIES = ("ddp", "fsdp")
IMAGE_KEYS = ("pixel_values", "pixel_mask")
_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


# ------------------------------------------------------------------------------ process group
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


# ------------------------------------------------------------------------------- collectives
class _AllGatherWithGrad(torch.autograd.Function):
    """``cat(all_gather(x))``; backward: sum the gathered gradients over ranks, keep ours."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, group: Any) -> torch.Tensor:
        world = dist.get_world_size(group)
        ctx.group = group
        ctx.rank = dist.get_rank(group)
        ctx.rows = x.shape[0]
        x = x.contiguous()
        parts = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(parts, x, group=group)
        return torch.cat(parts, 0)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)
        start = ctx.rank * ctx.rows
        return grad[start : start + ctx.rows], None


def all_gather_with_grad(x: torch.Tensor, group: Any = None) -> torch.Tensor:
    """Concatenate ``x`` (``(b, ...)``, the same shape on every rank) over the ranks in rank
    order, keeping the autograd graph: the gradient reaching rank ``r``'s ``x`` is the sum of
    the gradients of its copy on every rank.  Without a process group (or one rank) returns
    ``x``.  Use it as the ``gather`` of :func:`~bridgetower.layers.heads.itc_loss` /
    ``PretrainingObjective(itc_gather=...)``.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"all_gather_with_grad expects a tensor, got {type(x).__name__}")
    if x.ndim == 0:
        raise ValueError("all_gather_with_grad expects a tensor with a leading batch dimension, got a scalar")
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size(group) == 1:
        return x
    shape = torch.tensor(list(x.shape), dtype=torch.int64, device=x.device)
    shapes = [torch.empty_like(shape) for _ in range(dist.get_world_size(group))]
    dist.all_gather(shapes, shape, group=group)
    if any(not torch.equal(s, shape) for s in shapes):
        raise ValueError(
            f"all_gather_with_grad needs the same shape on every rank, got {[tuple(s.tolist()) for s in shapes]}"
        )
    return _AllGatherWithGrad.apply(x, group)


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


# ---------------------------------------------------------------------------------- the data
def shard_range(batch_size: int, rank: int, world_size: int) -> tuple[int, int]:
    """Rows ``[start, stop)`` of a global batch of ``batch_size`` kept by ``rank``."""
    if not (isinstance(world_size, int) and world_size >= 1 and isinstance(rank, int) and 0 <= rank < world_size):
        raise ValueError(f"need ints 0 <= rank < world_size, got rank={rank!r}, world_size={world_size!r}")
    if batch_size % world_size:
        raise ValueError(
            f"the global batch size {batch_size} is not divisible by the world size {world_size}; "
            "choose a batch size that is a multiple of the number of processes"
        )
    per = batch_size // world_size
    return rank * per, (rank + 1) * per


def _global_rows(batch: Mapping[str, Any]) -> int:
    for key in ("input_ids", "attention_mask", "pixel_values"):
        v = batch.get(key)
        if isinstance(v, torch.Tensor) and v.ndim > 0:
            return int(v.shape[0])
    for v in batch.values():
        if isinstance(v, torch.Tensor) and v.ndim > 0:
            return int(v.shape[0])
    raise ValueError(f"cannot tell the batch size: no tensor among the keys {sorted(batch)}")


def shard_batch(batch: Mapping[str, Any], rank: int, world_size: int, *, ignore_index: int = -100) -> dict[str, Any]:
    """The part of a global pretraining batch that ``rank`` of ``world_size`` trains on.

    Every tensor (and list/tuple) whose leading size is the global batch size ``B`` keeps rows
    ``rank*B/W : (rank+1)*B/W`` (:func:`shard_range`); other values are kept as they are.
    Image keys (``pixel_values``, ``pixel_mask``) keep the same rows followed by the images that
    this shard's ``itm_image_index`` points to in other shards (in increasing order), and
    ``itm_image_index`` is renumbered into these local rows.  With ``mlm_labels`` the key
    ``mlm_normalizer`` (a float32 scalar: masked tokens of the global batch / ``W``, at least
    ``1/W``) is added: the objective divides the summed MLM token losses of the shard by it.
    ``world_size=1`` returns the batch with only ``mlm_normalizer`` added.
    """
    if not isinstance(batch, Mapping):
        raise TypeError(f"shard_batch expects a dict batch, got {type(batch).__name__}")
    b = _global_rows(batch)
    start, stop = shard_range(b, rank, world_size)
    out: dict[str, Any] = {}
    extra = None
    local_index = None
    if "itm_image_index" in batch:
        idx = batch["itm_image_index"]
        if not isinstance(idx, torch.Tensor) or idx.shape != (b,):
            raise ValueError(f"itm_image_index must be a ({b},) tensor, got {getattr(idx, 'shape', idx)!r}")
        if b and (int(idx.min()) < 0 or int(idx.max()) >= b):
            raise ValueError(f"itm_image_index values must lie in [0, {b}), got [{int(idx.min())}, {int(idx.max())}]")
        mine = idx[start:stop]
        outside = (mine < start) | (mine >= stop)
        extra = torch.unique(mine[outside])  # sorted
        remap = torch.full((b,), -1, dtype=torch.long)
        remap[start:stop] = torch.arange(stop - start)
        remap[extra.cpu()] = torch.arange(stop - start, stop - start + extra.numel())
        local_index = remap.to(mine.device)[mine].to(idx.dtype)
    for key, value in batch.items():
        if key == "itm_image_index":
            out[key] = local_index
        elif isinstance(value, torch.Tensor) and value.ndim > 0 and value.shape[0] == b:
            part = value[start:stop]
            if key in IMAGE_KEYS and extra is not None and extra.numel():
                part = torch.cat([part, value.index_select(0, extra.to(value.device))], 0)
            out[key] = part
        elif isinstance(value, (list, tuple)) and len(value) == b:
            rows = list(value[start:stop])
            if key in IMAGE_KEYS and extra is not None:
                rows += [value[i] for i in extra.tolist()]
            out[key] = type(value)(rows) if isinstance(value, tuple) else rows
        else:
            out[key] = value
    labels = batch.get("mlm_labels")
    if isinstance(labels, torch.Tensor):
        n = int((labels != ignore_index).sum())
        out["mlm_normalizer"] = torch.tensor(max(n, 1) / world_size, dtype=torch.float32, device=labels.device)
    return out


class ShardedBatchStream:
    """A :class:`~bridgetower.training.stream.BatchStream` of *global* batches seen through
    :func:`shard_batch`: ``next()`` returns this rank's shard.  ``state_dict()`` is the
    inner stream's (rank-independent), so a checkpoint resumes on any number of ranks."""

    def __init__(self, stream: Any, *, rank: int, world_size: int) -> None:
        for name in ("state_dict", "load_state_dict", "__next__"):
            if not hasattr(stream, name):
                raise TypeError(f"stream must have {name}() (a BatchStream), got {type(stream).__name__}")
        global_batch = getattr(stream, "batch_size", None)
        if isinstance(global_batch, int):
            shard_range(global_batch, rank, world_size)  # validates divisibility
        self.stream = stream
        self.rank = rank
        self.world_size = world_size

    @property
    def global_batch_size(self) -> int | None:
        return getattr(self.stream, "batch_size", None)

    @property
    def batch_size(self) -> int | None:
        g = self.global_batch_size
        return None if g is None else g // self.world_size

    def state_dict(self) -> dict:
        return self.stream.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.stream.load_state_dict(state)

    def __iter__(self) -> Iterator[dict]:
        return self

    def __next__(self) -> dict:
        return shard_batch(next(self.stream), self.rank, self.world_size)

    def __repr__(self) -> str:
        return (
            f"ShardedBatchStream(rank={self.rank}, world_size={self.world_size}, "
            f"global_batch_size={self.global_batch_size})"
        )


# ---------------------------------------------------------------------------------- the model
class ObjectiveModule(nn.Module):
    """``forward(batch) = objective(model, batch)``: the unit DDP / FSDP wrap, so that their
    hooks run although the objective calls model methods other than ``forward``.
    ``forward(None, fn=f)`` runs ``f(model)`` instead (evaluation under FSDP, where the
    parameters are gathered only inside a forward)."""

    def __init__(self, model: nn.Module, objective: Callable[[nn.Module, Any], Any]) -> None:
        super().__init__()
        if not callable(objective):
            raise TypeError(f"objective must be callable, got {type(objective).__name__}")
        self.model = model
        self.objective = objective

    def forward(self, batch: Any, fn: Callable[[nn.Module], Any] | None = None) -> Any:
        if fn is not None:
            return fn(self.model)
        return self.objective(self.model, batch)

    def extra_repr(self) -> str:
        return f"objective={self.objective!r}"


def fsdp_units(model: nn.Module, *, split: tuple[str, ...] = ("CoAttentionLayer",)) -> list[nn.Module]:
    """The modules :func:`parallelize` shards separately with ``strategy="fsdp"``.

    Every item of every ``nn.ModuleList`` (a transformer layer, a bridge), except that an item
    whose class name is in ``split`` is replaced by its children that hold parameters: the
    CLS-only last fusion layer calls a :class:`~bridgetower.layers.co_attention.CoAttentionLayer`'s
    sub-blocks directly, and FSDP2 gathers a unit's parameters only when the unit's own
    ``forward`` runs.  Everything else stays in the root unit.
    """
    units: list[nn.Module] = []
    seen: set[int] = set()

    def add(m: nn.Module) -> None:
        if id(m) not in seen and any(True for _ in m.parameters()):
            seen.add(id(m))
            units.append(m)

    for module in model.modules():
        if not isinstance(module, nn.ModuleList):
            continue
        for item in module:
            if type(item).__name__ in split:
                for child in item.children():
                    add(child)
            else:
                add(item)
    # a unit inside another unit would be sharded twice: keep the outermost
    inner = set()
    for u in units:
        for sub in u.modules():
            if sub is not u and id(sub) in seen:
                inner.add(id(sub))
    return [u for u in units if id(u) not in inner]


@dataclasses.dataclass
class ParallelModel:
    """What :func:`parallelize` returns: ``module`` (the model itself, its parameters possibly
    sharded in place), ``wrapped`` (the DDP / FSDP-root :class:`ObjectiveModule`),
    ``strategy``, and ``ctx``.  ``objective(model, batch)`` is the callable to hand to a
    :class:`Trainer` (it ignores ``model`` and calls ``wrapped(batch)``)."""

    module: nn.Module
    wrapped: nn.Module
    strategy: str
    ctx: DistributedContext

    def objective(self, model: nn.Module, batch: Any) -> Any:
        return self.wrapped(batch)

    def run(self, fn: Callable[[nn.Module], Any]) -> Any:
        """``fn(model)`` with the full parameters: through the FSDP root (every rank must call
        it) or directly (DDP, single process)."""
        if self.strategy == "fsdp":
            return self.wrapped(None, fn=fn)
        return fn(self.module)


def parallelize(
    model: nn.Module,
    objective: Callable[[nn.Module, Any], Any],
    ctx: DistributedContext,
    *,
    strategy: str = "ddp",
    find_unused_parameters: bool = True,
    units: list[nn.Module] | None = None,
    reshard_after_forward: bool = True,
) -> ParallelModel:
    """Move ``model`` to ``ctx.device`` and wrap it for data-parallel training.

    ``strategy="ddp"``: :class:`~torch.nn.parallel.DistributedDataParallel` (rank 0's
    parameters and buffers are broadcast at construction; gradients averaged in the
    backward).  ``find_unused_parameters`` (default on) lets an objective skip a head (e.g. ITC
    with weight 0).  ``strategy="fsdp"``: FSDP2 ``fully_shard`` of each module in ``units``
    (default :func:`fsdp_units`), then of the root :class:`ObjectiveModule`, on a 1-D device
    mesh over all ranks; parameters become sharded ``DTensor``s, so build the optimizer
    afterwards.  0-d parameters, which FSDP2 cannot shard, stay replicated outside FSDP (as
    ``ignored_params``) and get their gradients averaged over the ranks by a hook.  With a
    single process the model is only wrapped (no DDP/FSDP).
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if not isinstance(ctx, DistributedContext):
        raise TypeError(f"ctx must be a DistributedContext (from init_distributed()), got {type(ctx).__name__}")
    model = model.to(ctx.device)
    root = ObjectiveModule(model, objective)
    if not ctx.is_distributed:
        return ParallelModel(model, root, strategy, ctx)
    if not dist.is_initialized():
        raise RuntimeError("ctx says world_size > 1 but no process group is initialised")
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
        wrapped = DistributedDataParallel(root, device_ids=device_ids, find_unused_parameters=find_unused_parameters)
        return ParallelModel(model, wrapped, strategy, ctx)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(ctx.device.type, (ctx.world_size,))
    # FSDP2 cannot shard 0-d parameters (the ITC temperature, the bridges' scalars): they stay
    # replicated, outside FSDP, and their gradients are averaged by a hook
    scalars = {p for p in model.parameters() if p.ndim == 0}
    for unit in units if units is not None else fsdp_units(model):
        fully_shard(unit, mesh=mesh, reshard_after_forward=reshard_after_forward, ignored_params=scalars or None)
    fully_shard(root, mesh=mesh, reshard_after_forward=reshard_after_forward, ignored_params=scalars or None)
    for p in scalars:
        if p.requires_grad:
            p.register_hook(_average_grad)
    return ParallelModel(model, root, strategy, ctx)


def _average_grad(grad: torch.Tensor) -> torch.Tensor:
    """Gradient hook of a parameter kept outside FSDP: its mean over the ranks."""
    grad = grad.clone()
    dist.all_reduce(grad, op=dist.ReduceOp.SUM)
    return grad / dist.get_world_size()


# ----------------------------------------------------------------------- rank-free state dicts
def _sd_options(**kw: Any):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(**kw)


def _is_sharded(model: nn.Module) -> bool:
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in model.parameters())


def full_model_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The full (unsharded) state dict on CPU.  Sharded (FSDP) models: a collective every rank
    must enter; only rank 0 gets the tensors (the others get ``{}``)."""
    if _is_sharded(model):
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        return get_model_state_dict(model, options=_sd_options(full_state_dict=True, cpu_offload=True))
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}


def load_full_model_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Load a full state dict (the same on every rank) into a possibly sharded model."""
    if _is_sharded(model):
        from torch.distributed.checkpoint.state_dict import set_model_state_dict

        set_model_state_dict(model, dict(state), options=_sd_options(full_state_dict=True))
    else:
        model.load_state_dict(dict(state))


def _param_names(model: nn.Module) -> dict[int, str]:
    return {id(p): name for name, p in model.named_parameters()}


def canonical_optimizer_state_dict(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """The optimizer state as a 1-process ``optimizer.state_dict()`` would give it (keyed by
    parameter index, full tensors on CPU), whatever the sharding.  FSDP: a collective every
    rank must enter; only rank 0 gets the state (the others get ``{}``)."""
    if not _is_sharded(model):
        return optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    fqn_state = get_optimizer_state_dict(model, optimizer, options=_sd_options(full_state_dict=True, cpu_offload=True))
    if not fqn_state:
        return {}
    names = _param_names(model)
    index: dict[str, int] = {}
    groups = []
    for group, fqn_group in zip(optimizer.param_groups, fqn_state["param_groups"], strict=True):
        ids = []
        for p in group["params"]:
            index[names[id(p)]] = len(index)
            ids.append(index[names[id(p)]])
        groups.append({**{k: v for k, v in fqn_group.items() if k != "params"}, "params": ids})
    state = {index[fqn]: value for fqn, value in fqn_state["state"].items()}
    return {"state": state, "param_groups": groups}


def load_canonical_optimizer_state_dict(
    model: nn.Module, optimizer: torch.optim.Optimizer, state: Mapping[str, Any]
) -> None:
    """Inverse of :func:`canonical_optimizer_state_dict` (every rank passes the full state)."""
    if not _is_sharded(model):
        optimizer.load_state_dict(dict(state))
        return
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    names = _param_names(model)
    order = [names[id(p)] for group in optimizer.param_groups for p in group["params"]]
    n_saved = sum(len(g["params"]) for g in state["param_groups"])
    if n_saved != len(order) or len(state["param_groups"]) != len(optimizer.param_groups):
        raise ValueError(
            f"the saved optimizer state has {len(state['param_groups'])} groups / {n_saved} parameters, "
            f"this optimizer {len(optimizer.param_groups)} / {len(order)}"
        )
    fqn_state = {
        "state": {order[int(i)]: v for i, v in state["state"].items()},
        "param_groups": [
            {**{k: v for k, v in g.items() if k != "params"}, "params": [order[int(i)] for i in g["params"]]}
            for g in state["param_groups"]
        ],
    }
    set_optimizer_state_dict(model, optimizer, fqn_state, options=_sd_options(full_state_dict=True))


def _full_copy(model: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
    """A CPU model of ``model``'s class holding ``state`` (to write with ``save_pretrained``)."""
    config = getattr(model, "config", None)
    if config is None:
        return _StateDictModule(state)
    with torch.device("meta"):
        twin = type(model)(config)
    twin.load_state_dict(state, assign=True)
    return twin


class _StateDictModule(nn.Module):
    """A module whose ``state_dict()`` is a given dict (for saving models without a config)."""

    def __init__(self, state: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self._state = state

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:  # type: ignore[override]
        return dict(self._state)


class _FixedStateDict:
    """Stands in for an optimizer when writing a checkpoint: ``state_dict()`` returns ``state``."""

    def __init__(self, state: dict) -> None:
        self._state = state

    def state_dict(self) -> dict:
        return self._state


class _NullMetrics:
    """The metrics logger of ranks other than 0: records nothing, writes nothing."""

    records: list[dict] = []

    def log(self, step: int, values: Mapping[str, float], *, split: str = "train") -> dict:
        return {"step": int(step), "split": split, **{k: float(v) for k, v in values.items()}}

    def truncate_after(self, step: int) -> None:
        pass

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


# ------------------------------------------------------------------------------------ trainer
class DistributedTrainer(Trainer):
    """A :class:`Trainer` for a model prepared by :func:`parallelize`; see the module doc.

    Args:
        parallel: the :class:`ParallelModel`.
        optimizer: built over ``parallel.module``'s parameters *after* :func:`parallelize`.
        stream: a :class:`~bridgetower.training.stream.BatchStream` of global batches (wrapped
            in a :class:`ShardedBatchStream` here) or an already sharded stream.
        config: :class:`TrainerConfig`; its ``device`` is replaced by ``parallel.ctx.device``;
            on ranks other than 0 TensorBoard, the progress bar and the plot are off.
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
            changes.update(tensorboard=False, progress=False, plot=False)
        config = dataclasses.replace(config, **changes)
        if not isinstance(stream, ShardedBatchStream) and ctx.is_distributed:
            stream = ShardedBatchStream(stream, rank=ctx.rank, world_size=ctx.world_size)
        elif not isinstance(stream, ShardedBatchStream):
            stream = ShardedBatchStream(stream, rank=0, world_size=1)
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
        self.model = _full_copy(model, model_sd)
        self.optimizer = _FixedStateDict(optim_sd)  # type: ignore[assignment]
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
        from .checkpoint import CHECKPOINTS_DIR

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
        from safetensors.torch import load_file

        ckpt = find_checkpoint(path if path is not None else self.output_dir)
        state: dict[str, torch.Tensor] = {}
        for f in sorted(ckpt.glob("*.safetensors")):
            state.update(load_file(str(f)))
        if not state:
            raise FileNotFoundError(f"no *.safetensors weights in {ckpt}")
        load_full_model_state_dict(self.model, state)
        blob = torch.load(ckpt / TRAINING_STATE, map_location="cpu", weights_only=True)
        load_canonical_optimizer_state_dict(self.model, self.optimizer, blob["optimizer"])
        if self.scheduler is not None and blob.get("scheduler"):
            self.scheduler.load_state_dict(blob["scheduler"])
        if self.scaler is not None and blob.get("scaler"):
            self.scaler.load_state_dict(blob["scaler"])
        with open(ckpt / TRAINER_STATE, encoding="utf-8") as f:
            tstate = json.load(f)
        restore_rng_state(blob["rng"], tstate["rng"])
        self.step = int(tstate["step"])
        self.stream.load_state_dict(tstate["stream"])
        self.metrics.truncate_after(self.step)
        logger.info("resumed from %s at step %d", ckpt, self.step)
        return self.step
