"""``bridgetower search INDEX QUERY``: the top hits of a text (or an image file) in an index,
optionally re-ranked by the ITM head, and a contact-sheet PNG of them
(:func:`bridgetower.search.search`)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

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
    """Register ``search`` on ``sub`` (sets ``handler``)."""
    s = sub.add_parser(
        "search",
        help="search an index with a text or an image",
        description="Print the top hits of QUERY (a text, or an image file) in INDEX with their scores and "
                    "write a contact sheet of them.",
        epilog="Example:\n  bridgetower search photos.index 'a red circle' -k 10 --rerank 50 --sheet hits.png",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    s.add_argument("index", metavar="INDEX", help="an index directory written by `bridgetower index`")
    s.add_argument("query", metavar="QUERY", help="a text, or the path of an image file")
    s.add_argument("-k", type=positive_int, default=10, help="how many hits (default 10)")
    s.add_argument("--rerank", type=int, default=0, metavar="N",
                   help="re-rank the top N candidates of a text query by the ITM head (default 0: off)")
    s.add_argument("--rerank-by", choices=("fused", "itm"), default="fused",
                   help="order re-ranked hits by the contrastive logit plus the ITM log-odds (fused, default) "
                        "or by the ITM log-odds alone")
    s.add_argument("--checkpoint", default=None, metavar="DIR",
                   help="the model (default: the one that built the index, from its manifest)")
    s.add_argument("--sheet", default=None, metavar="PNG", help="contact sheet path (default: INDEX/last-search.png)")
    s.add_argument("--device", default=None, help="torch device (default: cpu)")
    add_dtype_flag(s)
    s.add_argument("--json", action="store_true", help="print JSON instead of a table")
    s.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Handler of ``bridgetower search``; returns the exit status."""
    from ..search import SearchIndex, contact_sheet, search
    from ..search.sources import IMAGE_SUFFIXES

    setup_logging(True)
    try:
        index = SearchIndex.load(args.index)
    except ValueError as e:
        raise CLIError(str(e)) from None
    if args.rerank < 0:
        raise CLIError(f"--rerank must be >= 0, got {args.rerank}")
    checkpoint = args.checkpoint or index.manifest.get("model")
    if not checkpoint:
        raise CLIError("--checkpoint: the index does not name its model; pass one")
    model_dir = find_model_dir(Path(checkpoint))
    model, tokenizer = load_checkpoint_model(model_dir)
    place_model(model, args.device, args.dtype)
    query = args.query
    if Path(query).suffix.lower() in IMAGE_SUFFIXES:
        if not Path(query).is_file():
            raise CLIError(f"QUERY {query!r} looks like an image file but does not exist")
        query = Path(query)
    elif not query.strip():
        raise CLIError("QUERY must not be empty")
    try:
        hits = search(index, query, model, tokenizer, k=args.k, rerank=args.rerank, rerank_by=args.rerank_by)
    except ValueError as e:
        raise CLIError(str(e)) from None
    sheet = contact_sheet(hits, Path(args.sheet) if args.sheet else Path(args.index) / "last-search.png",
                          title=str(args.query))
    if args.json:
        print(json.dumps({"query": str(args.query), "sheet": str(sheet), "hits": [h.to_dict() for h in hits]}, indent=1))
        return 0
    print(f"query: {args.query}   index: {args.index} ({len(index)} items)")
    itm = args.rerank > 0
    print(f"{'rank':>4}  {'score':>6}" + ("  itm log-odds" if itm else "") + "  id / caption")
    for h in hits:
        print(f"{h.rank:>4}  {h.score:6.3f}" + (f"  {h.itm_score:12.2f}" if itm else "")
              + f"  {h.id}" + (f"  {h.caption}" if h.caption else ""))
    print(f"contact sheet: {sheet}")
    return 0
