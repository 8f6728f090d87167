"""``bridgetower score IMAGE TEXT...``: the ITM scores of one image against several texts,
from a saved checkpoint (:func:`bridgetower.training.evaluate.score_texts`)."""

from __future__ import annotations

import argparse
import json
import sys
import warnings
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
    """Register ``score`` on ``sub`` (sets ``handler``)."""
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
    add_dtype_flag(s)
    s.add_argument("--json", action="store_true", help="print JSON instead of a table")
    s.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Handler of ``bridgetower score``; returns the exit status."""
    from ..data import ImageTransform, load_image
    from ..training import format_score_table, score_texts

    setup_logging(True)
    model_dir = find_model_dir(Path(args.checkpoint))
    image_path = Path(args.image)
    if not image_path.is_file():
        raise CLIError(f"image {args.image!r} does not exist")
    try:
        image = load_image(image_path)
    except Exception as e:  # noqa: BLE001 - PIL raises many kinds
        raise CLIError(f"cannot read image {args.image!r}: {e}") from None
    if not all(t.strip() for t in args.texts):
        raise CLIError("every TEXT must be non-empty")
    model, tokenizer = load_checkpoint_model(model_dir)
    if not hasattr(model, "itm_score"):
        raise CLIError(f"--checkpoint: a {type(model).__name__} has no ITM head to score with")
    place_model(model, args.device, args.dtype)
    pixel_values = ImageTransform(model.config.vision.image_size)(image)
    with warnings.catch_warnings(record=True) as caught:  # the processor's unknown-token warning: one line
        warnings.simplefilter("always", UserWarning)
        rows = score_texts(model, tokenizer, pixel_values, list(args.texts))
    for w in caught:
        if issubclass(w.category, UserWarning):
            print(f"bridgetower score: warning: {w.message}", file=sys.stderr)
    if args.json:
        print(json.dumps([{"text": t, "match_probability": p, "match_logit": lg} for t, p, lg in rows], indent=1))
    else:
        print(f"image: {args.image}   model: {model_dir}")
        print(format_score_table(rows))
    return 0
