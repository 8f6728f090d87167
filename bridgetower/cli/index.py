"""``bridgetower index SOURCE --out INDEX``: embed a folder of images, a JSONL/CSV of
image-caption pairs or WebDataset shards into a FAISS index on disk
(:func:`bridgetower.search.build_index`); an interrupted build resumes when run again."""

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
    positive_int,
    setup_logging,
)

__all__ = ["add_parser", "run"]


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``index`` on ``sub`` (sets ``handler``)."""
    s = sub.add_parser(
        "index",
        help="embed images into a vector index (FAISS)",
        description="Embed the images of SOURCE (a folder of images, a JSONL/CSV index of image-caption pairs, "
                    "or WebDataset .tar shards) with a checkpoint's image embedding into the index directory "
                    "--out. Run it again to resume an interrupted build.",
        epilog="Example:\n  bridgetower index photos/ --out photos.index\n"
               "  bridgetower search photos.index 'a red circle' -k 10",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    s.add_argument("source", metavar="SOURCE", help="a folder of images, an index file (.jsonl/.csv/.tsv) or .tar shards")
    s.add_argument("--out", required=True, metavar="INDEX", help="the index directory to write")
    s.add_argument("--checkpoint", default=DEMO_OUTPUT_DIR, metavar="DIR",
                   help=f"a run output dir, its model/ dir or a checkpoint dir (default: {DEMO_OUTPUT_DIR})")
    s.add_argument("--chunk-size", type=positive_int, default=256, help="images per resumable chunk (default 256)")
    s.add_argument("--batch-size", type=positive_int, default=32, help="images per forward pass (default 32)")
    s.add_argument("--flat-threshold", type=positive_int, default=None,
                   help="largest collection kept in an exact flat index; above it IVF/PQ (default 20000)")
    s.add_argument("--export", metavar="FILE.npz", default=None,
                   help="also write the embeddings and metadata as plain arrays (.npz) for a vector database")
    s.add_argument("--overwrite", action="store_true", help="rebuild a complete index in --out")
    s.add_argument("--device", default=None, help="torch device (default: cpu)")
    add_dtype_flag(s)
    s.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Handler of ``bridgetower index``; returns the exit status."""
    from ..search import FLAT_THRESHOLD, build_index, export_arrays

    setup_logging(True)
    if not Path(args.source).exists():
        raise CLIError(f"SOURCE {args.source!r} does not exist")
    model_dir = find_model_dir(Path(args.checkpoint))
    model, _ = load_checkpoint_model(model_dir)
    if not hasattr(model, "embed_images"):
        raise CLIError(f"--checkpoint: a {type(model).__name__} has no image embedding (embed_image)")
    place_model(model, args.device, args.dtype)
    try:
        manifest = build_index(args.source, args.out, model, model_name=str(model_dir), chunk_size=args.chunk_size,
                               batch_size=args.batch_size, flat_threshold=args.flat_threshold or FLAT_THRESHOLD,
                               overwrite=args.overwrite, progress=None)
        if args.export:
            export_arrays(args.out, args.export)
    except ValueError as e:
        raise CLIError(str(e)) from None
    skipped = ", ".join(f"{k}: {v}" for k, v in manifest["skipped"].items() if v) or "none"
    print(f"indexed {manifest['count']} images ({manifest['kind']} index, {manifest['dim']} dims) into {args.out}; "
          f"skipped: {skipped}" + (f"; arrays: {args.export}" if args.export else ""))
    return 0
