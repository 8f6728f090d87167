"""Command line: ``bridgetower pretrain`` and ``bridgetower score``.

``bridgetower pretrain`` with no arguments runs the bundled demo (see :func:`main` and the
``training`` section of the README); with ``--data`` it pretrains on your image-caption data
with the published recipe's defaults.  ``bridgetower score IMAGE TEXT...`` prints the ITM
scores of one image against several texts from a saved checkpoint.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .commands.argtypes import non_negative_float as _non_negative_float
from .commands.argtypes import non_negative_int as _non_negative_int
from .commands.argtypes import positive_int as _positive_int
from .commands.argtypes import probability as _probability

logger = logging.getLogger("bridgetower.cli")

DEMO_OUTPUT_DIR = os.path.join("runs", "demo")
PRETRAIN_OUTPUT_DIR = os.path.join("runs", "pretrain")

#: The published BridgeTower pretraining recipe (paper section 4.1; official code).
OFFICIAL: dict[str, Any] = {
    "lr": 1e-5,
    "betas": (0.9, 0.98),
    "eps": 1e-8,
    "weight_decay": 0.01,
    "warmup": 0.1,
    "steps": 100_000,
    "batch_size": 64,
    "grad_accum": 64,  # 64 x 64 = the published global batch of 4096
    "clip": 0.0,  # the official trainer does not clip
    "cross_modal_lr_mult": 5.0,
    "head_lr_mult": 5.0,
    "mlm_prob": 0.15,
    "attribute_mask_prob": 0.15,  # = mlm_prob: no boost
    "max_text_len": 50,
    "mlm_weight": 1.0,
    "itm_weight": 1.0,
    "itc_weight": 0.0,
    "itm_negatives": 0.5,
    "text_negatives": 0.0,
    "checkpoint_every": 1000,
    "eval_every": 0,
    "log_every": 50,
}

#: The demo's own settings (measured on a 2-core CPU; see DEMO.md and the README).
DEMO: dict[str, Any] = {
    **OFFICIAL,
    "lr": 1e-3,
    "warmup": 100,
    "steps": 1400,
    "batch_size": 32,
    "grad_accum": 1,
    "clip": 1.0,
    "cross_modal_lr_mult": 1.0,
    "head_lr_mult": 1.0,
    "attribute_mask_prob": 0.5,
    "itc_weight": 1.0,
    "text_negatives": 0.5,
    "checkpoint_every": 700,
    "eval_every": 350,
    "log_every": 25,
}

_FLAG_HELP: dict[str, str] = {
    "lr": "peak learning rate of the uni-modal towers",
    "betas": "AdamW betas",
    "eps": "AdamW eps",
    "weight_decay": "AdamW weight decay (never on biases and LayerNorm weights)",
    "warmup": "linear warm-up: a fraction of --steps if < 1, else a number of steps; then linear decay to 0",
    "steps": "optimizer steps",
    "batch_size": "image-caption pairs per micro-batch",
    "grad_accum": "micro-batches per optimizer step (effective batch = batch size x this)",
    "clip": "gradient-norm clipping threshold (0 = off)",
    "cross_modal_lr_mult": "lr multiplier of the cross-modal (fusion, cross_modal_*) parameters",
    "head_lr_mult": "lr multiplier of the MLM / ITM / ITC heads",
    "mlm_prob": "MLM masking probability of a token",
    "attribute_mask_prob": "synthetic scenes only: masking probability of colour, shape and position words",
    "max_text_len": "captions are truncated to this many tokens",
    "mlm_weight": "weight of the MLM loss",
    "itm_weight": "weight of the ITM loss",
    "itc_weight": "weight of the ITC (contrastive) loss",
    "itm_negatives": "share of each batch paired with a wrong image for ITM",
    "text_negatives": "synthetic scenes only: share of the ITM negatives replaced by the true image "
    "with its caption altered in one attribute (colour, shape or positions)",
    "checkpoint_every": "write a checkpoint every N steps (0 = only at the end)",
    "eval_every": "held-out evaluation every N steps (demo data only; 0 = before and after only)",
    "log_every": "log the averaged metrics every N steps",
}


class CLIError(Exception):
    """A user error: printed as ``bridgetower: error: ...`` with exit status 2."""


# ------------------------------------------------------------------------------------ parser
def _fmt(v: Any) -> str:
    return " ".join(f"{x:g}" for x in v) if isinstance(v, tuple) else (f"{v:g}" if isinstance(v, float) else str(v))


def _warmup(text: str) -> float | int:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"warm-up must be a number, got {text!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"warm-up must be >= 0, got {text!r}")
    return v if v < 1 else int(v)


_TYPES = {
    "lr": _non_negative_float,
    "betas": float,
    "eps": _non_negative_float,
    "weight_decay": _non_negative_float,
    "warmup": _warmup,
    "steps": _positive_int,
    "batch_size": _positive_int,
    "grad_accum": _positive_int,
    "clip": _non_negative_float,
    "cross_modal_lr_mult": _non_negative_float,
    "head_lr_mult": _non_negative_float,
    "mlm_prob": _probability,
    "attribute_mask_prob": _probability,
    "max_text_len": _positive_int,
    "mlm_weight": _non_negative_float,
    "itm_weight": _non_negative_float,
    "itc_weight": _non_negative_float,
    "itm_negatives": _probability,
    "text_negatives": _probability,
    "checkpoint_every": _non_negative_int,
    "eval_every": _non_negative_int,
    "log_every": _positive_int,
}

_PRETRAIN_EPILOG = """\
The two recipes:
  demo      the default when --data is not given: pretrain the tiny model on synthetic
            scenes generated on the fly (tokenizer built offline from the caption words),
            evaluate on held-out scenes before and after, print the tables, and save the
            checkpoint, metrics (JSONL + CSV) and a plot of the curves into the output dir.
            Its defaults (lr 1e-3 without the 5x multipliers, 100 warm-up steps, 1400
            steps of batch 32, MLM + ITM + ITC, colour/shape/position words masked with
            p=0.5, half the ITM negatives one-attribute caption changes) are chosen for a
            2-core CPU and differ from the published recipe.
  official  the default with --data: the published BridgeTower recipe (AdamW lr 1e-5,
            betas 0.9 0.98, eps 1e-8, weight decay 0.01, 10%% warm-up then linear decay,
            5x lr on the cross-modal part and the heads, MLM 0.15, text length 50,
            MLM + ITM, global batch 4096 = --batch-size 64 x --grad-accum 64, 100k steps).
Any flag given overrides the recipe's value.

Examples:
  bridgetower pretrain                                  # the bundled demo
  bridgetower pretrain --steps 200 --output-dir runs/quick
  bridgetower pretrain --data my_pairs/ --model bridgetower-base --precision bf16
  bridgetower pretrain --output-dir runs/demo --resume  # continue an interrupted run
  torchrun --nproc_per_node=4 -m bridgetower.cli pretrain --data my_pairs/   # 4 processes, DDP
"""


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bridgetower",
        description="BridgeTower vision-language models: pretrain, score image-text pairs.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser(
        "pretrain",
        help="pretrain a model (no arguments: the bundled synthetic-scene demo)",
        description="Pretrain a BridgeTower model with MLM + ITM (+ ITC). Without arguments, "
        "runs the bundled demo on synthetic scenes.",
        epilog=_PRETRAIN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    g = p.add_argument_group("data, model and output")
    g.add_argument("--model", default="bridgetower-tiny", metavar="NAME|JSON",
                   help="a configuration name (bridgetower-tiny, -base, -large) or a JSON config file "
                   "(default: bridgetower-tiny; the vocabulary size follows the tokenizer)")
    g.add_argument("--data", default=None, metavar="PATH",
                   help="image-caption data: a folder with one JSONL/CSV index (image paths relative to "
                   "it), an index file, WebDataset .tar shards (a file, a folder of them, or a brace "
                   "pattern 'shard-{000..009}.tar'). Default: the bundled synthetic scenes (demo)")
    g.add_argument("--tokenizer", default=None, metavar="DIR",
                   help="a transformers tokenizer directory (default: a word-level tokenizer built "
                   "offline from the caption words)")
    g.add_argument("--output-dir", default=None, metavar="DIR",
                   help=f"where checkpoints, metrics and the plot go (default: {DEMO_OUTPUT_DIR} for the "
                   f"demo, {PRETRAIN_OUTPUT_DIR} otherwise). An existing run there is replaced unless "
                   "--resume is given")
    g.add_argument("--recipe", choices=("demo", "official"), default=None,
                   help="which defaults the knobs below take (default: demo without --data, official with it)")
    g.add_argument("--resume", nargs="?", const="latest", default=None, metavar="CHECKPOINT",
                   help="continue from the newest checkpoint in the output dir (or the given "
                   "checkpoint directory), exactly where it stopped")
    g.add_argument("--seed", type=_non_negative_int, default=0, help="seed of the model init, data order and masking (default: 0)")

    k = p.add_argument_group("recipe knobs (defaults: official / demo)")
    for name, kind in _TYPES.items():
        flag = "--" + name.replace("_", "-")
        extra: dict[str, Any] = {"nargs": 2, "metavar": ("B1", "B2")} if name == "betas" else {}
        k.add_argument(flag, type=kind, default=None,
                       help=f"{_FLAG_HELP[name]} (official: {_fmt(OFFICIAL[name])}; demo: {_fmt(DEMO[name])})",
                       **extra)

    r = p.add_argument_group("run")
    r.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32",
                   help="fp32; bf16 autocast (CPU or GPU); fp16 autocast with loss scaling (GPU only) (default: fp32)")
    r.add_argument("--gradient-checkpointing", action="store_true", help="recompute activations in the backward pass (less memory)")
    r.add_argument("--release-freed-memory", action="store_true",
                   help="CPU/glibc: return freed tensor memory to the system at once (lower peak RSS, "
                        "~20%% more CPU time; see bridgetower.training.cpu_memory)")
    r.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    r.add_argument("--keep-checkpoints", type=_non_negative_int, default=2, help="newest checkpoints kept (0 = all; default: 2)")
    r.add_argument("--eval-size", type=_positive_int, default=256, help="held-out scenes per demo measurement (even; default: 256)")
    r.add_argument("--num-scenes", type=_positive_int, default=1_000_000,
                   help="size of the synthetic training stream (an epoch; default: 1000000)")
    r.add_argument("--progress", choices=("auto", "on", "off"), default="auto",
                   help="progress bar: auto = only on a terminal (default: auto)")
    r.add_argument("--quiet", action="store_true", help="only warnings and the final tables")
    from .training.tracking import add_tracker_argument

    add_tracker_argument(r)
    r.add_argument("--distributed", choices=("auto", "none", "ddp", "fsdp"), default="auto",
                   help="data-parallel strategy when launched by torchrun: ddp, or fsdp (FSDP2 fully_shard, "
                   "for the large model); auto = ddp under torchrun with several processes, none otherwise. "
                   "--batch-size is then the global batch, split across the processes (default: auto)")

    s = sub.add_parser(
        "score",
        help="ITM scores of one image against texts",
        description="Print the image-text matching score of IMAGE against each TEXT, from a checkpoint.",
        epilog="Example:\n  bridgetower score scene.png 'a red circle on the left' 'a blue circle on the left'",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    s.add_argument("image", metavar="IMAGE", help="an image file (PNG, JPEG, ...)")
    s.add_argument("texts", metavar="TEXT", nargs="+", help="one or more captions")
    s.add_argument("--checkpoint", default=DEMO_OUTPUT_DIR, metavar="DIR",
                   help=f"a run output dir, its model/ dir or a checkpoint dir (default: {DEMO_OUTPUT_DIR})")
    s.add_argument("--device", default=None, help="torch device (default: cpu)")
    s.add_argument("--json", action="store_true", help="print JSON instead of a table")
    _add_command_plugins(sub)
    return parser


def _add_command_plugins(sub: argparse._SubParsersAction) -> None:
    """Sub-commands defined in :mod:`bridgetower.commands` (each sets ``handler``)."""
    import importlib.util

    if importlib.util.find_spec("bridgetower.commands") is None:
        return
    from .commands import add_parsers

    add_parsers(sub)


# ----------------------------------------------------------------------------------- helpers
def _setup_logging(quiet: bool) -> None:
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
        root.addHandler(handler)
    level = logging.WARNING if quiet else logging.INFO
    for name in ("bridgetower", "bridgetower.cli"):
        logging.getLogger(name).setLevel(level)


def _resolve(args: argparse.Namespace) -> dict[str, Any]:
    recipe = args.recipe or ("official" if args.data else "demo")
    base = DEMO if recipe == "demo" else OFFICIAL
    knobs = {}
    for name in _TYPES:
        v = getattr(args, name)
        knobs[name] = base[name] if v is None else (tuple(v) if name == "betas" else v)
    b1, b2 = knobs["betas"]
    if not (0 <= b1 < 1 and 0 <= b2 < 1):
        raise CLIError(f"--betas must be two numbers in [0, 1), got {b1:g} {b2:g}")
    if knobs["lr"] <= 0:
        raise CLIError(f"--lr must be > 0, got {knobs['lr']:g}")
    if knobs["eps"] <= 0:
        raise CLIError(f"--eps must be > 0, got {knobs['eps']:g}")
    if knobs["cross_modal_lr_mult"] <= 0 or knobs["head_lr_mult"] <= 0:
        raise CLIError("--cross-modal-lr-mult and --head-lr-mult must be > 0")
    if knobs["mlm_weight"] == knobs["itm_weight"] == knobs["itc_weight"] == 0:
        raise CLIError("at least one of --mlm-weight, --itm-weight, --itc-weight must be > 0")
    w = knobs["warmup"]
    if isinstance(w, int) and w > knobs["steps"]:
        if args.warmup is not None:
            raise CLIError(f"--warmup {w} steps exceeds --steps {knobs['steps']}")
        knobs["warmup"] = knobs["steps"] // 10  # a short run: the default warm-up shrinks to 10%
    if args.eval_size % 2:
        raise CLIError(f"--eval-size must be even (half matching pairs), got {args.eval_size}")
    knobs["recipe"] = recipe
    return knobs


def _load_config(spec: str):
    from .models import BridgeTowerConfig, get_config

    if spec.endswith(".json") or os.sep in spec:
        path = Path(spec)
        if not path.is_file():
            raise CLIError(f"--model: config file {spec!r} does not exist")
        try:
            return BridgeTowerConfig.from_json(path)
        except (ValueError, TypeError, json.JSONDecodeError) as e:
            raise CLIError(f"--model: {spec}: {e}") from None
    try:
        return get_config(spec)
    except ValueError as e:
        raise CLIError(f"--model: {e}") from None


def _data_kind(path: Path | str) -> tuple[str, Any]:
    """``("scenes", None)``, ``("index", file)`` or ``("shards", urls)``."""
    text = str(path)
    if "{" in text and text.endswith(".tar"):
        return "shards", text
    p = Path(text)
    if not p.exists():
        raise CLIError(f"--data: {text!r} does not exist")
    if p.is_file():
        if p.suffix == ".tar":
            return "shards", [str(p)]
        if p.suffix.lower() in (".jsonl", ".json", ".ndjson", ".csv", ".tsv"):
            return "index", p
        raise CLIError(f"--data: {text!r} is neither an index (.jsonl/.csv/.tsv) nor a .tar shard")
    tars = sorted(p.glob("*.tar"))
    if tars:
        return "shards", [str(t) for t in tars]
    indexes = sorted(q for q in p.iterdir() if q.suffix.lower() in (".jsonl", ".ndjson", ".csv", ".tsv"))
    if len(indexes) == 1:
        return "index", indexes[0]
    if not indexes:
        raise CLIError(f"--data: folder {text!r} has no .tar shards and no JSONL/CSV index")
    raise CLIError(f"--data: folder {text!r} has several indexes {[q.name for q in indexes]}; pass the file")


def _caption_words(kind: str, source: Any) -> list[str]:
    import re
    import tarfile

    from .data import read_index

    captions: list[str] = []
    if kind == "index":
        captions = [c for _, c in read_index(source) if c]
    else:
        from .data.datasets import _expand_urls

        for url in _expand_urls(source):
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
        raise CLIError("--data: no caption text found to build a tokenizer from; pass --tokenizer")
    return list(words)


# ---------------------------------------------------------------------------------- pretrain
def _pretrain(args: argparse.Namespace) -> int:
    from .training.distributed import init_distributed, launched_by_torchrun

    t_start = time.perf_counter()
    knobs = _resolve(args)
    ctx = None
    strategy = args.distributed
    if strategy in ("ddp", "fsdp") or (strategy == "auto" and launched_by_torchrun()):
        try:
            ctx = init_distributed(device=args.device)
        except ValueError as e:
            raise CLIError(f"--distributed: {e}") from None
        if strategy == "auto":
            ctx, strategy = (ctx, "ddp") if ctx.is_distributed else (None, "none")
    if ctx is None:
        return _pretrain_run(args, knobs, t_start, None, "none")
    try:
        return _pretrain_run(args, knobs, t_start, ctx, strategy)
    finally:
        ctx.shutdown()


def _pretrain_run(args: argparse.Namespace, knobs: dict, t_start: float, ctx: Any, strategy: str) -> int:
    import torch

    from .data import (
        ImageTransform,
        PretrainingCollator,
        SceneConfig,
        SyntheticSceneDataset,
        build_scene_tokenizer,
        scene_attribute_token_ids,
    )
    from .models import BridgeTowerForPretraining
    from .training import (
        DEMO_ATTRIBUTE_WEIGHTS,
        BatchStream,
        PretrainingObjective,
        SceneEvaluator,
        SceneTextNegatives,
        Trainer,
        TrainerConfig,
        build_optimizer,
        build_scheduler,
        describe_param_groups,
        seed_everything,
    )
    from .training.distributed import DistributedTrainer, all_gather_with_grad, barrier, parallelize

    main_rank = ctx is None or ctx.is_main
    _setup_logging(args.quiet or not main_rank)
    if args.release_freed_memory:
        from .training.cpu_memory import release_freed_cpu_memory

        release_freed_cpu_memory()
    demo = args.data is None
    out_dir = Path(args.output_dir or (DEMO_OUTPUT_DIR if demo else PRETRAIN_OUTPUT_DIR))
    if ctx is not None:
        device = str(ctx.device)
        if knobs["batch_size"] % ctx.world_size:
            raise CLIError(
                f"--batch-size {knobs['batch_size']} (the global batch) is not divisible by the "
                f"{ctx.world_size} processes"
            )
    else:
        device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise CLIError(f"--device: {e}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise CLIError(f"--device {device}: CUDA is not available on this machine")
    if args.precision == "fp16" and not device.startswith("cuda"):
        raise CLIError("--precision fp16 needs a CUDA device (it uses loss scaling); use bf16 or fp32 on CPU")
    config = _load_config(args.model)
    if args.resume is not None:
        from .training.checkpoint import find_checkpoint

        try:
            resume_from = find_checkpoint(out_dir if args.resume == "latest" else args.resume)
        except FileNotFoundError as e:
            raise CLIError(f"--resume: {e}") from None
    else:
        resume_from = None
        if main_rank:
            for name in ("checkpoints", "model", "metrics.jsonl", "metrics.csv", "training_curves.png", "tensorboard"):
                target = out_dir / name
                if target.exists():
                    logger.warning("replacing the previous run in %s (pass --resume to continue it)", out_dir)
                    break
            for name in ("checkpoints", "model", "tensorboard"):
                shutil.rmtree(out_dir / name, ignore_errors=True)
            for name in ("metrics.jsonl", "metrics.csv", "training_curves.png", "run_config.json", "summary.json"):
                (out_dir / name).unlink(missing_ok=True)
        barrier()

    # data and tokenizer
    max_len = knobs["max_text_len"]
    if args.tokenizer is not None:
        from transformers import AutoTokenizer

        if not Path(args.tokenizer).is_dir():
            raise CLIError(f"--tokenizer: {args.tokenizer!r} is not a directory")
        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    elif demo:
        tokenizer = build_scene_tokenizer(model_max_length=max_len)
    else:
        from .models.tokenizer import build_test_tokenizer

        kind, source = _data_kind(args.data)
        tokenizer = build_test_tokenizer(_caption_words(kind, source), model_max_length=max_len)
    if tokenizer.mask_token_id is None or tokenizer.pad_token_id is None:
        raise CLIError("the tokenizer needs a mask and a pad token for MLM pretraining")
    if max_len + 2 > config.text.max_position_embeddings:
        raise CLIError(
            f"--max-text-len {max_len} does not fit the model's {config.text.max_position_embeddings} positions"
        )
    config = config.replace(**{"text.vocab_size": len(tokenizer)})
    image_size = config.vision.image_size
    transform = ImageTransform(image_size)
    boost: dict[str, Any] = {}
    if demo:
        scene_cfg = SceneConfig(image_size=image_size)
        dataset = SyntheticSceneDataset(args.num_scenes, seed=args.seed, config=scene_cfg, transform=transform,
                                        tokenizer=tokenizer, max_length=max_len)
        if knobs["attribute_mask_prob"] != knobs["mlm_prob"]:
            ids = scene_attribute_token_ids(tokenizer, scene_cfg)
            boost = {"boost_token_ids": ids["colour"] + ids["shape"] + ids["position"],
                     "boost_probability": knobs["attribute_mask_prob"]}
    else:
        from .data import ImageTextDataset, WebDatasetPairs

        kind, source = _data_kind(args.data)
        try:
            if kind == "index":
                dataset = ImageTextDataset(source, transform=transform, tokenizer=tokenizer, max_length=max_len)
            else:
                # rank=0, world_size=1: every process reads the same global stream and keeps its
                # rows of each batch (bridgetower.training.distributed)
                dataset = WebDatasetPairs(source, transform=transform, tokenizer=tokenizer, max_length=max_len,
                                          shuffle_shards=True, seed=args.seed, rank=0, world_size=1)
        except (ValueError, OSError) as e:
            raise CLIError(f"--data: {e}") from None
    collator = PretrainingCollator.from_tokenizer(
        tokenizer, mlm_probability=knobs["mlm_prob"], itm_negative_fraction=knobs["itm_negatives"],
        max_length=max_len, **boost,
    )
    collate = collator
    if demo and knobs["text_negatives"] > 0:
        collate = SceneTextNegatives(collator, tokenizer, fraction=knobs["text_negatives"],
                                     attributes=DEMO_ATTRIBUTE_WEIGHTS, max_length=max_len)
    try:
        stream = BatchStream(dataset, collate, knobs["batch_size"], seed=args.seed)
    except ValueError as e:
        raise CLIError(f"--data: {e}") from None

    # model, optimizer, schedule
    seed_everything(args.seed)
    model = BridgeTowerForPretraining(config)
    objective = PretrainingObjective(
        mlm_weight=knobs["mlm_weight"], itm_weight=knobs["itm_weight"], itc_weight=knobs["itc_weight"],
        itc_gather=all_gather_with_grad if ctx is not None else None,
    )
    par = parallelize(model, objective, ctx, strategy=strategy) if ctx is not None else None
    optimizer = build_optimizer(  # after parallelize: FSDP replaces the parameters
        model, lr=knobs["lr"], betas=knobs["betas"], eps=knobs["eps"], weight_decay=knobs["weight_decay"],
        cross_modal_multiplier=knobs["cross_modal_lr_mult"], head_multiplier=knobs["head_lr_mult"],
    )
    scheduler = build_scheduler(optimizer, total_steps=knobs["steps"], warmup=knobs["warmup"])
    evaluator = SceneEvaluator(tokenizer, size=args.eval_size, image_size=image_size, batch_size=128) if demo else None
    progress = {"auto": None, "on": True, "off": False}[args.progress]
    tcfg = TrainerConfig(
        output_dir=out_dir, max_steps=knobs["steps"], grad_accum_steps=knobs["grad_accum"],
        max_grad_norm=knobs["clip"] or None, precision=args.precision,
        gradient_checkpointing=args.gradient_checkpointing, checkpoint_every=knobs["checkpoint_every"],
        keep_checkpoints=args.keep_checkpoints, log_every=knobs["log_every"], eval_every=knobs["eval_every"],
        seed=args.seed, device=device, progress=progress, tensorboard=False, trackers=args.tracker,
    )

    def save_tokenizer(directory: Path) -> None:
        tokenizer.save_pretrained(str(directory))

    from .training.tracking import TrackerUnavailableError

    try:
        if par is not None:
            trainer = DistributedTrainer(par, optimizer, stream, tcfg, scheduler=scheduler, eval_fn=evaluator,
                                         extra_save=save_tokenizer)
        else:
            trainer = Trainer(model, objective, optimizer, stream, tcfg, scheduler=scheduler, eval_fn=evaluator,
                              extra_save=save_tokenizer)
    except TrackerUnavailableError as e:
        raise CLIError(f"--tracker: {e}") from None
    run_config = {
        "recipe": knobs["recipe"], "model": args.model, "data": args.data or "synthetic scenes",
        "seed": args.seed, "precision": args.precision, "device": device,
        "knobs": {k: v for k, v in knobs.items() if k != "recipe"},
        "parameters": sum(p.numel() for p in model.parameters()),
        "distributed": {"strategy": strategy, "world_size": ctx.world_size if ctx is not None else 1},
    }
    if main_rank:
        (out_dir / "run_config.json").write_text(json.dumps(run_config, indent=1, default=str) + "\n")
    logger.info("%s recipe, %s (%s parameters) on %s, output %s", knobs["recipe"], args.model,
                f"{run_config['parameters']:,}", device, out_dir)
    logger.info("parameter groups:\n%s", describe_param_groups(optimizer.param_groups))
    before = None
    if resume_from is not None:
        step = trainer.resume(resume_from)
        logger.info("resuming at step %d of %d", step, knobs["steps"])
        before_rec = [r for r in trainer.metrics.records if r["split"] == "eval" and r["step"] == 0]
        before = {k: v for k, v in before_rec[0].items() if k not in ("step", "split")} if before_rec else None
    t_train = time.perf_counter()
    try:
        trainer.train()
    except KeyboardInterrupt:
        print(f"\ninterrupted at step {trainer.step}; continue with: bridgetower pretrain "
              f"--output-dir {out_dir} --resume", file=sys.stderr)
        return 130
    train_s = time.perf_counter() - t_train
    evals = [r for r in trainer.metrics.records if r["split"] == "eval"]
    if before is None and evals and evals[0]["step"] == 0:
        before = {k: v for k, v in evals[0].items() if k not in ("step", "split")}
    after = {k: v for k, v in evals[-1].items() if k not in ("step", "split")} if evals else None
    total_s = time.perf_counter() - t_start
    summary = {"steps": trainer.step, "train_seconds": round(train_s, 1), "total_seconds": round(total_s, 1),
               "before": before, "after": after}
    score_table = None
    if demo and par is not None and strategy == "fsdp":
        score_table = par.run(lambda m: _demo_score_table(m, tokenizer, image_size))
    elif demo and main_rank and after is not None:
        score_table = _demo_score_table(model, tokenizer, image_size)
    if not main_rank:
        return 0
    print()
    if demo and after is not None:
        print(_demo_table(before, after, args.eval_size))
        print()
        print(score_table)
        print()
    print(f"{trainer.step} steps in {train_s:.0f} s ({trainer.step / max(train_s, 1e-9):.2f} steps/s); "
          f"{total_s:.0f} s in all")
    print(f"checkpoint: {out_dir / 'model'}   metrics: {out_dir / 'metrics.jsonl'} (+ .csv)   "
          f"plot: {out_dir / 'training_curves.png'}")
    if demo:
        print(f"score an image: bridgetower score IMAGE 'a red circle on the left' --checkpoint {out_dir}")
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    return 0


_ROWS = [
    ("itm_acc_random", "ITM accuracy, random negatives", 0.5),
    ("itm_acc_colour", "ITM accuracy, one-colour negatives", 0.5),
    ("itm_acc_shape", "ITM accuracy, one-shape negatives", 0.5),
    ("itm_acc_position", "ITM accuracy, position-swap negatives", 0.5),
    ("mlm_acc_colour", "MLM accuracy, masked colour words", 1 / 6),
    ("mlm_acc_shape", "MLM accuracy, masked shape words", 1 / 3),
    ("mlm_acc_position", "MLM accuracy, masked position words", 1 / 2),
]


def _demo_table(before: dict | None, after: dict, size: int) -> str:
    head = f"held-out scenes ({size} pairs per row)"
    width = max(len(head), *(len(r[1]) for r in _ROWS))
    lines = [f"{head:<{width}}  before   after  chance", "-" * (width + 24)]
    for key, label, chance in _ROWS:
        if key not in after:
            continue
        b = f"{100 * before[key]:5.1f}%" if before and before.get(key) is not None else "    - "
        lines.append(f"{label:<{width}}  {b}  {100 * after[key]:5.1f}%  {100 * chance:5.1f}%")
    return "\n".join(lines)


def _demo_score_table(model, tokenizer, image_size: int) -> str:
    import numpy as np

    from .data import ImageTransform, SceneConfig, alter_scene, make_scene
    from .training import format_score_table, score_texts

    cfg = SceneConfig(image_size=image_size)
    seed = 2_000_003  # neither the training stream nor the evaluation stream
    index = next(i for i in range(100) if len(make_scene(seed, i, cfg)[1].objects) == 2)
    image, scene = make_scene(seed, index, cfg)
    rng = np.random.default_rng(0)
    kinds = ["true caption", "wrong colour", "wrong shape", "positions swapped"]
    texts = [scene.caption] + [alter_scene(scene, a, rng).caption for a in ("colour", "shape", "position")]
    rows = score_texts(model, tokenizer, ImageTransform(image_size)(image), texts)
    return f"one held-out scene (stream {seed}, index {index}):\n" + format_score_table(rows, kinds)


# ------------------------------------------------------------------------------------- score
def _find_model_dir(path: Path) -> Path:
    for cand in (path, path / "model"):
        if (cand / "config.json").is_file() and any(cand.glob("*.safetensors")):
            return cand
    from .training.checkpoint import find_checkpoint

    try:
        return find_checkpoint(path)
    except FileNotFoundError:
        raise CLIError(
            f"--checkpoint: no model found at {str(path)!r} (expected config.json + *.safetensors, a "
            "model/ folder, or a checkpoints/ folder); train one with `bridgetower pretrain`"
        ) from None


def _score(args: argparse.Namespace) -> int:
    import torch

    from .data import ImageTransform, load_image
    from .models import TASK_MODELS
    from .training import format_score_table, score_texts

    _setup_logging(True)
    model_dir = _find_model_dir(Path(args.checkpoint))
    image_path = Path(args.image)
    if not image_path.is_file():
        raise CLIError(f"image {args.image!r} does not exist")
    try:
        image = load_image(image_path)
    except Exception as e:  # noqa: BLE001 - PIL raises many kinds
        raise CLIError(f"cannot read image {args.image!r}: {e}") from None
    texts = [t for t in args.texts]
    if not all(t.strip() for t in texts):
        raise CLIError("every TEXT must be non-empty")
    meta = json.loads((model_dir / "config.json").read_text())
    task = meta.get("task", "itm")
    cls = TASK_MODELS.get(task)
    if cls is None or not hasattr(cls, "__init__"):
        raise CLIError(f"{model_dir}: unknown task {task!r}")
    model = cls.from_pretrained(model_dir)
    if not hasattr(model, "itm_score"):
        raise CLIError(f"{model_dir}: a {type(model).__name__} has no ITM head to score with")
    if not (model_dir / "tokenizer.json").is_file() and not (model_dir / "tokenizer_config.json").is_file():
        raise CLIError(f"{model_dir}: no tokenizer saved next to the model")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    device = torch.device(args.device or "cpu")
    model.to(device)
    pixel_values = ImageTransform(model.config.vision.image_size)(image)
    rows = score_texts(model, tokenizer, pixel_values, texts)
    if args.json:
        print(json.dumps([{"text": t, "match_probability": p, "match_logit": lg} for t, p, lg in rows], indent=1))
    else:
        print(f"image: {args.image}   model: {model_dir}")
        print(format_score_table(rows))
    return 0


# -------------------------------------------------------------------------------------- main
def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``bridgetower`` command; returns the exit status."""
    parser = _build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        if args.command == "pretrain":
            return _pretrain(args)
        if args.command == "score":
            return _score(args)
        return int(args.handler(args))
    except CLIError as e:
        parser.exit(2, f"bridgetower {args.command}: error: {e}\n")
    return 0  # pragma: no cover


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
