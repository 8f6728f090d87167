"""``bridgetower finetune TASK``: the arguments of :func:`bridgetower.training.finetune.finetune`.

Fine-tunes a task model on the bundled synthetic scene sets (default) or on the official
pyarrow tables (``--train-data``), from a pretrained checkpoint (``--pretrained``) or, without
it, from scratch.  One flag per knob of :class:`~bridgetower.training.recipes.FinetuneRecipe`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
from pathlib import Path

from ..training.recipes import OFFICIAL_RECIPES, SYNTHETIC_RECIPES, FinetuneRecipe
from .common import (
    PROGRESS,
    CLIError,
    add_recipe_flags,
    check_paths,
    choose_device,
    driver_errors,
    find_model_dir,
    format_skips,
    non_negative_int,
    positive_int,
    raise_for_driver,
    recipe_defaults,
    recipe_overrides,
    setup_logging,
)

__all__ = ["FINETUNE_OUTPUT_DIR", "add_parser", "run", "summary_table"]

logger = logging.getLogger(__name__)

FINETUNE_OUTPUT_DIR = os.path.join("runs", "finetune-{task}")

_EPILOG = """\
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
captions for IRTR. With --train-data, the official pyarrow tables (vqa, nlvr2, snli-ve, or
caption tables for irtr, whose false texts come from other images of the stream).

Recipe: the defaults are the synthetic recipe without --train-data and the published
base-model recipe (scripts/ftfpt_base_*.sh of the official repository) with it; --recipe
picks one explicitly and any flag overrides its value.

Output (--output-dir): checkpoints/, model/ (weights + tokenizer), metrics.jsonl and .csv
(train and held-out records), run_config.json, finetune_summary.json (with the samples skipped
per reason). A previous run there is kept: --resume continues it with its own settings (a flag
given again must agree), --overwrite replaces it (only the files bridgetower wrote go).

Examples:
  bridgetower pretrain                                        # the demo: runs/demo
  bridgetower finetune vqa --pretrained runs/demo             # synthetic VQA
  bridgetower finetune nlvr2 --pretrained runs/demo --steps 100 --output-dir runs/nlvr2
  bridgetower finetune vqa --pretrained ckpt/ --train-data vqav2_train.arrow \\
      --val-data vqav2_val.arrow --tokenizer roberta-base/ --precision bf16
"""


def _defaults(name: str) -> str:
    none = "model's" if name == "image_size" else "from epochs"
    return (f"official: {recipe_defaults(OFFICIAL_RECIPES, name, none)}; "
            f"synthetic: {recipe_defaults(SYNTHETIC_RECIPES, name, none)}")


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``finetune`` on ``sub`` (sets ``handler``)."""
    from ..training.tasks import TASKS
    from ..training.tracking import add_tracker_argument

    tasks = "\n".join(f"  {name:<16}  {spec.description}" for name, spec in TASKS.items())
    p = sub.add_parser(
        "finetune",
        help=f"fine-tune a model on a downstream task ({', '.join(TASKS)})",
        description="Fine-tune a BridgeTower task model and evaluate it on held-out data.",
        epilog=_EPILOG.format(tasks=tasks),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("task", metavar="TASK", choices=sorted(TASKS), help=f"the task: one of {', '.join(sorted(TASKS))}")
    g = p.add_argument_group("model, data and output")
    g.add_argument("--pretrained", default=None, metavar="DIR",
                   help="start from this checkpoint (run dir, model dir, HF dir or official .ckpt); "
                   "default: none, i.e. train from scratch")
    g.add_argument("--model", default=None, metavar="NAME",
                   help="configuration to train from scratch when --pretrained is not given (default: bridgetower-tiny)")
    g.add_argument("--train-data", nargs="+", default=None, metavar="PATH",
                   help="official pyarrow table(s) to train on (default: the bundled synthetic scenes)")
    g.add_argument("--val-data", nargs="+", default=None, metavar="PATH",
                   help="official pyarrow table(s) for held-out evaluation (with --train-data; default: none)")
    g.add_argument("--tokenizer", default=None, metavar="DIR",
                   help="a transformers tokenizer directory (default: the one saved with --pretrained; for the "
                   "synthetic sets it is extended with the question words)")
    g.add_argument("--num-answers", type=positive_int, default=None,
                   help="vqa with tables: size of the answer vocabulary the labels index (default: 3129)")
    g.add_argument("--output-dir", default=None, metavar="DIR",
                   help=f"where the run goes (default: {FINETUNE_OUTPUT_DIR.format(task='TASK')})")
    g.add_argument("--resume", action="store_true",
                   help="continue the run in --output-dir from its newest usable checkpoint, with the run's settings")
    g.add_argument("--overwrite", action="store_true",
                   help="replace a previous run in --output-dir (only the files bridgetower wrote are removed)")
    g.add_argument("--seed", type=non_negative_int, default=None, help="seed of the init, data order and synthetic training stream (default: 0)")
    g.add_argument("--train-size", type=positive_int, default=None,
                   help="synthetic data: items in the training stream (an epoch; default: 100000)")
    g.add_argument("--eval-size", type=positive_int, default=None, help="synthetic data: held-out items (default: 512)")
    g.add_argument("--retrieval-eval-size", type=non_negative_int, default=None,
                   help="irtr on synthetic data: held-out scenes for recall@k (0 = skip; default: 64)")

    k = p.add_argument_group("recipe (defaults per task; any flag overrides)")
    k.add_argument("--recipe", choices=("synthetic", "official"), default=None,
                   help="which defaults the flags below take (default: synthetic without --train-data, official with it)")
    add_recipe_flags(k, FinetuneRecipe, _defaults)

    r = p.add_argument_group("run")
    r.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    r.add_argument("--num-workers", type=non_negative_int, default=0,
                   help="DataLoader worker processes that read and decode the data (default: 0, in the "
                   "training process); the batches are the same, resume stays exact")
    r.add_argument("--augment", choices=("official", "none", "randaug", "randaug-geometric"), default="official",
                   help="training image augmentation: 'official' (default) = the task's official recipe on "
                   "official tables (VQA randaug-geometric; NLVR2, SNLI-VE, IRTR randaug), none on synthetic data")
    r.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default=None,
                   help="fp32; bf16 autocast; fp16 autocast with loss scaling (GPU only) (default: fp32)")
    r.add_argument("--log-every", type=positive_int, default=None, help="log the averaged training metrics every N steps (default: 25)")
    r.add_argument("--eval-every", type=non_negative_int, default=None,
                   help="held-out evaluation every N steps (0 = before and after only; default: 0)")
    r.add_argument("--checkpoint-every", type=non_negative_int, default=None,
                   help="write a checkpoint every N steps (0 = only at the end; default: 0)")
    r.add_argument("--progress", choices=tuple(PROGRESS), default="auto",
                   help="progress bar: auto = only on a terminal (default: auto)")
    r.add_argument("--quiet", action="store_true", help="only warnings and the final summary")
    r.add_argument("--json", action="store_true", help="print the summary as JSON")
    add_tracker_argument(r)
    p.set_defaults(handler=run)


def _recipe(args: argparse.Namespace, task: str, synthetic: bool, out_dir: Path) -> FinetuneRecipe | None:
    """The recipe of a new run (``--recipe``'s defaults with the flags given); with
    ``--resume``, ``None`` (the run's) or, with knob flags, the run's recipe with them (the
    driver refuses those that differ)."""
    from ..training.finetune import run_finetune_recipe

    started = run_finetune_recipe(out_dir) if args.resume else None
    if started is not None and not args.recipe:  # --recipe NAME again: its values must be the run's
        overrides = recipe_overrides(args, FinetuneRecipe)
        return started.replace(**overrides) if overrides else None
    name = args.recipe or ("synthetic" if synthetic else "official")
    recipe = (SYNTHETIC_RECIPES if name == "synthetic" else OFFICIAL_RECIPES)[task]
    recipe = recipe.replace(**recipe_overrides(args, FinetuneRecipe))
    if args.epochs is not None and args.steps is None:
        recipe = dataclasses.replace(recipe, steps=None)  # --epochs alone decides the length
    if isinstance(recipe.warmup, int) and recipe.steps is not None and recipe.warmup > recipe.steps:
        raise CLIError(f"--warmup {recipe.warmup} steps exceeds --steps {recipe.steps}")
    return recipe


def run(args: argparse.Namespace) -> int:
    """Handler of ``bridgetower finetune``; returns the exit status."""
    from ..training.finetune import finetune
    from ..training.tasks import get_task

    setup_logging(args.quiet)
    spec = get_task(args.task)
    synthetic = args.train_data is None
    if args.val_data and synthetic:
        raise CLIError("--val-data needs --train-data (the synthetic sets bring their own held-out split)")
    check_paths("--train-data", args.train_data)
    check_paths("--val-data", args.val_data)
    out_dir = Path(args.output_dir or FINETUNE_OUTPUT_DIR.format(task=spec.name))
    recipe = _recipe(args, spec.name, synthetic, out_dir)
    if args.pretrained is not None:
        p = Path(args.pretrained)
        check_paths("--pretrained", [args.pretrained])
        if p.is_dir() and not any(p.glob("*.ckpt")):
            find_model_dir(p, "--pretrained")
    elif not args.resume:
        logger.warning("no --pretrained: training %s from scratch (random initialisation)",
                       args.model or "bridgetower-tiny")
    if args.tokenizer is not None and not Path(args.tokenizer).is_dir():
        raise CLIError(f"--tokenizer: {args.tokenizer!r} is not a directory")
    device = choose_device(args.device, default_cuda=True, precision=args.precision)
    try:
        summary = finetune(
            spec.name, out_dir, pretrained=args.pretrained, model=args.model, recipe=recipe,
            train_data=args.train_data, val_data=args.val_data, tokenizer=args.tokenizer,
            num_answers=args.num_answers, train_size=args.train_size, eval_size=args.eval_size,
            retrieval_eval_size=args.retrieval_eval_size, seed=args.seed, device=device,
            precision=args.precision, log_every=args.log_every, eval_every=args.eval_every,
            checkpoint_every=args.checkpoint_every, resume=args.resume, overwrite=args.overwrite,
            progress=PROGRESS[args.progress], trackers=args.tracker, augment=args.augment,
            num_workers=args.num_workers,
        )
    except driver_errors() as e:
        raise_for_driver(e, {"trackers": "--tracker"})
    if args.json:
        print(json.dumps(summary, indent=1))
        return 0
    print(summary_table(summary))
    print(format_skips(summary))
    print(f"model: {summary['model_dir']}   metrics: {out_dir / 'metrics.jsonl'}")
    return 0


def summary_table(summary: dict) -> str:
    """The held-out metrics of a :func:`~bridgetower.training.finetune.finetune` summary,
    before and after, under a line saying what was trained."""
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
