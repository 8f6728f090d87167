"""Training: objectives, optimizer groups and schedule, the Trainer with atomic checkpoints and
exact resume, metrics logging, held-out evaluation and the bundled demo's pieces.

See docs/architecture.md and the ``training`` section of the README.
"""

from .checkpoint import find_checkpoint, load_checkpoint, save_checkpoint
from .demo import DEMO_ATTRIBUTE_WEIGHTS, SceneTextNegatives
from .evaluate import SceneEvaluator, format_score_table, score_texts
from .metrics import MetricsLogger, plot_metrics, read_jsonl
from .objectives import PretrainingObjective
from .optim import (
    CROSS_MODAL_PREFIXES,
    HEAD_PREFIXES,
    WarmupLinearDecay,
    build_optimizer,
    build_scheduler,
    describe_param_groups,
    param_groups,
)
from .stream import BatchStream
from .trainer import Trainer, TrainerConfig, seed_everything

__all__ = [
    "CROSS_MODAL_PREFIXES",
    "DEMO_ATTRIBUTE_WEIGHTS",
    "HEAD_PREFIXES",
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
