"""``bridgetower evaluate-retrieval``: recall@1/5/10 of image->text and text->image retrieval,
ITC top-k candidates re-ranked by the fusion score
(:func:`bridgetower.training.retrieval.evaluate_retrieval`)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..training.pretrain import DEMO_OUTPUT_DIR
from .common import (
    CLIError,
    add_dtype_flag,
    check_paths,
    find_model_dir,
    load_checkpoint_model,
    non_negative_int,
    place_model,
    positive_int,
    setup_logging,
)

__all__ = ["add_parser", "run"]


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``evaluate-retrieval`` on ``sub`` (sets ``handler``)."""
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
    p.add_argument("--checkpoint", default=DEMO_OUTPUT_DIR, metavar="DIR",
                   help=f"a run output dir, its model/ dir or a checkpoint dir (default: {DEMO_OUTPUT_DIR})")
    p.add_argument("--data", nargs="+", default=None, metavar="PATH",
                   help="official caption pyarrow table(s) (e.g. the Flickr30k/COCO test split); default: "
                   "held-out synthetic scenes with distinct captions")
    p.add_argument("--size", type=positive_int, default=256, help="synthetic data: number of scenes (default: 256)")
    p.add_argument("--seed", type=non_negative_int, default=7_000_001,
                   help="synthetic data: the scene stream (default: 7000001, used by no training run)")
    p.add_argument("--k", type=positive_int, default=128,
                   help="ITC candidates re-ranked per query (official: 128 Flickr30k, 256 COCO; default: 128)")
    p.add_argument("--ks", type=positive_int, nargs="+", default=[1, 5, 10], metavar="K",
                   help="recall cut-offs (default: 1 5 10)")
    p.add_argument("--candidates", choices=("auto", "itc", "all"), default="auto",
                   help="itc: ITC top-k; all: every pair (brute force); auto: itc when the model has an ITC head (default)")
    p.add_argument("--batch-size", type=positive_int, default=64, help="images / texts per tower pass (default: 64)")
    p.add_argument("--fusion-batch-size", type=positive_int, default=256, help="pairs per fusion pass (default: 256)")
    p.add_argument("--max-text-len", type=positive_int, default=50, help="texts are truncated to this many tokens (default: 50)")
    p.add_argument("--output", default=None, metavar="FILE", help="also write the results as JSON to FILE")
    p.add_argument("--device", default=None, help="torch device (default: cpu)")
    add_dtype_flag(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(handler=run)


def _read_tables(paths, transform, tokenizer, max_len):
    """Every usable image of the caption tables with all its captions: ``(pixel_values,
    input_ids, attention_mask, text_image)``."""
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
        raise CLIError(f"--data: no usable image with captions in {paths}")
    length = max(int(t.numel()) for t in ids)
    input_ids = torch.full((len(ids), length), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(ids), length), dtype=torch.long)
    for i, t in enumerate(ids):
        input_ids[i, : t.numel()] = t
        mask[i, : t.numel()] = 1
    return torch.stack(images), input_ids, mask, torch.tensor(text_image)


def run(args: argparse.Namespace) -> int:
    """Handler of ``bridgetower evaluate-retrieval``; returns the exit status."""
    import torch

    from ..data import ImageTransform, SceneConfig
    from ..data.downstream import scene_retrieval_set
    from ..training.retrieval import evaluate_retrieval

    setup_logging(True)
    model_dir = find_model_dir(args.checkpoint)
    check_paths("--data", args.data)
    model, tokenizer = load_checkpoint_model(model_dir)
    if not (hasattr(model, "itm_score") or hasattr(model, "rank_output")):
        raise CLIError(f"--checkpoint: a {type(model).__name__} has neither an ITM nor an IRTR head to rank with")
    if args.candidates == "itc" and getattr(model, "itc", None) is None:
        raise CLIError(f"--candidates itc: a {type(model).__name__} has no ITC head; use --candidates all")
    place_model(model, args.device, args.dtype)
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
