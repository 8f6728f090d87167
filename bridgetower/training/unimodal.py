"""Uni-modal fine-tuning (``image-cls``, ``image-cls-colour``, ``text-cls``, ``text-cls-pair``).

The official repository measures what vision-language pre-training does to each tower alone
(``run_cifar.py``: the CLIP tower on CIFAR-10/100; ``run_glue.py``: the RoBERTa tower on
GLUE).  Here the same runs go through the fine-tuning machinery -- the
:class:`~bridgetower.training.trainer.Trainer`, ``bridgetower finetune``, the optimizer's
learning-rate groups (the classifiers declare their head) -- with the models of
:mod:`bridgetower.models.unimodal` and the synthetic sets of :mod:`bridgetower.data.unimodal`.

The pieces live with the vision-language tasks: the tasks in
:mod:`~bridgetower.training.tasks`, the objectives in
:mod:`~bridgetower.training.task_objectives`, the recipes in
:mod:`~bridgetower.training.recipes`, the model building in
:mod:`~bridgetower.training.task_models`.  This module re-exports them under their
uni-modal names.  (The official CIFAR script builds its optimizer over the vision tower
only, so its linear classifier keeps its initialisation; ours trains it.)
"""

from __future__ import annotations

from .finetune import build_finetune_optimizer as build_unimodal_optimizer
from .recipes import UNIMODAL_OFFICIAL_RECIPES, UNIMODAL_SYNTHETIC_RECIPES
from .task_models import build_unimodal_model
from .task_objectives import ImageClassificationObjective, TextClassificationObjective
from .tasks import UniModalTaskSpec, register_unimodal_tasks

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
