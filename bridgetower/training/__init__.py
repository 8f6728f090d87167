"""Training: objectives, optimizer groups and schedule, the Trainer with atomic checkpoints and
exact resume, metrics logging, held-out evaluation and the bundled demo's pieces.

The drivers behind the command line: :func:`bridgetower.training.pretrain.pretrain` and
:func:`bridgetower.training.finetune.finetune`, on the shared run skeleton of
:mod:`~bridgetower.training.run`; recipes in :mod:`~bridgetower.training.recipes`, the
fine-tuning tasks in :mod:`~bridgetower.training.tasks`, data-parallel training in
:mod:`~bridgetower.training.distributed`.  See docs/architecture.md.
"""

from .checkpoint import find_checkpoint, load_checkpoint, save_checkpoint
from .demo import DEMO_ATTRIBUTE_WEIGHTS, SceneTextNegatives
from .evaluate import SceneEvaluator, format_score_table, score_texts
from .metrics import MetricsLogger, plot_metrics, read_jsonl
from .objectives import PretrainingObjective
from .optim import (
    WarmupLinearDecay,
    build_optimizer,
    build_scheduler,
    describe_param_groups,
    param_groups,
)
from .stream import BatchStream
from .trainer import Trainer, TrainerConfig, seed_everything

__all__ = [
    "DEMO_ATTRIBUTE_WEIGHTS",
    "BatchStream",
    "MetricsLogger",
    "PretrainingObjective",
    "SceneEvaluator",
    "SceneTextNegatives",
    "Trainer",
    "TrainerConfig",
    "WarmupLinearDecay",
    "build_optimizer",
    "build_scheduler",
    "describe_param_groups",
    "find_checkpoint",
    "format_score_table",
    "load_checkpoint",
    "param_groups",
    "plot_metrics",
    "read_jsonl",
    "save_checkpoint",
    "score_texts",
    "seed_everything",
]
