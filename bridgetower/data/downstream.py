"""Downstream-task sets built from the synthetic scenes: VQA-, NLVR2-, SNLI-VE-style and retrieval.

Every set is generated on the fly from ``(seed, index)`` like :mod:`bridgetower.data.scenes`:
item ``i`` is always the same image(s), text and label, and a held-out split is another seed.
The questions, statements and hypotheses are written from the structured scene description
(:class:`~bridgetower.data.scenes.Scene`), so every label is exact.

================================ ===========================================================
set                              item
================================ ===========================================================
:class:`SceneVQADataset`         a question about one scene -- colour ("what colour is the
                                 circle"), shape ("what shape is the object on the left"),
                                 count ("how many squares are there"), position ("where is
                                 the red circle") -- and its answer as soft-score ``targets``
                                 over :data:`VQA_ANSWERS` (16 answers; the true one scores 1)
:class:`SceneNLVR2Dataset`       two scenes and a statement about what the pair holds
                                 (:data:`NLVR2_TEMPLATES`: "the left image contains a red
                                 object", "... a circle", "... a blue square", "the right
                                 image has a green object at the top", "both images / exactly
                                 one image contain(s) a red object / a circle"), ``label`` 1 if
                                 true; exactly balanced (even items true).  The statement is
                                 drawn first, then scene pairs until one gives it the wanted
                                 truth value, so the text alone is at chance
:class:`SceneSNLIVEDataset`      one scene and a hypothesis: ``label`` 2 entailment (a true
                                 caption or object phrase), 0 contradiction (one attribute
                                 changed, :func:`~bridgetower.data.scenes.alter_scene`), 1
                                 neutral (a true phrase plus a property no image shows,
                                 "... which is heavy"; contradictions carry such a clause
                                 half the time, so the clause alone does not give the label
                                 away); item ``i`` has label ``2 - i % 3``
:class:`SceneIRTRDataset`        one scene, its caption and ``num_false_texts`` false
                                 captions (half one-attribute changes of the true caption,
                                 half captions of other scenes), for ranking fine-tuning
:func:`scene_retrieval_set`      ``n`` scenes with distinct captions, as tensors, for
                                 recall@k evaluation
================================ ===========================================================

The words of the questions and statements extend the caption vocabulary
(:func:`downstream_vocabulary`); :func:`build_downstream_tokenizer` builds the word-level
tokenizer, or extends a pretrained one by appending the new words after its own ids (so a
pretrained embedding table keeps its rows; see
:func:`bridgetower.training.finetune.load_pretrained_encoder`).

Samples follow the pair-dataset layout (``pixel_values`` | ``image``, ``caption``,
``input_ids``, ``image_id`` and the task's label keys), so
:class:`~bridgetower.data.arrow.TaskCollator` batches the VQA, NLVR2 and SNLI-VE sets exactly
like the official-table datasets of :mod:`bridgetower.data.arrow`; :class:`IRTRCollator`
batches the ranking groups.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from .datasets import SeededSceneSet, check_size_seed
from .scenes import (
    COLOURS,
    SHAPES,
    Scene,
    SceneConfig,
    alter_scene,
    make_scene,
    render_scene,
    sample_scene,
    scene_vocabulary,
)
from .stats import SKIP_REASONS, Skipped, SkipStats

__all__ = [
    "VQA_ANSWERS",
    "VQA_QUESTION_TYPES",
    "NLVR2_TEMPLATES",
    "NEUTRAL_PROPERTIES",
    "IRTRCollator",
    "InStreamFalseTexts",
    "SceneIRTRDataset",
    "SceneNLVR2Dataset",
    "SceneSNLIVEDataset",
    "SceneVQADataset",
    "build_downstream_tokenizer",
    "downstream_vocabulary",
    "scene_retrieval_set",
]

_COUNT_WORDS = ("zero", "one", "two", "three", "four")
#: The answer vocabulary of :class:`SceneVQADataset` (index = answer label).
VQA_ANSWERS: tuple[str, ...] = (
    tuple(COLOURS) + SHAPES + ("zero", "one", "two") + ("left", "right", "top", "bottom")
)
VQA_QUESTION_TYPES: tuple[str, ...] = ("colour", "shape", "count", "position")
#: Properties the image cannot show (the neutral hypotheses of :class:`SceneSNLIVEDataset`).
NEUTRAL_PROPERTIES: tuple[str, ...] = ("heavy", "old", "new", "soft")

_PLURAL = {"circle": "circles", "square": "squares", "triangle": "triangles"}
_WHERE = {"left": "on the left", "right": "on the right", "top": "at the top", "bottom": "at the bottom"}
_EXTRA_WORDS = (
    # VQA
    "what", "colour", "shape", "is", "object", "how", "many", "objects", "are", "there", "where",
    "circles", "squares", "triangles",
    # NLVR2 (the count words "three" ... "than" are from earlier templates; kept so ids stay stable)
    "both", "images", "image", "contain", "contains", "exactly", "one", "two", "three", "four",
    "in", "total", "has", "more", "than",
    # SNLI-VE
    "which",
) + NEUTRAL_PROPERTIES


def downstream_vocabulary(config: SceneConfig | None = None) -> list[str]:
    """The caption words (:func:`~bridgetower.data.scenes.scene_vocabulary`) followed by the
    words of the questions, statements and hypotheses, without duplicates, in a fixed order."""
    words = list(scene_vocabulary(config))
    for w in _EXTRA_WORDS:
        if w not in words:
            words.append(w)
    return words


def build_downstream_tokenizer(base_tokenizer: Any = None, *, model_max_length: int = 50):
    """A word-level tokenizer covering :func:`downstream_vocabulary`.

    Without ``base_tokenizer``: ``<s> <pad> </s> <unk> <mask>`` then the words (the caption
    words keep the ids of :func:`~bridgetower.data.scenes.build_scene_tokenizer`).  With a
    word-level ``base_tokenizer`` (e.g. the one saved with a pretrained checkpoint): its
    vocabulary in id order, then the missing words appended, so every id of the base keeps its
    meaning.  A base whose first five tokens are not the RoBERTa specials is a ``ValueError``.
    """
    from bridgetower.models.tokenizer import SPECIAL_TOKENS, build_test_tokenizer

    words = downstream_vocabulary()
    if base_tokenizer is None:
        return build_test_tokenizer(words, model_max_length=model_max_length)
    vocab = base_tokenizer.get_vocab()
    ordered = [tok for tok, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    if tuple(ordered[: len(SPECIAL_TOKENS)]) != SPECIAL_TOKENS or [vocab[t] for t in ordered] != list(
        range(len(ordered))
    ):
        raise ValueError(
            "build_downstream_tokenizer: the base tokenizer must be word-level with ids 0..V-1 and "
            f"specials {SPECIAL_TOKENS} first; got the first tokens {ordered[:5]}"
        )
    base_words = ordered[len(SPECIAL_TOKENS) :]
    extra = [w for w in words if w not in vocab]
    return build_test_tokenizer(base_words + extra, model_max_length=model_max_length)


class _SceneTaskDataset(SeededSceneSet):
    """A synthetic set whose item ``i`` shows scene ``2 i`` of the stream ``seed``."""

    def _scene(self, index: int, stream: int = 0) -> tuple[Image.Image, Scene]:
        # stream 0: the scene of the item; stream 1: a second scene (NLVR2's right image)
        return make_scene(self.seed, 2 * index + stream, self.config)


# ------------------------------------------------------------------------------- VQA


def vqa_question(scene: Scene, kind: str, rng: np.random.Generator) -> tuple[str, str]:
    """A question of type ``kind`` (one of :data:`VQA_QUESTION_TYPES`) about ``scene`` and its
    answer (a word of :data:`VQA_ANSWERS`).  Every question has exactly one right answer."""
    objs = scene.objects
    if kind in ("colour", "shape"):
        # name the object by its other attribute when that is unique in the scene (half the
        # time), else by its position
        other = "shape" if kind == "colour" else "colour"
        unique = [o for o in objs if sum(getattr(p, other) == getattr(o, other) for p in objs) == 1]
        if unique and rng.random() < 0.5:
            o = unique[int(rng.integers(len(unique)))]
            name = f"the {o.shape}" if kind == "colour" else f"the {o.colour} object"
        else:
            o = objs[int(rng.integers(len(objs)))]
            name = f"the object {_WHERE[o.position]}"
        return f"what {kind} is {name}", getattr(o, kind)
    if kind == "count":
        if rng.random() < 0.4:
            return "how many objects are there", _COUNT_WORDS[len(objs)]
        shape = scene.config.shapes[int(rng.integers(len(scene.config.shapes)))]
        return f"how many {_PLURAL[shape]} are there", _COUNT_WORDS[sum(o.shape == shape for o in objs)]
    if kind == "position":
        o = objs[int(rng.integers(len(objs)))]
        return f"where is the {o.colour} {o.shape}", o.position
    raise ValueError(f"kind must be one of {VQA_QUESTION_TYPES}, got {kind!r}")


class SceneVQADataset(_SceneTaskDataset):
    """VQA-style questions about synthetic scenes (see the module doc).

    Item: ``{"pixel_values" | "image", "caption": question, "input_ids", "question_type",
    "answer", "answer_labels": [label], "answer_scores": [1.0], "targets": (16,) float32,
    "question_id": index, "image_id": index, "scene"}``.  Item ``i`` asks a question of type
    ``question_types[i % len(question_types)]`` (balanced types).
    """

    def __init__(self, size: int, *, question_types: Sequence[str] = VQA_QUESTION_TYPES, **kwargs: Any) -> None:
        bad = [q for q in question_types if q not in VQA_QUESTION_TYPES]
        if bad or not question_types:
            raise ValueError(f"question_types must be a non-empty subset of {VQA_QUESTION_TYPES}, got {question_types}")
        super().__init__(size, **kwargs)
        self.question_types = tuple(question_types)
        self.num_answers = len(VQA_ANSWERS)

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = self._index(index)
        image, scene = self._scene(index)
        kind = self.question_types[index % len(self.question_types)]
        question, answer = vqa_question(scene, kind, self._rng(index, 0x7A0))
        label = VQA_ANSWERS.index(answer)
        targets = torch.zeros(self.num_answers, dtype=torch.float32)
        targets[label] = 1.0
        return self.encoder.encode(
            image,
            question,
            question_type=kind,
            answer=answer,
            answer_labels=[label],
            answer_scores=[1.0],
            targets=targets,
            question_id=index,
            image_id=index,
            scene=scene,
        )


# ------------------------------------------------------------------------------- NLVR2


def _has(scene: Scene, colour: str | None = None, shape: str | None = None) -> bool:
    return any((colour is None or o.colour == colour) and (shape is None or o.shape == shape) for o in scene.objects)


#: The NLVR2-style statement templates, drawn uniformly (see :func:`nlvr2_statement`):
#: ``{side}`` is ``left``/``right`` (which image), ``{where}`` a position phrase inside that
#: image ("on the left", "at the top" ...), ``|`` separates two equally likely variants.
NLVR2_TEMPLATES: tuple[str, ...] = (
    "the {side} image contains a {colour} object",
    "the {side} image contains a {shape}",
    "the {side} image contains a {colour} {shape}",
    "the {side} image has a {colour} object {where}",
    "both images contain a {colour} object | both images contain a {shape}",
    "exactly one image contains a {colour} object | exactly one image contains a {shape}",
)
_NLVR2_MAX_PAIRS = 4096


def nlvr2_statement(
    rng: np.random.Generator, config: SceneConfig | None = None
) -> tuple[str, Callable[[Scene, Scene], bool]]:
    """Draw a statement about a pair of scenes and its truth function ``truth(left, right)``.

    The statement depends on ``rng`` only -- never on the scenes or on the wanted label
    (:class:`SceneNLVR2Dataset` then draws scene pairs until the statement has the wanted
    truth value), so the text alone tells nothing about the label.  One of
    :data:`NLVR2_TEMPLATES`, uniformly, with uniform colours, shapes, sides and positions.
    """
    config = config or SceneConfig()
    colour = config.colours[int(rng.integers(len(config.colours)))]
    shape = config.shapes[int(rng.integers(len(config.shapes)))]
    side = ("left", "right")[int(rng.integers(2))]
    where = ("left", "right", "top", "bottom")[int(rng.integers(4))]
    by_colour = bool(rng.random() < 0.5)
    template = int(rng.integers(len(NLVR2_TEMPLATES)))

    def pick(left: Scene, right: Scene) -> Scene:
        return left if side == "left" else right

    if template == 0:
        return f"the {side} image contains a {colour} object", lambda a, b: _has(pick(a, b), colour)
    if template == 1:
        return f"the {side} image contains a {shape}", lambda a, b: _has(pick(a, b), shape=shape)
    if template == 2:
        return f"the {side} image contains a {colour} {shape}", lambda a, b: _has(pick(a, b), colour, shape)
    if template == 3:
        return (
            f"the {side} image has a {colour} object {_WHERE[where]}",
            lambda a, b: any(o.colour == colour and o.position == where for o in pick(a, b).objects),
        )
    kw = {"colour": colour} if by_colour else {"shape": shape}
    what = f"a {colour} object" if by_colour else f"a {shape}"
    if template == 4:
        return f"both images contain {what}", lambda a, b: _has(a, **kw) and _has(b, **kw)
    return f"exactly one image contains {what}", lambda a, b: _has(a, **kw) != _has(b, **kw)


class SceneNLVR2Dataset(_SceneTaskDataset):
    """NLVR2-style statements about two synthetic scenes (see the module doc).

    Item: ``{"pixel_values" | "image": left scene, "pixel_values_2" | "image_2": right
    scene, "caption": statement, "input_ids", "label": 1 true / 0 false, "image_id",
    "scenes": (left, right)}``.  Even items are true, odd items false.

    As in NLVR2, where every sentence is paired with image pairs that make it true and with
    pairs that make it false, the statement of item ``i`` is drawn first
    (:func:`nlvr2_statement`, independent of the label) and scene pairs are then drawn
    (deterministically from ``(seed, i)``) until one gives the statement the wanted truth
    value: a statement is exactly as likely in a true item as in a false one, so the text
    alone is at chance and the images must be read.
    """

    def _pair(self, index: int) -> tuple[str, Scene, Scene, bool]:
        want = index % 2 == 0
        statement, truth = nlvr2_statement(self._rng(index, 0x2F2), self.config)
        for k in range(_NLVR2_MAX_PAIRS):
            left = sample_scene(np.random.default_rng([self.seed, index, 0x2F3, k, 0]), self.config)
            right = sample_scene(np.random.default_rng([self.seed, index, 0x2F3, k, 1]), self.config)
            if truth(left, right) == want:
                return statement, left, right, want
        raise RuntimeError(  # pragma: no cover - every template is true of some pairs, false of others
            f"no scene pair makes {statement!r} {'true' if want else 'false'} (item {index})"
        )

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = self._index(index)
        statement, left, right, truth = self._pair(index)
        left_img, right_img = render_scene(left), render_scene(right)
        sample = self.encoder.encode(left_img, statement, label=int(truth), image_id=index, scenes=(left, right))
        sample.update(self.encoder.visual(right_img, "_2"))  # pixel_values_2 | image_2
        return sample


# ------------------------------------------------------------------------------- SNLI-VE

#: SNLI-VE label ids (the official ones): 0 contradiction, 1 neutral, 2 entailment.
_CONTRADICTION, _NEUTRAL, _ENTAILMENT = 0, 1, 2


def snli_hypothesis(scene: Scene, label: int, rng: np.random.Generator) -> str:
    """A hypothesis about ``scene`` with the SNLI-VE ``label`` (0, 1 or 2; see the module doc)."""
    if label not in (0, 1, 2):
        raise ValueError(f"label must be 0 (contradiction), 1 (neutral) or 2 (entailment), got {label!r}")
    # the whole scene, or one of its objects
    if len(scene.objects) > 1 and rng.random() < 0.5:
        o = scene.objects[int(rng.integers(len(scene.objects)))]
        part = dataclasses.replace(scene, objects=(o,))
    else:
        part = scene
    if label == _ENTAILMENT:
        return part.caption
    clause = f" which is {NEUTRAL_PROPERTIES[int(rng.integers(len(NEUTRAL_PROPERTIES)))]}"
    if label == _NEUTRAL:
        return part.caption + clause
    attribute = ("colour", "shape", "position")[int(rng.integers(3))]
    altered = alter_scene(part, attribute, rng)
    if len(part.objects) == 1 and len(scene.objects) == 2:
        # a one-object phrase must be false of every object of the scene
        o = altered.objects[0]
        if any(p.colour == o.colour and p.shape == o.shape and p.position == o.position for p in scene.objects):
            altered = alter_scene(part, "colour", rng)
    return altered.caption + (clause if rng.random() < 0.5 else "")


class SceneSNLIVEDataset(_SceneTaskDataset):
    """SNLI-VE-style hypotheses about synthetic scenes (see the module doc).

    Item: ``{"pixel_values" | "image", "caption": hypothesis, "premise": the true caption,
    "input_ids", "label": 2 - index % 3, "image_id", "scene"}`` with the official label ids
    (0 contradiction, 1 neutral, 2 entailment).
    """

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = self._index(index)
        image, scene = self._scene(index)
        label = 2 - index % 3
        hypothesis = snli_hypothesis(scene, label, self._rng(index, 0x5E1))
        return self.encoder.encode(image, hypothesis, premise=scene.caption, label=label, image_id=index, scene=scene)


# ------------------------------------------------------------------------------- retrieval


def false_captions(scene: Scene, k: int, rng: np.random.Generator, *, seed: int, config: SceneConfig) -> list[str]:
    """``k`` captions that do not describe ``scene``: alternately a one-attribute change of its
    caption and the caption of a random other scene (stream ``seed + 1``), pairwise distinct and
    all different from the true caption."""
    out: list[str] = []
    attrs = ("colour", "shape", "position")
    tries = 0
    while len(out) < k:
        tries += 1
        if tries > 100 * (k + 1):  # pragma: no cover - the caption space is large
            raise RuntimeError(f"could not draw {k} false captions for {scene.caption!r}")
        if len(out) % 2 == 0:
            cap = alter_scene(scene, attrs[int(rng.integers(3))], rng).caption
        else:
            cap = make_scene(seed + 1, int(rng.integers(1 << 40)), config)[1].caption
        if cap != scene.caption and cap not in out:
            out.append(cap)
    return out


class SceneIRTRDataset(_SceneTaskDataset):
    """Ranking groups for IRTR fine-tuning: a scene, its caption and ``num_false_texts`` false
    captions (:func:`false_captions`).

    Item: ``{"pixel_values" | "image", "caption": the true caption, "false_captions": [...],
    "input_ids": [true ids, false ids ...] (a list of 1 + K tensors, with a tokenizer),
    "image_id", "scene"}``.  Batch with :class:`IRTRCollator`.
    """

    def __init__(self, size: int, *, num_false_texts: int = 15, **kwargs: Any) -> None:
        if isinstance(num_false_texts, bool) or not isinstance(num_false_texts, int) or num_false_texts < 1:
            raise ValueError(f"num_false_texts must be a positive int, got {num_false_texts!r}")
        super().__init__(size, **kwargs)
        self.num_false_texts = num_false_texts

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = self._index(index)
        image, scene = self._scene(index)
        rng = self._rng(index, 0x1A7)
        false = false_captions(scene, self.num_false_texts, rng, seed=self.seed, config=self.config)
        sample = self.encoder.encode(image, scene.caption, false_captions=false, image_id=index, scene=scene)
        if self.encoder.tokenizer is not None:
            sample["input_ids"] = [sample["input_ids"]] + [self.encoder.tokens(c) for c in false]
        return sample


class IRTRCollator:
    """Batch :class:`SceneIRTRDataset` items (or any samples with ``input_ids`` a list of
    ``1 + K`` id tensors, the true text first, and ``pixel_values``):

    ``input_ids``/``attention_mask`` ``(B, 1 + K, L)`` long (padded with ``pad_token_id``),
    ``pixel_values`` ``(B, 3, H, W)``, ``image_ids`` ``(B,)``, ``skipped`` (per reason of
    ``SKIP_REASONS``).  Every sample must have the same ``K``; skipped samples
    (:class:`~bridgetower.data.Skipped` / ``None``) are dropped and counted; when every sample
    was skipped the batch holds only ``skipped``.
    """

    def __init__(self, pad_token_id: int) -> None:
        self.pad_token_id = int(pad_token_id)

    def __call__(self, samples: Sequence[Any], generator: torch.Generator | None = None) -> dict[str, Tensor]:
        kept = [s for s in samples if isinstance(s, Mapping)]
        bad = [type(s).__name__ for s in samples if not isinstance(s, (Mapping, Skipped, type(None)))]
        if bad:
            raise TypeError(f"IRTRCollator: samples must be dicts, got {bad}")
        skipped = torch.zeros(len(SKIP_REASONS), dtype=torch.long)
        for s in samples:
            if not isinstance(s, Mapping):
                skipped[SKIP_REASONS.index(s.reason if isinstance(s, Skipped) else "bad_record")] += 1
        if not kept:
            return {"skipped": skipped}
        groups = [s["input_ids"] for s in kept]
        sizes = {len(g) for g in groups}
        if len(sizes) != 1 or min(sizes) < 2:
            raise ValueError(f"IRTRCollator: every sample needs the same number (>= 2) of texts, got {sorted(sizes)}")
        k1 = sizes.pop()
        length = max(int(t.numel()) for g in groups for t in g)
        ids = torch.full((len(kept), k1, length), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(kept), k1, length), dtype=torch.long)
        for b, g in enumerate(groups):
            for j, t in enumerate(g):
                ids[b, j, : t.numel()] = torch.as_tensor(t, dtype=torch.long)
                mask[b, j, : t.numel()] = 1
        pixel_values = torch.stack([s["pixel_values"] for s in kept])
        return {
            "input_ids": ids,
            "attention_mask": mask,
            "pixel_values": pixel_values,
            "image_ids": torch.arange(len(kept)),
            "skipped": skipped,
        }

    def __repr__(self) -> str:
        return f"{type(self).__name__}(pad_token_id={self.pad_token_id})"


def scene_retrieval_set(
    size: int,
    *,
    seed: int = 1,
    config: SceneConfig | None = None,
    transform: Callable[[Image.Image], Tensor],
    tokenizer: Any,
    max_length: int = 50,
) -> dict[str, Any]:
    """``size`` scenes of stream ``seed`` with pairwise distinct captions, for retrieval.

    Returns ``{"pixel_values": (N, 3, H, W), "input_ids": (N, L), "attention_mask": (N, L),
    "text_image": (N,) long (text ``t`` describes image ``text_image[t]``; here ``t``),
    "captions": [str], "indices": [scene index]}``.  Scenes whose caption already occurred are
    passed over (two scenes with one caption would make recall ill-defined).
    """
    check_size_seed(size, seed)
    config = config or SceneConfig()
    seen: set[str] = set()
    images, captions, indices = [], [], []
    index = 0
    while len(captions) < size:
        if index > 100 * size + 1000:  # pragma: no cover - the caption space is large
            raise ValueError(f"could not find {size} scenes with distinct captions")
        image, scene = make_scene(seed, index, config)
        if scene.caption not in seen:
            seen.add(scene.caption)
            images.append(transform(image))
            captions.append(scene.caption)
            indices.append(index)
        index += 1
    enc = tokenizer(captions, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    return {
        "pixel_values": torch.stack(images),
        "input_ids": enc["input_ids"].long(),
        "attention_mask": enc["attention_mask"].long(),
        "text_image": torch.arange(size),
        "captions": captions,
        "indices": indices,
    }


class InStreamFalseTexts(torch.utils.data.IterableDataset):
    """IRTR ranking groups from a stream of images with captions (e.g.
    :class:`~bridgetower.data.arrow.ArrowRetrievalDataset`): each image with one of its
    captions (the first) and ``num_false_texts`` captions of *other* images drawn from a
    buffer of the last ``buffer_size`` images seen (the official loader draws them from the
    whole table; a stream has only its recent past).  Images met before the buffer holds
    ``num_false_texts`` other images are passed over and counted in ``stats``
    (``bad_record``).  Samples: ``input_ids`` a list of ``1 + K`` id tensors, ``pixel_values``,
    ``image_id``; batch with :class:`IRTRCollator`.
    """

    def __init__(self, base: Any, *, num_false_texts: int = 15, buffer_size: int = 1024, seed: int = 0) -> None:
        if isinstance(num_false_texts, bool) or not isinstance(num_false_texts, int) or num_false_texts < 1:
            raise ValueError(f"num_false_texts must be a positive int, got {num_false_texts!r}")
        if buffer_size <= num_false_texts:
            raise ValueError(f"buffer_size ({buffer_size}) must exceed num_false_texts ({num_false_texts})")
        self.base = base
        self.num_false_texts = num_false_texts
        self.buffer_size = buffer_size
        self.seed = seed
        self.epoch = 0
        self.stats = getattr(base, "stats", SkipStats())

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        if hasattr(self.base, "set_epoch"):
            self.base.set_epoch(epoch)

    def __iter__(self):
        rng = np.random.default_rng([self.seed, self.epoch, 0x1F5])
        buffer: list[tuple[Any, Tensor]] = []  # (image id, caption ids)
        for sample in self.base:
            if not isinstance(sample, Mapping):
                yield sample
                continue
            ids = sample.get("input_ids")
            if not ids:
                raise ValueError("InStreamFalseTexts needs a tokenizer on the base dataset (input_ids)")
            others = [b for b in buffer if b[0] != sample["image_id"]]
            if len(others) >= self.num_false_texts:
                pick = rng.choice(len(others), self.num_false_texts, replace=False)
                out = {k: v for k, v in sample.items() if k not in ("input_ids", "captions")}
                out["caption"] = sample["captions"][0]
                out["input_ids"] = [ids[0]] + [others[int(j)][1] for j in pick]
                yield out
            else:
                yield self.stats.add("bad_record", f"{sample['image_id']} (not enough earlier captions for false texts)")
            buffer.extend((sample["image_id"], t) for t in ids)
            del buffer[: max(0, len(buffer) - self.buffer_size)]
