"""The one weight copy with shape adaptation, used by every loader and by fine-tuning.

Three shape differences between a source tensor and its destination are adapted, always and
only these, and reported:

* ``visual.positional_embedding`` of another patch grid: resized bicubically (the CLS
  position kept), for images of another size than the checkpoint's;
* ``token_type_embeddings.weight`` of 2 rows into 3 (NLVR2's second image): row 2 = row 1,
  as the official NLVR2 fine-tuning starts;
* ``word_embeddings.weight`` with more rows (a tokenizer extended with new words): the old
  rows are copied, the new ones keep their initialisation.

Any other shape difference is an error.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..towers.vision import resize_pos_embed
from .io import LazyTensor

__all__ = ["WeightCopyReport", "adapt_tensor", "copy_weights"]


def _materialise(value: Any) -> torch.Tensor:
    return value.load() if isinstance(value, LazyTensor) else value


def adapt_tensor(key: str, value: Any, target: torch.Tensor) -> tuple[torch.Tensor, str, str] | None:
    """``(tensor, kind, note)``: ``value`` made to fit ``target``'s shape, ``kind`` ``"resized"``
    (position table) or ``"extended"`` (token types, word embeddings) and a note saying how;
    ``None`` when no allowed adaptation applies.  (Equal shapes are not this function's
    business.)

    The word-embedding case returns a tensor of the target's shape whose new rows are the
    target's current values.
    """
    have, want = tuple(value.shape), tuple(target.shape)
    if key.endswith("visual.positional_embedding") and len(have) == 2 and len(want) == 2 and have[1] == want[1]:
        g = int(round(math.sqrt(want[0] - 1)))
        if g * g + 1 == want[0]:
            return resize_pos_embed(_materialise(value), (g, g)), "resized", f"{key}: {have[0]} -> {want[0]} positions"
    if key.endswith("token_type_embeddings.weight") and have == (2, want[1]) and want[0] == 3:
        v = _materialise(value)
        return torch.cat([v, v[1:2]], dim=0), "extended", f"{key}: row 2 = row 1"
    if key.endswith("word_embeddings.weight") and len(have) == 2 and have[1:] == want[1:] and have[0] < want[0]:
        out = target.detach().clone()
        out[: have[0]] = _materialise(value).to(out.dtype)
        return out, "extended", f"{key}: rows {have[0]} -> {want[0]}"
    return None


@dataclass
class WeightCopyReport:
    """What :func:`copy_weights` did: ``copied`` keys (same shape), and notes on the tables
    ``extended`` (token types, word embeddings) and ``resized`` (position tables)."""

    copied: list[str] = field(default_factory=list)
    extended: list[str] = field(default_factory=list)
    resized: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, list[str]]:
        return {"copied": list(self.copied), "extended": list(self.extended), "resized": list(self.resized)}


def plan_copy(target: Mapping[str, torch.Tensor], src_state: Mapping[str, Any], report: Any
              ) -> tuple[list[tuple[str, Any]], list[tuple[str, tuple, tuple]]]:
    """What to copy into each key of ``target`` that ``src_state`` has: ``(plan, bad)``, the
    ``(key, value)`` pairs (same shape, or adapted by :func:`adapt_tensor`) and the
    ``(key, source shape, target shape)`` of the tensors that cannot be adapted.  Keys copied
    unchanged go to ``report.copied``, adaptations to ``report.extended`` / ``report.resized``."""
    plan: list[tuple[str, Any]] = []
    bad: list[tuple[str, tuple, tuple]] = []
    for key, want in target.items():
        if key not in src_state:
            continue
        have = src_state[key]
        if tuple(have.shape) == tuple(want.shape):
            plan.append((key, have))
            report.copied.append(key)
            continue
        adapted = adapt_tensor(key, have, want)
        if adapted is None:
            bad.append((key, tuple(have.shape), tuple(want.shape)))
        else:
            plan.append((key, adapted[0]))
            getattr(report, adapted[1]).append(adapted[2])
    return plan, bad


@torch.no_grad()
def copy_weights(dst: nn.Module, src_state: Mapping[str, Any], *, what: str = "model") -> WeightCopyReport:
    """Copy every tensor of ``dst.state_dict()`` from ``src_state`` (same keys), adapting the
    shapes listed in the module docstring.

    Missing or unexpected keys, or any other shape difference, raise ``ValueError`` naming
    ``what`` and the keys; nothing is copied then.
    """
    target = dst.state_dict()
    missing = sorted(set(target) - set(src_state))
    unexpected = sorted(set(src_state) - set(target))
    if missing or unexpected:
        raise ValueError(
            f"the {what} of the source does not match: missing {missing[:8]}"
            f"{' ...' if len(missing) > 8 else ''}, unexpected {unexpected[:8]}"
            f"{' ...' if len(unexpected) > 8 else ''}"
        )
    report = WeightCopyReport()
    plan, bad = plan_copy(target, src_state, report)
    if bad:
        raise ValueError(f"shape mismatches between the source {what} and the destination: {bad[:8]}")
    for key, value in plan:
        if isinstance(value, LazyTensor):
            value.read_into(target[key])
        else:
            target[key].copy_(value)
    return report
