"""Optimizer parameter groups and the learning-rate schedule of BridgeTower pretraining.

The published recipe (paper section 4.1, official ``meter_utils.set_schedule``): AdamW with
lr 1e-5, betas (0.9, 0.98), eps 1e-8, weight decay 0.01 except on biases and LayerNorm
weights; the cross-modal part and the task heads train with a 5x learning rate; 10% linear
warm-up, then linear decay to zero.

Which parameter gets what is decided by two documented rules over the qualified parameter
names of ``model.named_parameters()`` (and the module that owns each parameter):

*No weight decay* (:func:`is_no_decay`): every parameter whose own name is ``bias``, and the
``weight`` of every normalisation module -- an instance of ``nn.LayerNorm``, ``nn.RMSNorm``,
``nn.GroupNorm``, a batch/instance norm, any module whose class name ends in ``Norm``
(``AddLayerNorm``), and the bridges of :mod:`bridgetower.layers.bridge` (their ``weight`` /
``bias`` are the LayerNorm affine).  Everything else (Linear/Embedding weights, CLIP's
``class_embedding``, the learnable bridge scalars, the ITC temperature) decays.

*Learning-rate multiplier* (:func:`lr_multiplier_for`): a parameter is *cross-modal* if one of
the dot-separated components of its name starts with one of :data:`CROSS_MODAL_PREFIXES`
(``cross_modal``, the official/HF name of every fusion parameter:
``cross_modal_text_transform``, ``cross_modal_image_layers`` ...; and ``fusion``, our
:class:`~bridgetower.layers.co_attention.CoAttentionFusion`), and a *head* if a component
starts with one of :data:`HEAD_PREFIXES` (``mlm_score``, ``itm_score``, ``itc``,
``vqa_classifier``, ``rank_output`` ...).  As in the official code, the modality
``token_type_embeddings`` (not named ``cross_modal*``) keep the base rate -- and so does the
text tower's own RoBERTa ``token_type_embeddings``.
Heads get ``head_multiplier``, cross-modal parameters ``cross_modal_multiplier`` (a head
match wins); the two uni-modal towers keep the base rate.  Both prefix lists can be
replaced by the caller.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

__all__ = [
    "CROSS_MODAL_PREFIXES",
    "HEAD_PREFIXES",
    "WarmupLinearDecay",
    "build_optimizer",
    "build_scheduler",
    "describe_param_groups",
    "is_no_decay",
    "lr_multiplier_for",
    "param_groups",
]

#: Name-component prefixes of the cross-modal (fusion) parameters.
CROSS_MODAL_PREFIXES: tuple[str, ...] = ("cross_modal", "fusion")
#: Name-component prefixes of the task-head parameters.
HEAD_PREFIXES: tuple[str, ...] = (
    "mlm_score",
    "itm_score",
    "itc",
    "logit_scale",
    "temperature",
    "heads",
    "mlm_head",
    "itm_head",
    "itc_head",
    "contrastive",
    "vqa",
    "nlvr2",
    "snli",
    "irtr",
    "rank_output",
)

_NORM_TYPES: tuple[type, ...] = (
    nn.LayerNorm,
    nn.GroupNorm,
    nn.LocalResponseNorm,
    nn.modules.batchnorm._NormBase,
) + ((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ())


def _is_norm_module(module: nn.Module) -> bool:
    if isinstance(module, _NORM_TYPES):
        return True
    name = type(module).__name__
    if name.endswith("Norm") or name.endswith("LayerNorm"):
        return True
    try:  # the bridges own the LayerNorm affine directly (``weight``, ``bias``)
        from ..layers.bridge import Bridge
    except ImportError:  # pragma: no cover - layers always ship with the package
        return False
    return isinstance(module, Bridge)


def is_no_decay(module: nn.Module, param_name: str) -> bool:
    """Whether the parameter ``param_name`` (its own name, e.g. ``"weight"``) of ``module``
    is exempt from weight decay: biases and normalisation weights (see the module doc)."""
    if param_name == "bias":
        return True
    return param_name == "weight" and _is_norm_module(module)


def _matches(name: str, prefixes: Sequence[str]) -> bool:
    return any(part.startswith(p) for part in name.split(".") for p in prefixes)


def lr_multiplier_for(
    name: str,
    *,
    cross_modal_multiplier: float = 5.0,
    head_multiplier: float = 5.0,
    cross_modal_prefixes: Sequence[str] = CROSS_MODAL_PREFIXES,
    head_prefixes: Sequence[str] = HEAD_PREFIXES,
) -> float:
    """The learning-rate multiplier of the parameter with qualified name ``name``."""
    if _matches(name, head_prefixes):
        return float(head_multiplier)
    if _matches(name, cross_modal_prefixes):
        return float(cross_modal_multiplier)
    return 1.0


def _named_params_with_owner(model: nn.Module):
    seen: set[int] = set()
    for mod_name, module in model.named_modules():
        for p_name, p in module.named_parameters(recurse=False):
            if id(p) in seen:  # tied weights appear once, under their first name
                continue
            seen.add(id(p))
            yield (f"{mod_name}.{p_name}" if mod_name else p_name), p_name, module, p


def param_groups(
    model: nn.Module,
    *,
    lr: float,
    weight_decay: float = 0.01,
    cross_modal_multiplier: float = 5.0,
    head_multiplier: float = 5.0,
    cross_modal_prefixes: Sequence[str] = CROSS_MODAL_PREFIXES,
    head_prefixes: Sequence[str] = HEAD_PREFIXES,
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
    groups: dict[tuple[float, bool], dict] = {}
    for full, own, module, p in _named_params_with_owner(model):
        if not p.requires_grad:
            continue
        mult = lr_multiplier_for(
            full,
            cross_modal_multiplier=cross_modal_multiplier,
            head_multiplier=head_multiplier,
            cross_modal_prefixes=cross_modal_prefixes,
            head_prefixes=head_prefixes,
        )
        decay = not is_no_decay(module, own)
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
    cross_modal_prefixes: Sequence[str] = CROSS_MODAL_PREFIXES,
    head_prefixes: Sequence[str] = HEAD_PREFIXES,
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
        cross_modal_prefixes=cross_modal_prefixes,
        head_prefixes=head_prefixes,
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
