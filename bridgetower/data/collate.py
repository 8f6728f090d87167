"""Collators: a list of (image tensor, token ids) samples -> the pretraining batch.

Two stages, so the random part can run where its generator lives:

- :meth:`PretrainingCollator.collate` (no randomness): pads the token ids, stacks (and pads)
  the images, drops skipped samples and counts them. Safe in ``DataLoader`` workers.
- :meth:`PretrainingCollator.augment` (random, driven by a ``torch.Generator``): MLM masking
  and ITM negatives. Run it in the training process with the trainer's generator and the
  whole batch is reproducible and resumable; or call the collator itself (``collate`` then
  ``augment``) as the ``collate_fn``.

The batch (every value a tensor, ``B`` samples, ``L`` tokens, images ``H x W``):

================== ============== ===========================================================
key                shape, dtype   meaning
================== ============== ===========================================================
input_ids          (B, L) long    token ids, padded with ``pad_token_id``
attention_mask     (B, L) long    1 = real token, 0 = padding
pixel_values       (B, 3, H, W)   images (zero-padded to the largest in the batch)
pixel_mask         (B, H, W) long 1 = real pixel, 0 = padding
image_ids          (B,) long      equal values = the same image (batch-local ids)
skipped            (R,) long      samples dropped from this batch, per reason in ``SKIP_REASONS``
labels             (B,) long      only when every sample has a ``label`` (evaluation sets)
mlm_input_ids      (B, L) long    input_ids with the MLM corruption (``augment``)
mlm_labels         (B, L) long    original id at the chosen positions, -100 elsewhere
itm_image_index    (B,) long      ITM pass: text ``i`` is paired with image ``itm_image_index[i]``
itm_labels         (B,) long      1 = matching pair, 0 = mismatched (``augment``)
================== ============== ===========================================================

The MLM pass uses ``mlm_input_ids`` with the matching images (``pixel_values``); the ITM pass
uses ``input_ids`` with ``pixel_values[itm_image_index]`` (see :func:`itm_inputs`). An ITM
negative is never the same image as the positive (``image_ids``) and never an image whose own
caption is identical to the text (for the synthetic scenes, a different scene with the same
caption would be a true match). A row with no valid negative in the batch stays a positive,
with label 1.

Hard negatives (ALBEF style) need the model's ITC similarities, so they are applied in the
training step: :func:`apply_hard_negatives` (or the lower-level
:func:`sample_hard_negatives`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from bridgetower.models.image_ops import pad_images

from .stats import SKIP_REASONS, Skipped

__all__ = [
    "PretrainingCollator",
    "mask_tokens",
    "mask_selected_tokens",
    "sample_itm_negatives",
    "sample_hard_negatives",
    "apply_hard_negatives",
    "itm_inputs",
    "negative_exclusion",
    "is_empty_batch",
]


def _check_prob(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1], got {value!r}")
    return float(value)


def _as_long_2d(name: str, t: Tensor) -> Tensor:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != 2 or t.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
        raise ValueError(
            f"{name} must be a 2-D integer tensor (B, L), got {tuple(t.shape)} {t.dtype}"
        )
    return t


def mask_tokens(
    input_ids: Tensor,
    *,
    mask_token_id: int,
    random_token_ids: Tensor | Sequence[int],
    protected: Tensor | None = None,
    mlm_probability: float = 0.15,
    boost_token_ids: Sequence[int] | Tensor | None = None,
    boost_probability: float | None = None,
    mask_replace_prob: float = 0.8,
    random_replace_prob: float = 0.1,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """BERT-style MLM corruption. Returns ``(masked_input_ids, labels)``, both ``(B, L)``.

    Each position not ``protected`` is chosen with probability ``mlm_probability`` (or
    ``boost_probability`` when its token is in ``boost_token_ids``). A chosen token is replaced
    by ``mask_token_id`` with probability ``mask_replace_prob``, by a token drawn uniformly
    from ``random_token_ids`` with probability ``random_replace_prob``, and left unchanged
    otherwise. ``labels`` holds the original id at chosen positions and -100 elsewhere.
    ``protected`` (bool, ``(B, L)``, True = never mask) should cover special tokens and padding.
    """
    input_ids = _as_long_2d("input_ids", input_ids)
    mlm_probability = _check_prob("mlm_probability", mlm_probability)
    mask_replace_prob = _check_prob("mask_replace_prob", mask_replace_prob)
    random_replace_prob = _check_prob("random_replace_prob", random_replace_prob)
    if mask_replace_prob + random_replace_prob > 1.0 + 1e-9:
        raise ValueError(
            "mask_replace_prob + random_replace_prob must be <= 1, got "
            f"{mask_replace_prob} + {random_replace_prob}"
        )
    if protected is not None:
        if not isinstance(protected, Tensor) or protected.shape != input_ids.shape:
            raise ValueError(
                f"protected must be a tensor of the shape of input_ids {tuple(input_ids.shape)}, "
                f"got {getattr(protected, 'shape', type(protected).__name__)}"
            )
        protected = protected.to(device=input_ids.device, dtype=torch.bool)
    random_token_ids = torch.as_tensor(random_token_ids, dtype=torch.long, device=input_ids.device)
    if random_token_ids.dim() != 1 or (random_replace_prob > 0 and random_token_ids.numel() == 0):
        raise ValueError("random_token_ids must be a non-empty 1-D list of token ids")
    device = input_ids.device
    gen_device = generator.device if generator is not None else torch.device("cpu")

    def rand(shape) -> Tensor:
        return torch.rand(shape, generator=generator, device=gen_device).to(device)

    probs = torch.full(input_ids.shape, mlm_probability, device=device)
    if boost_token_ids is not None and len(boost_token_ids) > 0:
        if boost_probability is None:
            raise ValueError("boost_token_ids needs boost_probability")
        boost_probability = _check_prob("boost_probability", boost_probability)
        boost = torch.as_tensor(boost_token_ids, dtype=torch.long, device=device)
        probs = torch.where(torch.isin(input_ids, boost), boost_probability, probs)
    if protected is not None:
        probs = probs.masked_fill(protected, 0.0)

    chosen = rand(input_ids.shape) < probs
    labels = torch.where(
        chosen, input_ids.long(), torch.full_like(input_ids, -100, dtype=torch.long)
    )
    u = rand(input_ids.shape)
    to_mask = chosen & (u < mask_replace_prob)
    to_random = chosen & (u >= mask_replace_prob) & (u < mask_replace_prob + random_replace_prob)
    masked = input_ids.long().clone()
    masked[to_mask] = mask_token_id
    n_random = int(to_random.sum())
    if n_random:
        pick = (
            (rand((n_random,)) * random_token_ids.numel())
            .long()
            .clamp_max(random_token_ids.numel() - 1)
        )
        masked[to_random] = random_token_ids[pick]
    return masked, labels


def mask_selected_tokens(
    input_ids: Tensor, token_ids: Sequence[int] | Tensor, *, mask_token_id: int
) -> tuple[Tensor, Tensor]:
    """Mask *every* occurrence of ``token_ids`` (deterministic; for evaluation).

    Returns ``(masked_input_ids, labels)``: e.g. with the colour-word ids of
    :func:`~bridgetower.data.scene_attribute_token_ids`, MLM accuracy on ``labels != -100``
    is the accuracy on masked colour words.
    """
    input_ids = _as_long_2d("input_ids", input_ids).long()
    sel = torch.isin(
        input_ids, torch.as_tensor(token_ids, dtype=torch.long, device=input_ids.device)
    )
    labels = torch.where(sel, input_ids, torch.full_like(input_ids, -100))
    return input_ids.masked_fill(sel, mask_token_id), labels


def negative_exclusion(image_ids: Tensor, input_ids: Tensor | None = None) -> Tensor:
    """``(B, B)`` bool, True where image ``j`` must not be a negative for text ``i``.

    Excludes the diagonal, every image equal to the positive (same ``image_ids``) and, when
    ``input_ids`` is given, every image whose own caption has exactly the same token ids.
    """
    if image_ids.dim() != 1:
        raise ValueError(f"image_ids must be 1-D (B,), got {tuple(image_ids.shape)}")
    same = image_ids[:, None] == image_ids[None, :]
    if input_ids is not None:
        if input_ids.dim() != 2 or input_ids.shape[0] != image_ids.shape[0]:
            raise ValueError(
                f"input_ids must be (B, L) with B={image_ids.shape[0]}, got {tuple(input_ids.shape)}"
            )
        same = same | (input_ids[:, None, :] == input_ids[None, :, :]).all(-1)
    return same | torch.eye(image_ids.shape[0], dtype=torch.bool, device=image_ids.device)


def sample_itm_negatives(
    exclude: Tensor,
    *,
    negative_fraction: float = 0.5,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Random ITM negatives. Returns ``(image_index, labels)``, both ``(B,)`` long.

    ``floor(B * negative_fraction)`` rows (chosen at random) get a random image ``j`` with
    ``exclude[i, j]`` False (see :func:`negative_exclusion`) and label 0; the others keep their
    own image (``image_index[i] = i``) and label 1. A row chosen as negative with no allowed
    image stays positive.
    """
    negative_fraction = _check_prob("negative_fraction", negative_fraction)
    if exclude.dim() != 2 or exclude.shape[0] != exclude.shape[1] or exclude.dtype != torch.bool:
        raise ValueError(
            f"exclude must be a square bool tensor (B, B), got {tuple(exclude.shape)} {exclude.dtype}"
        )
    b = exclude.shape[0]
    exclude = exclude.cpu()
    image_index = torch.arange(b)
    labels = torch.ones(b, dtype=torch.long)
    n_neg = int(math.floor(b * negative_fraction))
    if n_neg == 0:
        return image_index, labels
    rows = torch.randperm(b, generator=generator)[:n_neg]
    allowed = ~exclude[rows]
    has = allowed.any(1)
    rows = rows[has]
    if rows.numel():
        picks = torch.multinomial(allowed[has].float(), 1, generator=generator).squeeze(1)
        image_index[rows] = picks
        labels[rows] = 0
    return image_index, labels


def sample_hard_negatives(
    similarity: Tensor,
    *,
    exclude: Tensor | None = None,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
) -> Tensor:
    """ALBEF-style hard negatives from ITC similarities.

    ``similarity`` is ``(B, N)``: row ``i`` scores candidate ``j`` (e.g. text ``i`` against
    image ``j``). For each row, returns a column drawn with probability
    ``softmax(similarity[i] / temperature)`` restricted to the allowed columns: ``exclude``
    (``(B, N)`` bool, True = never pick) or, by default, every column but ``i`` itself.
    Rows with no allowed column get -1. The result is a ``(B,)`` long tensor on the CPU.
    """
    if not isinstance(similarity, Tensor) or similarity.dim() != 2:
        raise ValueError(
            f"similarity must be a 2-D tensor (B, N), got {getattr(similarity, 'shape', type(similarity).__name__)}"
        )
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    sim = similarity.detach().to("cpu", torch.float64)
    b, n = sim.shape
    if exclude is None:
        if n < b:
            raise ValueError(f"similarity is ({b}, {n}): pass exclude when N < B")
        exclude = torch.zeros(b, n, dtype=torch.bool)
        exclude[torch.arange(b), torch.arange(b)] = True
    elif exclude.shape != sim.shape:
        raise ValueError(
            f"exclude must have the shape of similarity {(b, n)}, got {tuple(exclude.shape)}"
        )
    exclude = exclude.to("cpu", torch.bool) | ~torch.isfinite(sim)
    out = torch.full((b,), -1, dtype=torch.long)
    has = ~exclude.all(1)
    if has.any():
        logits = (sim[has] / temperature).masked_fill(exclude[has], float("-inf"))
        probs = torch.softmax(logits, dim=1)
        out[has] = torch.multinomial(probs, 1, generator=generator).squeeze(1)
    return out


def apply_hard_negatives(
    batch: Mapping[str, Tensor],
    similarity: Tensor,
    *,
    fraction: float = 1.0,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
) -> dict[str, Tensor]:
    """Replace some random ITM negatives of ``batch`` by hard negatives.

    ``similarity`` is the ``(B, B)`` text-to-image ITC similarity of the batch (row = text,
    column = image). Among the rows with ``itm_labels == 0``, ``round(fraction * count)``
    (chosen at random) get an image drawn by :func:`sample_hard_negatives`, with the same
    exclusions as the random negatives. Returns a new dict; ``batch`` is not modified.
    """
    fraction = _check_prob("fraction", fraction)
    for key in ("itm_image_index", "itm_labels", "image_ids", "input_ids"):
        if key not in batch:
            raise ValueError(f"batch has no {key!r}: run PretrainingCollator.augment first")
    b = batch["itm_labels"].shape[0]
    if similarity.shape != (b, b):
        raise ValueError(f"similarity must be (B, B) = ({b}, {b}), got {tuple(similarity.shape)}")
    out = dict(batch)
    neg_rows = torch.nonzero(batch["itm_labels"].cpu() == 0).squeeze(1)
    k = int(round(fraction * neg_rows.numel()))
    if k == 0:
        return out
    rows = neg_rows[torch.randperm(neg_rows.numel(), generator=generator)[:k]]
    exclude = negative_exclusion(batch["image_ids"].cpu(), batch["input_ids"].cpu())
    picks = sample_hard_negatives(
        similarity[rows.to(similarity.device)],
        exclude=exclude[rows],
        temperature=temperature,
        generator=generator,
    )
    index = batch["itm_image_index"].clone()
    ok = picks >= 0
    index[rows[ok].to(index.device)] = picks[ok].to(index.device)
    out["itm_image_index"] = index
    return out


def itm_inputs(batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The ITM pass of a batch: texts with ``pixel_values[itm_image_index]``, and ``labels``."""
    idx = batch["itm_image_index"].to(batch["pixel_values"].device)
    return {
        "input_ids": batch["input_ids"],
        "attention_mask": batch["attention_mask"],
        "pixel_values": batch["pixel_values"][idx],
        "pixel_mask": batch["pixel_mask"][idx],
        "labels": batch["itm_labels"],
    }


def is_empty_batch(batch: Mapping[str, Tensor]) -> bool:
    """True when every sample of the batch was skipped (the batch then holds only ``skipped``)."""
    return "input_ids" not in batch


class PretrainingCollator:
    """Builds MLM + ITM pretraining batches (see the module docstring for the keys).

    Samples are dicts. Text: ``input_ids`` (1-D long, special tokens included, already
    truncated) or ``caption`` (str, tokenised here with ``tokenizer`` and ``max_length``).
    Image: ``pixel_values`` (``(3, H, W)`` float) or ``image`` (PIL, converted with
    ``transform``). Optional ``image_id`` (any hashable): samples sharing it are the same image.
    A :class:`~bridgetower.data.Skipped` sample (or ``None``) is dropped and counted.

    Args:
        pad_token_id, mask_token_id: ids of ``<pad>`` and ``<mask>``.
        special_token_ids: ids never masked (padding is never masked either).
        vocab_size: random replacements are drawn from ``range(vocab_size)`` minus the
            special ids.
        mlm_probability: chance that a token is chosen for MLM (0.15).
        boost_token_ids, boost_probability: tokens chosen with ``boost_probability`` instead
            (e.g. colour and shape words with 0.5 for the synthetic scenes).
        mask_replace_prob, random_replace_prob: the 80% / 10% (/ 10% unchanged) split.
        itm_negative_fraction: share of the batch paired with a wrong image (0.5).
        pad_to_multiple_of: pad the text length up to a multiple of this.
        tokenizer, transform, max_length: used only for samples given as caption / image.
        seed: seeds the generator used when ``__call__`` gets none (per worker and call).
    """

    def __init__(
        self,
        *,
        pad_token_id: int,
        mask_token_id: int,
        special_token_ids: Iterable[int],
        vocab_size: int,
        mlm_probability: float = 0.15,
        boost_token_ids: Iterable[int] | None = None,
        boost_probability: float | None = None,
        mask_replace_prob: float = 0.8,
        random_replace_prob: float = 0.1,
        itm_negative_fraction: float = 0.5,
        pad_to_multiple_of: int | None = None,
        tokenizer: Any = None,
        transform: Callable[[Any], Tensor] | None = None,
        max_length: int = 50,
        seed: int = 0,
    ) -> None:
        self.pad_token_id = int(pad_token_id)
        self.mask_token_id = int(mask_token_id)
        self.special_token_ids = sorted(
            {int(i) for i in special_token_ids} | {self.pad_token_id, self.mask_token_id}
        )
        if not isinstance(vocab_size, int) or vocab_size <= 0:
            raise ValueError(f"vocab_size must be a positive int, got {vocab_size!r}")
        bad = [i for i in self.special_token_ids if not 0 <= i < vocab_size]
        if bad:
            raise ValueError(
                f"special token ids {bad} are outside the vocabulary (size {vocab_size})"
            )
        self.vocab_size = vocab_size
        self.mlm_probability = _check_prob("mlm_probability", mlm_probability)
        self.boost_token_ids = sorted({int(i) for i in boost_token_ids or ()})
        if self.boost_token_ids:
            if boost_probability is None:
                raise ValueError("boost_token_ids needs boost_probability")
            clash = sorted(set(self.boost_token_ids) & set(self.special_token_ids))
            if clash:
                raise ValueError(
                    f"boost_token_ids include special tokens {clash}; they are never masked"
                )
        self.boost_probability = (
            None
            if boost_probability is None
            else _check_prob("boost_probability", boost_probability)
        )
        self.mask_replace_prob = _check_prob("mask_replace_prob", mask_replace_prob)
        self.random_replace_prob = _check_prob("random_replace_prob", random_replace_prob)
        if self.mask_replace_prob + self.random_replace_prob > 1.0 + 1e-9:
            raise ValueError("mask_replace_prob + random_replace_prob must be <= 1")
        self.itm_negative_fraction = _check_prob("itm_negative_fraction", itm_negative_fraction)
        if pad_to_multiple_of is not None and (
            not isinstance(pad_to_multiple_of, int) or pad_to_multiple_of <= 0
        ):
            raise ValueError(
                f"pad_to_multiple_of must be a positive int or None, got {pad_to_multiple_of!r}"
            )
        self.pad_to_multiple_of = pad_to_multiple_of
        self.tokenizer = tokenizer
        self.transform = transform
        self.max_length = max_length
        self.seed = int(seed)
        self._calls = 0
        special = torch.zeros(vocab_size, dtype=torch.bool)
        special[self.special_token_ids] = True
        self._random_token_ids = torch.nonzero(~special).squeeze(1)
        if self.random_replace_prob > 0 and self._random_token_ids.numel() == 0:
            raise ValueError(
                "the vocabulary has no non-special token to use as a random replacement"
            )

    @classmethod
    def from_tokenizer(cls, tokenizer: Any, **kwargs: Any) -> PretrainingCollator:
        """Take the pad/mask/special ids and the vocabulary size from a ``transformers`` tokenizer."""
        for attr in ("pad_token_id", "mask_token_id"):
            if getattr(tokenizer, attr, None) is None:
                raise ValueError(f"the tokenizer has no {attr}; MLM pretraining needs one")
        kwargs.setdefault("tokenizer", tokenizer)
        kwargs.setdefault("max_length", min(getattr(tokenizer, "model_max_length", 50), 50))
        return cls(
            pad_token_id=tokenizer.pad_token_id,
            mask_token_id=tokenizer.mask_token_id,
            special_token_ids=tokenizer.all_special_ids,
            vocab_size=len(tokenizer),
            **kwargs,
        )

    def __repr__(self) -> str:
        boost = (
            f", boost={len(self.boost_token_ids)} ids @ {self.boost_probability}"
            if self.boost_token_ids
            else ""
        )
        return (
            f"{type(self).__name__}(vocab_size={self.vocab_size}, mlm_probability={self.mlm_probability}"
            f"{boost}, split={self.mask_replace_prob}/{self.random_replace_prob}, "
            f"itm_negative_fraction={self.itm_negative_fraction})"
        )

    # -- deterministic part ---------------------------------------------------------------

    def _text(self, sample: Mapping[str, Any]) -> Tensor:
        if "input_ids" in sample:
            ids = torch.as_tensor(sample["input_ids"], dtype=torch.long)
            if ids.dim() != 1 or ids.numel() == 0:
                raise ValueError(
                    f"sample input_ids must be a non-empty 1-D sequence, got shape {tuple(ids.shape)}"
                )
            return ids
        if "caption" in sample:
            if self.tokenizer is None:
                raise ValueError("samples carry a caption but the collator has no tokenizer")
            enc = self.tokenizer(sample["caption"], truncation=True, max_length=self.max_length)
            return torch.as_tensor(enc["input_ids"], dtype=torch.long)
        raise ValueError(f"a sample needs 'input_ids' or 'caption', got keys {sorted(sample)}")

    def image_of(self, sample: Mapping[str, Any], suffix: str = "") -> Tensor:
        """The ``(C, H, W)`` image of ``sample``: its ``pixel_values<suffix>``, or its PIL
        ``image<suffix>`` through the collator's transform (``suffix="_2"``: NLVR2's second
        image)."""
        if f"pixel_values{suffix}" in sample:
            px = sample[f"pixel_values{suffix}"]
        elif f"image{suffix}" in sample:
            if self.transform is None:
                raise ValueError("samples carry a PIL image but the collator has no transform")
            px = self.transform(sample[f"image{suffix}"])
        else:
            raise ValueError(
                f"a sample needs 'pixel_values{suffix}' or 'image{suffix}', got keys {sorted(sample)}"
            )
        if not isinstance(px, Tensor) or px.dim() != 3:
            raise ValueError(
                f"pixel_values must be a (C, H, W) tensor, got {getattr(px, 'shape', type(px).__name__)}"
            )
        return px

    def collate(self, samples: Sequence[Mapping[str, Any] | Skipped | None]) -> dict[str, Tensor]:
        """Pad and stack; drop and count skipped samples. No randomness."""
        skipped = torch.zeros(len(SKIP_REASONS), dtype=torch.long)
        kept = []
        for s in samples:
            if s is None:
                skipped[SKIP_REASONS.index("bad_record")] += 1
            elif isinstance(s, Skipped):
                skipped[SKIP_REASONS.index(s.reason)] += 1
            elif isinstance(s, Mapping):
                kept.append(s)
            else:
                raise TypeError(f"samples must be dicts (or Skipped/None), got {type(s).__name__}")
        if not kept:
            return {"skipped": skipped}
        texts = [self._text(s) for s in kept]
        images = [self.image_of(s) for s in kept]
        b = len(kept)

        length = max(t.numel() for t in texts)
        if self.pad_to_multiple_of:
            length = -(-length // self.pad_to_multiple_of) * self.pad_to_multiple_of
        input_ids = torch.full((b, length), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((b, length), dtype=torch.long)
        for i, t in enumerate(texts):
            input_ids[i, : t.numel()] = t
            attention_mask[i, : t.numel()] = 1

        pixel_values, pixel_mask = pad_images(images)

        keys: dict[Any, int] = {}
        image_ids = torch.tensor(
            [
                keys.setdefault(s.get("image_id", ("__position__", i)), len(keys))
                for i, s in enumerate(kept)
            ],
            dtype=torch.long,
        )
        batch = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "pixel_values": pixel_values,
            "pixel_mask": pixel_mask,
            "image_ids": image_ids,
            "skipped": skipped,
        }
        if all("label" in s for s in kept):  # e.g. SceneITMEvalDataset
            batch["labels"] = torch.tensor([int(s["label"]) for s in kept], dtype=torch.long)
        return batch

    # -- random part ----------------------------------------------------------------------

    def augment(
        self, batch: Mapping[str, Tensor], generator: torch.Generator | None = None
    ) -> dict[str, Tensor]:
        """Add the MLM corruption and the ITM negatives to a collated batch (a new dict)."""
        out = dict(batch)
        if is_empty_batch(batch):
            return out
        input_ids = batch["input_ids"]
        protected = torch.isin(
            input_ids, torch.tensor(self.special_token_ids, device=input_ids.device)
        )
        protected |= batch["attention_mask"] == 0
        out["mlm_input_ids"], out["mlm_labels"] = mask_tokens(
            input_ids,
            mask_token_id=self.mask_token_id,
            random_token_ids=self._random_token_ids,
            protected=protected,
            mlm_probability=self.mlm_probability,
            boost_token_ids=self.boost_token_ids or None,
            boost_probability=self.boost_probability,
            mask_replace_prob=self.mask_replace_prob,
            random_replace_prob=self.random_replace_prob,
            generator=generator,
        )
        exclude = negative_exclusion(batch["image_ids"], input_ids)
        out["itm_image_index"], out["itm_labels"] = sample_itm_negatives(
            exclude, negative_fraction=self.itm_negative_fraction, generator=generator
        )
        return out

    def _default_generator(self) -> torch.Generator:
        info = torch.utils.data.get_worker_info()
        worker = info.id if info is not None else -1
        self._calls += 1
        g = torch.Generator()
        g.manual_seed(hash((self.seed, worker, self._calls)) & 0x7FFF_FFFF_FFFF_FFFF)
        return g

    def __call__(
        self,
        samples: Sequence[Mapping[str, Any] | Skipped | None],
        generator: torch.Generator | None = None,
    ) -> dict[str, Tensor]:
        """``augment(collate(samples), generator)``. Without a generator, one is seeded from
        ``(seed, worker id, call count)``, which is reproducible for a fixed loader set-up but
        not resumable mid-epoch; use ``collate`` in the loader and ``augment`` with a saved
        generator for exact resume."""
        return self.augment(
            self.collate(samples), generator if generator is not None else self._default_generator()
        )
