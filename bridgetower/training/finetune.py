"""Fine-tuning a registered task: :func:`finetune`, the driver behind ``bridgetower finetune``.

The pieces live in their own modules and are re-exported here: the task registry
(:mod:`~bridgetower.training.tasks`: :class:`TaskSpec`, :data:`TASKS`, :func:`get_task`,
:func:`register_task`), the recipes (:mod:`~bridgetower.training.recipes`:
:class:`FinetuneRecipe`, :data:`OFFICIAL_RECIPES`, :data:`SYNTHETIC_RECIPES`), the objectives
(:mod:`~bridgetower.training.task_objectives`) and the model building with the pretrained
encoder copy (:mod:`~bridgetower.training.task_models`).  This module holds what joins them:
:func:`build_task_model`, :func:`build_finetune_optimizer`, :class:`TaskEvaluator` and the
driver.

The official recipes use AdamW (betas 0.9/0.98, eps 1e-8) with a larger learning rate for the
heads and the cross-modal part (the model declares which parameter is which) and linear
warm-up then decay; the synthetic recipes are short CPU runs on the bundled scenes.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .recipes import OFFICIAL_RECIPES, SYNTHETIC_RECIPES, FinetuneRecipe
from .run import (
    ArgumentError,
    clear_previous_run,
    eval_before_after,
    resolve_model_dir,
    saved_tokenizer,
    tokenizer_saver,
    write_json,
)
from .task_models import build_pair_task_model, load_pretrained_encoder
from .task_objectives import IRTRObjective, NLVR2Objective, SNLIVEObjective, VQAObjective
from .tasks import TASKS, TaskSpec, get_task, register_task

logger = logging.getLogger(__name__)

__all__ = [
    "FINETUNE_RUN_FILES",
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
    "build_finetune_optimizer",
    "build_task_model",
    "finetune",
    "get_task",
    "load_pretrained_encoder",
    "register_task",
    "resolve_model_dir",
]

#: Synthetic fine-tuning data come from scene stream ``SYNTHETIC_TRAIN_STREAM + seed``.
SYNTHETIC_TRAIN_STREAM = 5_000_011

#: What a new fine-tuning run removes from its output directory (``remove``), and what tells
#: that a previous run was there (``detect``).
FINETUNE_RUN_FILES: dict[str, tuple[str, ...]] = {
    "remove": ("checkpoints", "model", "metrics.jsonl", "metrics.csv", "finetune_summary.json"),
    "detect": ("metrics.jsonl", "checkpoints"),
}


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
    spec = task if isinstance(task, TaskSpec) else get_task(task)
    if spec.build_model is not None:
        return spec.build_model(
            pretrained=pretrained, config=config, vocab_size=vocab_size, image_size=image_size, num_answers=num_answers
        )
    return build_pair_task_model(
        spec.model_cls, pretrained=pretrained, config=config, vocab_size=vocab_size, image_size=image_size,
        overrides=spec.config_overrides(num_answers), init_from_source=spec.init_from_source,
    )


def build_finetune_optimizer(model: nn.Module, recipe: FinetuneRecipe) -> torch.optim.Optimizer:
    """AdamW over the model's declared parameter groups: ``recipe.lr`` for the towers,
    ``head_lr_mult`` / ``cross_modal_lr_mult`` times it for the heads / the cross-modal
    part, no weight decay on biases and norms (:func:`~bridgetower.training.optim.build_optimizer`)."""
    from .optim import build_optimizer

    return build_optimizer(
        model, lr=recipe.lr, betas=recipe.betas, eps=recipe.eps, weight_decay=recipe.weight_decay,
        cross_modal_multiplier=recipe.cross_modal_lr_mult, head_multiplier=recipe.head_lr_mult,
    )


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


def _steps_for(recipe: FinetuneRecipe, dataset: Any) -> int:
    if recipe.steps is not None:
        return int(recipe.steps)
    if not hasattr(dataset, "__len__"):
        raise ValueError("the training data is a stream without a length: give the number of steps")
    return max(1, math.ceil(recipe.epochs * len(dataset) / recipe.batch_size))


def _task_tokenizer(tokenizer: Any, pretrained: Any, *, synthetic: bool, max_len: int) -> Any:
    """The tokenizer of the run: ``tokenizer`` (an object or a directory); else the one saved
    with ``pretrained`` (extended with the synthetic sets' words for synthetic data); else
    the synthetic vocabulary's."""
    src_tok = None
    if pretrained is not None and not isinstance(pretrained, nn.Module):
        try:
            src_tok = saved_tokenizer(resolve_model_dir(pretrained))
        except FileNotFoundError:
            src_tok = None
    if isinstance(tokenizer, (str, Path)):
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(tokenizer))
    if tokenizer is not None:
        return tokenizer
    if synthetic:
        from ..data.downstream import build_downstream_tokenizer

        try:
            return build_downstream_tokenizer(src_tok, model_max_length=max_len)
        except ValueError:  # not a word-level tokenizer (e.g. RoBERTa's BPE): it reads any word
            return src_tok
    if src_tok is None:
        raise ValueError("fine-tuning on tables needs a tokenizer (none given, none saved with the checkpoint)")
    return src_tok


def _held_out_batches(val_set: Any, collate: Callable, batch_size: int) -> list:
    batches, buf = [], []
    items = (val_set[i] for i in range(len(val_set))) if hasattr(val_set, "__len__") else iter(val_set)
    for s in items:
        buf.append(s)
        if len(buf) == batch_size:
            batches.append(collate(buf))
            buf = []
    if buf:
        batches.append(collate(buf))
    return batches


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
    metrics before and after); a new run (``resume=False``) replaces a previous one there.
    ``trackers``: experiment trackers (``"tensorboard"``, ``"wandb"``, see
    :mod:`~bridgetower.training.tracking`) besides the JSONL/CSV log; one whose package is
    not installed is an :class:`~bridgetower.training.run.ArgumentError` about ``trackers``.
    """
    from ..data import ImageTransform, SceneConfig
    from .optim import build_scheduler, describe_param_groups
    from .stream import BatchStream
    from .tracking import TrackerUnavailableError
    from .trainer import Trainer, TrainerConfig, seed_everything

    spec = get_task(task)
    synthetic = train_data is None
    recipe = recipe or (SYNTHETIC_RECIPES if synthetic else OFFICIAL_RECIPES)[spec.name]
    out_dir = Path(output_dir)
    t0 = time.perf_counter()
    tokenizer = _task_tokenizer(tokenizer, pretrained, synthetic=synthetic, max_len=recipe.max_text_len)
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
        retrieval = None
        if spec.name == "irtr" and synthetic and retrieval_eval_size:
            from ..data.downstream import scene_retrieval_set

            retrieval = scene_retrieval_set(
                retrieval_eval_size, seed=eval_seed + 1, config=SceneConfig(image_size=image_size),
                transform=transform, tokenizer=tokenizer, max_length=recipe.max_text_len,
            )
        evaluator = TaskEvaluator(objective, _held_out_batches(val_set, collate, eval_batch_size), retrieval=retrieval)

    optimizer = build_finetune_optimizer(net, recipe)
    warmup = recipe.warmup
    if isinstance(warmup, int) and warmup > steps:
        warmup = steps // 10
    scheduler = build_scheduler(optimizer, total_steps=steps, warmup=warmup)
    tcfg = TrainerConfig(
        output_dir=out_dir, max_steps=steps, max_grad_norm=recipe.clip or None, precision=precision,
        checkpoint_every=checkpoint_every, log_every=log_every, eval_every=eval_every, seed=seed,
        device=device, progress=progress, plot=False, trackers=trackers,
    )
    if not resume:  # a new run replaces an old one in the same directory
        clear_previous_run(out_dir, **FINETUNE_RUN_FILES, resume_hint="pass resume=True to continue it")
    try:
        trainer = Trainer(net, objective, optimizer, stream, tcfg, scheduler=scheduler, eval_fn=evaluator,
                          extra_save=tokenizer_saver(tokenizer))
    except TrackerUnavailableError as e:
        raise ArgumentError("trackers", str(e)) from None
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
    write_json(out_dir / "run_config.json", run_config)
    logger.info("fine-tuning %s for %d steps (%s)", spec.name, steps, "pretrained" if pretrained else "from scratch")
    logger.info("parameter groups:\n%s", describe_param_groups(optimizer.param_groups))
    if resume:
        trainer.resume()
    t_train = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - t_train
    before, after = eval_before_after(trainer.metrics.records)
    summary = {
        "task": spec.name,
        "pretrained": run_config["pretrained"],
        "steps": trainer.step,
        "metric": objective.metric,
        "before": before,
        "after": after,
        "train_seconds": round(train_s, 1),
        "total_seconds": round(time.perf_counter() - t0, 1),
        "model_dir": str(out_dir / "model"),
    }
    write_json(out_dir / "finetune_summary.json", summary)
    return summary
