"""Uni-modal fine-tuning: objectives, recipes and the ``image-cls`` / ``text-cls`` tasks.

The official repository measures what vision-language pre-training does to each tower alone
(``run_cifar.py``: the CLIP tower on CIFAR-10/100; ``run_glue.py``: the RoBERTa tower on
GLUE).  Here the same runs go through the downstream machinery of
:mod:`bridgetower.training.finetune` -- the :class:`~bridgetower.training.trainer.Trainer`,
the ``bridgetower finetune`` command, the optimizer's learning-rate groups -- with the models
of :mod:`bridgetower.models.unimodal` and the synthetic sets of
:mod:`bridgetower.data.unimodal`.  Registered tasks (:func:`register_unimodal_tasks`):

===================== ============================================ ========= =================
task                  synthetic data                               labels    model
===================== ============================================ ========= =================
``image-cls``         single-object scenes, label = shape          3         image classifier
``image-cls-colour``  single-object scenes, label = colour         6         image classifier
``text-cls``          single captions: "does it mention a red      2         text classifier
                      object"
``text-cls-pair``     sentence pairs: "do A and B describe the     2         text classifier
                      same scene" (reorderings / rephrasings vs
                      one-attribute changes)
===================== ============================================ ========= =================

Objectives (``objective(model, batch) -> (loss, metrics)``): cross-entropy and ``accuracy``
(:class:`ImageClassificationObjective`, :class:`TextClassificationObjective`; the text one
does MSE regression with ``regression=True``, GLUE STS-B's setting).

Recipes (:data:`UNIMODAL_OFFICIAL_RECIPES`, from the official ``run_cifar.py`` /
``run_glue.py`` defaults and ``scripts/ftfpt_{cifar,glue}.sh``): CIFAR -- AdamW lr 2e-5
(swept 1e-5 / 2e-5), betas (0.9, 0.98), eps 1e-8, weight decay 0.01, batch 512, 10 epochs, 6%
warm-up then linear decay, image 224; GLUE -- lr 1e-5 (swept 1e-5 / 2e-5), batch 32 (swept
16 / 32), eps 1e-6, weight decay 0.1, 10 epochs, 6% warm-up, max length 512.  The official
runs use one learning rate for every parameter (multipliers 1).  (The official CIFAR script
builds its optimizer over the vision tower only, so its linear classifier keeps its
initialisation; ours trains it.)  :data:`UNIMODAL_SYNTHETIC_RECIPES` are the short CPU runs.

The learning-rate groups: the models declare their head (``head_prefixes``:
``image_classifier`` / ``text_classifier``); :func:`build_unimodal_optimizer` gives it
``head_lr_mult`` times the tower's rate.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..models.unimodal import (
    BridgeTowerForImageClassification,
    BridgeTowerForTextClassification,
    classification_loss,
)
from .finetune import (
    OFFICIAL_RECIPES,
    SYNTHETIC_RECIPES,
    TASKS,
    FinetuneRecipe,
    TaskSpec,
    register_task,
)

__all__ = [
    "UNIMODAL_OFFICIAL_RECIPES",
    "UNIMODAL_SYNTHETIC_RECIPES",
    "ImageClassificationObjective",
    "TextClassificationObjective",
    "UniModalTaskSpec",
    "build_unimodal_model",
    "build_unimodal_optimizer",
    "register_unimodal_tasks",
]


# ------------------------------------------------------------------------------ objectives


def _need(batch: Mapping[str, Any], keys, who: str) -> None:
    if not isinstance(batch, Mapping):
        raise TypeError(f"{who}: a batch is a dict of tensors, got {type(batch).__name__}")
    missing = [k for k in keys if k not in batch]
    if missing:
        raise ValueError(f"{who}: the batch lacks {missing} (has {sorted(batch)})")


class ImageClassificationObjective:
    """Cross-entropy of ``model(pixel_values).logits`` against ``labels``; ``accuracy``."""

    metric = "accuracy"
    keys = ("pixel_values", "labels")

    def __call__(self, model: nn.Module, batch: Mapping[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        _need(batch, self.keys, type(self).__name__)
        out = model(batch["pixel_values"])
        labels = batch["labels"]
        loss = classification_loss(out.logits, labels)
        acc = (out.logits.detach().argmax(-1) == labels).float().mean()
        return loss, {"accuracy": acc}


class TextClassificationObjective:
    """Cross-entropy of ``model(input_ids, attention_mask).logits`` against ``labels`` with
    ``accuracy``; with ``regression=True`` (a one-output model) the mean squared error, and
    ``mse`` as the metric."""

    keys = ("input_ids", "attention_mask", "labels")

    def __init__(self, *, regression: bool = False) -> None:
        self.regression = bool(regression)
        self.metric = "mse" if self.regression else "accuracy"

    def __call__(self, model: nn.Module, batch: Mapping[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        _need(batch, self.keys, type(self).__name__)
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
        acc = (out.logits.detach().argmax(-1) == labels).float().mean()
        return loss, {"accuracy": acc}


# ------------------------------------------------------------------------------ models


def build_unimodal_model(
    model_cls: type,
    num_labels: int,
    *,
    pretrained: str | Path | nn.Module | None = None,
    config: Any = None,
    vocab_size: int | None = None,
    image_size: int | None = None,
) -> tuple[nn.Module, dict]:
    """A uni-modal classifier from ``pretrained`` (a vision-language checkpoint -- run dir,
    model dir, HF directory, official ``.ckpt`` -- or an in-memory BridgeTower model, whose
    tower is copied; or a saved classifier of ``model_cls``) or from scratch (``config``: a
    :class:`~bridgetower.models.BridgeTowerConfig` or a configuration name).

    ``vocab_size`` extends the text vocabulary (text model), ``image_size`` sets the image
    size (vision model; position tables are resized).  Returns ``(model, report)`` with
    ``report["pretrained"]`` and the ``copied`` / ``extended`` / ``resized`` keys of the copy.
    """
    from ..models import BridgeTowerConfig, get_config

    is_text = model_cls is BridgeTowerForTextClassification
    over: dict[str, Any] = {}
    if is_text and vocab_size is not None:
        over["text.vocab_size"] = vocab_size
    if not is_text and image_size:
        over["vision.image_size"] = image_size
    report: dict[str, Any] = {"pretrained": None}
    if pretrained is not None:
        source: Any = pretrained
        if not isinstance(pretrained, nn.Module):
            p = Path(pretrained)
            if p.is_dir():
                from .finetune import resolve_model_dir

                source = resolve_model_dir(p)
        model = model_cls.from_pretrained(source, num_labels=num_labels, **over)
        report.update(getattr(model, "load_report", {}))
        report["pretrained"] = type(pretrained).__name__ if isinstance(pretrained, nn.Module) else str(pretrained)
        return model, report
    if config is None:
        raise ValueError("build_unimodal_model: give a pretrained checkpoint or a config to train from scratch")
    if isinstance(config, str):
        config = get_config(config)
    if not isinstance(config, BridgeTowerConfig):
        raise TypeError(f"config must be a BridgeTowerConfig or a name, got {type(config).__name__}")
    return model_cls(config.replace(**over) if over else config, num_labels=num_labels), report


def build_unimodal_optimizer(model: nn.Module, recipe: FinetuneRecipe) -> torch.optim.Optimizer:
    """AdamW over the optimizer's parameter groups with the model's head (``head_prefixes``)
    at ``recipe.head_lr_mult`` times ``recipe.lr`` (no weight decay on biases and norms)."""
    from .optim import HEAD_PREFIXES, build_optimizer

    heads = tuple(HEAD_PREFIXES) + tuple(getattr(model, "head_prefixes", ()))
    return build_optimizer(
        model, lr=recipe.lr, betas=recipe.betas, eps=recipe.eps, weight_decay=recipe.weight_decay,
        cross_modal_multiplier=recipe.cross_modal_lr_mult, head_multiplier=recipe.head_lr_mult,
        head_prefixes=heads,
    )


# ------------------------------------------------------------------------------ tasks


@dataclass
class UniModalTaskSpec(TaskSpec):
    """A :class:`~bridgetower.training.finetune.TaskSpec` whose model holds one tower: its
    ``build_model`` replaces the encoder copy of the vision-language tasks, its
    ``head_prefixes`` name the head for the learning-rate groups; ``num_labels`` is the head
    size."""

    num_labels: int = 2


#: The official uni-modal recipes (``run_cifar.py``, ``run_glue.py``; see the module doc).
UNIMODAL_OFFICIAL_RECIPES: dict[str, FinetuneRecipe] = {
    "image": FinetuneRecipe(lr=2e-5, batch_size=512, epochs=10, warmup=0.06, weight_decay=0.01,
                            head_lr_mult=1, cross_modal_lr_mult=1, image_size=224, eps=1e-8),
    "text": FinetuneRecipe(lr=1e-5, batch_size=32, epochs=10, warmup=0.06, weight_decay=0.1,
                           head_lr_mult=1, cross_modal_lr_mult=1, eps=1e-6, max_text_len=512),
}

#: Short CPU runs of the tiny model on the synthetic sets.
UNIMODAL_SYNTHETIC_RECIPES: dict[str, FinetuneRecipe] = {
    "image": FinetuneRecipe(lr=2e-4, batch_size=32, epochs=1, steps=200, warmup=0.1, weight_decay=0.01,
                            head_lr_mult=10, cross_modal_lr_mult=1, clip=1.0),
    "text": FinetuneRecipe(lr=2e-4, batch_size=32, epochs=1, steps=300, warmup=0.1, weight_decay=0.01,
                           head_lr_mult=10, cross_modal_lr_mult=1, clip=1.0),
}


def _image_set(attribute: str):
    def build(size, *, seed, transform, tokenizer=None, max_length=50, recipe=None, config=None):
        from ..data.unimodal import SceneImageClassification

        return SceneImageClassification(size, seed=seed, attribute=attribute, config=config, transform=transform)

    return build


def _text_set(pair: bool):
    def build(size, *, seed, transform=None, tokenizer, max_length, recipe=None, config=None):
        from ..data.unimodal import CaptionMentionDataset, CaptionPairDataset

        cls = CaptionPairDataset if pair else CaptionMentionDataset
        return cls(size, seed=seed, config=config, tokenizer=tokenizer, max_length=max_length)

    return build


def _image_collate(tokenizer, max_length, recipe):
    from ..data.unimodal import ImageClassificationCollator

    return ImageClassificationCollator()


def _text_collate(tokenizer, max_length, recipe):
    from ..data.unimodal import TextClassificationCollator

    return TextClassificationCollator(tokenizer.pad_token_id)


def _builder(model_cls: type, num_labels: int):
    def build(*, pretrained=None, config=None, vocab_size=None, image_size=None, num_answers=None):
        return build_unimodal_model(
            model_cls, num_labels, pretrained=pretrained, config=config, vocab_size=vocab_size, image_size=image_size
        )

    return build


def register_unimodal_tasks(*, overwrite: bool = False) -> list[str]:
    """Register ``image-cls``, ``image-cls-colour``, ``text-cls`` and ``text-cls-pair`` (and
    their recipes) with :mod:`bridgetower.training.finetune`; returns the names.  Called on
    import; names already registered are left alone unless ``overwrite``."""
    from ..data.scenes import COLOURS, SHAPES

    img, txt = BridgeTowerForImageClassification, BridgeTowerForTextClassification
    specs = [
        (UniModalTaskSpec(
            name="image-cls", model_cls=img, objective=ImageClassificationObjective,
            synthetic=_image_set("shape"), arrow=None, collate=_image_collate,
            description="vision tower + linear head (official CIFAR recipe); synthetic: shape of one object",
            num_labels=len(SHAPES), build_model=_builder(img, len(SHAPES)), head_prefixes=img.head_prefixes,
        ), "image"),
        (UniModalTaskSpec(
            name="image-cls-colour", model_cls=img, objective=ImageClassificationObjective,
            synthetic=_image_set("colour"), arrow=None, collate=_image_collate,
            description="as image-cls; synthetic: colour of one object",
            num_labels=len(COLOURS), build_model=_builder(img, len(COLOURS)), head_prefixes=img.head_prefixes,
        ), "image"),
        (UniModalTaskSpec(
            name="text-cls", model_cls=txt, objective=TextClassificationObjective,
            synthetic=_text_set(pair=False), arrow=None, collate=_text_collate,
            description="text tower + RoBERTa head (official GLUE recipe); synthetic: a red object mentioned?",
            num_labels=2, build_model=_builder(txt, 2), head_prefixes=txt.head_prefixes,
        ), "text"),
        (UniModalTaskSpec(
            name="text-cls-pair", model_cls=txt, objective=TextClassificationObjective,
            synthetic=_text_set(pair=True), arrow=None, collate=_text_collate,
            description="as text-cls, sentence pairs: do captions A and B describe the same scene?",
            num_labels=2, build_model=_builder(txt, 2), head_prefixes=txt.head_prefixes,
        ), "text"),
    ]
    names = []
    for spec, kind in specs:
        if spec.name in TASKS and not overwrite:
            continue
        register_task(spec, overwrite=overwrite)
        OFFICIAL_RECIPES[spec.name] = UNIMODAL_OFFICIAL_RECIPES[kind]
        SYNTHETIC_RECIPES[spec.name] = UNIMODAL_SYNTHETIC_RECIPES[kind]
        names.append(spec.name)
    return names


register_unimodal_tasks()
