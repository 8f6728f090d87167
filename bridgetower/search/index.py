"""Build a vector index of a source on disk, resumably, and load it back.

An index directory holds::

    manifest.json        what was indexed with what model, how far the build got
    chunks/NNNNN.npy     the image embeddings of one chunk (float32, L2-normalised)
    chunks/NNNNN.jsonl   their metadata (id, path, caption, position)
    embeddings.npy       every embedding, (N, E)         } written when the build completes
    metadata.jsonl       every record's metadata         }
    index.faiss          the FAISS index over embeddings.npy

Every file is written to a temporary name and renamed into place, and the manifest is
rewritten (the same way) after each chunk, so a build killed at any moment resumes from its
last complete chunk.  The FAISS index is exact inner product (``IndexFlatIP``) below
``flat_threshold`` vectors and IVF + product quantisation above it
(:func:`build_faiss_index`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .._optional import require
from .sources import Record, describe_source, iter_records, load_record_image

__all__ = [
    "FLAT_THRESHOLD",
    "INDEX_FILES",
    "MANIFEST",
    "SearchIndex",
    "build_faiss_index",
    "build_index",
    "export_arrays",
    "model_fingerprint",
]

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
INDEX_FILES = ("embeddings.npy", "metadata.jsonl", "index.faiss")
#: collections up to this many vectors get the exact flat index; larger ones IVF/PQ
FLAT_THRESHOLD = 20_000
_FORMAT = 1


def _faiss():
    return require("faiss", "search", needed_for="the vector index (bridgetower index / search)",
                   hint="note that faiss is published on PyPI as `faiss-cpu`")


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _atomic_json(path: Path, obj: Any) -> None:
    _atomic_write_bytes(path, (json.dumps(obj, indent=1) + "\n").encode())


def _atomic_npy(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.save(f, array)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _jsonl(rows: list[dict]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


# ------------------------------------------------------------------ FAISS


def _pq_subquantizers(d: int) -> int:
    """The most sub-quantisers (<= 64) that split ``d`` into pieces of at least 4 dims."""
    best = 1
    for m in range(1, min(64, d // 4) + 1):
        if d % m == 0:
            best = m
    return best


def build_faiss_index(embeddings: np.ndarray, *, flat_threshold: int = FLAT_THRESHOLD, nlist: int | None = None,
                      pq_m: int | None = None, nbits: int | None = None, seed: int = 0):
    """A FAISS inner-product index over ``embeddings`` (N, E) float32.

    ``N <= flat_threshold``: ``IndexFlatIP`` (exact).  Above: ``IndexIVFPQ`` with ``nlist``
    lists (default ``sqrt(N)``, at most ``N / 39``), ``pq_m`` sub-quantisers (default: the most
    that leave >= 4 dims each, <= 64) of ``nbits`` bits (default 8, fewer for small ``N``),
    trained on the vectors themselves; ``nprobe`` is set to a quarter of the lists (>= 8).
    """
    faiss = _faiss()
    if not isinstance(embeddings, np.ndarray):
        raise TypeError(f"embeddings must be a numpy array, got {type(embeddings).__name__}")
    if embeddings.ndim != 2 or embeddings.shape[0] == 0 or embeddings.shape[1] == 0:
        raise ValueError(f"embeddings must be a non-empty (N, E) array, got shape {embeddings.shape}")
    _positive_int("flat_threshold", flat_threshold)
    x = np.ascontiguousarray(embeddings, dtype=np.float32)
    n, d = x.shape
    if n <= flat_threshold:
        index = faiss.IndexFlatIP(d)
        index.add(x)
        return index
    nlist = nlist or max(1, min(int(math.sqrt(n)), n // 39))
    pq_m = pq_m or _pq_subquantizers(d)
    if d % pq_m:
        raise ValueError(f"pq_m={pq_m} must divide the embedding width {d}")
    nbits = nbits or max(4, min(8, int(math.log2(max(n, 2) / 8))))
    quantizer = faiss.IndexFlatIP(d)
    index = faiss.IndexIVFPQ(quantizer, d, nlist, pq_m, nbits, faiss.METRIC_INNER_PRODUCT)
    index.cp.seed = seed
    index.pq.cp.seed = seed
    index.train(x)
    index.add(x)
    index.nprobe = min(nlist, max(8, nlist // 4))
    return index


def _index_kind(index) -> str:
    return "flat" if type(index).__name__ == "IndexFlatIP" else "ivfpq"


# ------------------------------------------------------------------ building


def model_fingerprint(model) -> str:
    """A short hash of a model's weights (the manifest records it: a build resumes only with
    the model it started with)."""
    h = hashlib.sha1()
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(np.float64(t.double().sum().item()).tobytes())
        h.update(str(tuple(t.shape)).encode())
    return h.hexdigest()[:16]


def _embed_chunk(model, records: list[Record], image_processor, batch_size: int) -> tuple[np.ndarray, list[dict], int]:
    """Embeddings and metadata of the readable records of one chunk, and how many were unreadable."""
    images, meta, bad = [], [], 0
    for r in records:
        try:
            images.append(load_record_image(r.path))
        except (OSError, ValueError, KeyError, SyntaxError) as e:
            logger.warning("skipping %s: %s: %s", r.path, type(e).__name__, e)
            bad += 1
            continue
        meta.append({**r.to_dict(), "position": r.position})
    if not images:
        return np.zeros((0, 0), np.float32), meta, bad
    emb = model.embed_images(images, image_processor=image_processor, batch_size=batch_size, progress=False)
    return emb.float().cpu().numpy(), meta, bad


def build_index(
    source: str | os.PathLike,
    out: str | os.PathLike,
    model,
    *,
    model_name: str | None = None,
    image_processor: Any = None,
    chunk_size: int = 256,
    batch_size: int = 32,
    flat_threshold: int = FLAT_THRESHOLD,
    overwrite: bool = False,
    progress: bool | None = None,
    on_chunk: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Embed every image of ``source`` with ``model.embed_images`` into the index directory
    ``out`` and return its manifest.

    A build that stopped (killed, interrupted) resumes from its last complete chunk when
    called again with the same source and model; a complete index is kept unless
    ``overwrite``.  ``model_name`` is recorded in the manifest (``bridgetower search`` loads
    the model from it when not told otherwise).  ``on_chunk(done, total)`` is called after each
    chunk is on disk.  Unreadable images are counted in ``manifest["skipped"]``.  ``progress``:
    a tqdm bar (default: when there is more than one chunk).
    """
    if not hasattr(model, "embed_images"):
        raise TypeError(f"model must have embed_images (a contrastive or pretraining model), got {type(model).__name__}")
    _positive_int("chunk_size", chunk_size)
    _positive_int("batch_size", batch_size)
    _positive_int("flat_threshold", flat_threshold)
    if not isinstance(out, (str, os.PathLike)):
        raise TypeError(f"out must be a path, got {type(out).__name__}")
    src = describe_source(source)
    out = Path(out)
    manifest_path = out / MANIFEST
    fingerprint = model_fingerprint(model)
    manifest: dict[str, Any] | None = None
    if manifest_path.is_file():
        old = json.loads(manifest_path.read_text())
        if old.get("complete") and not overwrite:
            raise ValueError(f"out: {str(out)!r} already holds a complete index; pass overwrite=True to rebuild it")
        if not overwrite:
            if old.get("source") != src or old.get("model_fingerprint") != fingerprint or old.get("chunk_size") != chunk_size:
                raise ValueError(
                    f"out: {str(out)!r} holds an unfinished build of another source, model or chunk size "
                    f"({old.get('source', {}).get('path')}); pass overwrite=True to start again"
                )
            manifest = old
            logger.info("resuming the index build at record %d", manifest["next_position"])
    elif out.exists() and any(out.iterdir()) and not overwrite:
        raise ValueError(f"out: {str(out)!r} exists and is not an index directory; pass an empty or new directory")
    if manifest is None:
        for name in (*INDEX_FILES, MANIFEST):
            (out / name).unlink(missing_ok=True)
        if (out / "chunks").is_dir():
            for f in (out / "chunks").iterdir():
                f.unlink()
        manifest = {"format": _FORMAT, "source": src, "model": model_name, "model_fingerprint": fingerprint,
                    "model_class": type(model).__name__, "chunk_size": chunk_size, "next_position": 0,
                    "chunks": [], "skipped": {}, "count": 0, "dim": None, "complete": False}
    (out / "chunks").mkdir(parents=True, exist_ok=True)
    _atomic_json(manifest_path, manifest)

    skipped: dict[str, int] = {}
    records = list(iter_records(source, skipped))
    total = len(records)
    if total == 0:
        raise ValueError(f"source {src['path']!r} has no usable records")
    was_training = model.training
    model.eval()
    from tqdm.auto import tqdm

    start = manifest["next_position"]
    todo = [r for r in records if r.position >= start]
    try:
        with tqdm(total=total, initial=total - len(todo), desc="index", unit="image",
                  disable=not (progress if progress is not None else total > chunk_size)) as bar:
            for s in range(0, len(todo), chunk_size):
                chunk = todo[s : s + chunk_size]
                emb, meta, bad = _embed_chunk(model, chunk, image_processor, batch_size)
                k = len(manifest["chunks"])
                stem = f"{k:05d}"
                if meta:
                    if manifest["dim"] is not None and emb.shape[1] != manifest["dim"]:
                        raise ValueError(f"model embeds to {emb.shape[1]} dims, the index holds {manifest['dim']}")
                    _atomic_npy(out / "chunks" / f"{stem}.npy", emb)
                    _atomic_write_bytes(out / "chunks" / f"{stem}.jsonl", _jsonl(meta))
                    manifest["chunks"].append({"stem": stem, "rows": len(meta)})
                    manifest["dim"] = int(emb.shape[1])
                    manifest["count"] += len(meta)
                if bad:
                    manifest["skipped"]["unreadable_image"] = manifest["skipped"].get("unreadable_image", 0) + bad
                manifest["next_position"] = chunk[-1].position + 1
                _atomic_json(manifest_path, manifest)
                bar.update(len(chunk))
                if on_chunk is not None:
                    on_chunk(total - len(todo) + s + len(chunk), total)
    finally:
        model.train(was_training)
    for reason, n in skipped.items():
        manifest["skipped"][reason] = n
    if manifest["count"] == 0:
        raise ValueError(f"source {src['path']!r}: no image could be read ({manifest['skipped']})")
    embeddings = np.concatenate([np.load(out / "chunks" / f"{c['stem']}.npy") for c in manifest["chunks"]])
    metadata = b"".join((out / "chunks" / f"{c['stem']}.jsonl").read_bytes() for c in manifest["chunks"])
    index = build_faiss_index(embeddings, flat_threshold=flat_threshold)
    _atomic_npy(out / "embeddings.npy", embeddings)
    _atomic_write_bytes(out / "metadata.jsonl", metadata)
    faiss = _faiss()
    faiss.write_index(index, str(out / "index.faiss.tmp"))
    os.replace(out / "index.faiss.tmp", out / "index.faiss")
    manifest.update(complete=True, kind=_index_kind(index), nprobe=int(getattr(index, "nprobe", 0)) or None)
    _atomic_json(manifest_path, manifest)
    return manifest


# ------------------------------------------------------------------ loading


@dataclass
class SearchIndex:
    """A complete index directory: ``manifest``, ``embeddings`` (N, E), ``metadata`` (N dicts)
    and the FAISS ``index``.  :meth:`load` reads one; :meth:`search_vectors` queries it."""

    path: Path
    manifest: dict[str, Any]
    embeddings: np.ndarray
    metadata: list[dict[str, Any]]
    index: Any

    @classmethod
    def load(cls, path: str | os.PathLike) -> SearchIndex:
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"index must be a path to an index directory, got {type(path).__name__}")
        path = Path(path)
        manifest_path = path / MANIFEST
        if not manifest_path.is_file():
            raise ValueError(f"index: {str(path)!r} is not an index directory (no {MANIFEST}); build one with "
                             "`bridgetower index SOURCE --out DIR`")
        manifest = json.loads(manifest_path.read_text())
        if not manifest.get("complete"):
            raise ValueError(f"index: the build in {str(path)!r} did not finish; run `bridgetower index` again "
                             "to resume it")
        missing = [n for n in INDEX_FILES if not (path / n).is_file()]
        if missing:
            raise ValueError(f"index: {str(path)!r} lacks {missing}; rebuild it")
        embeddings = np.load(path / "embeddings.npy")
        metadata = [json.loads(line) for line in (path / "metadata.jsonl").read_text().splitlines() if line]
        index = _faiss().read_index(str(path / "index.faiss"))
        if manifest.get("nprobe"):
            index.nprobe = manifest["nprobe"]
        if not (len(metadata) == embeddings.shape[0] == index.ntotal):
            raise ValueError(f"index: {str(path)!r} is inconsistent: {len(metadata)} metadata rows, "
                             f"{embeddings.shape[0]} embeddings, {index.ntotal} vectors in index.faiss")
        return cls(path, manifest, embeddings, metadata, index)

    def __len__(self) -> int:
        return len(self.metadata)

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1])

    def search_vectors(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` ``(scores, rows)`` of each query vector (Q, E), best first; ``k`` is capped
        at the index size."""
        _positive_int("k", k)
        q = np.asarray(queries, dtype=np.float32)
        if q.ndim == 1:
            q = q[None]
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise ValueError(f"queries must be (Q, {self.dim}) to match the index, got shape {q.shape}")
        return self.index.search(np.ascontiguousarray(q), min(k, len(self)))


def export_arrays(index: str | os.PathLike | SearchIndex, out: str | os.PathLike | None = None) -> dict[str, np.ndarray]:
    """The index as plain arrays for a vector database: ``embeddings`` (N, E) float32, ``ids``,
    ``paths``, ``captions`` (str arrays, ``""`` for no caption).  Written to ``out`` (``.npz``)
    when given."""
    idx = index if isinstance(index, SearchIndex) else SearchIndex.load(index)
    arrays = {
        "embeddings": idx.embeddings.astype(np.float32),
        "ids": np.array([m["id"] for m in idx.metadata], dtype=str),
        "paths": np.array([m["path"] for m in idx.metadata], dtype=str),
        "captions": np.array([m.get("caption") or "" for m in idx.metadata], dtype=str),
    }
    if out is not None:
        out = Path(out)
        tmp = out.with_name(out.name + ".tmp.npz")
        np.savez(tmp, **arrays)
        os.replace(tmp, out)
    return arrays
