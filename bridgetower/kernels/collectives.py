"""Collectives with a hand-written backward: :func:`all_gather_with_grad`.

What it computes: ``cat([x_0, x_1, ..., x_{W-1}], 0)`` where ``x_r`` is rank ``r``'s ``(b, ...)``
tensor, in rank order, on every rank.  Backward: the gradient of rank ``r``'s ``x_r`` is the
*sum over all ranks* of the gradient each rank computed for its copy of ``x_r``.

Why by hand: ``torch.distributed.all_gather`` is not differentiable, and
``torch.distributed.nn.all_gather`` returns the gradient of the local copy only when the
loss is replicated.  A contrastive loss (ITC) on each rank sees all ``W * b`` embeddings
and differs per rank; the data-parallel engine (DDP / FSDP) then *averages* the parameter
gradients over the ranks.  Summing the copies' gradients here (one ``all_reduce``) and
letting the engine divide by ``W`` gives exactly the gradient of the mean of the ranks'
losses -- what a single process computing every rank's loss would get.

Limits: every rank must pass the same shape (checked with one small all-gather of the
shapes, and a ``ValueError`` listing them otherwise); the leading dimension is the batch.
Without an initialised process group, or with one rank, the input is returned as is.

The reference for tests is the single-process formula on the concatenated tensor
(``tests/kernels/test_collectives.py`` runs two gloo processes against it in float64).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

__all__ = ["AllGatherWithGrad", "all_gather_with_grad"]


class AllGatherWithGrad(torch.autograd.Function):
    """``cat(all_gather(x))``; backward: sum the gathered gradients over the ranks (one
    ``all_reduce``) and keep this rank's rows."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, group: Any) -> torch.Tensor:
        world = dist.get_world_size(group)
        ctx.group = group
        ctx.rank = dist.get_rank(group)
        ctx.rows = x.shape[0]
        x = x.contiguous()
        parts = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(parts, x, group=group)
        return torch.cat(parts, 0)  # (W * b, ...)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)
        start = ctx.rank * ctx.rows
        return grad[start : start + ctx.rows], None


def all_gather_with_grad(x: torch.Tensor, group: Any = None) -> torch.Tensor:
    """Concatenate ``x`` (``(b, ...)``, the same shape on every rank) over the ranks in rank
    order, keeping the autograd graph: the gradient reaching rank ``r``'s ``x`` is the sum of
    the gradients of its copy on every rank (see the module doc).  Without a process group
    (or with one rank) returns ``x``.  Use it as the ``gather`` of
    :func:`~bridgetower.layers.heads.itc_loss` / ``PretrainingObjective(itc_gather=...)``.
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
    return AllGatherWithGrad.apply(x, group)
