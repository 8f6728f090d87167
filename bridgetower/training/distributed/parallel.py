"""Wrapping a model for data-parallel training: :func:`parallelize` (DDP or FSDP2).

The objective calls model methods other than ``forward`` (``encode_image``, ``fuse_pairs``
...), so the unit DDP / FSDP wrap is a small :class:`ObjectiveModule` whose
``forward(batch)`` runs ``objective(model, batch)``: their gradient hooks and all-gathers are
driven by that forward.  With FSDP each module of the model's declared unit types
(:func:`fsdp_units`) is a ``fully_shard`` unit and the wrapper is the root unit.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from .process_group import DistributedContext

__all__ = ["STRATEGIES", "ObjectiveModule", "ParallelModel", "fsdp_units", "objective_leaves_parameters_unused",
           "parallelize"]

STRATEGIES = ("ddp", "fsdp")


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


def fsdp_units(model: nn.Module, *, types: tuple[type[nn.Module], ...] | None = None) -> list[nn.Module]:
    """The modules :func:`parallelize` shards separately with ``strategy="fsdp"``.

    Every module of one of ``types`` -- default: the types the model declares
    (``model.fsdp_unit_types()``: transformer blocks, co-attention layers, bridges) -- that
    holds parameters, the outermost where one contains another.  A model that declares no
    types gets every item of every ``nn.ModuleList``.  FSDP2 gathers a unit's parameters
    only when the unit's own ``forward`` runs, so a unit must be called, not reached into.
    Everything else stays in the root unit.
    """
    if types is None:
        declared = getattr(model, "fsdp_unit_types", None)
        types = tuple(declared()) if callable(declared) else ()
    if types:
        candidates = [m for m in model.modules() if isinstance(m, types)]
    else:
        candidates = [item for m in model.modules() if isinstance(m, nn.ModuleList) for item in m]
    units: list[nn.Module] = []
    seen: set[int] = set()
    for m in candidates:
        if id(m) not in seen and any(True for _ in m.parameters()):
            seen.add(id(m))
            units.append(m)
    # a unit inside another unit would be sharded twice: keep the outermost
    inner = {id(sub) for u in units for sub in u.modules() if sub is not u and id(sub) in seen}
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
    #: the averaging of the 0-d parameters FSDP leaves replicated (None: DDP, one process)
    replicated: _ReplicatedGrads | None = None

    def objective(self, model: nn.Module, batch: Any) -> Any:
        return self.wrapped(batch)

    @contextlib.contextmanager
    def gradient_sync(self, enabled: bool) -> Iterator[None]:
        """Inside ``gradient_sync(False)`` backward passes only accumulate local gradients (DDP
        ``no_sync``, FSDP2 ``set_requires_gradient_sync(False)``, no averaging of the replicated
        scalars); the next backward with sync on communicates the sum once.  For the
        micro-batches of gradient accumulation: all but the last run without sync."""
        if enabled or not self.ctx.is_distributed:
            yield
            return
        if self.strategy == "ddp":
            with self.wrapped.no_sync():
                yield
            return
        self.wrapped.set_requires_gradient_sync(False)  # recursive: every fully_shard unit
        if self.replicated is not None:
            self.replicated.sync = False
        try:
            yield
        finally:
            self.wrapped.set_requires_gradient_sync(True)
            if self.replicated is not None:
                self.replicated.sync = True

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
    find_unused_parameters: bool | None = None,
    units: list[nn.Module] | None = None,
    reshard_after_forward: bool = True,
) -> ParallelModel:
    """Move ``model`` to ``ctx.device`` and wrap it for data-parallel training.

    ``strategy="ddp"``: :class:`~torch.nn.parallel.DistributedDataParallel` (rank 0's
    parameters and buffers are broadcast at construction; gradients averaged in the
    backward).  ``find_unused_parameters`` lets an objective skip a head (e.g. ITC with weight 0),
    at the cost of a graph traversal per step; ``None`` (default) turns it on only when the
    objective leaves parameters unused (:func:`objective_leaves_parameters_unused`).  ``strategy="fsdp"``: FSDP2 ``fully_shard`` of each module in ``units``
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
        if find_unused_parameters is None:
            find_unused_parameters = objective_leaves_parameters_unused(objective, model)
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
    replicated = _ReplicatedGrads([p for p in scalars if p.requires_grad])
    return ParallelModel(model, root, strategy, ctx, replicated)


def objective_leaves_parameters_unused(objective: Any, model: nn.Module) -> bool:
    """Whether a training step of ``objective`` leaves some of ``model``'s parameters without a
    gradient (then DDP needs ``find_unused_parameters``).  An objective may say so itself
    (``leaves_parameters_unused``: a bool, or a callable taking the model); the pretraining
    objective leaves the head of each zero-weight loss unused; any other objective is assumed
    to (the safe choice)."""
    declared = getattr(objective, "leaves_parameters_unused", None)
    if declared is not None:
        return bool(declared(model) if callable(declared) else declared)
    weights = [getattr(objective, f"{k}_weight", None) for k in ("mlm", "itm", "itc")]
    if all(isinstance(w, (int, float)) for w in weights):
        return any(w == 0 for w in weights)
    return True


class _ReplicatedGrads:
    """Averages over the ranks the gradients of parameters kept outside FSDP, once they are
    accumulated (a post-accumulate-grad hook), while ``sync`` is on: with accumulation the
    earlier micro-batches only add up locally and the last one averages the sum."""

    def __init__(self, params: list[nn.Parameter]) -> None:
        self.sync = True
        for p in params:
            p.register_post_accumulate_grad_hook(self._average)

    def _average(self, p: torch.Tensor) -> None:
        if self.sync:
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
            p.grad.div_(dist.get_world_size())
