"""Held-out evaluation of a pretraining model on the synthetic scenes (the bundled demo).

:class:`SceneEvaluator` measures, on scenes of a seed never used for training:

* ITM accuracy (argmax of the ITM logits vs the label) on pairs that are half matching and
  half not, for four kinds of non-matching caption (:class:`~bridgetower.data.datasets.
  SceneITMEvalDataset`): ``random`` (another scene's caption), ``colour`` (one colour
  changed), ``shape`` (one shape changed), ``position`` (the objects' positions swapped).
  Random negatives are easy -- a colour is visible in one patch -- so the one-attribute
  negatives are what shows that the fusion binds words to the right object.
* MLM accuracy on every ``colour``, ``shape`` or ``position`` word of the true caption masked
  at once (:func:`~bridgetower.data.collate.mask_selected_tokens`): the word can only be
  recovered from the image.  Chance: 1/6 colours, 1/3 shapes, 1/2 positions (the phrase
  "on the"/"at the" gives the axis away).

The held-out tensors are built once at construction; each call encodes every held-out image
once and reuses it for all the texts (the pairs share their images), and runs in eval mode
without gradients.  :func:`score_texts` gives the ITM match probability of one image against
several captions (the table the demo and ``bridgetower score`` print).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..models.processor import check_unknown_tokens

__all__ = ["ITM_KINDS", "MLM_ATTRIBUTES", "SceneEvaluator", "format_score_table", "score_texts"]

ITM_KINDS: tuple[str, ...] = ("random", "colour", "shape", "position")
MLM_ATTRIBUTES: tuple[str, ...] = ("colour", "shape", "position")


def _pad(ids: Sequence[torch.Tensor], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    length = max(int(t.numel()) for t in ids)
    out = torch.full((len(ids), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(ids), length), dtype=torch.long)
    for i, t in enumerate(ids):
        out[i, : t.numel()] = t
        mask[i, : t.numel()] = 1
    return out, mask


class SceneEvaluator:
    """Held-out ITM / MLM accuracies on synthetic scenes; ``evaluator(model) -> dict``.

    Args:
        tokenizer: the scene tokenizer (:func:`~bridgetower.data.scenes.build_scene_tokenizer`).
        size: held-out scenes per measurement (even: half matching pairs).
        seed: the held-out scene stream (must differ from the training seed).
        image_size: pixels of the square scenes (the model's ``vision.image_size``).
        batch_size: pairs per forward pass.
        kinds, attributes: which ITM negatives and which MLM word groups to measure.
        scene_config: a :class:`~bridgetower.data.scenes.SceneConfig` (default: the demo's).
    """

    def __init__(
        self,
        tokenizer: Any,
        *,
        size: int = 256,
        seed: int = 1_000_003,
        image_size: int = 64,
        batch_size: int = 128,
        kinds: Sequence[str] = ITM_KINDS,
        attributes: Sequence[str] = MLM_ATTRIBUTES,
        scene_config: Any = None,
    ) -> None:
        from ..data.collate import mask_selected_tokens
        from ..data.datasets import SceneITMEvalDataset
        from ..data.scenes import SceneConfig, scene_attribute_token_ids
        from ..data.transforms import ImageTransform

        if not isinstance(size, int) or size < 2 or size % 2:
            raise ValueError(f"size must be an even int >= 2, got {size!r}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        bad = [k for k in kinds if k not in ITM_KINDS]
        if bad:
            raise ValueError(f"unknown ITM negative kinds {bad}; valid: {ITM_KINDS}")
        bad = [a for a in attributes if a not in MLM_ATTRIBUTES]
        if bad:
            raise ValueError(f"unknown MLM attributes {bad}; valid: {MLM_ATTRIBUTES}")
        config = scene_config or SceneConfig(image_size=image_size)
        transform = ImageTransform(config.image_size)
        self.size, self.seed, self.batch_size = size, seed, batch_size
        self.kinds, self.attributes = tuple(kinds), tuple(attributes)
        pad_id = tokenizer.pad_token_id
        images = None
        true_ids: list[torch.Tensor] = []
        self.itm: dict[str, dict[str, torch.Tensor]] = {}
        for kind in self.kinds or ("random",):
            ds = SceneITMEvalDataset(size, negatives=kind, seed=seed, config=config, transform=transform, tokenizer=tokenizer)
            items = [ds[i] for i in range(size)]
            if images is None:  # item i is the same scene (and image) for every kind
                images = torch.stack([it["pixel_values"] for it in items])
                true_ids = [
                    torch.as_tensor(tokenizer(it["true_caption"], truncation=True, max_length=50)["input_ids"])
                    for it in items
                ]
            ids, mask = _pad([it["input_ids"] for it in items], pad_id)
            labels = torch.tensor([it["label"] for it in items], dtype=torch.long)
            if kind in self.kinds:
                self.itm[kind] = {"input_ids": ids, "attention_mask": mask, "labels": labels}
        self.pixel_values = images  # (size, 3, H, W)
        ids, mask = _pad(true_ids, pad_id)
        groups = scene_attribute_token_ids(tokenizer, config)
        self.mlm: dict[str, dict[str, torch.Tensor]] = {}
        for attr in self.attributes:
            masked, labels = mask_selected_tokens(ids, groups[attr], mask_token_id=tokenizer.mask_token_id)
            self.mlm[attr] = {"input_ids": masked, "attention_mask": mask, "labels": labels}

    @torch.no_grad()
    def __call__(self, model: nn.Module) -> dict[str, float]:
        was_training = model.training
        model.eval()
        try:
            return self._run(model)
        finally:
            model.train(was_training)

    def _run(self, model: nn.Module) -> dict[str, float]:
        dev = next(model.parameters()).device
        bt = model.bridgetower
        out: dict[str, float] = {}
        n = self.size
        for start in range(0, n, self.batch_size):
            sl = slice(start, min(n, start + self.batch_size))
            image_states = model.encode_image(self.pixel_values[sl].to(dev))
            for kind, d in self.itm.items():
                ids, mask = d["input_ids"][sl].to(dev), d["attention_mask"][sl].to(dev)
                fused = bt.fuse(model.encode_text(ids, mask), image_states, mask)
                pred = model.itm_score(fused.pooler_output).argmax(-1).cpu()
                out[f"itm_acc_{kind}"] = out.get(f"itm_acc_{kind}", 0.0) + float((pred == d["labels"][sl]).sum())
            for attr, d in self.mlm.items():
                ids, mask = d["input_ids"][sl].to(dev), d["attention_mask"][sl].to(dev)
                fused = bt.fuse(model.encode_text(ids, mask), image_states, mask)
                pred = model.mlm_score(fused.text_features).argmax(-1).cpu()
                labels = d["labels"][sl]
                sel = labels != -100
                out[f"_mlm_hits_{attr}"] = out.get(f"_mlm_hits_{attr}", 0.0) + float(((pred == labels) & sel).sum())
                out[f"_mlm_n_{attr}"] = out.get(f"_mlm_n_{attr}", 0.0) + float(sel.sum())
        result: dict[str, float] = {}
        for kind in self.itm:
            result[f"itm_acc_{kind}"] = out[f"itm_acc_{kind}"] / n
        for attr in self.mlm:
            result[f"mlm_acc_{attr}"] = out[f"_mlm_hits_{attr}"] / max(1.0, out[f"_mlm_n_{attr}"])
        return result


@torch.no_grad()
def score_texts(
    model: nn.Module, tokenizer: Any, pixel_values: torch.Tensor, texts: Sequence[str], *, max_length: int = 50
) -> list[tuple[str, float, float]]:
    """ITM match probability (softmax of the 2 logits, index 1) and match logit of one image
    ``pixel_values`` (3, H, W) against each text: ``[(text, probability, logit), ...]``.

    The image goes through the vision tower once; each text is fused with it.  A text whose
    tokens are mostly unknown to ``tokenizer`` gets the processor's ``UserWarning``
    (:func:`~bridgetower.models.processor.check_unknown_tokens`): its score means little.
    """
    if not isinstance(pixel_values, torch.Tensor) or pixel_values.ndim != 3:
        raise ValueError(
            f"pixel_values must be one (3, H, W) image, got {getattr(pixel_values, 'shape', type(pixel_values).__name__)}"
        )
    texts = list(texts)
    if not texts or not all(isinstance(t, str) and t.strip() for t in texts):
        raise ValueError(f"texts must be non-empty strings, got {texts!r}")
    was_training = model.training
    model.eval()
    try:
        dev = next(model.parameters()).device
        enc = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        check_unknown_tokens(tokenizer, enc["input_ids"], texts)  # a UserWarning for texts of mostly <unk>
        ids, mask = enc["input_ids"].to(dev), enc["attention_mask"].to(dev)
        image_states = model.encode_image(pixel_values.unsqueeze(0).to(dev))
        text_states = model.encode_text(ids, mask)
        k = len(texts)
        fused = model.bridgetower.fuse_pairs(
            text_states, image_states, mask, torch.arange(k, device=dev), torch.zeros(k, dtype=torch.long, device=dev)
        )
        logits = model.itm_score(fused.pooler_output).float()  # (K, 2)
        probs = logits.softmax(-1)[:, 1]
    finally:
        model.train(was_training)
    return [(t, float(p), float(lg)) for t, p, lg in zip(texts, probs, logits[:, 1], strict=False)]


def format_score_table(rows: Sequence[tuple[str, float, float]], labels: Sequence[str] | None = None) -> str:
    """A plain-text table of :func:`score_texts` rows (optionally with a label column)."""
    head = ["text", "match prob", "match logit"]
    if labels is not None:
        head = ["kind"] + head
    lines = []
    body = []
    for i, (text, p, lg) in enumerate(rows):
        cells = [text, f"{p:.3f}", f"{lg:+.2f}"]
        if labels is not None:
            cells = [labels[i]] + cells
        body.append(cells)
    widths = [max(len(head[j]), *(len(r[j]) for r in body)) for j in range(len(head))]
    lines.append("  ".join(h.ljust(w) for h, w in zip(head, widths, strict=False)))
    lines.append("  ".join("-" * w for w in widths))
    for r in body:
        lines.append("  ".join(c.ljust(w) if j < len(r) - 2 else c.rjust(w) for j, (c, w) in enumerate(zip(r, widths, strict=False))))
    return "\n".join(lines)
