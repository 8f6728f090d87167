"""The end of the bundled demo: index held-out scenes, run two searches and one explanation.

:func:`write_scenes` writes generated scenes as PNG files with a ``captions.jsonl`` index
(what ``bridgetower index`` reads; each line also lists the objects and their boxes), and
:func:`recall_at_k` scores caption queries against them.  :func:`run_search_demo` is what
``bridgetower pretrain`` (the demo) calls once training is done.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["HELD_OUT_SEED", "box_mean", "caption_key", "recall_at_k", "red_circle_relevance_fraction",
           "red_circle_scenes", "run_search_demo", "write_scenes"]

#: the held-out scene stream of the demo's evaluator (never trained on)
HELD_OUT_SEED = 1_000_003


def write_scenes(folder: str | os.PathLike, n: int, *, seed: int = HELD_OUT_SEED, image_size: int = 64,
                 start: int = 0) -> list[dict[str, Any]]:
    """Render scenes ``start .. start + n - 1`` of the stream ``seed`` into ``folder`` as
    ``scene-NNNNN.png`` plus ``captions.jsonl`` (``image``, ``caption``, ``objects`` with
    ``box`` = (x0, y0, x1, y1) in pixels); returns the JSONL rows."""
    from ..data.scenes import SceneConfig, make_scene

    if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
        raise ValueError(f"n must be a positive int, got {n!r}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = SceneConfig(image_size=image_size)
    rows = []
    for i in range(start, start + n):
        image, scene = make_scene(seed, i, config)
        name = f"scene-{i:05d}.png"
        image.save(folder / name)
        rows.append({"image": name, "caption": scene.caption,
                     "objects": [{"shape": o.shape, "colour": o.colour, "position": o.position,
                                  "box": [round(v, 2) for v in o.box]} for o in scene.objects]})
    (folder / "captions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


def recall_at_k(hits: Sequence[Sequence[Any]], relevant: Sequence[set[str]], ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """Fraction of queries with a relevant id among the first ``k`` hits, for each ``k``."""
    if len(hits) != len(relevant) or not hits:
        raise ValueError(f"hits ({len(hits)}) and relevant ({len(relevant)}) must be non-empty and of one length")
    return {f"R@{k}": float(np.mean([any(h.id in rel for h in hs[:k]) for hs, rel in zip(hits, relevant, strict=True)]))
            for k in ks}


def run_search_demo(run_dir: str | os.PathLike, *, num_scenes: int | None = None, device: str | None = None,
                    print_fn=print) -> dict[str, str]:
    """Index ``num_scenes`` held-out scenes (default: the run's ``eval_size``, 256) with the
    model of ``run_dir``, search for two captions (contact sheets), explain one (overlay) and
    print where the PNGs went; returns the paths.  Skipped with a message when ``faiss`` is not
    installed."""
    from ..explain import explain
    from ..training.run import load_saved_model, resolve_model_dir, saved_tokenizer
    from .index import build_index
    from .query import contact_sheet, search

    try:
        import faiss  # noqa: F401  (probe only: build_index imports it through require())
    except ImportError:
        print_fn("search demo skipped: faiss is not installed (pip install 'bridgetower[search]')")
        return {}
    run_dir = Path(run_dir)
    if num_scenes is None:
        config_path = run_dir / "run_config.json"
        run = json.loads(config_path.read_text()) if config_path.is_file() else {}
        num_scenes = int(run.get("eval_size") or 256)
    model_dir = resolve_model_dir(run_dir)
    model, tokenizer = load_saved_model(model_dir), saved_tokenizer(model_dir)
    if device:
        model.to(device)
    model.eval()
    out = run_dir / "search"
    rows = write_scenes(out / "scenes", num_scenes, image_size=model.config.vision.image_size)
    build_index(out / "scenes", out / "index", model, model_name=str(model_dir), overwrite=True, progress=False)
    paths: dict[str, str] = {}
    for i, query in enumerate(("a red circle on the left", "a blue square")):
        hits = search(out / "index", query, model, tokenizer, k=10, rerank=20 if hasattr(model, "itm_score") else 0)
        sheet = contact_sheet(hits, out / f"search-{i + 1}.png", title=query)
        paths[query] = str(sheet)
        print_fn(f"search {query!r}: top hit {hits[0].caption!r} (score {hits[0].score:.3f})")
    target = next((r for r in rows if len(r["objects"]) == 2 and
                   any(o["colour"] == "red" and o["shape"] == "circle" for o in r["objects"])), rows[0])
    text = "a red circle" if target is not rows[0] else target["caption"]
    if hasattr(model, "itm_score"):
        overlay = out / "explain.png"
        explain(model, tokenizer, out / "scenes" / target["image"], text, out=overlay)
        paths["explain"] = str(overlay)
    print_fn(f"search demo: index {out / 'index'}; contact sheets "
             + ", ".join(v for k, v in paths.items() if k != "explain")
             + (f"; explanation of {text!r} on {target['image']}: {paths['explain']}" if "explain" in paths else ""))
    return paths


def caption_key(caption: str) -> frozenset[str]:
    """The object phrases of a scene caption, order-free: two captions with the same key
    describe the same scene ("A and B" = "B and A")."""
    return frozenset(caption.split(" and "))


def red_circle_scenes(n: int, *, seed: int = HELD_OUT_SEED, image_size: int = 64) -> list[tuple[Any, Any]]:
    """The first ``n`` two-object scenes of the stream ``seed`` holding a red circle:
    ``[(image, scene), ...]``."""
    from ..data.scenes import SceneConfig, make_scene

    config = SceneConfig(image_size=image_size)
    found, i = [], 0
    while len(found) < n:
        image, scene = make_scene(seed, i, config)
        i += 1
        if len(scene.objects) == 2 and any(o.colour == "red" and o.shape == "circle" for o in scene.objects):
            found.append((image, scene))
    return found


def box_mean(relevance, box: Sequence[float], image_size: int) -> float:
    """Mean of a patch-grid map ``relevance`` (gh, gw) over the pixel box ``(x0, y0, x1, y1)``
    of an ``image_size`` square image, each patch weighted by its overlap with the box."""
    rel = np.asarray(relevance, dtype=np.float64)
    gh, gw = rel.shape
    ph, pw = image_size / gh, image_size / gw
    x0, y0, x1, y1 = box
    ox = np.clip(np.minimum(x1, (np.arange(gw) + 1) * pw) - np.maximum(x0, np.arange(gw) * pw), 0, None)
    oy = np.clip(np.minimum(y1, (np.arange(gh) + 1) * ph) - np.maximum(y0, np.arange(gh) * ph), 0, None)
    w = oy[:, None] * ox[None, :]
    return float((rel * w).sum() / max(w.sum(), 1e-12))


def red_circle_relevance_fraction(model, tokenizer, scenes: Sequence[tuple[Any, Any]],
                                  text: str = "a red circle") -> tuple[float, list[tuple[float, float]]]:
    """Over ``scenes`` (from :func:`red_circle_scenes`): the fraction where the relevance map of
    ``text`` is higher, per pixel, inside the red circle's box than inside the other object's,
    and the two means of every scene."""
    from ..explain import relevance_map
    from ..models.image_processor import ImageProcessor

    prep = ImageProcessor(model.config.vision.image_size)
    tok = getattr(tokenizer, "tokenizer", tokenizer)
    enc = tok([text], return_tensors="pt")
    pairs = []
    for image, scene in scenes:
        px = torch.from_numpy(prep.preprocess_image(image))
        rel = relevance_map(model, px, enc["input_ids"], enc["attention_mask"]).numpy()
        red = next(o for o in scene.objects if o.colour == "red" and o.shape == "circle")
        other = next(o for o in scene.objects if o is not red)
        pairs.append((box_mean(rel, red.box, scene.image_size), box_mean(rel, other.box, scene.image_size)))
    return float(np.mean([a > b for a, b in pairs])), pairs
