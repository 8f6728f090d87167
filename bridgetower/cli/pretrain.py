"""``bridgetower pretrain``: the arguments of :func:`bridgetower.training.pretrain.pretrain`.

Without arguments it runs the bundled demo; with ``--data`` it pretrains on your
image-caption data with the published recipe's defaults.  One flag per knob of
:class:`~bridgetower.training.recipes.PretrainRecipe`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..training.pretrain import DEMO_OUTPUT_DIR, PRETRAIN_OUTPUT_DIR
from ..training.recipes import PRETRAIN_RECIPES, PretrainRecipe
from .common import (
    PROGRESS,
    CLIError,
    add_recipe_flags,
    choose_device,
    driver_errors,
    fmt,
    format_skips,
    non_negative_int,
    positive_int,
    raise_for_driver,
    recipe_overrides,
    setup_logging,
)

__all__ = ["add_parser", "resolve_recipe", "run"]

_EPILOG = """\
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

An output directory holding a previous run is kept: --resume continues it (with the run's own
settings: a flag given again must agree), --overwrite replaces it (only the files bridgetower
wrote are removed, each one named).

Examples:
  bridgetower pretrain                                  # the bundled demo
  bridgetower pretrain --steps 200 --output-dir runs/quick
  bridgetower pretrain --data my_pairs/ --model bridgetower-base --precision bf16
  bridgetower pretrain --output-dir runs/demo --resume  # continue an interrupted run
  torchrun --nproc_per_node=4 -m bridgetower.cli pretrain --data my_pairs/   # 4 processes, DDP
"""


def _defaults(name: str) -> str:
    return f"official: {fmt(getattr(PRETRAIN_RECIPES['official'], name))}; demo: {fmt(getattr(PRETRAIN_RECIPES['demo'], name))}"


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``pretrain`` on ``sub`` (sets ``handler``)."""
    from ..training.tracking import add_tracker_argument

    p = sub.add_parser(
        "pretrain",
        help="pretrain a model (no arguments: the bundled synthetic-scene demo)",
        description="Pretrain a BridgeTower model with MLM + ITM (+ ITC). Without arguments, "
        "runs the bundled demo on synthetic scenes.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    g = p.add_argument_group("data, model and output")
    g.add_argument("--model", default=None, metavar="NAME|JSON",
                   help="a configuration name (bridgetower-tiny, -base, -large) or a JSON config file "
                   "(default: bridgetower-tiny; the vocabulary size follows the tokenizer)")
    g.add_argument("--data", default=None, metavar="PATH",
                   help="image-caption data: a folder with one JSONL/CSV index (image paths relative to "
                   "it), an index file, WebDataset .tar shards (a file, a folder of them, or a brace "
                   "pattern 'shard-{000..009}.tar'). Default: the bundled synthetic scenes (demo)")
    g.add_argument("--allow-remote-data", action="store_true",
                   help="allow --data to name pipe: commands and http(s):// shard URLs (they run shell commands "
                   "or reach the network; refused without this flag)")
    g.add_argument("--tokenizer", default=None, metavar="DIR|HUB_NAME",
                   help="a transformers tokenizer directory or Hub name (default: the --text-pretrained "
                   "model's, else a word-level tokenizer built offline from the caption words)")
    g.add_argument("--vision-pretrained", default=None, metavar="FILE|MODEL:TAG",
                   help="start the vision tower from an open_clip checkpoint file or an open_clip model "
                   "and pretrained tag (e.g. ViT-B-16:openai); the --model config must match it")
    g.add_argument("--text-pretrained", default=None, metavar="DIR|HUB_NAME",
                   help="start the text tower from a transformers model directory or Hub name (e.g. "
                   "roberta-base); the --model config must match it")
    g.add_argument("--output-dir", default=None, metavar="DIR",
                   help=f"where checkpoints, metrics and the plot go (default: {DEMO_OUTPUT_DIR} for the "
                   f"demo, {PRETRAIN_OUTPUT_DIR} otherwise). A previous run there is kept: pass --resume "
                   "to continue it or --overwrite to replace it")
    g.add_argument("--overwrite", action="store_true",
                   help="replace a previous run in --output-dir (only the files bridgetower wrote are removed, "
                   "after every other flag has been checked)")
    g.add_argument("--recipe", choices=sorted(PRETRAIN_RECIPES), default=None,
                   help="which defaults the knobs below take (default: demo without --data, official with it)")
    g.add_argument("--resume", nargs="?", const="latest", default=None, metavar="CHECKPOINT",
                   help="continue from the newest usable checkpoint in the output dir (or the given "
                   "checkpoint directory), exactly where it stopped, with the run's settings")
    g.add_argument("--seed", type=non_negative_int, default=None, help="seed of the model init, data order and masking (default: 0)")

    add_recipe_flags(p.add_argument_group("recipe knobs (defaults: official / demo)"), PretrainRecipe, _defaults)

    r = p.add_argument_group("run")
    r.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default=None,
                   help="fp32; bf16 autocast (CPU or GPU); fp16 autocast with loss scaling (GPU only) (default: fp32)")
    r.add_argument("--gradient-checkpointing", action="store_true", help="recompute activations in the backward pass (less memory)")
    r.add_argument("--release-freed-memory", action="store_true",
                   help="CPU/glibc: return freed tensor memory to the system at once (lower peak RSS, "
                        "~20%% more CPU time; see bridgetower.training.cpu_memory)")
    r.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    r.add_argument("--num-workers", type=non_negative_int, default=0,
                   help="DataLoader worker processes that read and decode the data (default: 0, in the "
                   "training process); the batches are the same, resume stays exact")
    r.add_argument("--keep-checkpoints", type=non_negative_int, default=2, help="newest checkpoints kept (0 = all; default: 2)")
    r.add_argument("--eval-size", type=positive_int, default=None, help="held-out scenes per demo measurement (even; default: 256)")
    r.add_argument("--num-scenes", type=positive_int, default=None,
                   help="size of the synthetic training stream (an epoch; default: 1000000)")
    r.add_argument("--progress", choices=tuple(PROGRESS), default="auto",
                   help="progress bar: auto = only on a terminal (default: auto)")
    r.add_argument("--quiet", action="store_true", help="only warnings and the final tables")
    add_tracker_argument(r)
    r.add_argument("--distributed", choices=("auto", "none", "ddp", "fsdp"), default="auto",
                   help="data-parallel strategy when launched by torchrun: ddp, or fsdp (FSDP2 fully_shard, "
                   "for the large model); auto = ddp under torchrun with several processes, none otherwise. "
                   "--batch-size is then the global batch, split across the processes (default: auto)")
    p.set_defaults(handler=run)


def _output_dir(args: argparse.Namespace) -> Path:
    return Path(args.output_dir or (PRETRAIN_OUTPUT_DIR if args.data else DEMO_OUTPUT_DIR))


def resolve_recipe(args: argparse.Namespace) -> PretrainRecipe | None:
    """The recipe ``--recipe`` names (default: demo without ``--data``, official with it) with
    the knob flags given; a ``CLIError`` for values the flags' types alone cannot rule out.
    With ``--resume``: ``None`` (the run's recipe) unless knob flags are given, then the
    run's recipe with them (the driver refuses those that differ)."""
    from ..training.pretrain import run_recipe

    overrides = recipe_overrides(args, PretrainRecipe)
    started = run_recipe(_output_dir(args)) if args.resume else None
    if started is not None:
        if args.recipe and args.recipe != started.name:
            raise CLIError(f"--recipe: the run was started with the {started.name!r} recipe, not {args.recipe!r}")
        return started.replace(**overrides) if overrides else None
    recipe = PRETRAIN_RECIPES[args.recipe or ("official" if args.data else "demo")]
    r = recipe.replace(**overrides)
    b1, b2 = r.betas
    if not (0 <= b1 < 1 and 0 <= b2 < 1):
        raise CLIError(f"--betas must be two numbers in [0, 1), got {b1:g} {b2:g}")
    if r.lr <= 0:
        raise CLIError(f"--lr must be > 0, got {r.lr:g}")
    if r.eps <= 0:
        raise CLIError(f"--eps must be > 0, got {r.eps:g}")
    if r.cross_modal_lr_mult <= 0 or r.head_lr_mult <= 0:
        raise CLIError("--cross-modal-lr-mult and --head-lr-mult must be > 0")
    if r.mlm_weight == r.itm_weight == r.itc_weight == 0:
        raise CLIError("at least one of --mlm-weight, --itm-weight, --itc-weight must be > 0")
    if isinstance(r.warmup, int) and r.warmup > r.steps:
        if "warmup" in overrides:
            raise CLIError(f"--warmup {r.warmup} steps exceeds --steps {r.steps}")
        r = r.replace(warmup=r.steps // 10)  # a short run: the default warm-up shrinks to 10%
    if args.eval_size is not None and args.eval_size % 2:
        raise CLIError(f"--eval-size must be even (half matching pairs), got {args.eval_size}")
    return r


def run(args: argparse.Namespace) -> int:
    """Handler of ``bridgetower pretrain``; returns the exit status."""
    from ..training.distributed import start_data_parallel
    from ..training.pretrain import pretrain

    recipe = resolve_recipe(args)
    device = choose_device(args.device, default_cuda=True, precision=args.precision)
    try:
        ctx, strategy = start_data_parallel(args.distributed, device=args.device)
    except ValueError as e:
        raise CLIError(f"--distributed: {e}") from None
    try:
        setup_logging(args.quiet or (ctx is not None and not ctx.is_main))
        if args.release_freed_memory:
            from ..training.cpu_memory import release_freed_cpu_memory

            release_freed_cpu_memory()
        try:
            result = pretrain(
                args.output_dir, recipe=recipe, model=args.model, data=args.data, tokenizer=args.tokenizer,
                resume=args.resume, overwrite=args.overwrite, allow_remote_data=args.allow_remote_data,
                seed=args.seed, precision=args.precision,
                gradient_checkpointing=args.gradient_checkpointing, device=device,
                keep_checkpoints=args.keep_checkpoints, eval_size=args.eval_size, num_scenes=args.num_scenes,
                progress=PROGRESS[args.progress], trackers=args.tracker, ctx=ctx, strategy=strategy,
                vision_pretrained=args.vision_pretrained, text_pretrained=args.text_pretrained,
                num_workers=args.num_workers,
            )
        except driver_errors() as e:
            raise_for_driver(e, {"trackers": "--tracker", "allow_remote_data": "--allow-remote-data",
                                 "vision_pretrained": "--vision-pretrained", "text_pretrained": "--text-pretrained"})
    finally:
        if ctx is not None:
            ctx.shutdown()
    return _report(result, demo=args.data is None)


def _report(result: dict[str, Any], *, demo: bool) -> int:
    out_dir = result["output_dir"]
    if result["interrupted"]:
        print(f"\ninterrupted at step {result['steps']} ({format_skips(result)}); continue with: "
              f"bridgetower pretrain --output-dir {out_dir} --resume", file=sys.stderr)
        return 130
    if not result["main_process"]:
        return 0
    print()
    for table in result["tables"]:
        print(table)
        print()
    steps, train_s = result["steps"], result["train_seconds"]
    print(f"{steps} steps in {train_s:.0f} s ({steps / max(train_s, 1e-9):.2f} steps/s); "
          f"{result['total_seconds']:.0f} s in all")
    print(format_skips(result))
    print(f"checkpoint: {out_dir}/model   metrics: {out_dir}/metrics.jsonl (+ .csv)   "
          f"plot: {out_dir}/training_curves.png")
    if demo:
        print(f"score an image: bridgetower score IMAGE 'a red circle on the left' --checkpoint {out_dir}")
        from ..search.demo import run_search_demo

        run_search_demo(out_dir)  # index held-out scenes, two searches, one explanation
    return 0
