"""What ``bridgetower index`` reads: a folder of images, a JSONL/CSV index of image-caption
pairs, or WebDataset ``.tar`` shards, as one ordered stream of :class:`Record`.

The order is fixed (sorted file names, index lines, shard members), so an interrupted index
build resumes at a position.  A record whose image cannot be read is counted, not dropped
silently.
"""

from __future__ import annotations

import io
import os
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["IMAGE_SUFFIXES", "Record", "describe_source", "iter_records", "load_record_image"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
_INDEX_SUFFIXES = (".jsonl", ".json", ".ndjson", ".csv", ".tsv")


@dataclass(frozen=True)
class Record:
    """One item of a source: ``id``, where its image is (``path``; ``shard.tar#member`` inside a
    shard), its ``caption`` (``None`` for a bare image folder) and its ``position`` in the stream."""

    position: int
    id: str
    path: str
    caption: str | None

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "path": self.path, "caption": self.caption}


def _kind(source: Path) -> tuple[str, list[Path]]:
    """``("folder" | "index" | "shards", files)``; ``ValueError`` naming ``source``."""
    if source.is_file():
        suffix = source.suffix.lower()
        if suffix in _INDEX_SUFFIXES:
            return "index", [source]
        if suffix == ".tar":
            return "shards", [source]
        raise ValueError(f"source {str(source)!r}: not a folder, an index (.jsonl/.csv/.tsv) or a .tar shard")
    if not source.is_dir():
        raise ValueError(f"source {str(source)!r} does not exist")
    tars = sorted(source.glob("*.tar"))
    if tars:
        return "shards", tars
    indexes = sorted(p for p in source.iterdir() if p.suffix.lower() in _INDEX_SUFFIXES)
    if len(indexes) == 1:
        return "index", indexes
    if len(indexes) > 1:
        raise ValueError(f"source {str(source)!r} holds several index files {[p.name for p in indexes]}: name one")
    images = sorted(p for p in source.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise ValueError(f"source {str(source)!r} holds no images ({', '.join(IMAGE_SUFFIXES)}), index or shards")
    return "folder", images


def describe_source(source: str | os.PathLike) -> dict[str, Any]:
    """``{"path", "kind", "files"}`` of a source (what the index manifest records)."""
    path = Path(source).resolve()
    kind, files = _kind(path)
    return {"path": str(path), "kind": kind, "files": len(files)}


def iter_records(source: str | os.PathLike, skipped: dict[str, int] | None = None) -> Iterator[Record]:
    """The records of ``source`` in their fixed order.  Records that cannot be used (no image
    named, a caption that is not text) are counted in ``skipped`` (reason -> count) and keep
    their position."""
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"source must be a path, got {type(source).__name__}")
    skipped = {} if skipped is None else skipped
    root = Path(source).resolve()
    kind, files = _kind(root)
    if kind == "folder":
        base = root
        for i, p in enumerate(files):
            yield Record(i, str(p.relative_to(base)), str(p), None)
    elif kind == "index":
        from ..data.datasets import read_index
        from ..data.stats import Skipped

        for i, (image, caption) in enumerate(read_index(files[0])):
            if isinstance(caption, Skipped):
                skipped["bad_record"] = skipped.get("bad_record", 0) + 1
                continue
            path = Path(image) if os.path.isabs(image) else files[0].parent / image
            yield Record(i, str(image), str(path), caption)
    else:
        i = 0
        for shard in files:
            with tarfile.open(shard) as tar:
                members: dict[str, dict[str, str]] = {}
                order: list[str] = []
                for m in tar.getmembers():
                    if not m.isfile() or "." not in Path(m.name).name:
                        continue
                    folder, base = os.path.split(m.name)
                    stem, ext = os.path.join(folder, base.split(".", 1)[0]), base.split(".", 1)[1]
                    if stem not in members:
                        members[stem] = {}
                        order.append(stem)
                    members[stem][ext.lower()] = m.name
                for stem in order:
                    parts = members[stem]
                    img = next((parts[e] for e in ("jpg", "jpeg", "png", "webp") if e in parts), None)
                    if img is None:
                        skipped["bad_record"] = skipped.get("bad_record", 0) + 1
                        i += 1
                        continue
                    caption = None
                    for e in ("txt", "caption", "text"):
                        if e in parts:
                            raw = tar.extractfile(parts[e]).read()
                            try:
                                caption = raw.decode("utf-8").strip() or None
                            except UnicodeDecodeError:
                                skipped["bad_record"] = skipped.get("bad_record", 0) + 1
                            break
                    yield Record(i, f"{shard.name}:{stem}", f"{shard}#{img}", caption)
                    i += 1


def load_record_image(path: str):
    """The RGB PIL image of a record's ``path`` (a file, or ``shard.tar#member``)."""
    from PIL import Image

    if "#" in path and not os.path.exists(path):
        shard, member = path.rsplit("#", 1)
        with tarfile.open(shard) as tar:
            data = tar.extractfile(member).read()
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            return im.convert("RGB")
    with Image.open(path) as im:
        im.load()
        return im.convert("RGB")
