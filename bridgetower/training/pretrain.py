"""Pretraining: :func:`pretrain`, the driver behind ``bridgetower pretrain``.

Without ``data`` it runs the bundled demo: the tiny model on synthetic scenes generated on
the fly (tokenizer built offline from the caption words), evaluated on held-out scenes
before and after (:class:`~bridgetower.training.evaluate.SceneEvaluator`), with the demo
recipe.  With ``data`` (a folder or index file of image-caption pairs, or WebDataset ``.tar``
shards) it pretrains on that data with the published recipe (``"official"`` in
:data:`~bridgetower.training.recipes.PRETRAIN_RECIPES`).

The output directory gets the Trainer's ``checkpoints/``, ``metrics.jsonl`` / ``.csv``, the
curve plot and the final ``model/`` with its tokenizer, plus ``run_config.json`` and
``summary.json`` (:mod:`~bridgetower.training.run`).  A new run replaces a previous one there
unless ``resume`` is given.  Data-parallel runs (``torchrun``): pass the context and strategy
of :func:`~bridgetower.training.distributed.start_data_parallel`; ``recipe.batch_size`` is
then the global batch.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tarfile
import time
from pathlib import Path
from typing import Any

from .recipes import PRETRAIN_RECIPES, PretrainRecipe
from .run import ArgumentError, clear_previous_run, eval_before_after, tokenizer_saver, write_json

logger = logging.getLogger(__name__)

__all__ = [
    "DEMO_OUTPUT_DIR",
    "PRETRAIN_OUTPUT_DIR",
    "PRETRAIN_RUN_FILES",
    "caption_words",
    "data_source",
    "load_model_config",
    "pretrain",
]

DEMO_OUTPUT_DIR = os.path.join("runs", "demo")
PRETRAIN_OUTPUT_DIR = os.path.join("runs", "pretrain")

#: What a new pretraining run removes from its output directory (``remove``), and what tells
#: that a previous run was there (``detect``).
PRETRAIN_RUN_FILES: dict[str, tuple[str, ...]] = {
    "remove": ("checkpoints", "model", "tensorboard", "metrics.jsonl", "metrics.csv", "training_curves.png",
               "run_config.json", "summary.json"),
    "detect": ("checkpoints", "model", "metrics.jsonl", "metrics.csv", "training_curves.png", "tensorboard"),
}

_INDEX_SUFFIXES = (".jsonl", ".ndjson", ".csv", ".tsv")


def load_model_config(model: Any) -> Any:
    """A :class:`~bridgetower.models.BridgeTowerConfig`: ``model`` itself, a configuration
    name (``bridgetower-tiny`` ...) or a JSON config file; ``ArgumentError("model", ...)``."""
    from ..models import BridgeTowerConfig, get_config

    if isinstance(model, BridgeTowerConfig):
        return model
    if not isinstance(model, str):
        raise TypeError(f"model must be a configuration name, a JSON file or a BridgeTowerConfig, got {type(model).__name__}")
    if model.endswith(".json") or os.sep in model:
        path = Path(model)
        if not path.is_file():
            raise ArgumentError("model", f"config file {model!r} does not exist")
        try:
            return BridgeTowerConfig.from_json(path)
        except (ValueError, TypeError, json.JSONDecodeError) as e:
            raise ArgumentError("model", f"{model}: {e}") from None
    try:
        return get_config(model)
    except ValueError as e:
        raise ArgumentError("model", str(e)) from None


def data_source(data: str | Path) -> tuple[str, Any]:
    """What ``data`` is: ``("index", file)`` (a JSONL/CSV index, or the one index of a
    folder) or ``("shards", urls)`` (a ``.tar``, a folder of them, or a brace pattern
    ``shard-{000..009}.tar``); ``ArgumentError("data", ...)`` otherwise."""
    text = str(data)
    if "{" in text and text.endswith(".tar"):
        return "shards", text
    p = Path(text)
    if not p.exists():
        raise ArgumentError("data", f"{text!r} does not exist")
    if p.is_file():
        if p.suffix == ".tar":
            return "shards", [str(p)]
        if p.suffix.lower() in (".json", *_INDEX_SUFFIXES):
            return "index", p
        raise ArgumentError("data", f"{text!r} is neither an index (.jsonl/.csv/.tsv) nor a .tar shard")
    tars = sorted(p.glob("*.tar"))
    if tars:
        return "shards", [str(t) for t in tars]
    indexes = sorted(q for q in p.iterdir() if q.suffix.lower() in _INDEX_SUFFIXES)
    if len(indexes) == 1:
        return "index", indexes[0]
    if not indexes:
        raise ArgumentError("data", f"folder {text!r} has no .tar shards and no JSONL/CSV index")
    raise ArgumentError("data", f"folder {text!r} has several indexes {[q.name for q in indexes]}; pass the file")


def caption_words(kind: str, source: Any) -> list[str]:
    """The distinct lower-cased words and punctuation marks of the captions of a
    :func:`data_source`, in order of appearance (the vocabulary of a word-level tokenizer)."""
    captions: list[str] = []
    if kind == "index":
        from ..data import read_index

        captions = [c for _, c in read_index(source) if c]
    else:
        from ..data import expand_urls

        for url in expand_urls(source):
            with tarfile.open(url) as tf:
                for member in tf:
                    ext = member.name.rsplit(".", 1)[-1].lower()
                    if member.isfile() and ext in ("txt", "caption", "json"):
                        raw = tf.extractfile(member).read().decode("utf-8", "replace")
                        if ext == "json":
                            try:
                                raw = json.loads(raw).get("caption") or ""
                            except (json.JSONDecodeError, AttributeError):
                                raw = ""
                        captions.append(raw)
    words: dict[str, None] = {}
    for c in captions:
        for w in re.findall(r"\w+|[^\w\s]", c.lower()):
            words.setdefault(w, None)
    if not words:
        raise ArgumentError("data", "no caption text found to build a tokenizer from; pass a tokenizer")
    return list(words)


def _tokenizer(tokenizer: Any, data: Any, max_len: int) -> Any:
    if isinstance(tokenizer, (str, Path)):
        from transformers import AutoTokenizer

        if not Path(tokenizer).is_dir():
            raise ArgumentError("tokenizer", f"{str(tokenizer)!r} is not a directory")
        tokenizer = AutoTokenizer.from_pretrained(str(tokenizer))
    elif tokenizer is None and data is None:
        from ..data import build_scene_tokenizer

        tokenizer = build_scene_tokenizer(model_max_length=max_len)
    elif tokenizer is None:
        from ..models.tokenizer import build_wordlevel_tokenizer

        tokenizer = build_wordlevel_tokenizer(caption_words(*data_source(data)), model_max_length=max_len)
    if tokenizer.mask_token_id is None or tokenizer.pad_token_id is None:
        raise ArgumentError("tokenizer", "the tokenizer needs a mask and a pad token for MLM pretraining")
    return tokenizer


def _dataset(data: Any, recipe: PretrainRecipe, tokenizer: Any, transform: Any, *, seed: int, num_scenes: int,
             scene_cfg: Any) -> tuple[Any, dict]:
    """The training set and the collator's extra masking of the scene attribute words."""
    max_len = recipe.max_text_len
    if data is None:
        from ..data import SyntheticSceneDataset, scene_attribute_token_ids

        dataset = SyntheticSceneDataset(num_scenes, seed=seed, config=scene_cfg, transform=transform,
                                        tokenizer=tokenizer, max_length=max_len)
        if recipe.attribute_mask_prob == recipe.mlm_prob:
            return dataset, {}
        ids = scene_attribute_token_ids(tokenizer, scene_cfg)
        return dataset, {"boost_token_ids": ids["colour"] + ids["shape"] + ids["position"],
                         "boost_probability": recipe.attribute_mask_prob}
    from ..data import ImageTextDataset, WebDatasetPairs

    kind, source = data_source(data)
    try:
        if kind == "index":
            return ImageTextDataset(source, transform=transform, tokenizer=tokenizer, max_length=max_len), {}
        # rank=0, world_size=1: every process reads the same global stream and keeps its rows of
        # each batch (bridgetower.training.distributed)
        return WebDatasetPairs(source, transform=transform, tokenizer=tokenizer, max_length=max_len,
                               shuffle_shards=True, seed=seed, rank=0, world_size=1), {}
    except (ValueError, OSError) as e:
        raise ArgumentError("data", str(e)) from None


def pretrain(
    output_dir: str | Path | None = None,
    *,
    recipe: PretrainRecipe | str | None = None,
    model: Any = "bridgetower-tiny",
    data: str | Path | None = None,
    tokenizer: Any = None,
    resume: str | Path | bool | None = None,
    seed: int = 0,
    precision: str = "fp32",
    gradient_checkpointing: bool = False,
    device: str | None = None,
    keep_checkpoints: int = 2,
    eval_size: int = 256,
    num_scenes: int = 1_000_000,
    progress: bool | None = None,
    trackers: Any = None,
    ctx: Any = None,
    strategy: str = "none",
) -> dict[str, Any]:
    """Pretrain a model with MLM + ITM (+ ITC) and return the run's summary.

    Args:
        output_dir: the run directory (default ``runs/demo`` for the demo, ``runs/pretrain``
            otherwise).
        recipe: a :class:`~bridgetower.training.recipes.PretrainRecipe` or a name of
            :data:`~bridgetower.training.recipes.PRETRAIN_RECIPES` (default: ``"demo"``
            without ``data``, ``"official"`` with it).
        model: a configuration name, a JSON config file or a ``BridgeTowerConfig``; the
            vocabulary size follows the tokenizer.
        data: image-caption data (see :func:`data_source`); ``None``: the synthetic scenes.
        tokenizer: a ``transformers`` tokenizer or its directory (default: a word-level
            tokenizer built offline from the caption words).
        resume: ``True`` / ``"latest"``: continue from the newest checkpoint in the output
            dir; a path: from that checkpoint directory.
        seed: seed of the model init, data order and masking.
        precision, gradient_checkpointing, keep_checkpoints, progress, trackers: as in
            :class:`~bridgetower.training.trainer.TrainerConfig`.
        device: the torch device (default: ``cuda`` if available; the context's with ``ctx``).
        eval_size: held-out scenes per demo measurement.
        num_scenes: size of the synthetic training stream.
        ctx, strategy: a data-parallel context and ``"ddp"`` / ``"fsdp"``
            (:func:`~bridgetower.training.distributed.start_data_parallel`), or ``None`` /
            ``"none"``.

    Returns:
        ``summary.json``'s content (``steps``, ``train_seconds``, ``total_seconds``,
        ``before`` / ``after``: the held-out metrics) plus ``output_dir``, ``main_process``,
        ``interrupted`` (a ``KeyboardInterrupt`` stopped the run; ``steps`` says where) and
        ``tables`` (the demo's printed tables).  A bad argument is an
        :class:`~bridgetower.training.run.ArgumentError` naming it.
    """
    import torch

    from ..data import ImageTransform, PretrainingCollator, SceneConfig
    from ..models import BridgeTowerForPretraining
    from .checkpoint import find_checkpoint
    from .demo import (
        DEMO_ATTRIBUTE_WEIGHTS,
        SceneTextNegatives,
        demo_score_table,
        format_demo_table,
    )
    from .distributed import DistributedTrainer, all_gather_with_grad, barrier, parallelize
    from .evaluate import SceneEvaluator
    from .objectives import PretrainingObjective
    from .optim import build_optimizer, build_scheduler, describe_param_groups
    from .stream import BatchStream
    from .tracking import TrackerUnavailableError
    from .trainer import Trainer, TrainerConfig, seed_everything

    t_start = time.perf_counter()
    demo = data is None
    if recipe is None or isinstance(recipe, str):
        name = recipe or ("demo" if demo else "official")
        if name not in PRETRAIN_RECIPES:
            raise ArgumentError("recipe", f"unknown recipe {name!r}; known: {sorted(PRETRAIN_RECIPES)}")
        recipe = PRETRAIN_RECIPES[name]
    main = ctx is None or ctx.is_main
    out_dir = Path(output_dir or (DEMO_OUTPUT_DIR if demo else PRETRAIN_OUTPUT_DIR))
    if ctx is not None:
        device = str(ctx.device)
        if recipe.batch_size % ctx.world_size:
            raise ArgumentError("batch_size", f"{recipe.batch_size} (the global batch) is not divisible by the "
                                f"{ctx.world_size} processes")
    else:
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    config = load_model_config(model)
    if data is not None:
        data_source(data)  # a bad path fails here, before the output directory is touched
    resume_from = None
    if resume is not None and resume is not False:
        try:
            resume_from = find_checkpoint(out_dir if resume in (True, "latest") else resume)
        except FileNotFoundError as e:
            raise ArgumentError("resume", str(e)) from None
    else:
        if main:
            clear_previous_run(out_dir, **PRETRAIN_RUN_FILES, resume_hint="pass --resume to continue it")
        barrier()

    # data and tokenizer
    max_len = recipe.max_text_len
    tokenizer = _tokenizer(tokenizer, data, max_len)
    if max_len + 2 > config.text.max_position_embeddings:
        raise ArgumentError("max_text_len", f"{max_len} does not fit the model's "
                            f"{config.text.max_position_embeddings} positions")
    config = config.replace(**{"text.vocab_size": len(tokenizer)})
    image_size = config.vision.image_size
    transform = ImageTransform(image_size)
    dataset, boost = _dataset(data, recipe, tokenizer, transform, seed=seed, num_scenes=num_scenes,
                              scene_cfg=SceneConfig(image_size=image_size))
    collate = PretrainingCollator.from_tokenizer(
        tokenizer, mlm_probability=recipe.mlm_prob, itm_negative_fraction=recipe.itm_negatives,
        max_length=max_len, **boost,
    )
    if demo and recipe.text_negatives > 0:
        collate = SceneTextNegatives(collate, tokenizer, fraction=recipe.text_negatives,
                                     attributes=DEMO_ATTRIBUTE_WEIGHTS, max_length=max_len)
    try:
        stream = BatchStream(dataset, collate, recipe.batch_size, seed=seed)
    except ValueError as e:
        raise ArgumentError("data", str(e)) from None

    # model, optimizer, schedule
    seed_everything(seed)
    net = BridgeTowerForPretraining(config)
    objective = PretrainingObjective(
        mlm_weight=recipe.mlm_weight, itm_weight=recipe.itm_weight, itc_weight=recipe.itc_weight,
        itc_gather=all_gather_with_grad if ctx is not None else None, rank=ctx.rank if ctx is not None else 0,
    )
    par = parallelize(net, objective, ctx, strategy=strategy) if ctx is not None else None
    optimizer = build_optimizer(  # after parallelize: FSDP replaces the parameters
        net, lr=recipe.lr, betas=recipe.betas, eps=recipe.eps, weight_decay=recipe.weight_decay,
        cross_modal_multiplier=recipe.cross_modal_lr_mult, head_multiplier=recipe.head_lr_mult,
    )
    scheduler = build_scheduler(optimizer, total_steps=recipe.steps, warmup=recipe.warmup)
    evaluator = SceneEvaluator(tokenizer, size=eval_size, image_size=image_size, batch_size=128) if demo else None
    tcfg = TrainerConfig(
        output_dir=out_dir, max_steps=recipe.steps, grad_accum_steps=recipe.grad_accum,
        max_grad_norm=recipe.clip or None, precision=precision, gradient_checkpointing=gradient_checkpointing,
        checkpoint_every=recipe.checkpoint_every, keep_checkpoints=keep_checkpoints, log_every=recipe.log_every,
        eval_every=recipe.eval_every, seed=seed, device=device, progress=progress, trackers=trackers,
    )
    kw = {"scheduler": scheduler, "eval_fn": evaluator, "extra_save": tokenizer_saver(tokenizer)}
    try:
        if par is not None:
            trainer = DistributedTrainer(par, optimizer, stream, tcfg, **kw)
        else:
            trainer = Trainer(net, objective, optimizer, stream, tcfg, **kw)
    except TrackerUnavailableError as e:
        raise ArgumentError("trackers", str(e)) from None
    run_config = {
        "recipe": recipe.name, "model": model if isinstance(model, str) else type(model).__name__,
        "data": str(data) if data is not None else "synthetic scenes",
        "seed": seed, "precision": precision, "device": device, "knobs": recipe.knob_values(),
        "parameters": sum(p.numel() for p in net.parameters()),
        "distributed": {"strategy": strategy, "world_size": ctx.world_size if ctx is not None else 1},
    }
    if main:
        write_json(out_dir / "run_config.json", run_config)
    logger.info("%s recipe, %s (%s parameters) on %s, output %s", recipe.name, run_config["model"],
                f"{run_config['parameters']:,}", device, out_dir)
    logger.info("parameter groups:\n%s", describe_param_groups(optimizer.param_groups))
    result: dict[str, Any] = {"output_dir": str(out_dir), "main_process": main, "interrupted": False, "tables": []}
    if resume_from is not None:
        logger.info("resuming at step %d of %d", trainer.resume(resume_from), recipe.steps)
    t_train = time.perf_counter()
    try:
        trainer.train()
    except KeyboardInterrupt:
        return {**result, "interrupted": True, "steps": trainer.step}
    train_s = time.perf_counter() - t_train
    before, after = eval_before_after(trainer.metrics.records)
    summary = {"steps": trainer.step, "train_seconds": round(train_s, 1),
               "total_seconds": round(time.perf_counter() - t_start, 1), "before": before, "after": after}
    score_table = None
    if demo and par is not None and strategy == "fsdp":  # every rank enters the FSDP forward
        score_table = par.run(lambda m: demo_score_table(m, tokenizer, image_size))
    elif demo and main and after is not None:
        score_table = demo_score_table(net, tokenizer, image_size)
    if not main:
        return {**result, **summary}
    if demo and after is not None:
        result["tables"] = [format_demo_table(before, after, eval_size), score_table]
    write_json(out_dir / "summary.json", summary)
    return {**result, **summary}
