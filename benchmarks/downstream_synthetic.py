"""Pretrained vs from-scratch fine-tuning on the bundled synthetic downstream sets.

For every task (VQA-, NLVR2-, SNLI-VE-style sets and IRTR retrieval) the tiny model is
fine-tuned twice with the same recipe, steps, seed and data: once from the demo's pretrained
checkpoint (``bridgetower pretrain`` writes it to ``runs/demo``), once from a random
initialisation.  The held-out metric of each run is printed as a Markdown table (the one in
docs/downstream.md) and written to ``<out>/results.json``; the pretrained
checkpoint's own zero-shot retrieval (ITC top-k re-ranked by ITM) is added for reference.

Usage::

    bridgetower pretrain                                   # once: the demo checkpoint
    python benchmarks/downstream_synthetic.py --pretrained runs/demo
    python benchmarks/downstream_synthetic.py --tasks vqa nlvr2 --steps 100   # quicker
    bridgetower pretrain --model managertower-tiny --output-dir runs/demo-mt   # ManagerTower
    python benchmarks/downstream_synthetic.py --pretrained runs/demo-mt --model managertower-tiny \
        --out runs/downstream_synthetic_mt

This is a script, not a pytest-benchmark suite: each run takes about a minute on a 2-core CPU
(the NLVR2-style runs, 600 steps, about four).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from bridgetower.training.finetune import SYNTHETIC_RECIPES, TASKS, finetune

_METRIC_LABEL = {
    "vqa": ("vqa_score", "VQA-style: answer accuracy (16 answers)"),
    "nlvr2": ("accuracy", "NLVR2-style: true/false accuracy"),
    "snli-ve": ("accuracy", "SNLI-VE-style: 3-way accuracy"),
    "irtr": ("accuracy", "IRTR: true caption ranked first among 1 + K"),
}


def _zero_shot_retrieval(pretrained: str, size: int, seed: int) -> dict | None:
    """Recall of the pretrained model itself (ITC top-k re-ranked by ITM), no fine-tuning."""
    from transformers import AutoTokenizer

    from bridgetower.data import ImageTransform, SceneConfig
    from bridgetower.data.downstream import scene_retrieval_set
    from bridgetower.models import TASK_MODELS
    from bridgetower.training.finetune import resolve_model_dir
    from bridgetower.training.retrieval import evaluate_retrieval

    mdir = resolve_model_dir(pretrained)
    meta = json.loads((mdir / "config.json").read_text())
    model = TASK_MODELS[meta.get("task", "pretraining")].from_pretrained(mdir)
    if not hasattr(model, "itm_score"):
        return None
    tok = AutoTokenizer.from_pretrained(str(mdir))
    s = model.config.vision.image_size
    r = scene_retrieval_set(size, seed=seed, config=SceneConfig(image_size=s), transform=ImageTransform(s), tokenizer=tok)
    return evaluate_retrieval(model, r["pixel_values"], r["input_ids"], r["attention_mask"], r["text_image"], k=16)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pretrained", default="runs/demo", help="the demo's checkpoint (default: runs/demo)")
    p.add_argument("--tasks", nargs="+", default=list(_METRIC_LABEL), choices=sorted(TASKS),
                   help="tasks to run (default: the four vision-language tasks)")
    p.add_argument("--steps", type=int, default=None, help="override the recipe's steps (default: the synthetic recipe)")
    p.add_argument("--model", default="bridgetower-tiny",
                   help="configuration of the from-scratch runs (default: bridgetower-tiny; the pretrained runs "
                   "take the checkpoint's); managertower-tiny for ManagerTower")
    p.add_argument("--seed", type=int, default=0, help="seed of both runs of a task (default: 0)")
    p.add_argument("--eval-size", type=int, default=512, help="held-out items per task (default: 512)")
    p.add_argument("--retrieval-size", type=int, default=64, help="held-out scenes for recall@k (default: 64)")
    p.add_argument("--out", default="runs/downstream_synthetic", help="output directory (default: runs/downstream_synthetic)")
    p.add_argument("--inits", nargs="+", default=["pretrained", "scratch"], choices=("pretrained", "scratch"),
                   help="which runs to do (default: both); results already in <out>/results.json are kept, so "
                   "the scratch runs can go first, while the demo is still pretraining")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results: dict = {"pretrained": args.pretrained, "seed": args.seed, "retrieval_size": args.retrieval_size,
                     "tasks": {}}
    if (out / "results.json").is_file():  # merge with earlier runs (e.g. --inits scratch first)
        previous = json.loads((out / "results.json").read_text())
        results["tasks"] = previous.get("tasks", {})
        if "zero_shot_retrieval" in previous:
            results["zero_shot_retrieval"] = previous["zero_shot_retrieval"]
    for task in args.tasks:
        recipe = SYNTHETIC_RECIPES[task]
        if args.steps is not None:
            recipe = recipe.replace(steps=args.steps)
        row = results["tasks"].get(task, {})
        row["recipe"] = {"steps": recipe.steps, "batch_size": recipe.batch_size, "lr": recipe.lr}
        for init, source in (("pretrained", args.pretrained), ("scratch", None)):
            if init not in args.inits:
                continue
            t = time.perf_counter()
            summary = finetune(task, out / f"{task}-{init}", pretrained=source, recipe=recipe, seed=args.seed,
                               model=None if source is not None else args.model,
                               eval_size=args.eval_size, retrieval_eval_size=args.retrieval_size, progress=False,
                               log_every=50)
            row[init] = {"before": summary["before"], "after": summary["after"],
                         "seconds": round(time.perf_counter() - t, 1)}
            print(f"{task:8s} {init:10s} {summary['after']} ({row[init]['seconds']} s)", flush=True)
        results["tasks"][task] = row
        (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    if "irtr" in args.tasks and "pretrained" in args.inits:
        results["zero_shot_retrieval"] = _zero_shot_retrieval(args.pretrained, args.retrieval_size, 3_000_018)
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    print()
    print(format_table(results))
    return 0


def format_table(results: dict) -> str:
    """The Markdown table: held-out metric after fine-tuning from scratch and from the demo
    checkpoint, and the demo checkpoint before fine-tuning (a fresh head, except IRTR's)."""
    lines = ["| task (held-out metric) | steps | from scratch | demo checkpoint, not fine-tuned "
             "| demo checkpoint, fine-tuned | fine-tuned / scratch |",
             "|---|---|---|---|---|---|"]

    def row_line(label, steps, a, before, b):
        return (f"| {label} | {steps} | {100 * a:.1f}% | {100 * before:.1f}% | {100 * b:.1f}% | "
                f"{b / max(a, 1e-9):.2f}x |")

    for task, row in results["tasks"].items():
        if "scratch" not in row or "pretrained" not in row:
            continue
        key, label = _METRIC_LABEL.get(task, ("accuracy", f"{task}: accuracy"))
        steps = row["recipe"]["steps"]
        pre = row["pretrained"]
        lines.append(row_line(label, steps, row["scratch"]["after"][key], pre["before"][key], pre["after"][key]))
        if task == "irtr":
            for d, name in (("t2i", "text -> image"), ("i2t", "image -> text")):
                k = f"{d}_r1"
                label = f"IRTR: retrieval R@1 {name}, {results['retrieval_size']} held-out scenes"
                lines.append(row_line(label, steps, row["scratch"]["after"][k], pre["before"][k], pre["after"][k]))
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
