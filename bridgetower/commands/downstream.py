"""``bridgetower finetune TASK`` and ``bridgetower evaluate-retrieval``.

``finetune`` fine-tunes a task model (:mod:`bridgetower.training.finetune`) on the bundled
synthetic scene sets (default) or on the official pyarrow tables (``--train-data``), from a
pretrained checkpoint (``--pretrained``) or, without it, from scratch.
``evaluate-retrieval`` measures recall@1/5/10 in both directions with ITC top-k candidates
re-ranked by the fusion score (:mod:`bridgetower.training.retrieval`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from .argtypes import non_negative_float as _non_negative_float
from .argtypes import non_negative_int as _non_negative_int
from .argtypes import positive_float as _positive_float
from .argtypes import positive_int as _positive_int

__all__ = ["add_parsers", "run_evaluate_retrieval", "run_finetune"]

logger = logging.getLogger("bridgetower.cli")

FINETUNE_OUTPUT_DIR = os.path.join("runs", "finetune-{task}")
DEFAULT_CHECKPOINT = os.path.join("runs", "demo")


class _UsageError(Exception):
    """A user error: printed as ``bridgetower COMMAND: error: ...``, exit status 2."""


def _beta(text: str) -> float:
    v = _non_negative_float(text)
    if v >= 1:
        raise argparse.ArgumentTypeError(f"a beta must be in [0, 1), got {text!r}")
    return v


def _warmup(text: str) -> float | int:
    v = _non_negative_float(text)
    return v if v < 1 else int(v)


# ------------------------------------------------------------------------------ parsers

#: recipe field -> (flag type, help)
_KNOBS: dict[str, tuple[Any, str]] = {
    "lr": (_positive_float, "peak learning rate of the uni-modal towers"),
    "batch_size": (_positive_int, "samples per optimizer step"),
    "epochs": (_positive_float, "passes over the training data (ignored when --steps is given)"),
    "steps": (_positive_int, "optimizer steps (overrides --epochs)"),
    "warmup": (_warmup, "linear warm-up: a fraction of the steps if < 1, else a number of steps; then linear decay to 0"),
    "weight_decay": (_non_negative_float, "AdamW weight decay (never on biases and LayerNorm weights)"),
    "head_lr_mult": (_positive_float, "learning-rate multiplier of the task head"),
    "cross_modal_lr_mult": (_positive_float, "learning-rate multiplier of the cross-modal (fusion) parameters"),
    "betas": (_beta, "AdamW betas"),
    "eps": (_positive_float, "AdamW eps"),
    "clip": (_non_negative_float, "gradient-norm clipping threshold (0 = off)"),
    "image_size": (_positive_int, "image side in pixels (position tables are resized; default: the pretrained model's)"),
    "max_text_len": (_positive_int, "texts are truncated to this many tokens"),
    "false_texts": (_positive_int, "irtr: false captions ranked against each image's true one"),
}


def _fmt(v: Any, none: str = "-") -> str:
    if v is None:
        return none
    if isinstance(v, tuple):
        return " ".join(_fmt(x) for x in v)
    return f"{v:g}" if isinstance(v, float) else str(v)


def _knob_defaults(name: str) -> str:
    from ..training.finetune import OFFICIAL_RECIPES, SYNTHETIC_RECIPES

    none = "model's" if name == "image_size" else "from epochs"
    off = ", ".join(f"{t} {_fmt(getattr(r, name), none)}" for t, r in OFFICIAL_RECIPES.items())
    syn = ", ".join(f"{t} {_fmt(getattr(r, name), none)}" for t, r in SYNTHETIC_RECIPES.items())
    return f"official: {off}; synthetic: {syn}"


_FINETUNE_EPILOG = """\
Tasks:
{tasks}

Weights: with --pretrained the encoder starts from that checkpoint (a run directory written by
`bridgetower pretrain`, its model/ folder, a Hugging Face BridgeTower directory or an official
.ckpt); the NLVR2 second-image token type starts as a copy of the first, the IRTR ranking head
as the ITM head's match row. Without --pretrained the model is trained FROM SCRATCH (random
initialisation, configuration --model): a baseline, not a fine-tune.

Data: without --train-data, the bundled synthetic scene sets (generated on the fly; held-out
items from another seed): VQA-style questions about colour, shape, count and position;
NLVR2-style statements about two scenes; SNLI-VE-style hypotheses; captions with false
captions for IRTR. With --train-data, the official pyarrow tables (vqa, nlvr2, snli_ve, or
caption tables for irtr, whose false texts come from other images of the stream).

Recipe: the defaults are the synthetic recipe without --train-data and the published
base-model recipe (scripts/ftfpt_base_*.sh of the official repository) with it; --recipe
picks one explicitly and any flag overrides its value.

Output (--output-dir): checkpoints/, model/ (weights + tokenizer), metrics.jsonl and .csv
(train and held-out records), run_config.json, finetune_summary.json.

Examples:
  bridgetower pretrain                                        # the demo: runs/demo
  bridgetower finetune vqa --pretrained runs/demo             # synthetic VQA
  bridgetower finetune nlvr2 --pretrained runs/demo --steps 100 --output-dir runs/nlvr2
  bridgetower finetune vqa --pretrained ckpt/ --train-data vqav2_train.arrow \\
      --val-data vqav2_val.arrow --tokenizer roberta-base/ --precision bf16
"""


def _add_finetune(sub: argparse._SubParsersAction) -> None:
    from ..training.finetune import TASKS

    tasks = "\n".join(f"  {name:<16}  {spec.description}" for name, spec in TASKS.items())
    p = sub.add_parser(
        "finetune",
        help=f"fine-tune a model on a downstream task ({', '.join(TASKS)})",
        description="Fine-tune a BridgeTower task model and evaluate it on held-out data.",
        epilog=_FINETUNE_EPILOG.format(tasks=tasks),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("task", metavar="TASK", choices=sorted(TASKS), help=f"the task: one of {', '.join(sorted(TASKS))}")
    g = p.add_argument_group("model, data and output")
    g.add_argument("--pretrained", default=None, metavar="DIR",
                   help="start from this checkpoint (run dir, model dir, HF dir or official .ckpt); "
                   "default: none, i.e. train from scratch")
    g.add_argument("--model", default="bridgetower-tiny", metavar="NAME",
                   help="configuration to train from scratch when --pretrained is not given (default: bridgetower-tiny)")
    g.add_argument("--train-data", nargs="+", default=None, metavar="PATH",
                   help="official pyarrow table(s) to train on (default: the bundled synthetic scenes)")
    g.add_argument("--val-data", nargs="+", default=None, metavar="PATH",
                   help="official pyarrow table(s) for held-out evaluation (with --train-data; default: none)")
    g.add_argument("--tokenizer", default=None, metavar="DIR",
                   help="a transformers tokenizer directory (default: the one saved with --pretrained; for the "
                   "synthetic sets it is extended with the question words)")
    g.add_argument("--num-answers", type=_positive_int, default=None,
                   help="vqa with tables: size of the answer vocabulary the labels index (default: 3129)")
    g.add_argument("--output-dir", default=None, metavar="DIR",
                   help=f"where the run goes (default: {FINETUNE_OUTPUT_DIR.format(task='TASK')})")
    g.add_argument("--resume", action="store_true", help="continue the run in --output-dir from its newest checkpoint")
    g.add_argument("--seed", type=_non_negative_int, default=0, help="seed of the init, data order and synthetic training stream (default: 0)")
    g.add_argument("--train-size", type=_positive_int, default=100_000,
                   help="synthetic data: items in the training stream (an epoch; default: 100000)")
    g.add_argument("--eval-size", type=_positive_int, default=512, help="synthetic data: held-out items (default: 512)")
    g.add_argument("--retrieval-eval-size", type=_non_negative_int, default=64,
                   help="irtr on synthetic data: held-out scenes for recall@k (0 = skip; default: 64)")

    k = p.add_argument_group("recipe (defaults per task; any flag overrides)")
    k.add_argument("--recipe", choices=("synthetic", "official"), default=None,
                   help="which defaults the flags below take (default: synthetic without --train-data, official with it)")
    for name, (kind, text) in _KNOBS.items():
        extra: dict[str, Any] = {"nargs": 2, "metavar": ("B1", "B2")} if name == "betas" else {}
        k.add_argument("--" + name.replace("_", "-"), type=kind, default=None,
                       help=f"{text} ({_knob_defaults(name)})", **extra)

    r = p.add_argument_group("run")
    r.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    r.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32",
                   help="fp32; bf16 autocast; fp16 autocast with loss scaling (GPU only) (default: fp32)")
    r.add_argument("--log-every", type=_positive_int, default=25, help="log the averaged training metrics every N steps (default: 25)")
    r.add_argument("--eval-every", type=_non_negative_int, default=0,
                   help="held-out evaluation every N steps (0 = before and after only; default: 0)")
    r.add_argument("--checkpoint-every", type=_non_negative_int, default=0,
                   help="write a checkpoint every N steps (0 = only at the end; default: 0)")
    r.add_argument("--progress", choices=("auto", "on", "off"), default="auto",
                   help="progress bar: auto = only on a terminal (default: auto)")
    r.add_argument("--quiet", action="store_true", help="only warnings and the final summary")
    r.add_argument("--json", action="store_true", help="print the summary as JSON")
    from ..training.tracking import add_tracker_argument

    add_tracker_argument(r)
    p.set_defaults(handler=run_finetune)


def _add_evaluate_retrieval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate-retrieval",
        help="image-text retrieval recall@k (ITC top-k re-ranked by the fusion score)",
        description="Recall@k of image->text and text->image retrieval. Every image and every text is "
        "encoded once; the k best candidates of each query by ITC similarity are fused and re-ranked "
        "by the ITM match logit (or the IRTR head of a retrieval fine-tuned model). A model without an "
        "ITC head ranks every pair.",
        epilog="Examples:\n"
        "  bridgetower evaluate-retrieval                                # runs/demo, 256 held-out scenes\n"
        "  bridgetower evaluate-retrieval --checkpoint runs/finetune-irtr --size 100 --output recall.json\n"
        "  bridgetower evaluate-retrieval --checkpoint ckpt/ --data f30k_test.arrow --k 128",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--checkpoint", default=DEFAULT_CHECKPOINT, metavar="DIR",
                   help=f"a run output dir, its model/ dir or a checkpoint dir (default: {DEFAULT_CHECKPOINT})")
    p.add_argument("--data", nargs="+", default=None, metavar="PATH",
                   help="official caption pyarrow table(s) (e.g. the Flickr30k/COCO test split); default: "
                   "held-out synthetic scenes with distinct captions")
    p.add_argument("--size", type=_positive_int, default=256, help="synthetic data: number of scenes (default: 256)")
    p.add_argument("--seed", type=_non_negative_int, default=7_000_001,
                   help="synthetic data: the scene stream (default: 7000001, used by no training run)")
    p.add_argument("--k", type=_positive_int, default=128,
                   help="ITC candidates re-ranked per query (official: 128 Flickr30k, 256 COCO; default: 128)")
    p.add_argument("--ks", type=_positive_int, nargs="+", default=[1, 5, 10], metavar="K",
                   help="recall cut-offs (default: 1 5 10)")
    p.add_argument("--candidates", choices=("auto", "itc", "all"), default="auto",
                   help="itc: ITC top-k; all: every pair (brute force); auto: itc when the model has an ITC head (default)")
    p.add_argument("--batch-size", type=_positive_int, default=64, help="images / texts per tower pass (default: 64)")
    p.add_argument("--fusion-batch-size", type=_positive_int, default=256, help="pairs per fusion pass (default: 256)")
    p.add_argument("--max-text-len", type=_positive_int, default=50, help="texts are truncated to this many tokens (default: 50)")
    p.add_argument("--output", default=None, metavar="FILE", help="also write the results as JSON to FILE")
    p.add_argument("--device", default=None, help="torch device (default: cpu)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(handler=run_evaluate_retrieval)


def add_parsers(subparsers: argparse._SubParsersAction) -> None:
    """Register ``finetune`` and ``evaluate-retrieval`` on ``subparsers`` (each sets
    ``handler``; ``bridgetower.cli.main`` calls ``args.handler(args)``)."""
    _add_finetune(subparsers)
    _add_evaluate_retrieval(subparsers)


# ------------------------------------------------------------------------------ handlers


def _setup_logging(quiet: bool) -> None:
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
        root.addHandler(handler)
    for name in ("bridgetower", "bridgetower.cli"):
        logging.getLogger(name).setLevel(logging.WARNING if quiet else logging.INFO)


def _device(arg: str | None, default_cuda: bool) -> str:
    import torch

    device = arg or ("cuda" if default_cuda and torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise _UsageError(f"--device: {e}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise _UsageError(f"--device {device}: CUDA is not available on this machine")
    return device


def _fail(command: str, message: str) -> int:
    print(f"bridgetower {command}: error: {message}", file=sys.stderr)
    return 2


def _check_paths(flag: str, paths: list[str] | None) -> None:
    for p in paths or []:
        if not Path(p).exists():
            raise _UsageError(f"{flag}: {p!r} does not exist")


def run_finetune(args: argparse.Namespace) -> int:
    """Handler of ``bridgetower finetune``; returns the exit status."""
    try:
        return _finetune(args)
    except _UsageError as e:
        return _fail("finetune", str(e))


def _finetune(args: argparse.Namespace) -> int:
    from ..training.finetune import (
        OFFICIAL_RECIPES,
        SYNTHETIC_RECIPES,
        finetune,
        get_task,
        resolve_model_dir,
    )

    _setup_logging(args.quiet)
    spec = get_task(args.task)
    synthetic = args.train_data is None
    if args.val_data and synthetic:
        raise _UsageError("--val-data needs --train-data (the synthetic sets bring their own held-out split)")
    _check_paths("--train-data", args.train_data)
    _check_paths("--val-data", args.val_data)
    recipe_name = args.recipe or ("synthetic" if synthetic else "official")
    recipe = (SYNTHETIC_RECIPES if recipe_name == "synthetic" else OFFICIAL_RECIPES)[spec.name]
    overrides = {name: getattr(args, name) for name in _KNOBS}
    if overrides["betas"] is not None:
        overrides["betas"] = tuple(overrides["betas"])
    recipe = recipe.replace(**overrides)
    if args.epochs is not None and args.steps is None:
        recipe = dataclasses.replace(recipe, steps=None)  # --epochs alone decides the length
    if isinstance(recipe.warmup, int) and recipe.steps is not None and recipe.warmup > recipe.steps:
        raise _UsageError(f"--warmup {recipe.warmup} steps exceeds --steps {recipe.steps}")
    if args.pretrained is not None:
        p = Path(args.pretrained)
        if not p.exists():
            raise _UsageError(f"--pretrained: {args.pretrained!r} does not exist")
        if p.is_dir():
            try:
                resolve_model_dir(p)
            except FileNotFoundError as e:
                if not any(p.glob("*.ckpt")):
                    raise _UsageError(f"--pretrained: {e}") from None
    else:
        logger.warning("no --pretrained: training %s from scratch (random initialisation)", args.model)
    if args.tokenizer is not None and not Path(args.tokenizer).is_dir():
        raise _UsageError(f"--tokenizer: {args.tokenizer!r} is not a directory")
    device = _device(args.device, default_cuda=True)
    if args.precision == "fp16" and not device.startswith("cuda"):
        raise _UsageError("--precision fp16 needs a CUDA device; use bf16 or fp32 on CPU")
    out_dir = Path(args.output_dir or FINETUNE_OUTPUT_DIR.format(task=spec.name))
    progress = {"auto": None, "on": True, "off": False}[args.progress]
    try:
        summary = finetune(
            spec.name, out_dir, pretrained=args.pretrained, model=args.model, recipe=recipe,
            train_data=args.train_data, val_data=args.val_data, tokenizer=args.tokenizer,
            num_answers=args.num_answers, train_size=args.train_size, eval_size=args.eval_size,
            retrieval_eval_size=args.retrieval_eval_size, seed=args.seed, device=device,
            precision=args.precision, log_every=args.log_every, eval_every=args.eval_every,
            checkpoint_every=args.checkpoint_every, resume=args.resume, progress=progress,
            trackers=args.tracker,
        )
    except (ValueError, FileNotFoundError, ImportError) as e:  # ImportError: a --tracker not installed
        raise _UsageError(str(e)) from None
    if args.json:
        print(json.dumps(summary, indent=1))
        return 0
    print(_summary_table(summary))
    print(f"model: {summary['model_dir']}   metrics: {out_dir / 'metrics.jsonl'}")
    return 0


def _summary_table(summary: dict) -> str:
    before, after = summary.get("before") or {}, summary.get("after") or {}
    keys = [k for k in after if k != "loss"] + (["loss"] if "loss" in after else [])
    head = (f"{summary['task']}: {summary['steps']} steps in {summary['train_seconds']:.0f} s, "
            f"{'from ' + summary['pretrained'] if summary['pretrained'] else 'from scratch'}")
    if not after:
        return head + "\nno held-out evaluation (give --val-data)"
    lines = [head, f"{'held-out':<12} {'before':>8} {'after':>8}", "-" * 30]
    for k in keys:
        b = f"{before[k]:8.4f}" if k in before else "       -"
        lines.append(f"{k:<12} {b} {after[k]:8.4f}")
    return "\n".join(lines)


def run_evaluate_retrieval(args: argparse.Namespace) -> int:
    """Handler of ``bridgetower evaluate-retrieval``; returns the exit status."""
    try:
        return _evaluate_retrieval(args)
    except _UsageError as e:
        return _fail("evaluate-retrieval", str(e))


def _read_tables(paths, transform, tokenizer, max_len):
    import torch

    from ..data.arrow import ArrowRetrievalDataset

    ds = ArrowRetrievalDataset(paths, transform=transform, tokenizer=tokenizer, max_length=max_len)
    images, ids, text_image = [], [], []
    for sample in ds:
        if not isinstance(sample, dict):
            continue
        text_image += [len(images)] * len(sample["input_ids"])
        ids += list(sample["input_ids"])
        images.append(sample["pixel_values"])
    if not images:
        raise _UsageError(f"--data: no usable image with captions in {paths}")
    length = max(int(t.numel()) for t in ids)
    input_ids = torch.full((len(ids), length), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(ids), length), dtype=torch.long)
    for i, t in enumerate(ids):
        input_ids[i, : t.numel()] = t
        mask[i, : t.numel()] = 1
    return torch.stack(images), input_ids, mask, torch.tensor(text_image)


def _evaluate_retrieval(args: argparse.Namespace) -> int:
    import torch

    from ..data import ImageTransform, SceneConfig
    from ..data.downstream import scene_retrieval_set
    from ..models import TASK_MODELS
    from ..training.finetune import resolve_model_dir
    from ..training.retrieval import evaluate_retrieval

    _setup_logging(True)
    try:
        model_dir = resolve_model_dir(args.checkpoint)
    except FileNotFoundError as e:
        raise _UsageError(f"--checkpoint: {e}") from None
    _check_paths("--data", args.data)
    if not ((model_dir / "tokenizer.json").is_file() or (model_dir / "tokenizer_config.json").is_file()):
        raise _UsageError(f"--checkpoint: no tokenizer saved next to the model in {model_dir}")
    meta = json.loads((model_dir / "config.json").read_text())
    cls = TASK_MODELS.get(meta.get("task", "itm"))
    if cls is None:
        raise _UsageError(f"--checkpoint: {model_dir} holds an unknown task {meta.get('task')!r}")
    model = cls.from_pretrained(model_dir)
    if not (hasattr(model, "itm_score") or hasattr(model, "rank_output")):
        raise _UsageError(f"--checkpoint: a {type(model).__name__} has neither an ITM nor an IRTR head to rank with")
    if args.candidates == "itc" and getattr(model, "itc", None) is None:
        raise _UsageError(f"--candidates itc: a {type(model).__name__} has no ITC head; use --candidates all")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    device = _device(args.device, default_cuda=False)
    model.to(device)
    image_size = model.config.vision.image_size
    transform = ImageTransform(image_size)
    if args.data:
        pixel_values, input_ids, mask, text_image = _read_tables(args.data, transform, tokenizer, args.max_text_len)
        source = [str(p) for p in args.data]
    else:
        s = scene_retrieval_set(args.size, seed=args.seed, config=SceneConfig(image_size=image_size),
                                transform=transform, tokenizer=tokenizer, max_length=args.max_text_len)
        pixel_values, input_ids, mask, text_image = s["pixel_values"], s["input_ids"], s["attention_mask"], s["text_image"]
        source = f"synthetic scenes (stream {args.seed}, {args.size} scenes)"
    with torch.no_grad():
        rec = evaluate_retrieval(model, pixel_values, input_ids, mask, text_image, k=args.k, ks=args.ks,
                                 candidates=args.candidates, batch_size=args.batch_size,
                                 fusion_batch_size=args.fusion_batch_size)
    result = {"checkpoint": str(model_dir), "data": source, "images": int(pixel_values.shape[0]),
              "texts": int(input_ids.shape[0]), "k": args.k, "candidates": args.candidates, "recall": rec}
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(result, indent=1) + "\n")
    if args.json:
        print(json.dumps(result, indent=1))
        return 0
    print(f"{result['images']} images, {result['texts']} texts ({source}); model {model_dir}")
    print(f"{'':<14}" + "".join(f"{'R@' + str(k):>8}" for k in args.ks))
    for d, label in (("i2t", "image -> text"), ("t2i", "text -> image")):
        print(f"{label:<14}" + "".join(f"{100 * rec[f'{d}_r{k}']:7.1f}%" for k in args.ks))
    if any(key.startswith("itc_") for key in rec):
        for d, label in (("i2t", "ITC only i2t"), ("t2i", "ITC only t2i")):
            print(f"{label:<14}" + "".join(f"{100 * rec[f'itc_{d}_r{k}']:7.1f}%" for k in args.ks))
    print(f"{int(rec['num_fused'])} pairs fused (k = {args.k})")
    return 0
