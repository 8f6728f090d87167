"""Objectives of the fine-tuning tasks: ``objective(model, batch) -> (loss, metrics)``.

What the :class:`~bridgetower.training.trainer.Trainer` calls.  Each runs the task model
*without* labels and applies the loss function of :mod:`bridgetower.layers` to its logits,
so the same loss serves the model's own ``labels=`` path and training:

===================== =================================================== ========================
task                  loss                                                metric
===================== =================================================== ========================
``vqa``               :func:`~bridgetower.layers.vqa_loss`: BCE with      ``vqa_score``: soft score
                      logits on the soft scores ``targets``, times the    of the arg-max answer
                      number of answers
``nlvr2``             :func:`~bridgetower.layers.nlvr2_loss` (CE); both   ``accuracy``
                      images and both pixel masks go to the model
``snli-ve``           :func:`~bridgetower.layers.snli_loss` (CE)          ``accuracy``
``irtr``              :func:`~bridgetower.layers.irtr_loss`: CE over      ``accuracy``: the true text
                      each image's 1 + K texts, the true one first        ranked first
``image-cls`` ...     cross-entropy of the image classifier               ``accuracy``
``text-cls`` ...      cross-entropy (or MSE with ``regression=True``,     ``accuracy`` (``mse``)
                      GLUE STS-B's setting)
===================== =================================================== ========================

Every objective checks its batch once (:func:`check_batch`): a dict holding its ``keys``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from ..layers import irtr_loss, nlvr2_loss, snli_loss, vqa_loss
from ..models.unimodal import classification_loss

__all__ = [
    "IRTRObjective",
    "ImageClassificationObjective",
    "NLVR2Objective",
    "SNLIVEObjective",
    "TextClassificationObjective",
    "VQAObjective",
    "check_batch",
]

Metrics = dict[str, torch.Tensor]


def check_batch(batch: Mapping[str, Any], keys: Sequence[str], who: str) -> None:
    """``TypeError`` unless ``batch`` is a dict, ``ValueError`` naming the missing ``keys``."""
    if not isinstance(batch, Mapping):
        raise TypeError(f"{who}: a batch is a dict of tensors, got {type(batch).__name__}")
    missing = [k for k in keys if k not in batch]
    if missing:
        raise ValueError(f"{who}: the batch lacks {missing} (has {sorted(batch)})")


def _accuracy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return (logits.detach().argmax(-1) == labels).float().mean()


def _pair_forward(model: nn.Module, batch: Mapping[str, Any], **extra: Any) -> Any:
    """The vision-language task model on a batch, without labels."""
    return model(batch["input_ids"], batch["attention_mask"], batch["pixel_values"], batch.get("pixel_mask"), **extra)


class VQAObjective:
    """VQA: ``vqa_loss(logits, batch["targets"])`` (BCE x num_answers); metric ``vqa_score``
    (the soft score of the predicted answer, averaged: the VQA accuracy)."""

    metric = "vqa_score"
    keys = ("input_ids", "attention_mask", "pixel_values", "targets")

    def __call__(self, model: nn.Module, batch: Mapping[str, Any]) -> tuple[torch.Tensor, Metrics]:
        check_batch(batch, self.keys, type(self).__name__)
        out = _pair_forward(model, batch)
        targets = batch["targets"]
        loss = vqa_loss(out.logits, targets)
        pred = out.logits.detach().argmax(-1)
        score = targets.gather(1, pred.unsqueeze(1)).squeeze(1).float().mean()
        return loss, {"vqa_score": score}


class _LabelObjective:
    """A classification over the pair: ``loss_fn(logits, labels)`` and ``accuracy``."""

    metric = "accuracy"
    keys = ("input_ids", "attention_mask", "pixel_values", "labels")
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

    def _forward(self, model: nn.Module, batch: Mapping[str, Any]) -> Any:
        return _pair_forward(model, batch)

    def __call__(self, model: nn.Module, batch: Mapping[str, Any]) -> tuple[torch.Tensor, Metrics]:
        check_batch(batch, self.keys, type(self).__name__)
        out = self._forward(model, batch)
        labels = batch["labels"]
        return type(self).loss_fn(out.logits, labels), {"accuracy": _accuracy(out.logits, labels)}


class NLVR2Objective(_LabelObjective):
    """NLVR2: ``nlvr2_loss`` (CE over true/false) on the two-image model; ``accuracy``.  The
    second image goes in with its own pixel mask (``pixel_mask_2``; ``None`` when the batch
    has none)."""

    keys = _LabelObjective.keys + ("pixel_values_2",)
    loss_fn = staticmethod(nlvr2_loss)

    def _forward(self, model: nn.Module, batch: Mapping[str, Any]) -> Any:
        return _pair_forward(model, batch, pixel_values_2=batch["pixel_values_2"], pixel_mask_2=batch.get("pixel_mask_2"))


class SNLIVEObjective(_LabelObjective):
    """SNLI-VE: ``snli_loss`` (3-way CE); ``accuracy``."""

    loss_fn = staticmethod(snli_loss)


class IRTRObjective:
    """IRTR: ``irtr_loss`` -- CE over each image's ``1 + K`` texts (``input_ids`` (B, 1+K, L),
    the true text first); ``accuracy`` = share of images whose true text scores highest."""

    metric = "accuracy"
    keys = ("input_ids", "attention_mask", "pixel_values")

    def __call__(self, model: nn.Module, batch: Mapping[str, Any]) -> tuple[torch.Tensor, Metrics]:
        check_batch(batch, self.keys, type(self).__name__)
        out = _pair_forward(model, batch)
        loss = irtr_loss(out.logits)
        acc = (out.logits.detach().argmax(-1) == 0).float().mean()
        return loss, {"accuracy": acc}


class ImageClassificationObjective:
    """Cross-entropy of ``model(pixel_values).logits`` against ``labels``; ``accuracy``."""

    metric = "accuracy"
    keys = ("pixel_values", "labels")

    def __call__(self, model: nn.Module, batch: Mapping[str, Any]) -> tuple[torch.Tensor, Metrics]:
        check_batch(batch, self.keys, type(self).__name__)
        out = model(batch["pixel_values"])
        labels = batch["labels"]
        return classification_loss(out.logits, labels), {"accuracy": _accuracy(out.logits, labels)}


class TextClassificationObjective:
    """Cross-entropy of ``model(input_ids, attention_mask).logits`` against ``labels`` with
    ``accuracy``; with ``regression=True`` (a one-output model) the mean squared error, and
    ``mse`` as the metric."""

    keys = ("input_ids", "attention_mask", "labels")

    def __init__(self, *, regression: bool = False) -> None:
        self.regression = bool(regression)
        self.metric = "mse" if self.regression else "accuracy"

    def __call__(self, model: nn.Module, batch: Mapping[str, Any]) -> tuple[torch.Tensor, Metrics]:
        check_batch(batch, self.keys, type(self).__name__)
        out = model(batch["input_ids"], batch["attention_mask"])
        labels = batch["labels"]
        if self.regression != (out.logits.shape[-1] == 1):
            raise ValueError(
                f"{type(self).__name__}(regression={self.regression}) needs a model with "
                f"{'one output' if self.regression else 'two or more outputs'}, got logits {tuple(out.logits.shape)}"
            )
        loss = classification_loss(out.logits, labels)
        if self.regression:
            return loss, {"mse": loss.detach()}
        return loss, {"accuracy": _accuracy(out.logits, labels)}
