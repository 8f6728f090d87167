"""Search and explanation figures of a demo checkpoint (docs/search.md, docs/explain.md).

* recall@1/5/10 of caption queries over ``--scenes`` held-out scenes (the demo evaluator's
  stream, never trained on), with and without ITM re-ranking of the top ``--rerank``: a hit
  counts when its scene has the query's objects (caption phrases in any order); chance is
  given for comparison;
* the fraction of ``--explain-scenes`` two-object scenes with a red circle where the relevance
  map of "a red circle" is higher, per pixel, inside the red circle's box than inside the
  other object's.

Run (after ``bridgetower pretrain --output-dir /tmp/h15-demo``):
    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/search_recall.py /tmp/h15-demo
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir")
    p.add_argument("--scenes", type=int, default=300)
    p.add_argument("--rerank", type=int, default=20)
    p.add_argument("--explain-scenes", type=int, default=100)
    p.add_argument("--json", default=None, help="also write the figures here")
    args = p.parse_args(argv)

    from bridgetower.search import build_index, search
    from bridgetower.search.demo import (
        caption_key,
        recall_at_k,
        red_circle_relevance_fraction,
        red_circle_scenes,
        write_scenes,
    )
    from bridgetower.training.run import load_saved_model, resolve_model_dir, saved_tokenizer

    model_dir = resolve_model_dir(args.run_dir)
    model, tok = load_saved_model(model_dir).eval(), saved_tokenizer(model_dir)
    figures = {"checkpoint": str(model_dir), "scenes": args.scenes, "rerank": args.rerank}
    with tempfile.TemporaryDirectory() as tmp:
        rows = write_scenes(Path(tmp) / "scenes", args.scenes, image_size=model.config.vision.image_size)
        t0 = time.perf_counter()
        build_index(Path(tmp) / "scenes", Path(tmp) / "index", model, progress=False)
        figures["index_seconds"] = round(time.perf_counter() - t0, 1)
        keys = [caption_key(r["caption"]) for r in rows]
        queries = sorted({r["caption"] for r in rows})
        relevant = [{r["image"] for r, k in zip(rows, keys, strict=True) if k == caption_key(q)} for q in queries]
        figures["queries"] = len(queries)
        figures["chance"] = {f"R@{k}": float(np.mean([min(1.0, k * len(rel) / len(rows)) for rel in relevant]))
                             for k in (1, 5, 10)}
        plain = search(Path(tmp) / "index", queries, model, tok, k=10)
        figures["recall"] = recall_at_k(plain, relevant)
        t0 = time.perf_counter()
        reranked = search(Path(tmp) / "index", queries, model, tok, k=10, rerank=args.rerank)
        figures["rerank_seconds"] = round(time.perf_counter() - t0, 1)
        figures["recall_reranked"] = recall_at_k(reranked, relevant)
        by_itm = search(Path(tmp) / "index", queries, model, tok, k=10, rerank=args.rerank, rerank_by="itm")
        figures["recall_reranked_itm_only"] = recall_at_k(by_itm, relevant)
    frac, pairs = red_circle_relevance_fraction(model, tok, red_circle_scenes(args.explain_scenes,
                                                                               image_size=model.config.vision.image_size))
    figures["explain"] = {"scenes": args.explain_scenes, "fraction_red_circle_box_higher": frac,
                          "mean_share_in_red_circle_box": float(np.mean([a / max(a + b, 1e-30) for a, b in pairs]))}
    text = json.dumps(figures, indent=1)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
