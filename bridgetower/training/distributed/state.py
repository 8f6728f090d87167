"""Rank-free state dicts: the full model and a 1-process optimizer state, whatever the sharding.

Checkpoints hold the full model and the optimizer state keyed by parameter index exactly as
a 1-process ``optimizer.state_dict()``; for FSDP they are gathered with
:func:`torch.distributed.checkpoint.state_dict.get_model_state_dict` /
``get_optimizer_state_dict`` (``full_state_dict=True, cpu_offload=True``).  So a checkpoint
of a 2-process run resumes on 1 process and vice versa.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

__all__ = [
    "FixedStateDict",
    "canonical_optimizer_state_dict",
    "full_model_state_dict",
    "full_state_copy",
    "load_canonical_optimizer_state_dict",
    "load_full_model_state_dict",
]


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

        state = get_model_state_dict(model, options=_sd_options(full_state_dict=True, cpu_offload=True))
        # a tensor with fewer rows than ranks comes back as a view of its padded gather buffer,
        # which safetensors refuses to write: such tensors get their own storage
        return {k: v.clone() if v.untyped_storage().nbytes() != v.numel() * v.element_size() else v
                for k, v in state.items()}
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


def full_state_copy(model: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
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


class FixedStateDict:
    """Stands in for an optimizer when writing a checkpoint: ``state_dict()`` returns ``state``."""

    def __init__(self, state: dict) -> None:
        self._state = state

    def state_dict(self) -> dict:
        return self._state
