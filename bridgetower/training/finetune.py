"""Fine-tuning on the downstream tasks: objectives, a task registry, and :func:`finetune`.

A task is a :class:`TaskSpec` in :data:`TASKS` (add one with :func:`register_task`): its task
model class (:mod:`bridgetower.models.tasks`), its objective, how to build its data (the
synthetic scene sets of :mod:`bridgetower.data.downstream`, or the official pyarrow tables of
:mod:`bridgetower.data.arrow`), its collate function, the held-out metric, and the official
recipe.  Registered: ``vqa``, ``nlvr2``, ``snli-ve``, ``irtr``.

Objectives (``objective(model, batch) -> (loss, metrics)``, what the
:class:`~bridgetower.training.trainer.Trainer` calls) run the task model *without* labels
and apply the heads' loss functions to its logits:

============ ===================================================== ==========================
task         loss                                                  metric
============ ===================================================== ==========================
``vqa``      :func:`~bridgetower.layers.heads.vqa_loss`: BCE with  ``vqa_score``: soft score
             logits on the soft scores ``targets``, times the       of the arg-max answer
             number of answers
``nlvr2``    :func:`~bridgetower.layers.heads.nlvr2_loss` (CE)     ``accuracy``
``snli-ve``  :func:`~bridgetower.layers.heads.snli_loss` (CE)      ``accuracy``
``irtr``     :func:`~bridgetower.layers.heads.irtr_loss`: CE over  ``accuracy``: the true text
             each image's 1 + K texts, the true one first          ranked first
============ ===================================================== ==========================

Starting from a pretrained checkpoint (:func:`load_pretrained_encoder`), the encoder weights
are copied; the NLVR2 model's third token-type row (the second image) starts as a copy of
row 1, and the IRTR ranking head as a copy of the ITM head's "match" row, as the official
fine-tuning does.  A tokenizer that extends the pretrained vocabulary (new question words)
gets the pretrained embedding rows for the old ids and fresh rows for the new ones.

The official recipes (:data:`OFFICIAL_RECIPES`, from the official ``scripts/ftfpt_base_*.sh``)
use AdamW (betas 0.9/0.98, eps 1e-8) with a larger learning rate for the heads and the
cross-modal part (:func:`~bridgetower.training.optim.build_optimizer`) and linear warm-up then
decay; :data:`SYNTHETIC_RECIPES` are the short CPU runs on the bundled scenes.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..layers.heads import irtr_loss, nlvr2_loss, snli_loss, vqa_loss

logger = logging.getLogger(__name__)

__all__ = [
    "OFFICIAL_RECIPES",
    "SYNTHETIC_RECIPES",
    "SYNTHETIC_TRAIN_STREAM",
    "TASKS",
    "FinetuneRecipe",
    "IRTRObjective",
    "NLVR2Objective",
    "SNLIVEObjective",
    "TaskEvaluator",
    "TaskSpec",
    "VQAObjective",
    "build_task_model",
    "finetune",
    "get_task",
    "load_pretrained_encoder",
    "register_task",
    "resolve_model_dir",
]


# ------------------------------------------------------------------------------ objectives


def _pixel_mask(batch: Mapping[str, Any]) -> torch.Tensor | None:
    return batch.get("pixel_mask")


def _need(batch: Mapping[str, Any], keys: Sequence[str], who: str) -> None:
    if not isinstance(batch, Mapping):
        raise TypeError(f"{who}: a batch is a dict of tensors, got {type(batch).__name__}")
    missing = [k for k in keys if k not in batch]
    if missing:
        raise ValueError(f"{who}: the batch lacks {missing} (has {sorted(batch)})")


class VQAObjective:
    """VQA: ``vqa_loss(logits, batch["targets"])`` (BCE x num_answers); metric ``vqa_score``
    (the soft score of the predicted answer, averaged: the VQA accuracy)."""

    metric = "vqa_score"
    keys = ("input_ids", "attention_mask", "pixel_values", "targets")

    def __call__(self, model: nn.Module, batch: Mapping[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        _need(batch, self.keys, type(self).__name__)
        out = model(batch["input_ids"], batch["attention_mask"], batch["pixel_values"], _pixel_mask(batch))
        targets = batch["targets"]
        loss = vqa_loss(out.logits, targets)
        pred = out.logits.detach().argmax(-1)
        score = targets.gather(1, pred.unsqueeze(1)).squeeze(1).float().mean()
        return loss, {"vqa_score": score}


class _LabelObjective:
    metric = "accuracy"
    keys = ("input_ids", "attention_mask", "pixel_values", "labels")
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

    def _forward(self, model, batch):
        return model(batch["input_ids"], batch["attention_mask"], batch["pixel_values"], _pixel_mask(batch))

    def __call__(self, model: nn.Module, batch: Mapping[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        _need(batch, self.keys, type(self).__name__)
        out = self._forward(model, batch)
        labels = batch["labels"]
        loss = type(self).loss_fn(out.logits, labels)
        acc = (out.logits.detach().argmax(-1) == labels).float().mean()
        return loss, {"accuracy": acc}


class NLVR2Objective(_LabelObjective):
    """NLVR2: ``nlvr2_loss`` (CE over true/false) on the two-image model; ``accuracy``."""

    keys = _LabelObjective.keys + ("pixel_values_2",)
    loss_fn = staticmethod(nlvr2_loss)

    def _forward(self, model, batch):
        return model(
            batch["input_ids"], batch["attention_mask"], batch["pixel_values"], _pixel_mask(batch),
            pixel_values_2=batch["pixel_values_2"],
        )


class SNLIVEObjective(_LabelObjective):
    """SNLI-VE: ``snli_loss`` (3-way CE); ``accuracy``."""

    loss_fn = staticmethod(snli_loss)


class IRTRObjective:
    """IRTR: ``irtr_loss`` -- CE over each image's ``1 + K`` texts (``input_ids`` (B, 1+K, L),
    the true text first); ``accuracy`` = share of images whose true text scores highest."""

    metric = "accuracy"
    keys = ("input_ids", "attention_mask", "pixel_values")

    def __call__(self, model: nn.Module, batch: Mapping[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        _need(batch, self.keys, type(self).__name__)
        out = model(batch["input_ids"], batch["attention_mask"], batch["pixel_values"], _pixel_mask(batch))
        loss = irtr_loss(out.logits)
        acc = (out.logits.detach().argmax(-1) == 0).float().mean()
        return loss, {"accuracy": acc}


# ------------------------------------------------------------------------------ recipes


@dataclass(frozen=True)
class FinetuneRecipe:
    """Hyper-parameters of a fine-tuning run.

    ``steps`` (when set) wins over ``epochs``; ``warmup`` is a fraction of the steps when a
    float < 1, else a number of steps.  ``image_size`` None keeps the pretrained model's.
    ``clip`` 0 disables gradient clipping.  ``false_texts``: IRTR false captions per image.
    """

    lr: float
    batch_size: int
    epochs: float
    warmup: float | int
    weight_decay: float
    head_lr_mult: float
    cross_modal_lr_mult: float
    image_size: int | None = None
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-8
    max_text_len: int = 50
    clip: float = 0.0
    false_texts: int = 15
    steps: int | None = None

    def replace(self, **overrides: Any) -> FinetuneRecipe:
        unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise ValueError(f"unknown recipe fields {unknown}; valid: {[f.name for f in dataclasses.fields(self)]}")
        return dataclasses.replace(self, **{k: v for k, v in overrides.items() if v is not None})


#: The published base-model fine-tuning recipes (official ``scripts/ftfpt_base_*.sh``):
#: learning rate, global batch, epochs, warm-up fraction, weight decay, head and cross-modal
#: lr multipliers, image size.
OFFICIAL_RECIPES: dict[str, FinetuneRecipe] = {
    "vqa": FinetuneRecipe(lr=1e-5, batch_size=512, epochs=10, warmup=0.06, weight_decay=0.05,
                          head_lr_mult=50, cross_modal_lr_mult=5, image_size=576),
    "nlvr2": FinetuneRecipe(lr=5e-6, batch_size=64, epochs=10, warmup=0.1, weight_decay=0.008,
                            head_lr_mult=10, cross_modal_lr_mult=5, image_size=384),
    "snli-ve": FinetuneRecipe(lr=3e-6, batch_size=64, epochs=5, warmup=0.06, weight_decay=0.01,
                              head_lr_mult=10, cross_modal_lr_mult=5, image_size=384),
    "irtr": FinetuneRecipe(lr=1.1e-5, batch_size=2048, epochs=20, warmup=0.1, weight_decay=0.01,
                           head_lr_mult=5, cross_modal_lr_mult=5, image_size=384, false_texts=15),
}

#: Short runs of the tiny model on the bundled synthetic sets (2-core CPU, about a minute;
#: NLVR2-style about four).
SYNTHETIC_RECIPES: dict[str, FinetuneRecipe] = {
    "vqa": FinetuneRecipe(lr=2e-4, batch_size=32, epochs=1, steps=200, warmup=0.1, weight_decay=0.01,
                          head_lr_mult=10, cross_modal_lr_mult=5, clip=1.0),
    # 600 steps: two images per item and a binary label; in 200 steps neither the pretrained
    # nor the scratch model gets past chance (README, downstream section)
    "nlvr2": FinetuneRecipe(lr=2e-4, batch_size=32, epochs=1, steps=600, warmup=0.1, weight_decay=0.01,
                            head_lr_mult=10, cross_modal_lr_mult=5, clip=1.0),
    "snli-ve": FinetuneRecipe(lr=2e-4, batch_size=32, epochs=1, steps=200, warmup=0.1, weight_decay=0.01,
                              head_lr_mult=10, cross_modal_lr_mult=5, clip=1.0),
    "irtr": FinetuneRecipe(lr=2e-4, batch_size=8, epochs=1, steps=150, warmup=0.1, weight_decay=0.01,
                           head_lr_mult=5, cross_modal_lr_mult=5, clip=1.0, false_texts=7),
}


# ------------------------------------------------------------------------------ registry


@dataclass
class TaskSpec:
    """Everything :func:`finetune` needs to know about a task.

    Attributes:
        name: the CLI name (``bridgetower finetune NAME``).
        model_cls: the task model class.
        objective: a zero-argument factory of the objective (``metric`` attribute: the key of
            the held-out metric in its metrics).
        synthetic: ``synthetic(size, *, seed, transform, tokenizer, max_length, recipe, config)`` ->
            a map-style dataset of the bundled scenes, or ``None``.
        arrow: ``arrow(paths, *, transform, tokenizer, max_length, recipe, num_answers)`` -> an
            official-table dataset, or ``None``.
        collate: ``collate(tokenizer, max_length, recipe)`` -> the collate function.
        config_overrides: ``config_overrides(num_answers)`` -> model config overrides.
        init_from_source: ``init_from_source(model, source_model)`` after the encoder copy
            (e.g. the IRTR head from the ITM head), or ``None``.
        description: one line for ``--help``.
        build_model: ``build_model(*, pretrained, config, vocab_size, image_size, num_answers)``
            -> ``(model, report)`` replacing :func:`build_task_model`'s encoder copy (e.g. a
            model with one tower), or ``None``.
        head_prefixes: extra parameter-name prefixes that get the head learning rate.
    """

    name: str
    model_cls: type
    objective: Callable[[], Callable]
    synthetic: Callable[..., Any] | None
    arrow: Callable[..., Any] | None
    collate: Callable[..., Callable]
    config_overrides: Callable[[int | None], dict] = field(default=lambda num_answers: {})
    init_from_source: Callable[[nn.Module, nn.Module], None] | None = None
    description: str = ""
    build_model: Callable[..., tuple[nn.Module, dict]] | None = None
    head_prefixes: tuple[str, ...] = ()


TASKS: dict[str, TaskSpec] = {}


def register_task(spec: TaskSpec, *, overwrite: bool = False) -> TaskSpec:
    """Add ``spec`` to :data:`TASKS` (``overwrite`` to replace an existing name)."""
    if not isinstance(spec, TaskSpec):
        raise TypeError(f"register_task expects a TaskSpec, got {type(spec).__name__}")
    if spec.name in TASKS and not overwrite:
        raise ValueError(f"task {spec.name!r} is already registered (pass overwrite=True to replace it)")
    TASKS[spec.name] = spec
    return spec


def get_task(name: str) -> TaskSpec:
    """The registered task ``name``; an unknown name is a ``ValueError`` listing the tasks."""
    key = name.replace("_", "-") if isinstance(name, str) else name
    if key not in TASKS:
        raise ValueError(f"unknown task {name!r}; registered tasks: {sorted(TASKS)}")
    return TASKS[key]


def _task_collator(tokenizer, max_length: int, recipe: FinetuneRecipe):
    from ..data import PretrainingCollator, TaskCollator

    return TaskCollator(PretrainingCollator.from_tokenizer(tokenizer, max_length=max_length))


def _irtr_collator(tokenizer, max_length: int, recipe: FinetuneRecipe):
    from ..data.downstream import IRTRCollator

    return IRTRCollator(tokenizer.pad_token_id)


def _register_builtin_tasks() -> None:
    from ..data import arrow as A
    from ..data import downstream as D
    from ..models.tasks import (
        BridgeTowerForIRTR,
        BridgeTowerForNLVR2,
        BridgeTowerForSNLIVE,
        BridgeTowerForVisualQuestionAnswering,
    )

    def syn(cls, **extra):
        def build(size, *, seed, transform, tokenizer, max_length, recipe, config=None):
            kw = {k: (v(recipe) if callable(v) else v) for k, v in extra.items()}
            return cls(size, seed=seed, config=config, transform=transform, tokenizer=tokenizer,
                       max_length=max_length, **kw)

        return build

    def arr(cls, vqa=False):
        def build(paths, *, transform, tokenizer, max_length, recipe, num_answers=None):
            kw = {"num_answers": num_answers} if vqa else {}
            return cls(paths, transform=transform, tokenizer=tokenizer, max_length=max_length, **kw)

        return build

    def irtr_arrow(paths, *, transform, tokenizer, max_length, recipe, num_answers=None):
        base = A.ArrowRetrievalDataset(paths, transform=transform, tokenizer=tokenizer, max_length=max_length)
        return D.InStreamFalseTexts(base, num_false_texts=recipe.false_texts)

    def init_irtr(model, source):
        itm = getattr(source, "itm_score", None)
        if itm is not None and not isinstance(source, BridgeTowerForIRTR):
            model.init_from_itm(itm)
            logger.info("IRTR ranking head initialised from the ITM head's match row")

    register_task(TaskSpec(
        "vqa", BridgeTowerForVisualQuestionAnswering, VQAObjective,
        synthetic=syn(D.SceneVQADataset), arrow=arr(A.ArrowVQADataset, vqa=True), collate=_task_collator,
        config_overrides=lambda num_answers: {"vqa_num_labels": num_answers} if num_answers else {},
        description="visual question answering: soft-score BCE over an answer vocabulary",
    ), overwrite=True)
    register_task(TaskSpec(
        "nlvr2", BridgeTowerForNLVR2, NLVR2Objective,
        synthetic=syn(D.SceneNLVR2Dataset), arrow=arr(A.ArrowNLVR2Dataset), collate=_task_collator,
        description="a statement about two images, true or false (image token types 1 and 2)",
    ), overwrite=True)
    register_task(TaskSpec(
        "snli-ve", BridgeTowerForSNLIVE, SNLIVEObjective,
        synthetic=syn(D.SceneSNLIVEDataset), arrow=arr(A.ArrowSNLIVEDataset), collate=_task_collator,
        description="visual entailment: contradiction / neutral / entailment of a hypothesis",
    ), overwrite=True)
    register_task(TaskSpec(
        "irtr", BridgeTowerForIRTR, IRTRObjective,
        synthetic=syn(D.SceneIRTRDataset, num_false_texts=lambda r: r.false_texts), arrow=irtr_arrow,
        collate=_irtr_collator, init_from_source=init_irtr,
        description="image-text retrieval ranking: each image against its caption and K false ones",
    ), overwrite=True)


_register_builtin_tasks()


# ------------------------------------------------------------------------------ models


def resolve_model_dir(path: str | Path) -> Path:
    """A saved model directory: ``path`` itself, its ``model/`` (a run output dir), or the
    newest checkpoint under it.  ``FileNotFoundError`` otherwise."""
    path = Path(path)
    for cand in (path, path / "model"):
        if (cand / "config.json").is_file() and any(cand.glob("*.safetensors")):
            return cand
    from .checkpoint import find_checkpoint

    try:
        return find_checkpoint(path)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"no model at {str(path)!r}: expected config.json + *.safetensors, a model/ folder or a "
            "checkpoints/ folder (train one with `bridgetower pretrain`)"
        ) from None


def _load_source(pretrained: str | Path | nn.Module, overrides: Mapping[str, Any]) -> nn.Module:
    from ..models.tasks import TASK_MODELS, BridgeTowerForPretraining

    if isinstance(pretrained, nn.Module):
        return pretrained
    p = Path(pretrained)
    if p.is_dir():
        p = resolve_model_dir(p)
        meta = json.loads((p / "config.json").read_text())
        cls = TASK_MODELS.get(meta.get("task"), BridgeTowerForPretraining) if "format" in meta else BridgeTowerForPretraining
        strict = "format" in meta
    else:
        cls, strict = BridgeTowerForPretraining, False
    return cls.from_pretrained(p, strict=strict, **dict(overrides))


@torch.no_grad()
def load_pretrained_encoder(model: nn.Module, source: nn.Module) -> dict[str, list[str]]:
    """Copy the encoder (``bridgetower.*``) of ``source`` into ``model``, adapting two tables:

    * the text word embeddings when ``model`` has more rows (an extended tokenizer): the first
      rows are copied, the new ones keep their initialisation;
    * the modality token types when ``model`` has 3 rows (NLVR2) and ``source`` 2: rows 0 and 1
      are copied and row 2 is set to row 1.

    When ``source`` is of ``model``'s own class its task head is copied too.  Any other shape
    difference, or a missing / unexpected key, is a ``ValueError``.  Returns a report
    ``{"copied": [...], "extended": [...], "head": [...]}``.
    """
    src, dst = source.bridgetower.state_dict(), model.bridgetower.state_dict()
    missing = sorted(set(dst) - set(src))
    unexpected = sorted(set(src) - set(dst))
    if missing or unexpected:
        raise ValueError(
            f"the pretrained encoder does not match the task model: missing {missing[:8]}, unexpected {unexpected[:8]}"
        )
    report: dict[str, list[str]] = {"copied": [], "extended": [], "head": []}
    bad = []
    for key, want in dst.items():
        have = src[key]
        if have.shape == want.shape:
            want.copy_(have)
            report["copied"].append(key)
        elif key.endswith("word_embeddings.weight") and have.shape[1:] == want.shape[1:] and have.shape[0] < want.shape[0]:
            want[: have.shape[0]].copy_(have)
            report["extended"].append(f"{key}: rows {have.shape[0]} -> {want.shape[0]}")
        elif key == "token_type_embeddings.weight" and have.shape[0] == 2 and want.shape[0] == 3 and have.shape[1:] == want.shape[1:]:
            want[:2].copy_(have)
            want[2].copy_(have[1])
            report["extended"].append(f"{key}: row 2 = row 1")
        else:
            bad.append((key, tuple(have.shape), tuple(want.shape)))
    if bad:
        raise ValueError(f"shape mismatches between the pretrained encoder and the task model: {bad[:8]}")
    if type(source) is type(model):
        own = {k: v for k, v in source.state_dict().items() if not k.startswith("bridgetower.")}
        model.load_state_dict({**model.state_dict(), **own})
        report["head"] = sorted(own)
    return report


def build_task_model(
    task: str | TaskSpec,
    *,
    pretrained: str | Path | nn.Module | None = None,
    config: Any = None,
    vocab_size: int | None = None,
    image_size: int | None = None,
    num_answers: int | None = None,
) -> tuple[nn.Module, dict]:
    """The task model, from ``pretrained`` (a saved model directory / run output dir / HF or
    official checkpoint, or an in-memory model) or from scratch (``config``, a
    :class:`~bridgetower.models.BridgeTowerConfig` or a configuration name).

    ``vocab_size`` sets the text vocabulary (extended embedding rows, see
    :func:`load_pretrained_encoder`); ``image_size`` the image size (position tables of a
    pretrained model are resized); ``num_answers`` the VQA answer vocabulary.
    Returns ``(model, report)``.
    """
    from ..models import BridgeTowerConfig, get_config

    spec = task if isinstance(task, TaskSpec) else get_task(task)
    if spec.build_model is not None:
        return spec.build_model(
            pretrained=pretrained, config=config, vocab_size=vocab_size, image_size=image_size, num_answers=num_answers
        )
    overrides: dict[str, Any] = dict(spec.config_overrides(num_answers))
    report: dict[str, Any] = {"pretrained": None}
    if pretrained is not None:
        load_over = {"vision.image_size": image_size} if image_size else {}
        source = _load_source(pretrained, load_over)
        base = source.config
        if vocab_size is not None:
            if vocab_size < base.text.vocab_size:
                raise ValueError(
                    f"vocab_size {vocab_size} is smaller than the pretrained vocabulary ({base.text.vocab_size})"
                )
            overrides["text.vocab_size"] = vocab_size
        model = spec.model_cls(base.replace(**overrides))
        report.update(load_pretrained_encoder(model, source))
        report["pretrained"] = str(pretrained) if not isinstance(pretrained, nn.Module) else type(pretrained).__name__
        if spec.init_from_source is not None:
            spec.init_from_source(model, source)
        return model, report
    if config is None:
        raise ValueError("build_task_model: give a pretrained checkpoint or a config to train from scratch")
    if isinstance(config, str):
        config = get_config(config)
    if not isinstance(config, BridgeTowerConfig):
        raise TypeError(f"config must be a BridgeTowerConfig or a name, got {type(config).__name__}")
    if vocab_size is not None:
        overrides["text.vocab_size"] = vocab_size
    if image_size:
        overrides["vision.image_size"] = image_size
    return spec.model_cls(config.replace(**overrides)), report


# ------------------------------------------------------------------------------ evaluation


class TaskEvaluator:
    """Held-out loss and metric of a task: ``evaluator(model) -> {"loss", metric, ...}``.

    The held-out batches are collated once (``batches``) and averaged per sample.  With
    ``retrieval`` (a dict from :func:`~bridgetower.data.downstream.scene_retrieval_set`) the
    recall@k of :func:`~bridgetower.training.retrieval.evaluate_retrieval` are added.
    """

    def __init__(
        self,
        objective: Callable,
        batches: Sequence[Mapping[str, Any]],
        *,
        retrieval: Mapping[str, Any] | None = None,
        retrieval_k: int = 128,
    ) -> None:
        self.objective = objective
        self.batches = list(batches)
        if not self.batches:
            raise ValueError("TaskEvaluator needs at least one held-out batch")
        self.retrieval = retrieval
        self.retrieval_k = retrieval_k

    @torch.no_grad()
    def __call__(self, model: nn.Module) -> dict[str, float]:
        from .retrieval import evaluate_retrieval
        from .trainer import move_to_device

        dev = next(model.parameters()).device
        was_training = model.training
        model.eval()
        try:
            sums: dict[str, float] = {}
            n = 0
            for batch in self.batches:
                b = int(next(batch[k] for k in ("pixel_values", "input_ids", "labels") if k in batch).shape[0])
                loss, metrics = self.objective(model, move_to_device(batch, dev))
                sums["loss"] = sums.get("loss", 0.0) + float(loss) * b
                for k, v in metrics.items():
                    sums[k] = sums.get(k, 0.0) + float(v) * b
                n += b
            out = {k: v / n for k, v in sums.items()}
            if self.retrieval is not None:
                r = self.retrieval
                rec = evaluate_retrieval(
                    model, r["pixel_values"], r["input_ids"], r["attention_mask"], r["text_image"],
                    k=self.retrieval_k,
                )
                out.update({k: v for k, v in rec.items() if k != "num_fused"})
        finally:
            model.train(was_training)
        return out


# ------------------------------------------------------------------------------ finetune

#: Synthetic fine-tuning data come from scene stream ``SYNTHETIC_TRAIN_STREAM + seed``.
SYNTHETIC_TRAIN_STREAM = 5_000_011


def _steps_for(recipe: FinetuneRecipe, dataset: Any) -> int:
    if recipe.steps is not None:
        return int(recipe.steps)
    if not hasattr(dataset, "__len__"):
        raise ValueError("the training data is a stream without a length: give the number of steps")
    return max(1, math.ceil(recipe.epochs * len(dataset) / recipe.batch_size))


def finetune(
    task: str,
    output_dir: str | Path,
    *,
    pretrained: str | Path | nn.Module | None = None,
    model: str = "bridgetower-tiny",
    recipe: FinetuneRecipe | None = None,
    train_data: Sequence[str] | None = None,
    val_data: Sequence[str] | None = None,
    tokenizer: Any = None,
    num_answers: int | None = None,
    train_size: int = 100_000,
    eval_size: int = 512,
    retrieval_eval_size: int = 64,
    seed: int = 0,
    eval_seed: int = 3_000_017,
    device: str = "cpu",
    precision: str = "fp32",
    log_every: int = 25,
    eval_every: int = 0,
    eval_batch_size: int = 64,
    checkpoint_every: int = 0,
    resume: bool = False,
    progress: bool | None = None,
    trackers: str | Sequence[str] | None = None,
) -> dict[str, Any]:
    """Fine-tune ``task`` and return a summary (also written to ``finetune_summary.json``).

    Data: the bundled synthetic scenes by default (``train_size`` training items of stream
    ``SYNTHETIC_TRAIN_STREAM + seed``, scenes the demo's pretraining (stream ``seed``) never
    drew; ``eval_size`` held-out items of stream ``eval_seed``); or official pyarrow
    tables (``train_data`` paths; ``val_data`` for held-out evaluation).  Model: from
    ``pretrained`` (see :func:`build_task_model`), else from scratch with the configuration
    ``model``.  Tokenizer: the one saved with ``pretrained`` (extended with the synthetic
    sets' words for synthetic data), else built from the synthetic vocabulary; tables need
    ``tokenizer`` (a ``transformers`` tokenizer or a directory) unless the pretrained
    checkpoint has one.  ``recipe`` default: :data:`SYNTHETIC_RECIPES` for synthetic data,
    :data:`OFFICIAL_RECIPES` for tables.

    The output directory receives the :class:`~bridgetower.training.trainer.Trainer`'s
    checkpoints, ``metrics.jsonl``/``.csv`` (train and eval records), the final model and
    tokenizer in ``model/``, ``run_config.json`` and ``finetune_summary.json`` (held-out
    metrics before and after).  ``trackers``: experiment trackers (``"tensorboard"``,
    ``"wandb"``, see :mod:`~bridgetower.training.tracking`) besides the JSONL/CSV log.
    """
    from ..data import ImageTransform
    from ..data.downstream import build_downstream_tokenizer, scene_retrieval_set
    from .optim import build_optimizer, build_scheduler, describe_param_groups
    from .stream import BatchStream
    from .trainer import Trainer, TrainerConfig, seed_everything

    spec = get_task(task)
    synthetic = train_data is None
    recipe = recipe or (SYNTHETIC_RECIPES if synthetic else OFFICIAL_RECIPES)[spec.name]
    out_dir = Path(output_dir)
    t0 = time.perf_counter()

    # tokenizer
    src_tok = None
    if pretrained is not None and not isinstance(pretrained, nn.Module):
        try:
            mdir = resolve_model_dir(pretrained)
        except FileNotFoundError:
            mdir = None
        if mdir is not None and ((mdir / "tokenizer.json").is_file() or (mdir / "tokenizer_config.json").is_file()):
            from transformers import AutoTokenizer

            src_tok = AutoTokenizer.from_pretrained(str(mdir))
    if isinstance(tokenizer, (str, Path)):
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(tokenizer))
    if tokenizer is None:
        if synthetic:
            try:
                tokenizer = build_downstream_tokenizer(src_tok, model_max_length=recipe.max_text_len)
            except ValueError:  # not a word-level tokenizer (e.g. RoBERTa's BPE): it reads any word
                tokenizer = src_tok
        elif src_tok is not None:
            tokenizer = src_tok
        else:
            raise ValueError("fine-tuning on tables needs a tokenizer (none given, none saved with the checkpoint)")
    if synthetic:
        from ..data.downstream import VQA_ANSWERS

        num_answers = len(VQA_ANSWERS) if spec.name == "vqa" else num_answers
    elif spec.name == "vqa" and num_answers is None:
        num_answers = 3129

    # model
    seed_everything(seed)
    net, load_report = build_task_model(
        spec, pretrained=pretrained, config=model, vocab_size=len(tokenizer),
        image_size=recipe.image_size, num_answers=num_answers,
    )
    image_size = net.config.vision.image_size
    if recipe.max_text_len + 2 > net.config.text.max_position_embeddings:
        raise ValueError(
            f"max_text_len {recipe.max_text_len} does not fit the model's {net.config.text.max_position_embeddings} positions"
        )
    transform = ImageTransform(image_size)

    # data
    data_kw = {"transform": transform, "tokenizer": tokenizer, "max_length": recipe.max_text_len, "recipe": recipe}
    if synthetic:
        if spec.synthetic is None:
            raise ValueError(f"task {spec.name!r} has no synthetic data set; pass train_data")
        from ..data import SceneConfig

        scene_cfg = SceneConfig(image_size=image_size)
        train_set = spec.synthetic(train_size, seed=SYNTHETIC_TRAIN_STREAM + seed, config=scene_cfg, **data_kw)
        val_set = spec.synthetic(eval_size, seed=eval_seed, config=scene_cfg, **data_kw)
    else:
        if spec.arrow is None:
            raise ValueError(f"task {spec.name!r} cannot read official tables")
        train_set = spec.arrow(list(train_data), num_answers=num_answers, **data_kw)
        val_set = spec.arrow(list(val_data), num_answers=num_answers, **data_kw) if val_data else None
    collate = spec.collate(tokenizer, recipe.max_text_len, recipe)
    stream = BatchStream(train_set, collate, recipe.batch_size, seed=seed)
    steps = _steps_for(recipe, train_set)
    objective = spec.objective()
    evaluator = None
    if val_set is not None:
        batches, buf = [], []
        items = (val_set[i] for i in range(len(val_set))) if hasattr(val_set, "__len__") else iter(val_set)
        for s in items:
            buf.append(s)
            if len(buf) == eval_batch_size:
                batches.append(collate(buf))
                buf = []
        if buf:
            batches.append(collate(buf))
        retrieval = None
        if spec.name == "irtr" and synthetic and retrieval_eval_size:
            retrieval = scene_retrieval_set(
                retrieval_eval_size, seed=eval_seed + 1, config=SceneConfig(image_size=image_size),
                transform=transform, tokenizer=tokenizer, max_length=recipe.max_text_len,
            )
        evaluator = TaskEvaluator(objective, batches, retrieval=retrieval)

    from .optim import HEAD_PREFIXES

    optimizer = build_optimizer(
        net, lr=recipe.lr, betas=recipe.betas, eps=recipe.eps, weight_decay=recipe.weight_decay,
        cross_modal_multiplier=recipe.cross_modal_lr_mult, head_multiplier=recipe.head_lr_mult,
        head_prefixes=HEAD_PREFIXES + tuple(spec.head_prefixes),
    )
    warmup = recipe.warmup
    if isinstance(warmup, int) and warmup > steps:
        warmup = steps // 10
    scheduler = build_scheduler(optimizer, total_steps=steps, warmup=warmup)
    tcfg = TrainerConfig(
        output_dir=out_dir, max_steps=steps, max_grad_norm=recipe.clip or None, precision=precision,
        checkpoint_every=checkpoint_every, log_every=log_every, eval_every=eval_every, seed=seed,
        device=device, progress=progress, tensorboard=False, plot=False, trackers=trackers,
    )

    if not resume:  # a new run replaces an old one in the same directory
        import shutil

        if (out_dir / "metrics.jsonl").exists() or (out_dir / "checkpoints").exists():
            logger.warning("replacing the previous run in %s (pass resume=True to continue it)", out_dir)
        for name in ("checkpoints", "model"):
            shutil.rmtree(out_dir / name, ignore_errors=True)
        for name in ("metrics.jsonl", "metrics.csv", "finetune_summary.json"):
            (out_dir / name).unlink(missing_ok=True)

    def save_tokenizer(directory: Path) -> None:
        tokenizer.save_pretrained(str(directory))

    trainer = Trainer(net, objective, optimizer, stream, tcfg, scheduler=scheduler, eval_fn=evaluator,
                      extra_save=save_tokenizer)
    run_config = {
        "task": spec.name,
        "pretrained": None if pretrained is None else str(pretrained),
        "model": None if pretrained is not None else model,
        "data": "synthetic scenes" if synthetic else list(train_data),
        "recipe": dataclasses.asdict(recipe),
        "steps": steps,
        "seed": seed,
        "parameters": sum(p.numel() for p in net.parameters()),
        "load": {k: (v if k != "copied" else len(v)) for k, v in load_report.items()},
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "run_config.json").write_text(json.dumps(run_config, indent=1, default=str) + "\n")
    logger.info("fine-tuning %s for %d steps (%s)", spec.name, steps, "pretrained" if pretrained else "from scratch")
    logger.info("parameter groups:\n%s", describe_param_groups(optimizer.param_groups))
    if resume:
        trainer.resume()
    t_train = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - t_train
    evals = [r for r in trainer.metrics.records if r["split"] == "eval"]
    strip = lambda r: {k: v for k, v in r.items() if k not in ("step", "split")}  # noqa: E731
    summary = {
        "task": spec.name,
        "pretrained": run_config["pretrained"],
        "steps": trainer.step,
        "metric": objective.metric,
        "before": strip(evals[0]) if evals and evals[0]["step"] == 0 else None,
        "after": strip(evals[-1]) if evals else None,
        "train_seconds": round(train_s, 1),
        "total_seconds": round(time.perf_counter() - t0, 1),
        "model_dir": str(out_dir / "model"),
    }
    (out_dir / "finetune_summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


from . import unimodal as _unimodal  # noqa: E402,F401  registers image-cls, text-cls, ... (imports this module)
