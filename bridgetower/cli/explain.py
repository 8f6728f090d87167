"""``bridgetower explain IMAGE TEXT``: where in IMAGE the ITM score of TEXT comes from, as a
heat-map overlay PNG (:func:`bridgetower.explain.explain`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..training.pretrain import DEMO_OUTPUT_DIR
from .common import (
    CLIError,
    add_dtype_flag,
    find_model_dir,
    load_checkpoint_model,
    place_model,
    setup_logging,
)

__all__ = ["add_parser", "run"]


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``explain`` on ``sub`` (sets ``handler``)."""
    s = sub.add_parser(
        "explain",
        help="a relevance heat map of an image for a text",
        description="Write a heat-map overlay of the Grad-CAM-style relevance of the ITM match score of "
                    "(IMAGE, TEXT) over the image, for the whole text or one --token.",
        epilog="Example:\n  bridgetower explain scene.png 'a red circle' --out red.png",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    s.add_argument("image", metavar="IMAGE", help="an image file")
    s.add_argument("text", metavar="TEXT", help="the text")
    s.add_argument("--token", default=None, help="one word of TEXT to explain instead of the whole text")
    s.add_argument("--out", default=None, metavar="PNG", help="the overlay PNG (default: IMAGE-explain.png)")
    s.add_argument("--checkpoint", default=DEMO_OUTPUT_DIR, metavar="DIR",
                   help=f"a run output dir, its model/ dir or a checkpoint dir (default: {DEMO_OUTPUT_DIR})")
    s.add_argument("--device", default=None, help="torch device (default: cpu)")
    add_dtype_flag(s)
    s.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Handler of ``bridgetower explain``; returns the exit status."""
    from ..explain import explain

    setup_logging(True)
    image = Path(args.image)
    if not image.is_file():
        raise CLIError(f"image {args.image!r} does not exist")
    if not args.text.strip():
        raise CLIError("TEXT must not be empty")
    model_dir = find_model_dir(Path(args.checkpoint))
    model, tokenizer = load_checkpoint_model(model_dir)
    if not hasattr(model, "itm_score"):
        raise CLIError(f"--checkpoint: a {type(model).__name__} has no ITM head to explain")
    place_model(model, args.device, args.dtype)
    out = Path(args.out) if args.out else image.with_name(image.stem + "-explain.png")
    try:
        result = explain(model, tokenizer, image, args.text, token=args.token, out=out)
    except (ValueError, OSError) as e:
        raise CLIError(str(e)) from None
    what = f"token {args.token!r}" if args.token else "the whole text"
    print(f"match logit {result.match_logit:.3f}; relevance of {what} over a "
          f"{result.relevance.shape[0]}x{result.relevance.shape[1]} patch grid written to {out}")
    return 0
