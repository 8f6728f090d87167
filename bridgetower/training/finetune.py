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
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .recipes import OFFICIAL_RECIPES, SYNTHETIC_RECIPES, FinetuneRecipe
from .run import (
    RUN_CONFIG,
    ArgumentError,
    check_output_dir,
    eval_before_after,
    load_run_config,
    record_resume,
    replace_previous_run,
    resolve_model_dir,
    resume_settings,
    saved_tokenizer,
    tokenizer_saver,
    write_json,
)
from .task_models import build_pair_task_model, load_pretrained_encoder
from .task_objectives import IRTRObjective, NLVR2Objective, SNLIVEObjective, VQAObjective
from .tasks import TASKS, TaskSpec, get_task, register_task

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
    "build_finetune_optimizer",
    "build_task_model",
    "finetune",
    "get_task",
    "load_pretrained_encoder",
    "register_task",
    "resolve_model_dir",
    "run_finetune_recipe",
]

#: Synthetic fine-tuning data come from scene stream ``SYNTHETIC_TRAIN_STREAM + seed``.
SYNTHETIC_TRAIN_STREAM = 5_000_011



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


def run_finetune_recipe(output_dir: str | Path) -> FinetuneRecipe | None:
    """The recipe a fine-tuning run in ``output_dir`` was started with (``None`` without a
    readable ``run_config.json``): what ``resume`` continues with."""
    return _recipe_of(load_run_config(output_dir))


def _recipe_of(run: dict[str, Any] | None) -> FinetuneRecipe | None:
    from .recipes import recipe_from_dict

    if not run or not isinstance(run.get("recipe"), dict):
        return None
    try:
        return recipe_from_dict(FinetuneRecipe, run["recipe"])
    except ValueError as e:
        raise ArgumentError("resume", f"the run's run_config.json: {e}") from None


#: The defaults of the settings a fine-tuning run records (``None`` arguments take these).
_DEFAULTS: dict[str, Any] = {
    "model": "bridgetower-tiny", "train_size": 100_000, "eval_size": 512, "retrieval_eval_size": 64, "seed": 0,
    "eval_seed": 3_000_017, "precision": "fp32", "log_every": 25, "eval_every": 0, "eval_batch_size": 64,
    "checkpoint_every": 0,
}


def _paths(paths: Sequence[str] | None) -> list[str] | None:
    return None if paths is None else [os.path.abspath(p) for p in paths]


def finetune(
    task: str,
    output_dir: str | Path,
    *,
    pretrained: str | Path | nn.Module | None = None,
    model: str | None = None,
    recipe: FinetuneRecipe | None = None,
    train_data: Sequence[str] | None = None,
    val_data: Sequence[str] | None = None,
    tokenizer: Any = None,
    num_answers: int | None = None,
    train_size: int | None = None,
    eval_size: int | None = None,
    retrieval_eval_size: int | None = None,
    seed: int | None = None,
    eval_seed: int | None = None,
    device: str = "cpu",
    precision: str | None = None,
    log_every: int | None = None,
    eval_every: int | None = None,
    eval_batch_size: int | None = None,
    checkpoint_every: int | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool | None = None,
    trackers: str | Sequence[str] | None = None,
    augment: str | None = None,
    num_workers: int = 0,
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
    :data:`OFFICIAL_RECIPES` for tables.  ``None`` for the other settings takes the defaults
    of :data:`_DEFAULTS` (``train_size`` 100000, ``eval_size`` 512, ``seed`` 0 ...).

    The output directory receives the :class:`~bridgetower.training.trainer.Trainer`'s
    checkpoints, ``metrics.jsonl``/``.csv`` (train and eval records), the final model and
    tokenizer in ``model/``, ``run_config.json`` and ``finetune_summary.json`` (held-out
    metrics before and after, the samples skipped per reason).  A previous run there is kept:
    a new run refuses to start over it unless ``overwrite`` (only the library's files are
    removed, after every other argument has been checked); ``resume=True`` continues it from
    its newest usable checkpoint with the run's own settings (recipe, data, model, seed ...:
    one given again must agree, or it is an :class:`~bridgetower.training.run.ArgumentError`
    naming it; device and trackers may change, recorded in ``run_config.json``).
    ``trackers``: experiment trackers (``"tensorboard"``, ``"wandb"``, see
    :mod:`~bridgetower.training.tracking`) besides the JSONL/CSV log; one whose package is
    not installed is an :class:`~bridgetower.training.run.ArgumentError` about ``trackers``.
    """
    from ..data import ImageTransform, SceneConfig
    from .checkpoint import checkpoint_candidates, find_checkpoint
    from .optim import build_scheduler, describe_param_groups
    from .stream import BatchStream
    from .tracking import TrackerUnavailableError, check_trackers
    from .trainer import Trainer, TrainerConfig, seed_everything

    spec = get_task(task)
    out_dir = Path(output_dir)
    t0 = time.perf_counter()
    previous = check_output_dir(out_dir, resume=resume, overwrite=overwrite)
    run: dict[str, Any] = {}
    saved_tok = None
    if resume:
        try:
            find_checkpoint(out_dir)
        except FileNotFoundError as e:
            raise ArgumentError("resume", str(e)) from None
        run = load_run_config(out_dir) or {}
        if not run:
            logger.warning("no run_config.json in %s: the resumed run takes the arguments given", out_dir)
        if run.get("task", spec.name) != spec.name:
            raise ArgumentError("task", f"the run in {out_dir} fine-tunes {run['task']!r}, not {spec.name!r}")
        for cand in checkpoint_candidates(out_dir)[0]:
            try:
                saved_tok = saved_tokenizer(cand)
            except Exception as e:  # noqa: BLE001 - a damaged checkpoint: the next one
                logger.warning("cannot read the tokenizer of %s (%s)", cand, e)
            if saved_tok is not None:
                break
    in_memory = isinstance(pretrained, nn.Module)
    given = {"pretrained": None if pretrained is None or in_memory else os.path.abspath(pretrained),
             "model": model, "train_data": _paths(train_data), "val_data": _paths(val_data),
             "tokenizer": os.path.abspath(tokenizer) if isinstance(tokenizer, (str, Path)) else None,
             "num_answers": num_answers, "train_size": train_size, "eval_size": eval_size,
             "retrieval_eval_size": retrieval_eval_size, "seed": seed, "eval_seed": eval_seed, "precision": precision,
             "log_every": log_every, "eval_every": eval_every, "eval_batch_size": eval_batch_size,
             "checkpoint_every": checkpoint_every}
    recorded = _recipe_of(run)
    if recorded is not None:
        if recipe is not None:
            resume_settings(dataclasses.asdict(recorded), dataclasses.asdict(recipe))
        recipe = recorded
    cfg = resume_settings(run, given) if run else given
    cfg = {k: (_DEFAULTS[k] if v is None and k in _DEFAULTS else v) for k, v in cfg.items()}
    if not in_memory:
        pretrained = cfg["pretrained"]
    if resume and pretrained is not None and not in_memory and not Path(pretrained).exists():
        raise ArgumentError("pretrained", f"the run started from {pretrained!r}, which no longer exists")
    train_data, val_data, num_answers = cfg["train_data"], cfg["val_data"], cfg["num_answers"]
    synthetic = train_data is None
    recipe = recipe or (SYNTHETIC_RECIPES if synthetic else OFFICIAL_RECIPES)[spec.name]
    tokenizer = saved_tok or _task_tokenizer(cfg["tokenizer"] or tokenizer, pretrained, synthetic=synthetic,
                                             max_len=recipe.max_text_len)
    if synthetic:
        from ..data.downstream import VQA_ANSWERS

        num_answers = len(VQA_ANSWERS) if spec.name == "vqa" else num_answers
    elif spec.name == "vqa" and num_answers is None:
        num_answers = 3129

    # model
    seed = cfg["seed"]
    seed_everything(seed)
    net, load_report = build_task_model(
        spec, pretrained=pretrained, config=cfg["model"], vocab_size=len(tokenizer),
        image_size=recipe.image_size, num_answers=num_answers,
    )
    image_size = net.config.vision.image_size
    if recipe.max_text_len + 2 > net.config.text.max_position_embeddings:
        raise ValueError(
            f"max_text_len {recipe.max_text_len} does not fit the model's {net.config.text.max_position_embeddings} positions"
        )
    transform = ImageTransform(image_size)
    # training augmentation: the official recipe's on official tables (None / "official"),
    # none on the synthetic scenes (a flip would contradict their left/right captions)
    from ..data.transforms import AUGMENTATIONS, OFFICIAL_AUGMENTATION, AugmentedImageTransform

    kind = augment
    if kind in (None, "official"):
        kind = "none" if synthetic else OFFICIAL_AUGMENTATION.get(spec.name, "none")
    if kind not in AUGMENTATIONS:
        raise ArgumentError("augment", f"must be 'official' or one of {AUGMENTATIONS}, got {augment!r}")
    train_transform = transform if kind == "none" else AugmentedImageTransform(image_size, kind)
    logger.info("training augmentation: %s", kind)

    # data
    data_kw = {"transform": transform, "tokenizer": tokenizer, "max_length": recipe.max_text_len, "recipe": recipe}
    if synthetic:
        if spec.synthetic is None:
            raise ValueError(f"task {spec.name!r} has no synthetic data set; pass train_data")
        scene_cfg = SceneConfig(image_size=image_size)
        train_set = spec.synthetic(cfg["train_size"], seed=SYNTHETIC_TRAIN_STREAM + seed, config=scene_cfg,
                                   **{**data_kw, "transform": train_transform})
        val_set = spec.synthetic(cfg["eval_size"], seed=cfg["eval_seed"], config=scene_cfg, **data_kw)
    else:
        if spec.arrow is None:
            raise ValueError(f"task {spec.name!r} cannot read official tables")
        train_set = spec.arrow(list(train_data), num_answers=num_answers, **{**data_kw, "transform": train_transform})
        val_set = spec.arrow(list(val_data), num_answers=num_answers, **data_kw) if val_data else None
    collate = spec.collate(tokenizer, recipe.max_text_len, recipe)
    stream = BatchStream(train_set, collate, recipe.batch_size, seed=seed, num_workers=num_workers)
    steps = _steps_for(recipe, train_set)
    objective = spec.objective()
    evaluator = None
    if val_set is not None:
        retrieval = None
        if spec.name == "irtr" and synthetic and cfg["retrieval_eval_size"]:
            from ..data.downstream import scene_retrieval_set

            retrieval = scene_retrieval_set(
                cfg["retrieval_eval_size"], seed=cfg["eval_seed"] + 1, config=SceneConfig(image_size=image_size),
                transform=transform, tokenizer=tokenizer, max_length=recipe.max_text_len,
            )
        evaluator = TaskEvaluator(objective, _held_out_batches(val_set, collate, cfg["eval_batch_size"]),
                                  retrieval=retrieval)

    optimizer = build_finetune_optimizer(net, recipe)
    warmup = recipe.warmup
    if isinstance(warmup, int) and warmup > steps:
        warmup = steps // 10
    scheduler = build_scheduler(optimizer, total_steps=steps, warmup=warmup)
    try:
        tcfg = TrainerConfig(
            output_dir=out_dir, max_steps=steps, max_grad_norm=recipe.clip or None, precision=cfg["precision"],
            checkpoint_every=cfg["checkpoint_every"], log_every=cfg["log_every"], eval_every=cfg["eval_every"],
            seed=seed, device=device, progress=progress, plot=False, trackers=trackers,
        )
        check_trackers(trackers)
    except TrackerUnavailableError as e:
        raise ArgumentError("trackers", str(e)) from None
    if previous:  # every argument checked: now the previous run may go
        replace_previous_run(out_dir)
    try:
        trainer = Trainer(net, objective, optimizer, stream, tcfg, scheduler=scheduler, eval_fn=evaluator,
                          extra_save=tokenizer_saver(tokenizer))
    except TrackerUnavailableError as e:
        raise ArgumentError("trackers", str(e)) from None
    variable = {"device": device, "trackers": list(tcfg.trackers)}
    if not run:
        run = {
            "task": spec.name,
            "pretrained": cfg["pretrained"] if not in_memory else f"<in-memory {type(pretrained).__name__}>",
            "data": "synthetic scenes" if synthetic else list(train_data),
            **{k: v for k, v in cfg.items() if k != "pretrained"},
            "recipe": dataclasses.asdict(recipe),
            "steps": steps,
            "parameters": sum(p.numel() for p in net.parameters()),
            "load": {k: (v if k != "copied" else len(v)) for k, v in load_report.items()},
            **variable,
        }
        if pretrained is not None:
            run["model"] = None
        write_json(out_dir / RUN_CONFIG, run)
    logger.info("fine-tuning %s for %d steps (%s)", spec.name, steps, "pretrained" if pretrained else "from scratch")
    logger.info("parameter groups:\n%s", describe_param_groups(optimizer.param_groups))
    if resume:
        step = trainer.resume()
        record_resume(out_dir, run, step=step, changed={k: (run.get(k), v) for k, v in variable.items() if k in run})
    t_train = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - t_train
    before, after = eval_before_after(trainer.metrics.records)
    summary = {
        "task": spec.name,
        "pretrained": run["pretrained"],
        "steps": trainer.step,
        "metric": objective.metric,
        "before": before,
        "after": after,
        "skipped": trainer.skipped.as_dict(),
        "skipped_batches": trainer.skipped_batches,
        "train_seconds": round(train_s, 1),
        "total_seconds": round(time.perf_counter() - t0, 1),
        "model_dir": str(out_dir / "model"),
    }
    write_json(out_dir / "finetune_summary.json", summary)
    return summary
