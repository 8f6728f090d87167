"""Query an index with a text or an image, re-rank with the ITM head, draw a contact sheet."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._atomic import replaced_on_success
from .index import SearchIndex
from .sources import load_record_image

__all__ = ["Hit", "contact_sheet", "embed_queries", "search"]


@dataclass
class Hit:
    """One result: ``rank`` (1 = best), the embedding ``score`` (cosine), the ITM match
    log-odds ``itm_score`` (``logit[1] - logit[0]``) when re-ranked, and the record's ``id``,
    ``path``, ``caption``, ``row``."""

    rank: int
    score: float
    id: str
    path: str
    caption: str | None
    row: int
    itm_score: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _is_image(query: Any) -> bool:
    from PIL import Image

    return isinstance(query, (Image.Image, os.PathLike))


def embed_queries(model, tokenizer, queries: Sequence[Any], *, image_processor: Any = None) -> np.ndarray:
    """(Q, E) float32 embeddings: ``str`` queries through :meth:`embed_texts`, PIL images and
    ``Path``s through :meth:`embed_images`."""
    texts = [i for i, q in enumerate(queries) if isinstance(q, str)]
    images = [i for i, q in enumerate(queries) if _is_image(q)]
    bad = [i for i in range(len(queries)) if i not in texts and i not in images]
    if bad:
        raise TypeError(f"query must be a str (text) or a PIL image / pathlib.Path (image); query {bad[0]} is "
                        f"{type(queries[bad[0]]).__name__}")
    out: list[Any] = [None] * len(queries)
    with torch.no_grad():
        if texts:
            if tokenizer is None:
                raise ValueError("tokenizer is needed for text queries")
            for i, e in zip(texts, model.embed_texts([queries[i] for i in texts], tokenizer, progress=False), strict=True):
                out[i] = e
        if images:
            embs = model.embed_images([queries[i] for i in images], image_processor=image_processor, progress=False)
            for i, e in zip(images, embs, strict=True):
                out[i] = e
    return torch.stack(out).float().cpu().numpy()


def _rerank(model, tokenizer, index: SearchIndex, text: str, rows: list[int], image_processor: Any) -> np.ndarray:
    """ITM match log-odds (``logit[1] - logit[0]``) of ``text`` against the images of ``rows``."""
    from ..models.task_base import score_pairs

    prep = model._image_preprocessor(image_processor)
    px = torch.stack([prep(load_record_image(index.metadata[r]["path"])) for r in rows])
    p = next(model.parameters())
    tok = getattr(tokenizer, "tokenizer", tokenizer)
    enc = tok([text], padding=True, truncation=True, max_length=model.bridgetower.text_model.max_length,
              return_tensors="pt")
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            logits = score_pairs(model, model.itm_score, px.to(p.device, p.dtype), enc["input_ids"].to(p.device),
                                 enc["attention_mask"].to(p.device), None)[:, 0].float()  # (R, 2)
    finally:
        model.train(was_training)
    return (logits[:, 1] - logits[:, 0]).cpu().numpy()


def _temperature(model) -> float:
    """The contrastive temperature that turns a cosine into a logit (1 when the model has none)."""
    itc = getattr(model, "itc", None)
    if itc is not None:
        return float(itc.effective_temperature().detach())
    heads = getattr(model, "contrastive", None)
    if heads is not None:
        return float(1.0 / heads.logit_scale.detach().exp())
    return 1.0


def search(
    index: SearchIndex | str | os.PathLike,
    query: Any,
    model,
    tokenizer: Any = None,
    *,
    k: int = 10,
    rerank: int = 0,
    rerank_by: str = "fused",
    image_processor: Any = None,
) -> list[Hit] | list[list[Hit]]:
    """The top ``k`` hits of ``query`` in ``index``.

    ``query``: a text (``str``), an image (PIL image or ``pathlib.Path``), or a list of them
    (then a list of hit lists).  ``rerank > 0`` re-orders the top ``max(rerank, k)`` candidates
    of a text query by the model's ITM match logit (the model needs an ITM head:
    ``BridgeTowerForPretraining``).  ``rerank_by="fused"`` orders them by the contrastive logit
    plus the ITM log-odds (``score / temperature + itm_score``), ``"itm"`` by the ITM log-odds
    alone (on the demo checkpoint the ITM head alone lowers recall@1: docs/search.md).
    """
    idx = index if isinstance(index, SearchIndex) else SearchIndex.load(index)
    if isinstance(k, bool) or not isinstance(k, int) or k <= 0:
        raise ValueError(f"k must be a positive int, got {k!r}")
    if isinstance(rerank, bool) or not isinstance(rerank, int) or rerank < 0:
        raise ValueError(f"rerank must be an int >= 0, got {rerank!r}")
    single = isinstance(query, str) or _is_image(query)
    queries = [query] if single else query
    if isinstance(queries, (bytes, dict)) or not isinstance(queries, Sequence) or len(queries) == 0:
        raise (ValueError if isinstance(queries, Sequence) else TypeError)(
            f"query must be a text, an image or a non-empty list of them, got {queries!r:.80}")
    if any(isinstance(q, str) and not q.strip() for q in queries):
        raise ValueError("query: a text query must not be empty")
    if rerank_by not in ("fused", "itm"):
        raise ValueError(f"rerank_by must be 'fused' or 'itm', got {rerank_by!r}")
    if rerank and not hasattr(model, "itm_score"):
        raise ValueError(f"rerank needs a model with an ITM head; {type(model).__name__} has none")
    if rerank and any(not isinstance(q, str) for q in queries):
        raise ValueError("rerank scores (image, text) pairs: it needs text queries")
    vectors = embed_queries(model, tokenizer, queries, image_processor=image_processor)
    if vectors.shape[1] != idx.dim:
        raise ValueError(f"the model embeds to {vectors.shape[1]} dims but the index holds {idx.dim}-dim vectors: "
                         "search with the model that built the index")
    depth = max(rerank, k) if rerank else k
    scores, rows = idx.search_vectors(vectors, depth)
    results = []
    for q, srow, rrow in zip(queries, scores, rows, strict=True):
        keep = [(float(s), int(r)) for s, r in zip(srow, rrow, strict=True) if r >= 0]
        itm = None
        if rerank:
            itm = _rerank(model, tokenizer, idx, q, [r for _, r in keep], image_processor)
            key = itm if rerank_by == "itm" else np.array([s for s, _ in keep]) / _temperature(model) + itm
            order = np.argsort(-key, kind="stable")
            keep = [keep[i] for i in order]
            itm = itm[order]
        hits = []
        for rank, (s, r) in enumerate(keep[:k], 1):
            m = idx.metadata[r]
            hits.append(Hit(rank, s, m["id"], m["path"], m.get("caption"), r,
                            None if itm is None else float(itm[rank - 1])))
        results.append(hits)
    return results[0] if single else results


def contact_sheet(hits: Sequence[Hit], out: str | os.PathLike, *, title: str | None = None, thumb: int = 128,
                  columns: int = 5) -> Path:
    """A PNG grid of the hits' images, each labelled with its rank and score; returns ``out``."""
    from PIL import Image, ImageDraw

    if not hits:
        raise ValueError("hits is empty: nothing to draw")
    if isinstance(thumb, bool) or not isinstance(thumb, int) or thumb < 16:
        raise ValueError(f"thumb must be an int >= 16, got {thumb!r}")
    if isinstance(columns, bool) or not isinstance(columns, int) or columns <= 0:
        raise ValueError(f"columns must be a positive int, got {columns!r}")
    cols = min(columns, len(hits))
    rows = -(-len(hits) // cols)
    label_h, title_h = 26, (20 if title else 0)
    sheet = Image.new("RGB", (cols * (thumb + 4) + 4, title_h + rows * (thumb + label_h + 4) + 4), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    if title:
        draw.text((4, 4), title[:120], fill=(0, 0, 0))
    for i, h in enumerate(hits):
        x = 4 + (i % cols) * (thumb + 4)
        y = title_h + 4 + (i // cols) * (thumb + label_h + 4)
        try:
            im = load_record_image(h.path).resize((thumb, thumb))
        except (OSError, ValueError, KeyError):
            im = Image.new("RGB", (thumb, thumb), (200, 200, 200))
        sheet.paste(im, (x, y))
        line = f"#{h.rank} {h.score:.3f}" + (f" itm {h.itm_score:.2f}" if h.itm_score is not None else "")
        draw.text((x, y + thumb + 2), line, fill=(0, 0, 0))
        draw.text((x, y + thumb + 13), (h.caption or h.id)[: thumb // 6], fill=(80, 80, 80))
    out = Path(out)
    with replaced_on_success(out) as tmp:
        sheet.save(tmp, format="PNG")
    return out
