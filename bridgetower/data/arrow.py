"""Streaming datasets over the pyarrow tables of the official BridgeTower / ViLT data preparation.

The table layouts (one row per image, or per image pair for NLVR2) and how they are
written and opened are in :mod:`bridgetower.data.arrow_io`. The datasets here read such
tables **record batch by record batch from a memory map**: nothing is loaded up front; a
record batch is sliced into chunks of ``chunk_rows`` rows and only the columns a dataset
needs are converted to Python, chunk by chunk (the official writers put a whole table in
one record batch, so chunks, not record batches, are the unit of work).

Work split across ranks and ``DataLoader`` workers: the chunks of all files, in order (or in
a permutation drawn from ``seed + epoch`` when ``shuffle``, the same on every rank), are
split by :class:`~bridgetower.data.sharding.WorkerShard`: ``chunks[rank::world_size]`` for a
rank, then ``[worker::num_workers]`` for a worker of it. Every row is read by exactly one
(rank, worker) per epoch (see :meth:`ArrowDataset.chunks_for`). Ranks can get a different
number of samples (a chunk more, or a different number of captions); with DDP, stop every
rank after the same number of steps.

Each sample is a dict holding ``image`` (a PIL RGB image; ``pixel_values`` instead when a
``transform`` is given), ``caption`` (the text: caption, question, statement or hypothesis)
and ``input_ids`` (when a ``tokenizer`` is given), like the other datasets of
:mod:`bridgetower.data.datasets`, so the same transform, tokenizer and
:class:`~bridgetower.data.PretrainingCollator` apply. Unreadable image bytes, empty texts
and malformed rows never stop a run: the dataset yields a
:class:`~bridgetower.data.Skipped` marker instead (one per sample lost), counts it in
``dataset.stats`` and logs the counts of each pass; the collator drops markers and reports
them in ``batch["skipped"]``. :class:`TaskCollator` batches the downstream-task samples.

``pyarrow`` is imported lazily: importing this module works without it, building a dataset
raises an ``ImportError`` that says how to install it.
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import IterableDataset

from bridgetower.models.image_ops import pad_images

from .arrow_io import (
    ARROW_SCHEMA_KINDS,
    SNLI_VE_LABELS,
    arrow_paths,
    arrow_schema,
    open_record_batches,
    require_pyarrow,
    write_arrow_table,
)
from .collate import PretrainingCollator, is_empty_batch
from .datasets import IMAGE_ERRORS, PairEncoder, load_image
from .sharding import WorkerShard, check_rank_world, current_shard
from .stats import Skipped, SkipStats

__all__ = [
    "ARROW_SCHEMA_KINDS",
    "SNLI_VE_LABELS",
    "arrow_schema",
    "write_arrow_table",
    "vqa_soft_targets",
    "ArrowDataset",
    "ArrowPretrainingPairs",
    "ArrowVQADataset",
    "ArrowNLVR2Dataset",
    "ArrowSNLIVEDataset",
    "ArrowRetrievalDataset",
    "TaskCollator",
]

logger = logging.getLogger(__name__)


def vqa_soft_targets(labels: Sequence[int], scores: Sequence[float], num_answers: int) -> Tensor:
    """The dense VQA target: ``(num_answers,)`` float32, ``scores[i]`` at ``labels[i]``, 0 elsewhere.

    A label listed twice keeps its highest score. Labels outside ``[0, num_answers)`` are a
    ``ValueError`` (the answer vocabulary does not match the table).
    """
    if len(labels) != len(scores):
        raise ValueError(f"labels and scores differ in length: {len(labels)} vs {len(scores)}")
    target = torch.zeros(num_answers, dtype=torch.float32)
    for label, score in zip(labels, scores, strict=True):
        label = int(label)
        if not 0 <= label < num_answers:
            raise ValueError(
                f"answer label {label} is outside the answer vocabulary of num_answers={num_answers}"
            )
        target[label] = max(float(target[label]), float(score))
    return target



# ----------------------------------------------------------------------------------------
# the datasets


class ArrowDataset(IterableDataset):
    """Base of the readers: files, chunking, rank/worker split, shuffling, skip counting.

    Subclasses set :attr:`required_columns` / :attr:`optional_columns` and implement
    :meth:`_row_samples`. See the module docstring for the layouts and the work split.

    Args:
        paths: one ``.arrow`` file or a list of them (read in order).
        transform: PIL image -> ``(3, H, W)`` tensor (e.g. :class:`ImageTransform`); without
            it samples carry the PIL image under ``image``.
        tokenizer, max_length: tokenise the text to ``input_ids`` (truncated).
        chunk_rows: rows per unit of work (rows converted to Python at a time).
        shuffle, seed: permute the chunks (same permutation on every rank) and the rows in a
            chunk, from ``seed + epoch``; call :meth:`set_epoch` before each epoch.
        rank, world_size: default to ``torch.distributed`` when initialised, else 0 and 1.
    """

    _counting = False  # True inside _count_row

    required_columns: tuple[str, ...] = ()
    optional_columns: tuple[str, ...] = ()

    def __init__(
        self,
        paths: str | os.PathLike | Sequence[str | os.PathLike],
        *,
        transform: Callable[[Image.Image], Tensor] | None = None,
        tokenizer: Any = None,
        max_length: int = 50,
        chunk_rows: int = 32,
        shuffle: bool = False,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        require_pyarrow()  # fail first, and clearly, without pyarrow
        self.paths = arrow_paths(paths)
        self.encoder = PairEncoder(transform, tokenizer, max_length)
        if isinstance(chunk_rows, bool) or not isinstance(chunk_rows, int) or chunk_rows < 1:
            raise ValueError(f"chunk_rows must be a positive int, got {chunk_rows!r}")
        check_rank_world(rank, world_size)
        self.chunk_rows = chunk_rows
        self.shuffle = bool(shuffle)
        self.seed = int(seed)
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.stats = SkipStats()
        # (file index, record batch index, rows) of every record batch; schemas checked now
        self._batches: list[tuple[int, int, int]] = []
        self._columns: list[list[str]] = []
        for fi, path in enumerate(self.paths):
            mm, schema, batches = open_record_batches(path)
            try:
                names = schema.names
                missing = [c for c in self.required_columns if c not in names]
                if missing:
                    raise ValueError(
                        f"{str(path)!r} lacks the column(s) {missing} that "
                        f"{type(self).__name__} needs (it has {names})"
                    )
                wanted = self.required_columns + self.optional_columns
                self._columns.append([c for c in wanted if c in names])
                for bi in range(len(batches)):
                    n = batches[bi].num_rows
                    if n:
                        self._batches.append((fi, bi, n))
            finally:
                mm.close()

    # -- sizes and the work split -----------------------------------------------------------

    @property
    def num_rows(self) -> int:
        """Rows (images, or image pairs for NLVR2) over all files."""
        return sum(n for _, _, n in self._batches)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def chunks(self) -> list[tuple[int, int, int, int]]:
        """All chunks ``(file index, record batch index, start row, stop row)`` of this epoch,
        in reading order (permuted when ``shuffle``)."""
        out = [
            (fi, bi, start, min(start + self.chunk_rows, n))
            for fi, bi, n in self._batches
            for start in range(0, n, self.chunk_rows)
        ]
        if self.shuffle:
            random.Random(self.seed + self.epoch).shuffle(out)
        return out

    def chunks_for(
        self, rank: int, world_size: int, worker: int = 0, num_workers: int = 1
    ) -> list[tuple[int, int, int, int]]:
        """The chunks read by ``worker`` of ``rank`` in this epoch:
        ``chunks()[rank::world_size][worker::num_workers]`` (:class:`WorkerShard`)."""
        return WorkerShard(rank, world_size, worker, num_workers).take(self.chunks())

    # -- reading ----------------------------------------------------------------------------

    def __iter__(self) -> Iterator[dict[str, Any] | Skipped]:
        return self.iter_from(0)

    def iter_from(self, skip: int) -> Iterator[dict[str, Any] | Skipped | None]:
        """``iter(self)`` whose first ``skip`` samples are passed over without decoding their
        images (yielded as ``None``): a resumed stream fast-forwards with it.  A row wholly
        inside the first ``skip`` samples is only counted (its text cells read, its images
        not decoded: a row yields as many items, samples or markers, either way); the row
        that the boundary cuts is read as usual."""
        me = current_shard(self.rank, self.world_size)
        chunks = self.chunks_for(me.rank, me.world_size, me.worker, me.num_workers)
        if not chunks:
            logger.warning(
                "%s has no rows to read (%d chunks of %d rows)", me, len(self.chunks()), self.chunk_rows
            )
            return
        before = self.stats.as_dict()
        opened: dict[int, tuple[Any, Any]] = {}
        last_key, last_batch = None, None
        try:
            for fi, bi, start, stop in chunks:
                if fi not in opened:
                    mm, _, batches = open_record_batches(self.paths[fi])
                    opened[fi] = (mm, batches)
                if last_key != (fi, bi):  # a record batch is usually cut into many chunks
                    last_key, last_batch = (fi, bi), opened[fi][1][bi]
                part = last_batch.slice(start, stop - start)
                cols = {c: part.column(c).to_pylist() for c in self._columns[fi]}
                order = list(range(stop - start))
                if self.shuffle:
                    random.Random(hash((self.seed, self.epoch, fi, bi, start))).shuffle(order)
                name = self.paths[fi].name
                for j in order:
                    row = {c: v[j] for c, v in cols.items()}
                    source = f"{name}#{bi}:{start + j}"
                    if skip > 0:
                        count = self._count_row(row, source)
                        if count <= skip:
                            skip -= count
                            yield from [None] * count
                            continue
                    for item in self._row_samples(row, source):
                        if skip > 0:
                            skip -= 1
                            item = None
                        yield item
        finally:
            last_batch = None
            for mm, _ in opened.values():
                mm.close()
        self.stats.since(before).report(logger, self.epoch)

    def _row_samples(self, row: dict[str, Any], source: str) -> Iterator[dict[str, Any] | Skipped]:
        raise NotImplementedError

    def _count_row(self, row: dict[str, Any], source: str) -> int:
        """How many items (samples and markers) ``row`` yields, without decoding its images or
        transforming and tokenising anything; nothing is added to ``self.stats`` (the samples
        were counted by the run that consumed them)."""
        saved = self.encoder, self.stats, self._counting
        self.encoder, self.stats, self._counting = _COUNTING_ENCODER, SkipStats(), True
        try:
            return sum(1 for _ in self._row_samples(row, source))
        finally:
            self.encoder, self.stats, self._counting = saved

    # -- helpers for subclasses -------------------------------------------------------------

    def _decode(self, value: Any, source: str, n_lost: int) -> Any:
        """The decoded PIL image of an image cell, or a list of ``n_lost`` Skipped markers
        (while counting, :meth:`_count_row`, image bytes are not decoded: an unreadable image
        loses as many samples as a readable one gives)."""
        if not isinstance(value, (bytes, bytearray)):  # a null cell
            return [
                self.stats.add("bad_record", f"{source} (no image)") for _ in range(max(n_lost, 1))
            ]
        if self._counting:
            return _NOT_DECODED
        try:
            image = load_image(value)
        except IMAGE_ERRORS as e:
            return [
                self.stats.add("unreadable_image", f"{source} ({type(e).__name__})")
                for _ in range(max(n_lost, 1))
            ]
        return image

    def _text_sample(self, visual: dict[str, Any], text: str, **extra: Any) -> dict[str, Any]:
        sample = {**visual, "caption": text, **extra}
        if self.encoder.tokenizer is not None:
            sample["input_ids"] = self.encoder.tokens(text)
        return sample

    def _zip_lists(
        self, row: dict[str, Any], source: str, columns: tuple[str, str], names: tuple[str, str]
    ) -> tuple[list[tuple[Any, Any]], list[Skipped]]:
        """The entries of two list cells that must line up (texts and their labels), zipped;
        or no entries and the markers of the samples lost: one ``empty_caption`` when the
        first list is empty, one ``bad_record`` per text when the lengths differ. ``names``
        name the lists in the markers."""
        first, second = _list_or_none(row[columns[0]]), _list_or_none(row[columns[1]])
        if not first:
            return [], [self.stats.add("empty_caption", f"{source} (no {names[0]})")]
        if second is None or len(second) != len(first):
            why = f"{source} ({names[0]} and {names[1]} differ in number)"
            return [], [self.stats.add("bad_record", why) for _ in first]
        return list(zip(first, second, strict=True)), []

    @staticmethod
    def _clean_text(value: Any) -> str | None:
        if not isinstance(value, str) or not value.strip():
            return None
        return value.strip()

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(files={len(self.paths)}, rows={self.num_rows}, "
            f"chunk_rows={self.chunk_rows}, shuffle={self.shuffle})"
        )


class _CountingEncoder:
    """The encoder of :meth:`ArrowDataset._count_row`: no transform, no tokenizer."""

    tokenizer = None

    @staticmethod
    def visual(image: Any, suffix: str = "") -> dict[str, Any]:
        return {}


_COUNTING_ENCODER = _CountingEncoder()
_NOT_DECODED = object()  # what _decode returns for image bytes while counting


def _list_or_none(value: Any) -> list | None:
    return value if isinstance(value, list) else None


class ArrowPretrainingPairs(ArrowDataset):
    """(image, caption) pairs from ``caption`` / ``vg`` tables (COCO, VG, CC, SBU, Flickr30k).

    One sample per caption of a row (the ``caption`` list is expanded; the image is decoded
    and transformed once per row): ``{"image" | "pixel_values", "caption", "input_ids",
    "image_id"}``. ``image_id`` is the table's ``image_id`` (or ``"<file>#<batch>:<row>"``
    when the table has none), so captions of one image share it and the collator never pairs
    them as ITM negatives. ``dedupe_captions`` drops repeated captions of an image (the
    official loader does so for caption tables). Empty captions and unreadable images are
    skipped and counted per caption.
    """

    required_columns = ("image", "caption")
    optional_columns = ("image_id",)

    def __init__(self, paths, *, dedupe_captions: bool = False, **kwargs: Any) -> None:
        super().__init__(paths, **kwargs)
        self.dedupe_captions = bool(dedupe_captions)

    def _row_samples(self, row, source):
        captions = row["caption"]
        if isinstance(captions, str):
            captions = [captions]
        if not isinstance(captions, list) or not captions:
            yield self.stats.add("empty_caption", f"{source} (no captions)")
            return
        if self.dedupe_captions:
            captions = list(dict.fromkeys(captions))
        texts = [self._clean_text(c) for c in captions]
        for t in texts:
            if t is None:
                yield self.stats.add("empty_caption", source)
        n = sum(t is not None for t in texts)
        if not n:
            return
        image = self._decode(row["image"], source, n)
        if isinstance(image, list):
            yield from image
            return
        visual = self.encoder.visual(image)
        image_id = row.get("image_id")
        image_id = source if image_id is None else image_id  # the row's location: unique
        for t in texts:
            if t is not None:
                yield self._text_sample(visual, t, image_id=image_id)


class ArrowRetrievalDataset(ArrowDataset):
    """Images with all their captions, for image-text retrieval evaluation (``caption`` tables).

    One sample per row: ``{"image" | "pixel_values", "captions": [str, ...], "input_ids":
    [Tensor, ...] (with a tokenizer), "image_id"}``. Empty captions are dropped from the list
    and counted in ``self.stats`` (``empty_caption``); an image with no usable caption or
    unreadable bytes is yielded as a :class:`Skipped` marker.
    """

    required_columns = ("image", "caption")
    optional_columns = ("image_id",)

    def _row_samples(self, row, source):
        captions = row["caption"]
        if isinstance(captions, str):
            captions = [captions]
        texts = [self._clean_text(c) for c in (captions if isinstance(captions, list) else [])]
        kept = [t for t in texts if t is not None]
        if not kept:  # the image sample is lost: one marker
            yield self.stats.add("empty_caption", f"{source} (no usable caption)")
            return
        for _ in range(len(texts) - len(kept)):  # dropped from the list, counted here only
            self.stats.add("empty_caption", source)
        image = self._decode(row["image"], source, 1)
        if isinstance(image, list):
            yield from image
            return
        image_id = row.get("image_id")
        sample = {
            **self.encoder.visual(image),
            "captions": kept,
            "image_id": source if image_id is None else image_id,
        }
        if self.encoder.tokenizer is not None:
            sample["input_ids"] = [self.encoder.tokens(t) for t in kept]
        yield sample


class ArrowVQADataset(ArrowDataset):
    """VQAv2 questions from ``vqa`` tables, with soft-score targets.

    One sample per question: ``{"image" | "pixel_values", "caption": question,
    "input_ids", "question_id", "image_id", "answers": [str], "answer_labels": [int],
    "answer_scores": [float], "targets": (num_answers,) float32}`` where ``targets`` is
    :func:`vqa_soft_targets` of the labels and scores (all zeros for the test tables, which
    carry no answers). ``num_answers`` is the size of the answer vocabulary the labels index
    (3129 for the official VQAv2 tables); a label outside it is a ``ValueError``.
    """

    required_columns = ("image", "questions", "question_id", "answer_labels", "answer_scores")
    optional_columns = ("answers", "image_id")

    def __init__(self, paths, *, num_answers: int, **kwargs: Any) -> None:
        if isinstance(num_answers, bool) or not isinstance(num_answers, int) or num_answers < 1:
            raise ValueError(f"num_answers must be a positive int, got {num_answers!r}")
        self.num_answers = num_answers
        super().__init__(paths, **kwargs)

    def _row_samples(self, row, source):
        questions = _list_or_none(row["questions"])
        qids = _list_or_none(row["question_id"])
        labels = _list_or_none(row["answer_labels"])
        scores = _list_or_none(row["answer_scores"])
        answers = _list_or_none(row.get("answers")) or []
        if not questions:
            yield self.stats.add("empty_caption", f"{source} (no questions)")
            return
        n = len(questions)
        unlabelled = not labels and not scores  # test tables
        ok = (
            qids is not None
            and len(qids) == n
            and labels is not None
            and scores is not None
            and (unlabelled or (len(labels) == n and len(scores) == n))
        )
        if ok and not unlabelled:
            ok = all(
                isinstance(l, list) and isinstance(s, list) and len(l) == len(s)
                for l, s in zip(labels, scores, strict=True)
            )
        if not ok:
            for _ in range(n):
                yield self.stats.add(
                    "bad_record", f"{source} (question/answer lists do not line up)"
                )
            return
        texts = [self._clean_text(q) for q in questions]
        for t in texts:
            if t is None:
                yield self.stats.add("empty_caption", source)
        if all(t is None for t in texts):
            return
        image = self._decode(row["image"], source, sum(t is not None for t in texts))
        if isinstance(image, list):
            yield from image
            return
        visual = self.encoder.visual(image)
        for i, t in enumerate(texts):
            if t is None:
                continue
            q_labels = [] if unlabelled else [int(v) for v in labels[i]]
            q_scores = [] if unlabelled else [float(v) for v in scores[i]]
            yield self._text_sample(
                visual,
                t,
                question_id=qids[i],
                image_id=row.get("image_id", source),
                answers=list(answers[i])
                if i < len(answers) and isinstance(answers[i], list)
                else [],
                answer_labels=q_labels,
                answer_scores=q_scores,
                targets=vqa_soft_targets(q_labels, q_scores, self.num_answers),
            )


class ArrowNLVR2Dataset(ArrowDataset):
    """NLVR2 statements from ``nlvr2`` tables: two images, a statement, a true/false label.

    One sample per statement: ``{"image" | "pixel_values": the left image (``image_0``),
    "image_2" | "pixel_values_2": the right image (``image_1``), "caption": statement,
    "input_ids", "label": 1 (True) / 0 (False), "identifier"}``. The ``_2`` names follow
    :class:`~bridgetower.models.BridgeTowerForNLVR2` (``pixel_values_2``). An answer other
    than ``"True"``/``"False"`` (or a bool) is a skipped ``bad_record``.
    """

    required_columns = ("image_0", "image_1", "questions", "answers")
    optional_columns = ("identifier",)

    @staticmethod
    def _label(value: Any) -> int | None:
        if isinstance(value, bool):
            return int(value)
        if isinstance(value, str) and value.strip().lower() in ("true", "false"):
            return int(value.strip().lower() == "true")
        return None

    def _row_samples(self, row, source):
        entries, lost = self._zip_lists(row, source, ("questions", "answers"), ("statements", "answers"))
        yield from lost
        keep = []
        for q, a in entries:
            t, lab = self._clean_text(q), self._label(a)
            if t is None:
                yield self.stats.add("empty_caption", source)
            elif lab is None:
                yield self.stats.add("bad_record", f"{source} (answer {a!r})")
            else:
                keep.append((t, lab))
        if not keep:
            return
        left = self._decode(row["image_0"], f"{source}/image_0", len(keep))
        if isinstance(left, list):
            yield from left
            return
        right = self._decode(row["image_1"], f"{source}/image_1", len(keep))
        if isinstance(right, list):
            yield from right
            return
        visual = {**self.encoder.visual(left), **self.encoder.visual(right, "_2")}
        identifier = row.get("identifier", source)
        for t, lab in keep:
            yield self._text_sample(
                visual, t, label=lab, identifier=identifier, image_id=identifier
            )


class ArrowSNLIVEDataset(ArrowDataset):
    """SNLI-VE from ``snli_ve`` tables: an image (the premise) and a hypothesis, 3-way label.

    One sample per ``[premise, hypothesis]`` pair of a row: ``{"image" | "pixel_values",
    "caption": hypothesis, "premise": the text premise, "input_ids", "label": 0
    contradiction / 1 neutral / 2 entailment (:data:`SNLI_VE_LABELS`), "image_id"}``. The
    model reads the hypothesis, as the official loader does. A pair that is not two strings
    or a label outside 0..2 is a skipped ``bad_record``.
    """

    required_columns = ("image", "sentences", "labels")

    def _row_samples(self, row, source):
        entries, lost = self._zip_lists(row, source, ("sentences", "labels"), ("sentences", "labels"))
        yield from lost
        keep = []
        for pair, lab in entries:
            if (
                not isinstance(pair, list)
                or len(pair) != 2
                or not isinstance(lab, int)
                or not 0 <= lab <= 2
            ):
                yield self.stats.add("bad_record", f"{source} (pair {pair!r}, label {lab!r})")
                continue
            t = self._clean_text(pair[1])
            if t is None:
                yield self.stats.add("empty_caption", source)
                continue
            keep.append((pair[0], t, lab))
        if not keep:
            return
        image = self._decode(row["image"], source, len(keep))
        if isinstance(image, list):
            yield from image
            return
        visual = self.encoder.visual(image)
        for premise, t, lab in keep:
            yield self._text_sample(visual, t, premise=premise, label=lab, image_id=source)


# ----------------------------------------------------------------------------------------
# batches for the downstream tasks


class TaskCollator:
    """Batches of downstream-task samples (VQA, NLVR2, SNLI-VE) on top of a pretraining collator.

    ``collator.collate(samples)`` pads the texts and the (first) images and drops / counts
    skipped samples (``labels`` comes from the samples' ``label``); this adds, when every
    kept sample has them: ``targets (B, num_answers)`` float (VQA soft scores),
    ``question_ids (B,)`` long, and ``pixel_values_2``/``pixel_mask_2`` for the second
    NLVR2 image (``pixel_values_2`` | ``image_2``). Both images of the pairs are padded to
    one size (:func:`~bridgetower.models.image_ops.pad_images`), each with its own mask:
    ``pixel_mask_2`` marks the pixels of the second image. No MLM masking or ITM negatives.
    """

    def __init__(self, collator: PretrainingCollator) -> None:
        if not (hasattr(collator, "collate") and hasattr(collator, "image_of")):
            raise TypeError(
                "collator must be a PretrainingCollator (with .collate and .image_of), got "
                f"{type(collator).__name__}"
            )
        self.collator = collator

    def __call__(
        self, samples: Sequence[Any], generator: torch.Generator | None = None
    ) -> dict[str, Tensor]:
        batch = self.collator.collate(samples)
        if is_empty_batch(batch):
            return batch
        kept = [s for s in samples if isinstance(s, Mapping)]
        if all("targets" in s for s in kept):
            batch["targets"] = torch.stack(
                [torch.as_tensor(s["targets"], dtype=torch.float32) for s in kept]
            )
        if all(isinstance(s.get("question_id"), int) for s in kept):
            batch["question_ids"] = torch.tensor([s["question_id"] for s in kept], dtype=torch.long)
        if all("pixel_values_2" in s or "image_2" in s for s in kept):
            second = [self.collator.image_of(s, "_2") for s in kept]
            h = max([batch["pixel_values"].shape[-2]] + [im.shape[-2] for im in second])
            w = max([batch["pixel_values"].shape[-1]] + [im.shape[-1] for im in second])
            batch["pixel_values_2"], batch["pixel_mask_2"] = pad_images(second, size=(h, w))
            if batch["pixel_values"].shape[-2:] != (h, w):  # a larger second image: pad the first ones to it
                first = [self.collator.image_of(s) for s in kept]
                batch["pixel_values"], batch["pixel_mask"] = pad_images(first, size=(h, w))
        return batch

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.collator!r})"
