"""Image-text pair datasets.

- :class:`SyntheticSceneDataset`: the bundled demo data, generated on the fly from
  ``(seed, index)`` (:mod:`bridgetower.data.scenes`); costs no disk.
- :class:`SceneITMEvalDataset`: held-out ITM pairs with random or one-attribute negatives
  (colour, shape, position), half matching and half not.
- :class:`ImageTextDataset`: a folder of images with a JSONL or CSV index of
  ``(image, caption)`` records.
- :class:`WebDatasetPairs`: WebDataset tar shards (local ones read without the ``webdataset`` library), for data that
  not fit one disk; shards are split across ranks and ``DataLoader`` workers.

A sample is a dict: ``pixel_values`` (``(3, H, W)`` float, when a ``transform`` is given) or
``image`` (PIL), ``caption`` (str), ``input_ids`` (1-D long with ``<s> ... </s>``, truncated
to ``max_length``, when a ``tokenizer`` is given), ``image_id`` (samples sharing it are the
same picture) and dataset-specific extras (``scene``, ``label``, ...).

Unreadable or corrupt images, missing files and empty captions never stop a run: the
dataset returns a :class:`~bridgetower.data.Skipped` marker instead, counts it in
``dataset.stats`` (:class:`~bridgetower.data.SkipStats`), and the collator drops the marker
and reports it in ``batch["skipped"]``. :class:`WebDatasetPairs` also logs its counts when an
epoch (a pass over its shards) ends.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import random
import re
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset, IterableDataset

from .scenes import SceneConfig, alter_scene, make_scene
from .sharding import WorkerShard, check_rank_world, current_shard
from .shards import check_shard_urls, iter_shard, shuffle_buffer
from .stats import Skipped, SkipStats

__all__ = [
    "SyntheticSceneDataset",
    "SceneITMEvalDataset",
    "ImageTextDataset",
    "WebDatasetPairs",
    "expand_urls",
    "load_image",
    "read_index",
]

logger = logging.getLogger(__name__)

#: What decoding a corrupt or unreadable image raises (the datasets count it and go on).
IMAGE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)


def _check_max_length(max_length: int) -> int:
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 3:
        raise ValueError(
            f"max_length must be an int >= 3 (room for <s> and </s>), got {max_length!r}"
        )
    return max_length


class PairEncoder:
    """The per-sample image transform and tokenisation every dataset of the package applies.

    ``transform`` (PIL image -> ``(3, H, W)`` tensor) and ``tokenizer`` (a ``transformers``
    tokenizer, truncating to ``max_length``) are optional: without a transform a sample
    carries the PIL image under ``image``, without a tokenizer it has no ``input_ids``.
    """

    def __init__(self, transform: Callable | None, tokenizer: Any, max_length: int) -> None:
        if transform is not None and not callable(transform):
            raise TypeError(f"transform must be callable, got {type(transform).__name__}")
        if tokenizer is not None and not callable(tokenizer):
            raise TypeError(
                f"tokenizer must be a transformers tokenizer, got {type(tokenizer).__name__}"
            )
        self.transform = transform
        self.tokenizer = tokenizer
        self.max_length = _check_max_length(max_length)

    def visual(self, image: Image.Image, suffix: str = "") -> dict[str, Any]:
        """``{"pixel_values<suffix>": transform(image)}``, or ``{"image<suffix>": image}``
        without a transform."""
        if self.transform is not None:
            return {f"pixel_values{suffix}": self.transform(image)}
        return {f"image{suffix}": image}

    def tokens(self, text: str, pair: str | None = None) -> Tensor:
        """The token ids of ``text`` (and ``pair``, a second segment), 1-D long, truncated."""
        if pair is None:
            enc = self.tokenizer(text, truncation=True, max_length=self.max_length)
        else:
            enc = self.tokenizer(text, pair, truncation=True, max_length=self.max_length)
        return torch.as_tensor(enc["input_ids"], dtype=torch.long)

    def encode(self, image: Image.Image, caption: str, **extra: Any) -> dict[str, Any]:
        """``{"pixel_values" | "image", "caption", "input_ids" (with a tokenizer), **extra}``."""
        sample: dict[str, Any] = {"caption": caption, **extra, **self.visual(image)}
        if self.tokenizer is not None:
            sample["input_ids"] = self.tokens(caption)
        return sample


def load_image(source: str | os.PathLike | bytes) -> Image.Image:
    """Open and fully decode an image (path or bytes) as RGB; raises on corrupt data.

    ``Image.open`` is lazy, so truncated files are caught here by forcing the decode.
    """
    fp = io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source
    with Image.open(fp) as im:
        im.load()
        return im.convert("RGB")


# ----------------------------------------------------------------------------------------
# synthetic scenes


def check_size_seed(size: int, seed: int) -> None:
    """``ValueError`` unless ``size`` is a positive int and ``seed`` a non-negative int."""
    if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
        raise ValueError(f"size must be a positive int, got {size!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")


class SeededSceneSet(Dataset):
    """Base of every synthetic-scene set (pairs, ITM evaluation, downstream tasks, uni-modal
    classification): ``size`` items, item ``i`` generated from ``(seed, i)``.

    Holds the size, the stream ``seed``, the scene ``config``, the transform + tokenizer
    :class:`PairEncoder` (``self.encoder``) and an always-empty ``stats`` (synthetic data is
    never skipped; kept for the API every dataset shares). Subclasses implement
    ``__getitem__``: they map the index with :meth:`_index` (negative indices count from the
    end) and draw their randomness from :meth:`_rng` (a generator per item, salted per set).
    """

    #: Mixed into :meth:`_rng`'s seed, so sets of one ``seed`` draw independent numbers.
    _salt = 0

    def __init__(
        self,
        size: int,
        *,
        seed: int = 0,
        config: SceneConfig | None = None,
        transform: Callable[[Image.Image], Tensor] | None = None,
        tokenizer: Any = None,
        max_length: int = 50,
    ) -> None:
        check_size_seed(size, seed)
        if config is not None and not isinstance(config, SceneConfig):
            raise TypeError(f"config must be a SceneConfig, got {type(config).__name__}")
        self.size = size
        self.seed = seed
        self.config = config or SceneConfig()
        self.encoder = PairEncoder(transform, tokenizer, max_length)
        self.stats = SkipStats()

    def __len__(self) -> int:
        return self.size

    def _index(self, index: int) -> int:
        if not -self.size <= index < self.size:
            raise IndexError(f"index {index} out of range for a dataset of {self.size} items")
        return index % self.size

    def _rng(self, index: int, salt: int | None = None) -> np.random.Generator:
        """The generator of item ``index``: seeded by ``(seed, index, salt)`` (default
        :attr:`_salt`)."""
        return np.random.default_rng([self.seed, index, self._salt if salt is None else salt])

    def __repr__(self) -> str:
        return f"{type(self).__name__}(size={self.size}, seed={self.seed})"


class SyntheticSceneDataset(SeededSceneSet):
    """``size`` synthetic scenes of the stream ``seed`` (see :mod:`bridgetower.data.scenes`).

    Item ``i`` is always the same scene: ``{"pixel_values" | "image", "caption",
    "input_ids", "scene", "image_id": i}``. Use different seeds for training and held-out data.
    """

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = self._index(index)
        image, scene = make_scene(self.seed, index, self.config)
        return self.encoder.encode(image, scene.caption, scene=scene, image_id=index)


class SceneITMEvalDataset(SyntheticSceneDataset):
    """Held-out image-text matching pairs: even items match (``label`` 1), odd items do not (0).

    ``negatives`` says how a non-matching caption differs from the true one:

    - ``"random"``: the caption of another scene of the stream (never an identical caption);
    - ``"colour"``, ``"shape"``, ``"position"``: the true caption with one colour changed,
      one shape changed, or the positions swapped (:func:`~bridgetower.data.alter_scene`).

    Items: ``{"pixel_values" | "image", "caption", "input_ids", "label", "true_caption",
    "scene", "image_id"}``. Deterministic in ``(seed, index, negatives)``.
    """

    KINDS = ("random", "colour", "shape", "position")

    def __init__(
        self, size: int, *, negatives: str = "random", seed: int = 1, **kwargs: Any
    ) -> None:
        if negatives == "color":
            negatives = "colour"
        if negatives not in self.KINDS:
            raise ValueError(f"negatives must be one of {self.KINDS}, got {negatives!r}")
        super().__init__(size, seed=seed, **kwargs)
        self.negatives = negatives

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = self._index(index)
        image, scene = make_scene(self.seed, index, self.config)
        label = 1 if index % 2 == 0 else 0
        caption = scene.caption
        if not label:
            rng = np.random.default_rng(
                [self.seed, index, self.KINDS.index(self.negatives), 0xE7A1]
            )
            if self.negatives == "random":
                while caption == scene.caption:
                    other = int(rng.integers(1 << 40))
                    caption = make_scene(self.seed + 1, other, self.config)[1].caption
            else:
                caption = alter_scene(scene, self.negatives, rng).caption
        return self.encoder.encode(
            image, caption, label=label, true_caption=scene.caption, scene=scene, image_id=index
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(size={self.size}, seed={self.seed}, negatives={self.negatives!r})"


# ----------------------------------------------------------------------------------------
# folder + JSONL / CSV index


#: A character that decoding with ``errors="surrogateescape"`` made of a byte that is not UTF-8.
_NOT_UTF8 = re.compile("[\udc80-\udcff]")


def _not_utf8(where: str, bad: list[str]) -> Skipped:
    bad.append(where)
    return Skipped("bad_record", f"{where} (not valid UTF-8)")


def _caption_list(value: Any, where: str) -> list[str | None]:
    if value is None or isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(v is None or isinstance(v, str) for v in value):
        return list(value) or [None]
    raise ValueError(
        f"{where}: a caption must be a string or a list of strings, got {type(value).__name__}"
    )


def read_index(
    path: str | os.PathLike,
    *,
    image_key: str = "image",
    caption_key: str = "caption",
    format: str | None = None,
) -> list[tuple[str, str | None | Skipped]]:
    """Read ``(image, caption)`` records from a JSONL or CSV/TSV index.

    ``format`` is ``"jsonl"``, ``"csv"`` or ``"tsv"`` (default: from the file suffix;
    ``.json`` and ``.jsonl`` are JSON lines). In JSONL a caption may also be a list of strings
    (several captions of one image: one record each). A missing caption stays ``None`` (the
    dataset skips and counts it as ``empty_caption``); a caption or image path that is not
    valid UTF-8 becomes a :class:`~bridgetower.data.Skipped` ``bad_record`` naming the file
    and line (the dataset counts it; one warning lists the lines). A record without an image,
    or a malformed line, is a ``ValueError`` naming the file, the line and the problem.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"index file {str(path)!r} does not exist")
    if format is None:
        suffix = path.suffix.lower()
        format = {
            ".jsonl": "jsonl",
            ".json": "jsonl",
            ".ndjson": "jsonl",
            ".csv": "csv",
            ".tsv": "tsv",
        }.get(suffix)
        if format is None:
            raise ValueError(
                f"cannot tell the index format from the suffix {suffix!r} of {str(path)!r}; "
                "pass format='jsonl', 'csv' or 'tsv'"
            )
    if format not in ("jsonl", "csv", "tsv"):
        raise ValueError(f"format must be 'jsonl', 'csv' or 'tsv', got {format!r}")
    records: list[tuple[str, str | None | Skipped]] = []
    bad: list[str] = []  # where a text is not UTF-8
    if format == "jsonl":
        # bytes that are not UTF-8 become lone surrogates: the line still parses, and the
        # fields holding them are found below
        with open(path, encoding="utf-8", errors="surrogateescape") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                where = f"{path}:{lineno}"
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{where}: not valid JSON ({e.msg})") from None
                if not isinstance(obj, dict):
                    raise ValueError(
                        f"{where}: each line must be a JSON object, got {type(obj).__name__}"
                    )
                image = obj.get(image_key)
                if not isinstance(image, str) or not image:
                    raise ValueError(
                        f"{where}: no image path under the key {image_key!r} (keys: {sorted(obj)})"
                    )
                for cap in _caption_list(obj.get(caption_key), where):
                    if _NOT_UTF8.search(image) or (cap is not None and _NOT_UTF8.search(cap)):
                        records.append((image, _not_utf8(where, bad)))
                    else:
                        records.append((image, cap))
    else:
        with open(path, encoding="utf-8", errors="surrogateescape", newline="") as f:
            reader = csv.DictReader(f, delimiter="," if format == "csv" else "\t")
            columns = reader.fieldnames or []
            missing = [k for k in (image_key, caption_key) if k not in columns]
            if missing:
                raise ValueError(f"{path}: the header has no column {missing} (columns: {columns})")
            for row in reader:
                lineno = reader.line_num  # the row's last line
                image = row.get(image_key)
                if not image:
                    raise ValueError(f"{path}:{lineno}: empty {image_key!r} column")
                caption = row.get(caption_key)
                if _NOT_UTF8.search(image) or (caption is not None and _NOT_UTF8.search(caption)):
                    records.append((image, _not_utf8(f"{path}:{lineno}", bad)))
                else:
                    records.append((image, caption))
    if not records:
        raise ValueError(f"index file {str(path)!r} has no records")
    if bad:
        shown = ", ".join(w.rsplit(":", 1)[1] for w in bad[:10]) + (" ..." if len(bad) > 10 else "")
        logger.warning("%s: %d record(s) are not valid UTF-8 and are skipped (line %s)", path, len(bad), shown)
    return records


class ImageTextDataset(Dataset):
    """Images in a folder, captions in a JSONL or CSV index (see :func:`read_index`).

    Image paths in the index are relative to ``root`` (default: the index file's folder) or
    absolute. Item: ``{"pixel_values" | "image", "caption", "input_ids", "image_id": path}``,
    or a :class:`~bridgetower.data.Skipped` marker (missing file, unreadable image, empty
    caption), counted in ``self.stats``.
    """

    def __init__(
        self,
        index_file: str | os.PathLike,
        *,
        root: str | os.PathLike | None = None,
        image_key: str = "image",
        caption_key: str = "caption",
        format: str | None = None,
        transform: Callable[[Image.Image], Tensor] | None = None,
        tokenizer: Any = None,
        max_length: int = 50,
    ) -> None:
        self.index_file = Path(index_file)
        self.records = read_index(
            self.index_file, image_key=image_key, caption_key=caption_key, format=format
        )
        self.root = Path(root) if root is not None else self.index_file.parent
        if not self.root.is_dir():
            raise ValueError(f"image root {str(self.root)!r} is not a directory")
        self.encoder = PairEncoder(transform, tokenizer, max_length)
        self.stats = SkipStats()

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any] | Skipped:
        image_rel, caption = self.records[index]
        if isinstance(caption, Skipped):  # a record the index reader could not use
            return self.stats.add(caption.reason, caption.source)
        path = self.root / image_rel
        if caption is None or not caption.strip():
            return self.stats.add("empty_caption", str(path))
        if not path.is_file():
            return self.stats.add("missing_file", str(path))
        try:
            image = load_image(path)
        except IMAGE_ERRORS as e:
            return self.stats.add("unreadable_image", f"{path} ({type(e).__name__})")
        return self.encoder.encode(image, caption.strip(), image_id=image_rel)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.index_file)!r}, records={len(self.records)}, root={str(self.root)!r})"


# ----------------------------------------------------------------------------------------
# WebDataset shards


def expand_urls(urls: str | Sequence[str]) -> list[str]:
    """Shard URLs: brace patterns expanded (``shard-{000..009}.tar``), ``::`` separating
    several patterns; a list of strings is taken as it is."""
    if isinstance(urls, (str, os.PathLike)):
        from .._optional import require

        braceexpand = require("braceexpand", "webdataset", needed_for="expanding shard URL patterns").braceexpand
        out = []
        for part in str(urls).split("::"):
            out.extend(braceexpand(part))
        return out
    if isinstance(urls, Sequence) and all(isinstance(u, (str, os.PathLike)) for u in urls):
        return [str(u) for u in urls]
    raise TypeError(
        f"urls must be a string (brace patterns allowed) or a list of strings, got {type(urls).__name__}"
    )


class WebDatasetPairs(IterableDataset):
    """Image-caption pairs from WebDataset tar shards (``000000.jpg`` + ``000000.txt`` ...).

    Each shard is read by exactly one (rank, worker): the shard list (optionally shuffled per
    epoch with ``seed + epoch``, identically on every rank) is split as ``shards[rank::world]``,
    then across ``DataLoader`` workers (:mod:`bridgetower.data.sharding`). ``rank``/``world_size``
    default to ``torch.distributed`` when it is initialised. Call :meth:`set_epoch` before each
    epoch.

    The image is the first of ``image_keys`` a sample has; the caption the first of
    ``caption_keys`` (a ``.json`` entry is read through ``json_caption_key``). Bad samples are
    skipped and counted (``self.stats`` in the process that iterates; the collator carries
    the counts to the training process), and the counts of each pass are logged at its end.
    Every sample a broken shard loses is one marker: a missing shard counts one
    ``missing_file``, a truncated shard one ``bad_record`` for the sample the break cuts
    (:mod:`bridgetower.data.shards`).

    ``pipe:`` and remote (``http(s)://`` ...) URLs run shell commands or reach the network:
    they are refused unless ``allow_remote=True``.
    """

    def __init__(
        self,
        urls: str | Sequence[str],
        *,
        image_keys: Sequence[str] = ("jpg", "jpeg", "png", "webp"),
        caption_keys: Sequence[str] = ("txt", "caption", "json"),
        json_caption_key: str = "caption",
        transform: Callable[[Image.Image], Tensor] | None = None,
        tokenizer: Any = None,
        max_length: int = 50,
        shuffle_shards: bool = False,
        shuffle_buffer: int = 0,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        allow_remote: bool = False,
    ) -> None:
        self.urls = expand_urls(urls)
        if not self.urls:
            raise ValueError("no shard urls given")
        check_shard_urls(self.urls, allow_remote=allow_remote)
        if not image_keys or not caption_keys:
            raise ValueError("image_keys and caption_keys must be non-empty")
        self.image_keys = tuple(k.lower().lstrip(".") for k in image_keys)
        self.caption_keys = tuple(k.lower().lstrip(".") for k in caption_keys)
        self.json_caption_key = json_caption_key
        self.encoder = PairEncoder(transform, tokenizer, max_length)
        if shuffle_buffer < 0:
            raise ValueError(f"shuffle_buffer must be >= 0, got {shuffle_buffer}")
        self.shuffle_shards = shuffle_shards
        self.shuffle_buffer = shuffle_buffer
        self.seed = int(seed)
        check_rank_world(rank, world_size)
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.stats = SkipStats()

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def shards_for(
        self, rank: int, world_size: int, worker: int = 0, num_workers: int = 1
    ) -> list[str]:
        """The shards read by ``worker`` of ``rank`` in the current epoch
        (:class:`~bridgetower.data.sharding.WorkerShard`)."""
        shards = list(self.urls)
        if self.shuffle_shards:
            random.Random(self.seed + self.epoch).shuffle(shards)
        return WorkerShard(rank, world_size, worker, num_workers).take(shards)

    def _complete(self, raw: dict[str, Any]) -> bool:
        """Whether a raw shard sample has an image and a caption entry."""
        return any(k in raw for k in self.image_keys) and any(k in raw for k in self.caption_keys)

    def _decode(self, raw: dict[str, Any]) -> dict[str, Any] | Skipped:
        key = f"{raw.get('__url__', '?')}:{raw.get('__key__', '?')}"
        entries = {k.lower(): v for k, v in raw.items() if not k.startswith("__")}
        img_key = next((k for k in self.image_keys if k in entries), None)
        cap_key = next((k for k in self.caption_keys if k in entries), None)
        if img_key is None:
            return self.stats.add("bad_record", f"{key} (no image among {sorted(entries)})")
        if cap_key is None:
            return self.stats.add("empty_caption", f"{key} (no caption among {sorted(entries)})")
        try:
            text = entries[cap_key].decode("utf-8")
            if cap_key == "json":
                text = json.loads(text).get(self.json_caption_key) or ""
        except (UnicodeDecodeError, json.JSONDecodeError, AttributeError) as e:
            return self.stats.add("bad_record", f"{key} ({type(e).__name__} in caption)")
        if not isinstance(text, str) or not text.strip():
            return self.stats.add("empty_caption", key)
        try:
            image = load_image(entries[img_key])
        except IMAGE_ERRORS as e:
            return self.stats.add("unreadable_image", f"{key} ({type(e).__name__})")
        return self.encoder.encode(image, text.strip(), image_id=key)

    def __iter__(self) -> Iterator[dict[str, Any] | Skipped]:
        return self.iter_from(0)

    def iter_from(self, skip: int) -> Iterator[dict[str, Any] | Skipped | None]:
        """``iter(self)`` whose first ``skip`` samples are passed over by index: read from the
        shards (the order, shuffle buffer included, stays the same) but not decoded, yielded as
        ``None``.  A resumed stream fast-forwards with it."""
        me = current_shard(self.rank, self.world_size)
        shards = self.shards_for(me.rank, me.world_size, me.worker, me.num_workers)
        if not shards:
            logger.warning("%s has no shard (%d shards)", me, len(self.urls))
            return
        before = self.stats.as_dict()
        items: Iterator[Any] = (
            item for url in shards for item in iter_shard(url, self.stats.add, complete=self._complete)
        )
        if self.shuffle_buffer:
            rng = random.Random(hash((self.seed, self.epoch, me.rank, me.worker)))
            items = shuffle_buffer(items, self.shuffle_buffer, rng)
        for n, item in enumerate(items):
            if n < skip:
                yield None  # consumed before a resume: not decoded
                continue
            yield item if isinstance(item, Skipped) else self._decode(item)
        self.stats.since(before).report(logger, self.epoch)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(shards={len(self.urls)}, shuffle_shards={self.shuffle_shards})"
        )
