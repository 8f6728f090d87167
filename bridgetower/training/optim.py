"""Optimizer parameter groups and the learning-rate schedule of BridgeTower pretraining.

The published recipe (paper section 4.1, official ``meter_utils.set_schedule``): AdamW with
lr 1e-5, betas (0.9, 0.98), eps 1e-8, weight decay 0.01 except on biases and LayerNorm
weights; the cross-modal part and the task heads train with a 5x learning rate; 10% linear
warm-up, then linear decay to zero.

Which parameter gets what is declared by the model, not guessed from names here:

* ``model.parameter_roles()`` gives each parameter a role (``"uni_modal"``,
  ``"cross_modal"`` or ``"head"``, see :class:`~bridgetower.models.BridgeTowerPreTrainedModel`);
  cross-modal parameters get ``cross_modal_multiplier``, heads ``head_multiplier``, the
  towers the base rate.  A model that declares no roles trains at the base rate throughout.
* ``model.no_weight_decay()`` names the parameters without weight decay (every bias and
  every normalisation affine); a model that declares nothing gets that same rule
  (:func:`~bridgetower.models.base.no_weight_decay_names`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from ..models.base import PARAMETER_ROLES, no_weight_decay_names

__all__ = [
    "WarmupLinearDecay",
    "build_optimizer",
    "build_scheduler",
    "describe_param_groups",
    "param_groups",
]


def _declared(model: nn.Module) -> tuple[dict[str, str], set[str]]:
    roles = model.parameter_roles() if hasattr(model, "parameter_roles") else {}
    no_decay = model.no_weight_decay() if hasattr(model, "no_weight_decay") else no_weight_decay_names(model)
    bad = sorted({r for r in roles.values() if r not in PARAMETER_ROLES})
    if bad:
        raise ValueError(f"{type(model).__name__}.parameter_roles() gave unknown roles {bad}; valid: {PARAMETER_ROLES}")
    return roles, set(no_decay)


def param_groups(
    model: nn.Module,
    *,
    lr: float,
    weight_decay: float = 0.01,
    cross_modal_multiplier: float = 5.0,
    head_multiplier: float = 5.0,
) -> list[dict]:
    """AdamW parameter groups: one per (lr multiplier, decay / no decay) pair that occurs.

    Every group carries ``lr``, ``weight_decay``, ``lr_multiplier`` and ``names`` (the
    qualified parameter names, for inspection; the optimizer ignores extra keys).  Frozen
    parameters (``requires_grad=False``) are left out.
    """
    if not (isinstance(lr, (int, float)) and lr > 0):
        raise ValueError(f"lr must be a positive number, got {lr!r}")
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay!r}")
    for label, m in (("cross_modal_multiplier", cross_modal_multiplier), ("head_multiplier", head_multiplier)):
        if not (isinstance(m, (int, float)) and m > 0):
            raise ValueError(f"{label} must be a positive number, got {m!r}")
    roles, no_decay = _declared(model)
    multipliers = {"uni_modal": 1.0, "cross_modal": float(cross_modal_multiplier), "head": float(head_multiplier)}
    groups: dict[tuple[float, bool], dict] = {}
    for full, p in model.named_parameters():
        if not p.requires_grad:
            continue
        mult = multipliers[roles.get(full, "uni_modal")]
        decay = full not in no_decay
        key = (mult, decay)
        if key not in groups:
            groups[key] = {
                "params": [],
                "names": [],
                "lr": lr * mult,
                "lr_multiplier": mult,
                "weight_decay": weight_decay if decay else 0.0,
            }
        groups[key]["params"].append(p)
        groups[key]["names"].append(full)
    if not groups:
        raise ValueError("the model has no trainable parameters")
    return [groups[k] for k in sorted(groups, key=lambda k: (k[0], not k[1]))]


def describe_param_groups(groups: Iterable[dict]) -> str:
    """One line per group: multiplier, peak lr, weight decay, count of tensors and elements."""
    lines = []
    for g in groups:
        n = sum(p.numel() for p in g["params"])
        lr = g.get("initial_lr", g["lr"])  # the peak rate once a scheduler has scaled it
        lines.append(
            f"lr x{g.get('lr_multiplier', 1.0):g} (peak lr {lr:.3g}), weight decay "
            f"{g['weight_decay']:g}: {len(g['params'])} tensors, {n:,} parameters"
        )
    return "\n".join(lines)


def build_optimizer(
    model: nn.Module,
    *,
    lr: float = 1e-5,
    betas: tuple[float, float] = (0.9, 0.98),
    eps: float = 1e-8,
    weight_decay: float = 0.01,
    cross_modal_multiplier: float = 5.0,
    head_multiplier: float = 5.0,
) -> torch.optim.AdamW:
    """AdamW over :func:`param_groups` with the published defaults."""
    if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
        raise ValueError(f"betas must be two numbers in [0, 1), got {betas!r}")
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps!r}")
    groups = param_groups(
        model,
        lr=lr,
        weight_decay=weight_decay,
        cross_modal_multiplier=cross_modal_multiplier,
        head_multiplier=head_multiplier,
    )
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)


class WarmupLinearDecay:
    """The learning-rate factor ``f(step)``: ``step / warmup`` while ``step < warmup``, then
    ``(total - step) / (total - warmup)`` down to 0 at ``total`` (and 0 after it).

    ``step`` counts optimizer steps already taken, so the first update uses ``f(0)``; with a
    warm-up that is 0 (the convention of the official code and ``transformers``).  A
    picklable callable, so ``LambdaLR.state_dict`` records it.
    """

    def __init__(self, warmup_steps: int, total_steps: int) -> None:
        if not isinstance(total_steps, int) or total_steps < 1:
            raise ValueError(f"total_steps must be a positive int, got {total_steps!r}")
        if not isinstance(warmup_steps, int) or not 0 <= warmup_steps <= total_steps:
            raise ValueError(
                f"warmup_steps must be an int in [0, total_steps={total_steps}], got {warmup_steps!r}"
            )
        self.warmup_steps = warmup_steps
        self.total_steps = total_steps

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return step / self.warmup_steps
        if step >= self.total_steps:
            return 0.0
        return (self.total_steps - step) / max(1, self.total_steps - self.warmup_steps)

    def __repr__(self) -> str:
        return f"WarmupLinearDecay(warmup_steps={self.warmup_steps}, total_steps={self.total_steps})"


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    *,
    total_steps: int,
    warmup: float | int = 0.1,
) -> LambdaLR:
    """Linear warm-up then linear decay to zero.

    ``warmup`` is a fraction of ``total_steps`` when a float in ``[0, 1)`` (the recipe's 0.1),
    or a number of steps when an int.
    """
    if isinstance(warmup, bool) or not isinstance(warmup, (int, float)):
        raise TypeError(f"warmup must be an int (steps) or a float fraction, got {warmup!r}")
    if isinstance(warmup, float):
        if not 0.0 <= warmup < 1.0:
            raise ValueError(f"a float warmup is a fraction in [0, 1), got {warmup!r}")
        warmup_steps = int(math.floor(warmup * total_steps))
    else:
        warmup_steps = warmup
    return LambdaLR(optimizer, WarmupLinearDecay(warmup_steps, total_steps))
