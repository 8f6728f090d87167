"""The bundled demo: pretrain ``bridgetower-tiny`` on synthetic scenes and show it learned.

Everything is generated on the fly and offline: scenes (:mod:`bridgetower.data.scenes`) from
``(seed, index)``, the word-level tokenizer from the caption vocabulary.  The recipe follows
what DEMO.md measured on a 2-core machine, not the published hyper-parameters (which are for
4M images and a batch of 4096): lr 1e-3 for every parameter (no 5x multiplier) with 100
warm-up steps, batch 32, MLM + ITM + ITC (the contrastive loss makes the vision tower tell
captions apart early, and ITM and the shape words follow sooner), colour, shape and position
words masked with p=0.5 (other words 0.15), and half of the ITM negatives *text-side
one-attribute negatives*.

A text-side negative (:class:`SceneTextNegatives`) pairs a scene's image with its own
caption altered in exactly one attribute -- a colour, a shape, or the two positions swapped
(:func:`~bridgetower.data.scenes.alter_scene`) -- and label 0.  Random wrong images are
easy to reject from colour alone; these negatives force the fusion to check every word
against the picture.  The altered caption has the same number of tokens as the original, so
it shares the batch's attention mask; it goes in ``itm_input_ids`` (the ITM pass), while MLM
and ITC keep the true caption.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

__all__ = ["DEMO_ATTRIBUTE_WEIGHTS", "DEMO_TABLE_ROWS", "SceneTextNegatives", "demo_score_table", "format_demo_table"]

#: How often each attribute is altered in a demo text-side negative: colour is also taught by
#: the random negatives, so shape and position get twice its share.
DEMO_ATTRIBUTE_WEIGHTS: dict[str, float] = {"colour": 1.0, "shape": 2.0, "position": 2.0}


class SceneTextNegatives:
    """Wrap a :class:`~bridgetower.data.PretrainingCollator`: turn a share of its ITM
    negatives into text-side one-attribute negatives (see the module doc).

    Args:
        collator: the pretraining collator (called with the same ``generator``).
        tokenizer: the scene tokenizer.
        fraction: share of the ITM negatives (rows with label 0) converted.
        attributes: ``{attribute: weight}`` among ``colour``, ``shape``, ``position`` (default:
            equal weights).
        max_length: tokenizer truncation.

    Samples must carry their ``scene`` (as :class:`~bridgetower.data.SyntheticSceneDataset`
    items do).  ``__call__(samples, generator=None)`` returns the collator's batch plus
    ``itm_input_ids``.
    """

    def __init__(
        self,
        collator: Any,
        tokenizer: Any,
        *,
        fraction: float = 0.5,
        attributes: Mapping[str, float] | None = None,
        max_length: int = 50,
    ) -> None:
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"fraction must be in [0, 1], got {fraction!r}")
        attributes = dict({"colour": 1.0, "shape": 1.0, "position": 1.0} if attributes is None else attributes)
        bad = [a for a in attributes if a not in ("colour", "shape", "position")]
        if bad or not attributes or any(w < 0 for w in attributes.values()) or sum(attributes.values()) <= 0:
            raise ValueError(
                f"attributes must map colour/shape/position to non-negative weights (not all 0), got {attributes}"
            )
        self.collator = collator
        self.tokenizer = tokenizer
        self.fraction = float(fraction)
        self.attributes = tuple(attributes)
        w = torch.tensor([attributes[a] for a in self.attributes], dtype=torch.float64)
        self._weights = w / w.sum()
        self.max_length = max_length

    def __repr__(self) -> str:
        return f"SceneTextNegatives(fraction={self.fraction}, attributes={self.attributes}, collator={self.collator!r})"

    def __call__(self, samples: Sequence[Mapping[str, Any]], generator: torch.Generator | None = None) -> dict:
        from ..data.scenes import alter_scene

        batch = self.collator(samples, generator=generator)
        if "input_ids" not in batch:
            return batch
        itm_ids = batch["input_ids"].clone()
        batch["itm_input_ids"] = itm_ids
        if len(samples) != itm_ids.shape[0] or not all(isinstance(s, Mapping) and "scene" in s for s in samples):
            return batch  # some samples were skipped, or no scene descriptions: leave as is
        neg_rows = torch.nonzero(batch["itm_labels"] == 0).squeeze(1)
        k = int(round(self.fraction * neg_rows.numel()))
        if k == 0:
            return batch
        rows = neg_rows[torch.randperm(neg_rows.numel(), generator=generator)[:k]]
        picks = torch.multinomial(self._weights, k, replacement=True, generator=generator)
        seeds = torch.randint(0, 2**62, (k,), generator=generator)
        index = batch["itm_image_index"].clone()
        for row, pick, seed in zip(rows.tolist(), picks.tolist(), seeds.tolist(), strict=False):
            scene = samples[row]["scene"]
            try:
                caption = alter_scene(scene, self.attributes[pick], np.random.default_rng(seed)).caption
            except ValueError:  # the scene config allows no such change
                continue
            ids = self.tokenizer(caption, truncation=True, max_length=self.max_length)["input_ids"]
            n = int(batch["attention_mask"][row].sum())
            if len(ids) != n:  # never for the scene grammar; keep the random negative then
                continue
            itm_ids[row, :n] = torch.as_tensor(ids)
            index[row] = row
        batch["itm_image_index"] = index
        return batch


#: The rows of :func:`format_demo_table`: (metric key, label, chance level).
DEMO_TABLE_ROWS: list[tuple[str, str, float]] = [
    ("itm_acc_random", "ITM accuracy, random negatives", 0.5),
    ("itm_acc_colour", "ITM accuracy, one-colour negatives", 0.5),
    ("itm_acc_shape", "ITM accuracy, one-shape negatives", 0.5),
    ("itm_acc_position", "ITM accuracy, position-swap negatives", 0.5),
    ("mlm_acc_colour", "MLM accuracy, masked colour words", 1 / 6),
    ("mlm_acc_shape", "MLM accuracy, masked shape words", 1 / 3),
    ("mlm_acc_position", "MLM accuracy, masked position words", 1 / 2),
]


def format_demo_table(before: Mapping[str, Any] | None, after: Mapping[str, Any], size: int) -> str:
    """The held-out accuracies of :class:`~bridgetower.training.evaluate.SceneEvaluator`
    before and after training, against chance (``size``: pairs per row)."""
    head = f"held-out scenes ({size} pairs per row)"
    width = max(len(head), *(len(r[1]) for r in DEMO_TABLE_ROWS))
    lines = [f"{head:<{width}}  before   after  chance", "-" * (width + 24)]
    for key, label, chance in DEMO_TABLE_ROWS:
        if key not in after:
            continue
        b = f"{100 * before[key]:5.1f}%" if before and before.get(key) is not None else "    - "
        lines.append(f"{label:<{width}}  {b}  {100 * after[key]:5.1f}%  {100 * chance:5.1f}%")
    return "\n".join(lines)


def demo_score_table(model: torch.nn.Module, tokenizer: Any, image_size: int) -> str:
    """One held-out scene with two objects scored against its caption and the caption with a
    wrong colour, a wrong shape, and the positions swapped."""
    from ..data import ImageTransform, SceneConfig, alter_scene, make_scene
    from .evaluate import format_score_table, score_texts

    cfg = SceneConfig(image_size=image_size)
    seed = 2_000_003  # neither the training stream nor the evaluation stream
    index = next(i for i in range(100) if len(make_scene(seed, i, cfg)[1].objects) == 2)
    image, scene = make_scene(seed, index, cfg)
    rng = np.random.default_rng(0)
    kinds = ["true caption", "wrong colour", "wrong shape", "positions swapped"]
    texts = [scene.caption] + [alter_scene(scene, a, rng).caption for a in ("colour", "shape", "position")]
    rows = score_texts(model, tokenizer, ImageTransform(image_size)(image), texts)
    return f"one held-out scene (stream {seed}, index {index}):\n" + format_score_table(rows, kinds)
