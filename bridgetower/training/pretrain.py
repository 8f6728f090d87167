"""Pretraining: :func:`pretrain`, the driver behind ``bridgetower pretrain``.

Without ``data`` it runs the bundled demo: the tiny model on synthetic scenes generated on
the fly (tokenizer built offline from the caption words), evaluated on held-out scenes
before and after (:class:`~bridgetower.training.evaluate.SceneEvaluator`), with the demo
recipe.  With ``data`` (a folder or index file of image-caption pairs, or WebDataset ``.tar``
shards) it pretrains on that data with the published recipe (``"official"`` in
:data:`~bridgetower.training.recipes.PRETRAIN_RECIPES`).

The output directory gets the Trainer's ``checkpoints/``, ``metrics.jsonl`` / ``.csv``, the
curve plot and the final ``model/`` with its tokenizer, plus ``run_config.json`` and
``summary.json`` (:mod:`~bridgetower.training.run`).  A previous run there is kept: continue it
(``resume``) or replace it (``overwrite``).  Data-parallel runs (``torchrun``): pass the context and strategy
of :func:`~bridgetower.training.distributed.start_data_parallel`; ``recipe.batch_size`` is
then the global batch.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from pathlib import Path
from typing import Any

from .recipes import PRETRAIN_RECIPES, PretrainRecipe
from .run import (
    RUN_CONFIG,
    ArgumentError,
    check_output_dir,
    eval_before_after,
    load_run_config,
    record_resume,
    replace_previous_run,
    resume_settings,
    saved_tokenizer,
    tokenizer_saver,
    write_json,
)

logger = logging.getLogger(__name__)

__all__ = [
    "DEMO_OUTPUT_DIR",
    "PRETRAIN_OUTPUT_DIR",
    "caption_words",
    "data_source",
    "load_model_config",
    "pretrain",
    "run_recipe",
]

DEMO_OUTPUT_DIR = os.path.join("runs", "demo")
PRETRAIN_OUTPUT_DIR = os.path.join("runs", "pretrain")

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


def data_source(data: str | Path, *, allow_remote: bool = False) -> tuple[str, Any]:
    """What ``data`` is: ``("index", file)`` (a JSONL/CSV index, or the one index of a
    folder) or ``("shards", urls)`` (a ``.tar``, a folder of them, a brace pattern
    ``shard-{000..009}.tar`` whose every shard must exist, or -- with ``allow_remote`` only --
    ``pipe:`` / ``http(s)://`` URLs); ``ArgumentError("data", ...)`` otherwise."""
    from ..data import expand_urls
    from ..data.shards import check_shard_urls, is_remote_url

    text = str(data)
    if is_remote_url(text):
        urls = expand_urls(text)
        try:
            check_shard_urls(urls, allow_remote=allow_remote)
        except ValueError as e:
            raise ArgumentError("data", str(e)) from None
        return "shards", urls
    if "{" in text or "::" in text:
        urls = expand_urls(text)
        missing = [u for u in urls if not Path(u).is_file()]
        if missing:
            raise ArgumentError("data", f"{len(missing)} of the {len(urls)} shards of {text!r} do not exist "
                                f"(e.g. {missing[0]!r}); check the pattern")
        return "shards", urls
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
    :func:`data_source`, in order of appearance (the vocabulary of a word-level tokenizer).
    Unreadable records and what broken shards lose are skipped (counted in a warning)."""
    from ..data import SkipStats, read_index
    from ..data.shards import iter_shard

    captions: list[str] = []
    if kind == "index":
        try:
            captions = [c for _, c in read_index(source) if isinstance(c, str) and c]
        except ValueError as e:
            raise ArgumentError("data", str(e)) from None
    else:
        lost = SkipStats()
        for url in source:
            for raw in iter_shard(url, lost.add):
                ext = next((k for k in ("txt", "caption", "json") if isinstance(raw, dict) and k in raw), None)
                if ext is None:
                    continue
                text = raw[ext].decode("utf-8", "replace")
                if ext == "json":
                    try:
                        text = json.loads(text).get("caption") or ""
                    except (json.JSONDecodeError, AttributeError):
                        text = ""
                captions.append(text if isinstance(text, str) else "")
        if lost.total:
            logger.warning("building the tokenizer from the captions: %s", lost.summary())
    words: dict[str, None] = {}
    for c in captions:
        for w in re.findall(r"\w+|[^\w\s]", c.lower()):
            words.setdefault(w, None)
    if not words:
        raise ArgumentError("data", "no caption text found to build a tokenizer from; pass a tokenizer")
    return list(words)


def _tokenizer(tokenizer: Any, source: tuple[str, Any] | None, max_len: int) -> Any:
    if isinstance(tokenizer, (str, Path)):
        from ..models.pretrained_towers import load_tokenizer

        if Path(tokenizer).exists() and not Path(tokenizer).is_dir():
            raise ArgumentError("tokenizer", f"{str(tokenizer)!r} is not a directory")
        try:  # a directory, or else a Hub name
            tokenizer = load_tokenizer(tokenizer)
        except ValueError as e:
            raise ArgumentError("tokenizer", str(e)) from None
    elif tokenizer is None and source is None:
        from ..data import build_scene_tokenizer

        tokenizer = build_scene_tokenizer(model_max_length=max_len)
    elif tokenizer is None:
        from ..models.tokenizer import build_wordlevel_tokenizer

        tokenizer = build_wordlevel_tokenizer(caption_words(*source), model_max_length=max_len)
    if tokenizer.mask_token_id is None or tokenizer.pad_token_id is None:
        raise ArgumentError("tokenizer", "the tokenizer needs a mask and a pad token for MLM pretraining")
    return tokenizer


def _dataset(source: tuple[str, Any] | None, recipe: PretrainRecipe, tokenizer: Any, transform: Any, *, seed: int,
             num_scenes: int, scene_cfg: Any, allow_remote: bool) -> tuple[Any, dict]:
    """The training set and the collator's extra masking of the scene attribute words."""
    max_len = recipe.max_text_len
    if source is None:
        from ..data import SyntheticSceneDataset, scene_attribute_token_ids

        dataset = SyntheticSceneDataset(num_scenes, seed=seed, config=scene_cfg, transform=transform,
                                        tokenizer=tokenizer, max_length=max_len)
        if recipe.attribute_mask_prob == recipe.mlm_prob:
            return dataset, {}
        ids = scene_attribute_token_ids(tokenizer, scene_cfg)
        return dataset, {"boost_token_ids": ids["colour"] + ids["shape"] + ids["position"],
                         "boost_probability": recipe.attribute_mask_prob}
    from ..data import ImageTextDataset, WebDatasetPairs

    kind, src = source
    try:
        if kind == "index":
            return ImageTextDataset(src, transform=transform, tokenizer=tokenizer, max_length=max_len), {}
        # rank=0, world_size=1: every process reads the same global stream and keeps its rows of
        # each batch (bridgetower.training.distributed)
        return WebDatasetPairs(src, transform=transform, tokenizer=tokenizer, max_length=max_len,
                               shuffle_shards=True, seed=seed, rank=0, world_size=1, allow_remote=allow_remote), {}
    except (ValueError, OSError) as e:
        raise ArgumentError("data", str(e)) from None


def _where(data: Any) -> str | None:
    """How a run records ``data`` / ``tokenizer``: ``None``, an absolute local path, or the
    URL / pattern as given."""
    if data is None:
        return None
    from ..data.shards import is_remote_url

    text = str(data)
    return text if is_remote_url(text) else os.path.abspath(text)


def run_recipe(output_dir: str | Path) -> PretrainRecipe | None:
    """The recipe a pretraining run in ``output_dir`` was started with (``None`` without a
    readable ``run_config.json``): what ``resume`` continues with."""
    return _recipe_of(load_run_config(output_dir))


def _recipe_of(run: dict[str, Any] | None) -> PretrainRecipe | None:
    if not run or not isinstance(run.get("knobs"), dict):
        return None
    from .recipes import recipe_from_dict

    try:
        return recipe_from_dict(PretrainRecipe, {"name": run.get("recipe", "official"), **run["knobs"]})
    except ValueError as e:
        raise ArgumentError("resume", f"the run's run_config.json: {e}") from None


def _saved_files(checkpoints: list[Path], run: dict[str, Any]) -> tuple[Any, Any]:
    """``(tokenizer, model config)`` of a run being resumed: the tokenizer saved with its
    newest readable checkpoint, the config its ``run_config.json`` recorded (older runs: the
    checkpoint's ``config.json``); ``None`` for what cannot be found."""
    from ..models import BridgeTowerConfig

    tok = cfg = None
    if isinstance(run.get("model_config"), dict):
        cfg = BridgeTowerConfig.from_dict(run["model_config"])
    for cand in checkpoints:
        try:
            tok = tok or saved_tokenizer(cand)
            if cfg is None:
                cfg = BridgeTowerConfig.from_dict(json.loads((cand / "config.json").read_text())["config"])
        except Exception as e:  # noqa: BLE001 - a damaged checkpoint: the next one
            logger.warning("cannot read the tokenizer or config of %s (%s)", cand, e)
        if tok is not None and cfg is not None:
            break
    return tok, cfg


def _resume_recipe(recipe: PretrainRecipe | str | None, recorded: PretrainRecipe) -> PretrainRecipe:
    """The run's recipe; a recipe given again must agree with it, knob by knob (a name must
    be the run's recipe name)."""
    if isinstance(recipe, str) and recipe != recorded.name:
        raise ArgumentError("recipe", f"the run was started with the {recorded.name!r} recipe, not {recipe!r}")
    if isinstance(recipe, PretrainRecipe):
        given = {"recipe": recipe.name, **recipe.knob_values()}
        resume_settings({"recipe": recorded.name, **recorded.knob_values()}, given)
    return recorded


def pretrain(
    output_dir: str | Path | None = None,
    *,
    recipe: PretrainRecipe | str | None = None,
    model: Any = None,
    data: str | Path | None = None,
    tokenizer: Any = None,
    resume: str | Path | bool | None = None,
    overwrite: bool = False,
    allow_remote_data: bool = False,
    seed: int | None = None,
    precision: str | None = None,
    gradient_checkpointing: bool = False,
    device: str | None = None,
    keep_checkpoints: int = 2,
    eval_size: int | None = None,
    num_scenes: int | None = None,
    progress: bool | None = None,
    trackers: Any = None,
    ctx: Any = None,
    strategy: str = "none",
    vision_pretrained: Any = None,
    text_pretrained: str | Path | None = None,
    num_workers: int = 0,
) -> dict[str, Any]:
    """Pretrain a model with MLM + ITM (+ ITC) and return the run's summary.

    Args:
        output_dir: the run directory (default ``runs/demo`` for the demo, ``runs/pretrain``
            otherwise).  A previous run there is kept: a new run refuses to start over it
            unless ``overwrite`` (then only the files the library wrote are removed, each
            named in a warning, after every other argument has been checked).
        recipe: a :class:`~bridgetower.training.recipes.PretrainRecipe` or a name of
            :data:`~bridgetower.training.recipes.PRETRAIN_RECIPES` (default: ``"demo"``
            without ``data``, ``"official"`` with it).
        model: a configuration name, a JSON config file or a ``BridgeTowerConfig`` (default
            ``"bridgetower-tiny"``); the vocabulary size follows the tokenizer.
        data: image-caption data (see :func:`data_source`); ``None``: the synthetic scenes.
        tokenizer: a ``transformers`` tokenizer, its directory or a Hub name (default: the
            ``text_pretrained`` model's tokenizer, else a word-level tokenizer built offline
            from the caption words).
        resume: ``True`` / ``"latest"``: continue the run in the output dir from its newest
            usable checkpoint; a path: from that checkpoint directory.  The run's settings
            (recipe, model, data, tokenizer, seed, precision, ``eval_size``, ``num_scenes``)
            come from its ``run_config.json``; one given again must agree, or it is an
            :class:`~bridgetower.training.run.ArgumentError` naming it.  Device, trackers,
            checkpoint keeping, gradient checkpointing and the process count may change
            (recorded under ``resumes`` in ``run_config.json``).
        overwrite: replace a previous run in the output dir (not with ``resume``).
        allow_remote_data: read ``pipe:`` and ``http(s)://`` shard URLs (they run shell
            commands or reach the network); refused otherwise.
        seed: seed of the model init, data order and masking (default 0).
        precision, gradient_checkpointing, keep_checkpoints, progress, trackers: as in
            :class:`~bridgetower.training.trainer.TrainerConfig` (precision default ``"fp32"``).
        device: the torch device (default: ``cuda`` if available; the context's with ``ctx``).
        eval_size: held-out scenes per demo measurement (default 256).
        num_scenes: size of the synthetic training stream (default 1,000,000).
        ctx, strategy: a data-parallel context and ``"ddp"`` / ``"fsdp"``
            (:func:`~bridgetower.training.distributed.start_data_parallel`), or ``None`` /
            ``"none"``.
        vision_pretrained, text_pretrained: start the towers from pretrained weights (an
            open_clip checkpoint file or ``"MODEL:TAG"``; a ``transformers`` model name or
            directory; :mod:`~bridgetower.models.pretrained_towers`); the model config must
            match them.  Not applied when resuming (the checkpoint has the weights).
        num_workers: ``DataLoader`` worker processes reading and decoding the data (0: in the
            training process); the batches are the same (:class:`~bridgetower.training.stream.BatchStream`).

    Returns:
        ``summary.json``'s content (``steps``, ``train_seconds``, ``total_seconds``,
        ``before`` / ``after``: the held-out metrics, ``skipped``: the samples skipped per
        reason, ``skipped_batches``) plus ``output_dir``, ``main_process``, ``interrupted``
        (a ``KeyboardInterrupt`` stopped the run; ``steps`` says where) and ``tables`` (the
        demo's printed tables).  A bad argument is an
        :class:`~bridgetower.training.run.ArgumentError` naming it.
    """
    import torch

    from ..data import ImageTransform, PretrainingCollator, SceneConfig
    from ..models import BridgeTowerForPretraining
    from .checkpoint import checkpoint_candidates, find_checkpoint
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
    from .tracking import TrackerUnavailableError, check_trackers
    from .trainer import Trainer, TrainerConfig, seed_everything

    t_start = time.perf_counter()
    resuming = resume is not None and resume is not False
    main = ctx is None or ctx.is_main
    out_dir = Path(output_dir or (DEMO_OUTPUT_DIR if data is None else PRETRAIN_OUTPUT_DIR))
    previous = check_output_dir(out_dir, resume=resuming, overwrite=overwrite)

    # the settings: given (a new run), or the run's (a resumed one)
    run: dict[str, Any] = {}
    resume_from: Path | None = None
    saved_tok, saved_cfg = None, None
    if resuming:
        try:
            resume_from = find_checkpoint(out_dir if resume in (True, "latest") else resume)
        except FileNotFoundError as e:
            raise ArgumentError("resume", str(e)) from None
        run = load_run_config(out_dir) or load_run_config(resume_from.parent.parent) or {}
        if not run:
            logger.warning("no run_config.json in %s: the resumed run takes the arguments given", out_dir)
        saved_tok, saved_cfg = _saved_files(checkpoint_candidates(resume_from)[0]
                                            + checkpoint_candidates(out_dir)[0], run)
    recorded = _recipe_of(run)
    if tokenizer is None and text_pretrained is not None:
        tokenizer = text_pretrained  # the text tower's own tokenizer
    tok_where = None if not isinstance(tokenizer, (str, Path)) else (
        _where(tokenizer) if Path(tokenizer).exists() else str(tokenizer))  # a directory or a Hub name
    given = {"model": model, "data": _where(data), "tokenizer": tok_where, "seed": seed, "precision": precision, "eval_size": eval_size, "num_scenes": num_scenes}
    if recorded is not None:
        settled = resume_settings(run, {k: v for k, v in given.items() if k != "model"})
        recipe = _resume_recipe(recipe, recorded)
        data = settled["data"] if settled["data"] not in ("synthetic scenes",) else None
    else:
        settled = dict(given)
    seed = 0 if settled["seed"] is None else settled["seed"]
    precision = settled["precision"] or "fp32"
    eval_size = settled["eval_size"] or 256
    num_scenes = settled["num_scenes"] or 1_000_000
    demo = data is None
    if recipe is None or isinstance(recipe, str):
        name = recipe or ("demo" if demo else "official")
        if name not in PRETRAIN_RECIPES:
            raise ArgumentError("recipe", f"unknown recipe {name!r}; known: {sorted(PRETRAIN_RECIPES)}")
        recipe = PRETRAIN_RECIPES[name]
    if ctx is not None:
        device = str(ctx.device)
        if recipe.batch_size % ctx.world_size:
            raise ArgumentError("batch_size", f"{recipe.batch_size} (the global batch) is not divisible by the "
                                f"{ctx.world_size} processes")
    else:
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")

    # data, tokenizer, model config: everything is checked before the output directory changes
    source = data_source(data, allow_remote=allow_remote_data) if data is not None else None
    max_len = recipe.max_text_len
    if saved_tok is not None:
        if tokenizer is not None and not isinstance(tokenizer, (str, Path)) \
                and tokenizer.get_vocab() != saved_tok.get_vocab():
            raise ArgumentError("tokenizer", "differs from the tokenizer saved with the run's checkpoints")
        tokenizer = saved_tok
    else:
        tokenizer = _tokenizer(settled["tokenizer"] or tokenizer, source, max_len)
    vocab = {"text.vocab_size": len(tokenizer)}
    config = load_model_config(model or run.get("model") or "bridgetower-tiny").replace(**vocab)
    if saved_cfg is not None:
        if model is not None and not _same_config(config, saved_cfg):
            raise ArgumentError("model", f"{model!r} is not the model the run was started with "
                                f"({run.get('model')!r})")
        config = saved_cfg
    if max_len + 2 > config.text.max_position_embeddings:
        raise ArgumentError("max_text_len", f"{max_len} does not fit the model's "
                            f"{config.text.max_position_embeddings} positions")
    image_size = config.vision.image_size
    transform = ImageTransform(image_size)
    dataset, boost = _dataset(source, recipe, tokenizer, transform, seed=seed, num_scenes=num_scenes,
                              scene_cfg=SceneConfig(image_size=image_size), allow_remote=allow_remote_data)
    collate = PretrainingCollator.from_tokenizer(
        tokenizer, mlm_probability=recipe.mlm_prob, itm_negative_fraction=recipe.itm_negatives,
        max_length=max_len, **boost,
    )
    if demo and recipe.text_negatives > 0:
        collate = SceneTextNegatives(collate, tokenizer, fraction=recipe.text_negatives,
                                     attributes=DEMO_ATTRIBUTE_WEIGHTS, max_length=max_len)
    try:
        stream = BatchStream(dataset, collate, recipe.batch_size, seed=seed, num_workers=num_workers)
    except ValueError as e:
        raise ArgumentError("data", str(e)) from None
    try:
        check_trackers(trackers)
    except (TrackerUnavailableError, ValueError) as e:
        raise ArgumentError("trackers", str(e)) from None
    if main and previous:
        replace_previous_run(out_dir)
    barrier()

    # model, optimizer, schedule
    seed_everything(seed)
    net = BridgeTowerForPretraining(config)
    if (vision_pretrained is not None or text_pretrained is not None) and resume_from is None:
        from ..models.pretrained_towers import load_pretrained_towers

        for arg, kw in (("vision_pretrained", {"vision": vision_pretrained}), ("text_pretrained", {"text": text_pretrained})):
            if next(iter(kw.values())) is None:
                continue
            try:
                towers = load_pretrained_towers(net, **kw)
            except (ValueError, TypeError) as e:
                raise ArgumentError(arg, str(e)) from None
            logger.info("pretrained %s", (towers.vision or towers.text).summary())
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
    variable = {"device": device, "trackers": list(tcfg.trackers), "keep_checkpoints": keep_checkpoints,
                "gradient_checkpointing": gradient_checkpointing,
                "distributed": {"strategy": strategy, "world_size": ctx.world_size if ctx is not None else 1}}
    if not run:
        run = {
            "recipe": recipe.name,
            "model": model if isinstance(model, str) else "bridgetower-tiny" if model is None else type(model).__name__,
            "data": _where(data), "tokenizer": settled["tokenizer"], "allow_remote_data": allow_remote_data,
            "seed": seed, "precision": precision, "eval_size": eval_size, "num_scenes": num_scenes,
            "knobs": recipe.knob_values(), "parameters": sum(p.numel() for p in net.parameters()),
            "model_config": config.to_dict(), **variable,
        }
        if main:
            write_json(out_dir / RUN_CONFIG, run)
    logger.info("%s recipe, %s (%s parameters) on %s, output %s", recipe.name, run["model"],
                f"{sum(p.numel() for p in net.parameters()):,}", device, out_dir)
    logger.info("parameter groups:\n%s", describe_param_groups(optimizer.param_groups))
    result: dict[str, Any] = {"output_dir": str(out_dir), "main_process": main, "interrupted": False, "tables": []}
    if resuming:
        step = trainer.resume(out_dir if resume in (True, "latest") else resume)
        if main:
            record_resume(out_dir, run, step=step, changed={k: (run.get(k), v) for k, v in variable.items() if k in run})
        logger.info("resuming at step %d of %d", step, recipe.steps)
    t_train = time.perf_counter()
    try:
        trainer.train()
    except KeyboardInterrupt:
        return {**result, "interrupted": True, "steps": trainer.step, **_skips(trainer)}
    train_s = time.perf_counter() - t_train
    before, after = eval_before_after(trainer.metrics.records)
    summary = {"steps": trainer.step, "train_seconds": round(train_s, 1),
               "total_seconds": round(time.perf_counter() - t_start, 1), "before": before, "after": after,
               **_skips(trainer)}
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


def _skips(trainer: Any) -> dict[str, Any]:
    """The skip counts of a run, as its summary records them."""
    return {"skipped": trainer.skipped.as_dict(), "skipped_batches": trainer.skipped_batches}


def _same_config(a: Any, b: Any) -> bool:
    return json.dumps(a.to_dict(), sort_keys=True, default=str) == json.dumps(b.to_dict(), sort_keys=True, default=str)
