"""Uni-modal classification sets built from the synthetic scenes, and their collators.

The stand-ins, on the bundled scenes, for the official repository's uni-modal benchmarks
(CIFAR for the vision tower, GLUE for the text tower).  Like every synthetic set of the
package, item ``i`` is generated from ``(seed, i)``: always the same, no disk, and a held-out
split is another seed.  Labels are exact (they come from the structured scene description).

================================== =========================================================
set                                item
================================== =========================================================
:class:`SceneImageClassification`  one single-object scene; ``label`` = its shape (3
                                   classes, :data:`~bridgetower.data.scenes.SHAPES` order) or
                                   its colour (6 classes) -- ``attribute="shape"|"colour"``;
                                   item ``i`` has label ``i % num_classes`` (balanced)
:class:`CaptionMentionDataset`     one caption (single sentence, like SST-2 / CoLA);
                                   ``label`` 1 if it mentions a ``target`` object ("red",
                                   or a shape word); even items are positive
:class:`CaptionPairDataset`        two descriptions (a sentence pair, like MRPC / QQP):
                                   ``label`` 1 if both describe the same scene -- the objects
                                   mentioned in another order and/or another phrasing
                                   ("a red circle on the left", "the red circle is on the
                                   left", "on the left there is a red circle") -- and 0 if
                                   the second describes the scene with one attribute changed
                                   (colour, shape or positions; phrased and ordered at random
                                   just the same, so the surface form gives nothing away);
                                   even items are positive
================================== =========================================================

The text sets use the caption words plus ``is`` and ``there``
(:func:`unimodal_text_vocabulary`), all in
:func:`~bridgetower.data.downstream.downstream_vocabulary`, so the tokenizer the downstream
fine-tuning builds covers them.  :class:`ImageClassificationCollator` and
:class:`TextClassificationCollator` batch them (``pixel_values``/``labels``;
``input_ids``/``attention_mask``/``labels``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .datasets import SeededSceneSet
from .scenes import (
    Scene,
    SceneConfig,
    SceneObject,
    alter_scene,
    render_scene,
    sample_scene,
    scene_vocabulary,
)

__all__ = [
    "IMAGE_ATTRIBUTES",
    "PAIR_ALTERATIONS",
    "CaptionMentionDataset",
    "CaptionPairDataset",
    "ImageClassificationCollator",
    "SceneImageClassification",
    "TextClassificationCollator",
    "describe_scene",
    "unimodal_text_vocabulary",
]

#: What :class:`SceneImageClassification` can label.
IMAGE_ATTRIBUTES: tuple[str, ...] = ("shape", "colour")
#: The one-attribute changes behind the negatives of :class:`CaptionPairDataset`.
PAIR_ALTERATIONS: tuple[str, ...] = ("colour", "shape", "position")

_WHERE = {"left": "on the left", "right": "on the right", "top": "at the top", "bottom": "at the bottom"}
#: phrasings of one object (all mean the same); the first is the caption's own
_STYLES = (
    lambda o: f"a {o.colour} {o.shape} {_WHERE[o.position]}",
    lambda o: f"the {o.colour} {o.shape} is {_WHERE[o.position]}",
    lambda o: f"{_WHERE[o.position]} there is a {o.colour} {o.shape}",
)


def unimodal_text_vocabulary(config: SceneConfig | None = None) -> list[str]:
    """Every word the text sets use: the caption words, then ``is`` and ``there``."""
    return list(scene_vocabulary(config)) + ["is", "there"]


def describe_scene(scene: Scene, rng: np.random.Generator, *, shuffle: bool = True) -> str:
    """A description of ``scene`` in a random phrasing per object (:data:`_STYLES`) and, with
    ``shuffle``, a random order of mention.  Every result means exactly the scene."""
    objs = list(scene.objects)
    if shuffle and len(objs) > 1 and rng.random() < 0.5:
        objs.reverse()
    return " and ".join(_STYLES[int(rng.integers(len(_STYLES)))](o) for o in objs)


# ------------------------------------------------------------------------------- images


class SceneImageClassification(SeededSceneSet):
    """Single-object scenes labelled by shape or colour (the synthetic CIFAR; see the module
    doc).

    Args:
        size: items; ``seed``: the stream (held-out data: another seed).
        attribute: ``"shape"`` (``config.shapes`` order) or ``"colour"`` (``config.colours``).
        config: scene drawing (objects are forced to one per scene).
        transform: PIL image -> tensor (e.g. :class:`~bridgetower.data.ImageTransform`); without
            it the item carries the PIL ``image``.
        (the other keyword arguments of :class:`~bridgetower.data.datasets.SeededSceneSet`
        are accepted and unused)

    Item: ``{"pixel_values" | "image", "label", "image_id": i, "scene"}``.
    """

    _salt = 0x1C1A

    def __init__(self, size: int, *, attribute: str = "shape", **kwargs: Any) -> None:
        if attribute == "color":
            attribute = "colour"
        if attribute not in IMAGE_ATTRIBUTES:
            raise ValueError(f"attribute must be one of {IMAGE_ATTRIBUTES}, got {attribute!r}")
        super().__init__(size, **kwargs)
        self.config = dataclasses.replace(self.config, min_objects=1, max_objects=1)
        self.attribute = attribute

    @property
    def transform(self) -> Callable | None:
        return self.encoder.transform

    @property
    def classes(self) -> tuple[str, ...]:
        """Class names in label order."""
        return tuple(self.config.shapes if self.attribute == "shape" else self.config.colours)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = self._index(index)
        label = index % self.num_classes
        scene = sample_scene(self._rng(index), self.config)
        obj: SceneObject = dataclasses.replace(scene.objects[0], **{self.attribute: self.classes[label]})
        scene = dataclasses.replace(scene, objects=(obj,))
        return {"label": label, "image_id": index, "scene": scene, **self.encoder.visual(render_scene(scene))}


# ------------------------------------------------------------------------------- texts


class _TextSet(SeededSceneSet):
    """A text set: the :class:`~bridgetower.data.datasets.SeededSceneSet` keyword arguments
    (``seed``, ``config``, ``tokenizer``, ``max_length`` >= 4)."""

    def __init__(self, size: int, *, max_length: int = 50, **kwargs: Any) -> None:
        if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 4:
            raise ValueError(f"max_length must be an int >= 4, got {max_length!r}")
        super().__init__(size, max_length=max_length, **kwargs)

    @property
    def tokenizer(self) -> Any:
        return self.encoder.tokenizer

    @property
    def max_length(self) -> int:
        return self.encoder.max_length

    def _encode(self, item: dict[str, Any], text: str, pair: str | None = None) -> dict[str, Any]:
        if self.encoder.tokenizer is not None:
            item["input_ids"] = self.encoder.tokens(text, pair)
        return item


class CaptionMentionDataset(_TextSet):
    """Single captions labelled 1 when they mention a ``target`` object (see the module doc).

    ``target``: a colour (``"red"``) or a shape word.  Positives (even items) get a scene
    with such an object, negatives one without.  Item: ``{"text", "input_ids" (with a
    tokenizer), "label", "scene"}``.
    """

    _salt = 0x7E47

    def __init__(self, size: int, *, target: str = "red", **kwargs: Any) -> None:
        super().__init__(size, **kwargs)
        if target in self.config.colours:
            self.attribute, values = "colour", self.config.colours
        elif target in self.config.shapes:
            self.attribute, values = "shape", self.config.shapes
        else:
            raise ValueError(
                f"target must be a colour {tuple(self.config.colours)} or a shape {tuple(self.config.shapes)}, got {target!r}"
            )
        if len(values) < 2:
            raise ValueError(f"target {target!r}: the scene config has no other {self.attribute} for negatives")
        self.target = target
        self._others = tuple(v for v in values if v != target)

    def _has(self, obj: SceneObject) -> bool:
        return getattr(obj, self.attribute) == self.target

    def _distinct(self, first: SceneObject, second: SceneObject, rng: np.random.Generator) -> SceneObject:
        """``second`` changed so it no longer looks like ``first``, without changing the label:
        its other attribute when there is another value, else its own attribute."""
        other_field = "shape" if self.attribute == "colour" else "colour"
        values = [v for v in getattr(self.config, other_field + "s") if v != getattr(first, other_field)]
        if not values:
            other_field = self.attribute
            values = [v for v in self._others if v != getattr(first, self.attribute)]
            if not values:
                raise ValueError(f"the scene config cannot draw two distinct objects without a {self.target!r} one")
        return dataclasses.replace(second, **{other_field: values[int(rng.integers(len(values)))]})

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = self._index(index)
        label = 1 - index % 2
        rng = self._rng(index)
        scene = sample_scene(rng, self.config)
        objs = list(scene.objects)
        if label == 1 and not any(self._has(o) for o in objs):
            k = int(rng.integers(len(objs)))
            objs[k] = dataclasses.replace(objs[k], **{self.attribute: self.target})
        elif label == 0:
            for k, o in enumerate(objs):
                if self._has(o):
                    objs[k] = dataclasses.replace(o, **{self.attribute: self._others[int(rng.integers(len(self._others)))]})
        if len(objs) == 2 and objs[0].same_look(objs[1]):  # keep the two objects distinct
            objs[1] = self._distinct(objs[0], objs[1], rng)
        scene = dataclasses.replace(scene, objects=tuple(objs))
        text = scene.caption
        return self._encode({"text": text, "label": label, "scene": scene}, text)


class CaptionPairDataset(_TextSet):
    """Pairs of scene descriptions labelled 1 when both describe the same scene (see the
    module doc).

    ``alterations``: which one-attribute changes make the negatives (default all three;
    ``("colour", "shape")`` drops the position swaps, which only the order of words tells).
    Item: ``{"text", "text_pair", "input_ids" (the pair ``<s> A </s></s> B </s>``), "label",
    "alteration" (None for positives), "scene"}``.
    """

    _salt = 0x9A12

    def __init__(self, size: int, *, alterations: Sequence[str] = PAIR_ALTERATIONS, **kwargs: Any) -> None:
        super().__init__(size, **kwargs)
        alterations = tuple("colour" if a == "color" else a for a in alterations)
        bad = [a for a in alterations if a not in PAIR_ALTERATIONS]
        if bad or not alterations:
            raise ValueError(f"alterations must be a non-empty subset of {PAIR_ALTERATIONS}, got {alterations!r}")
        self.alterations = alterations

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = self._index(index)
        label = 1 - index % 2
        rng = self._rng(index)
        scene = sample_scene(rng, self.config)
        first = describe_scene(scene, rng)
        alteration = None
        other = scene
        if label == 0:
            alteration = self.alterations[int(rng.integers(len(self.alterations)))]
            other = alter_scene(scene, alteration, rng)
        second = describe_scene(other, rng)
        item = {"text": first, "text_pair": second, "label": label, "alteration": alteration, "scene": scene}
        return self._encode(item, first, second)


# ------------------------------------------------------------------------------- collators


def _kept(samples: Sequence[Any], who: str) -> list[Mapping[str, Any]]:
    kept = [s for s in samples if isinstance(s, Mapping)]
    if not kept:
        raise ValueError(f"{who}: no samples to batch")
    return kept


class ImageClassificationCollator:
    """``samples`` -> ``{"pixel_values": (B, 3, H, W), "labels": (B,) long}``."""

    def __call__(self, samples: Sequence[Mapping[str, Any]]) -> dict[str, Tensor]:
        kept = _kept(samples, type(self).__name__)
        if any("pixel_values" not in s for s in kept):
            raise ValueError(f"{type(self).__name__}: samples need pixel_values (give the dataset a transform)")
        shapes = {tuple(s["pixel_values"].shape) for s in kept}
        if len(shapes) != 1:
            raise ValueError(f"{type(self).__name__}: images of different sizes {sorted(shapes)}")
        return {
            "pixel_values": torch.stack([s["pixel_values"] for s in kept]),
            "labels": torch.tensor([int(s["label"]) for s in kept], dtype=torch.long),
        }

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class TextClassificationCollator:
    """``samples`` -> ``{"input_ids": (B, L), "attention_mask": (B, L), "labels": (B,)}``, right
    padded with ``pad_token_id`` to the longest text.  Labels are long, or float when the
    samples' labels are floats (regression)."""

    def __init__(self, pad_token_id: int) -> None:
        if isinstance(pad_token_id, bool) or not isinstance(pad_token_id, int) or pad_token_id < 0:
            raise ValueError(f"pad_token_id must be a non-negative int, got {pad_token_id!r}")
        self.pad_token_id = pad_token_id

    def __call__(self, samples: Sequence[Mapping[str, Any]]) -> dict[str, Tensor]:
        kept = _kept(samples, type(self).__name__)
        if any("input_ids" not in s for s in kept):
            raise ValueError(f"{type(self).__name__}: samples need input_ids (give the dataset a tokenizer)")
        length = max(int(s["input_ids"].numel()) for s in kept)
        ids = torch.full((len(kept), length), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(kept), length), dtype=torch.long)
        for i, s in enumerate(kept):
            n = int(s["input_ids"].numel())
            ids[i, :n] = s["input_ids"]
            mask[i, :n] = 1
        labels = [s["label"] for s in kept]
        dtype = torch.float32 if any(isinstance(v, float) for v in labels) else torch.long
        return {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor(labels, dtype=dtype)}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(pad_token_id={self.pad_token_id})"

