"""Wrapping a model for data-parallel training: :func:`parallelize` (DDP or FSDP2).

The objective calls model methods other than ``forward`` (``encode_image``, ``fuse_pairs``
...), so the unit DDP / FSDP wrap is a small :class:`ObjectiveModule` whose
``forward(batch)`` runs ``objective(model, batch)``: their gradient hooks and all-gathers are
driven by that forward.  With FSDP each module of the model's declared unit types
(:func:`fsdp_units`) is a ``fully_shard`` unit and the wrapper is the root unit.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from .process_group import DistributedContext

__all__ = ["STRATEGIES", "ObjectiveModule", "ParallelModel", "fsdp_units", "parallelize"]

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
