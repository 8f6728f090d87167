"""``BridgeTowerForPretraining``: MLM + ITM + official ITC heads, and the one pretraining step.

:meth:`BridgeTowerForPretraining.pretraining_step` is the only implementation of a
pretraining step in the package (the trainer's
:class:`~bridgetower.training.PretrainingObjective` weights its losses).  It reads a batch in
the :class:`~bridgetower.data.PretrainingCollator` layout:

* MLM: ``mlm_input_ids`` (the corrupted text) with its own image, ``mlm_labels`` (-100 = not
  predicted; ``mlm_normalizer``, when present, divides the summed token losses instead of
  the local count -- data-parallel shards of one global batch);
* ITM: text ``i`` (``itm_input_ids`` when present -- text-side negatives -- else
  ``input_ids``) with image ``itm_image_index[i]``, label ``itm_labels[i]`` (1 = match);
* ITC: the uncorrupted ``input_ids`` against the first ``B`` images, row ``i`` matching row ``i``;
* ``attention_mask`` (B, L), ``pixel_values`` (B + extra, 3, H, W) -- extra rows are ITM
  negatives owned by another data-parallel shard -- and ``pixel_mask`` (same rows).

The vision tower runs once on ``pixel_values``, the text tower once on every text variant
stacked, and the fusion once on all (text, image) pairs stacked (MLM pairs, then ITM pairs).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import torch

from ..layers import ITCHead, ITMHead, MLMHead, itc_loss, itm_loss, mlm_loss
from .base import BatchSpec
from .config import BridgeTowerConfig
from .embeddings import EmbeddingsMixin
from .outputs import BridgeTowerPretrainingOutput
from .task_base import TaskModel, score_pairs

__all__ = ["PRETRAINING_BATCH_SPEC", "BridgeTowerForPretraining"]

#: The batch keys :meth:`BridgeTowerForPretraining.pretraining_step` reads.
PRETRAINING_BATCH_SPEC = BatchSpec(
    keys=(
        "input_ids", "attention_mask", "pixel_values", "pixel_mask", "mlm_input_ids", "mlm_labels",
        "mlm_normalizer", "itm_input_ids", "itm_image_index", "itm_labels",
    ),
    image_keys=("pixel_values", "pixel_mask"),
    image_index_keys=("itm_image_index",),
)

_NEEDS = {
    "mlm": ("mlm_input_ids", "mlm_labels", "attention_mask", "pixel_values"),
    "itm": ("input_ids", "attention_mask", "pixel_values", "itm_image_index", "itm_labels"),
    "itc": ("input_ids", "attention_mask", "pixel_values"),
}


def check_pretraining_batch(batch: Mapping[str, Any], *, mlm: bool, itm: bool, itc: bool) -> None:
    """Raise ``ValueError`` naming the missing keys / bad shapes for the requested objectives."""
    if not isinstance(batch, Mapping):
        raise TypeError(f"a pretraining batch is a dict of tensors, got {type(batch).__name__}")
    need: list[str] = []
    for on, name in ((mlm, "mlm"), (itm, "itm"), (itc, "itc")):
        if on:
            need += [k for k in _NEEDS[name] if k not in need]
    missing = [k for k in need if k not in batch]
    if missing:
        raise ValueError(
            f"the batch lacks {missing} (has {sorted(batch)}); build it with "
            "bridgetower.data.PretrainingCollator"
        )
    n_images = batch["pixel_values"].shape[0]
    b = batch["attention_mask"].shape[0]
    if n_images < b:
        raise ValueError(f"pixel_values has {n_images} rows, fewer than the {b} texts")
    for k in need:
        if k != "pixel_values" and batch[k].shape[0] != b:
            raise ValueError(f"batch[{k!r}] has {batch[k].shape[0]} rows, attention_mask has {b}")
    if mlm and batch["mlm_labels"].shape != batch["mlm_input_ids"].shape:
        raise ValueError(
            f"mlm_labels {tuple(batch['mlm_labels'].shape)} must have the shape of mlm_input_ids "
            f"{tuple(batch['mlm_input_ids'].shape)}"
        )
    pixel_mask = batch.get("pixel_mask")
    if pixel_mask is not None and pixel_mask.shape[0] != n_images:
        raise ValueError(f"pixel_mask has {pixel_mask.shape[0]} rows, pixel_values {n_images}")


class BridgeTowerForPretraining(EmbeddingsMixin, TaskModel):
    """MLM + ITM + official ITC heads on one encoder (the pre-training model).

    Heads: ``mlm_score`` (:class:`~bridgetower.layers.MLMHead`, eps ``head_layer_norm_eps``),
    ``itm_score`` (:class:`~bridgetower.layers.ITMHead`), ``itc``
    (:class:`~bridgetower.layers.ITCHead` on the uni-modal CLS features: text width ->
    ``itc_dim``, vision width -> ``itc_dim``, temperature ``itc_temperature``; None when
    ``itc_dim == 0``).

    ``forward(input_ids, attention_mask, pixel_values, pixel_mask=None, *, mlm_labels=None,
    itm_labels=None, compute_itc=True, return_itc_loss=False)`` fuses the given pairs once
    and returns :class:`~bridgetower.models.BridgeTowerPretrainingOutput` with all logits;
    each loss is computed only when its labels are given.  A training step that needs
    several fusions (masked text for MLM, negatives for ITM) is :meth:`pretraining_step`.
    """

    batch_spec: ClassVar[BatchSpec] = PRETRAINING_BATCH_SPEC
    head_names = ("mlm_score", "itm_score", "itc")

    def __init__(self, config: BridgeTowerConfig, *, device=None, dtype=None) -> None:
        super().__init__(config, device=device, dtype=dtype)
        fk = {"device": device, "dtype": dtype}
        self.mlm_score = MLMHead(self.hidden_size, config.text.vocab_size, eps=config.head_layer_norm_eps, **fk)
        self.itm_score = ITMHead(self.hidden_size, **fk)
        # itc_dim == 0: no ITC head (e.g. the official MLM+ITM pre-training checkpoints)
        self.itc = (
            ITCHead(
                config.text.hidden_size,
                config.itc_dim,
                image_hidden_size=config.vision.width,
                temperature=config.itc_temperature,
                **fk,
            )
            if config.itc_dim > 0
            else None
        )

    def itc_embeds(self, text_states, image_states) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised ITC embeddings (B, itc_dim) of the text/image CLS of the last layers."""
        if self.itc is None:
            raise ValueError("this model has no ITC head (config.itc_dim == 0)")
        return self.itc(text_states[-1][:, 0], image_states[-1][:, 0])

    # EmbeddingsMixin: the ITC embeddings; the pair embedding is the normalised pooled output (2H)
    def _text_embedding(self, text_states):
        if self.itc is None:
            raise ValueError("this model has no ITC head (config.itc_dim == 0): embed_text / embed_image need one")
        return self.itc.itc_text_head(text_states[-1][:, 0])

    def _image_embedding(self, image_states):
        if self.itc is None:
            raise ValueError("this model has no ITC head (config.itc_dim == 0): embed_text / embed_image need one")
        return self.itc.itc_image_head(image_states[-1][:, 0])

    def _pair_embedding(self, pooler_output):
        return pooler_output

    def forward(
        self,
        input_ids,
        attention_mask=None,
        pixel_values=None,
        pixel_mask=None,
        *,
        mlm_labels=None,
        itm_labels=None,
        compute_itc: bool = True,
        return_itc_loss: bool = False,
        **options,
    ) -> BridgeTowerPretrainingOutput:
        """One fusion of the given pairs; ``options``: the ``transformers`` forward keywords and
        ``mask_image_padding`` (see :meth:`~bridgetower.models.BridgeTowerModel.forward`)."""
        out = self._encode(input_ids, attention_mask, pixel_values, pixel_mask, **options)
        mlm_logits = self.mlm_score(out.text_features)
        itm_logits = self.itm_score(out.pooler_output)
        t_emb = i_emb = temp = None
        if return_itc_loss or (compute_itc and self.itc is not None):
            t_emb, i_emb = self.itc_embeds(out.text_hidden_states, out.image_hidden_states)
            temp = self.itc.effective_temperature()
        losses = {}
        if mlm_labels is not None:
            losses["mlm_loss"] = mlm_loss(mlm_logits, mlm_labels)
        if itm_labels is not None:
            losses["itm_loss"] = itm_loss(itm_logits, itm_labels)
        if return_itc_loss:
            losses["itc_loss"] = itc_loss(t_emb, i_emb, temp)
        return self._output(
            BridgeTowerPretrainingOutput,
            out,
            options.get("return_dict"),
            loss=sum(losses.values()) if losses else None,
            mlm_logits=mlm_logits,
            itm_logits=itm_logits,
            itc_text_embeds=t_emb,
            itc_image_embeds=i_emb,
            itc_temperature=temp,
            **losses,
        )

    def pretraining_step(
        self,
        batch: Mapping[str, torch.Tensor],
        *,
        mlm: bool = True,
        itm: bool = True,
        itc: bool = False,
        itc_gather: Callable[[torch.Tensor], torch.Tensor] | None = None,
        rank: int = 0,
    ) -> BridgeTowerPretrainingOutput:
        """One pretraining step on a collated batch (see the module docstring).

        Args:
            batch: the :class:`~bridgetower.data.PretrainingCollator` layout.
            mlm, itm, itc: which objectives to compute (at least one).
            itc_gather: all-gather across data-parallel ranks for ITC (see
                :func:`~bridgetower.layers.itc_loss`); ``rank`` is this process's rank.

        Returns the per-objective losses (their unweighted sum as ``loss``), ``mlm_logits``
        (B, L, V) of the masked texts, ``itm_logits`` (B, 2) and the ITC embeddings.
        """
        if not (mlm or itm or itc):
            raise ValueError("pretraining_step: at least one of mlm, itm, itc must be True")
        if itc and self.itc is None:
            raise ValueError("pretraining_step: itc=True, but this model has no ITC head (config.itc_dim == 0)")
        check_pretraining_batch(batch, mlm=mlm, itm=itm, itc=itc)
        bt = self.bridgetower
        pixel_values = batch["pixel_values"]
        attention_mask = batch["attention_mask"]
        b = attention_mask.shape[0]  # pairs; pixel_values may hold extra ITM-only images
        dev = pixel_values.device
        image_states = bt.encode_image(pixel_values)  # N x (B', 1+P, Dv)
        image_mask = bt.image_mask(batch.get("pixel_mask"), pixel_values)

        # texts stacked: [mlm (B)] [itm (B)] [clean for ITC (B), when not already there]
        texts: list[torch.Tensor] = []
        if mlm:
            texts.append(batch["mlm_input_ids"])
        itm_text = batch.get("itm_input_ids", batch.get("input_ids"))
        if itm:
            texts.append(itm_text)
        itc_from = None
        if itc:
            if itm and itm_text is batch["input_ids"]:
                itc_from = len(texts) - 1
            else:
                texts.append(batch["input_ids"])
                itc_from = len(texts) - 1
        masks = attention_mask.repeat(len(texts), 1)
        text_states = bt.encode_text(torch.cat(texts, 0), masks)

        losses: dict[str, torch.Tensor] = {}
        mlm_logits = itm_logits = t_emb = i_emb = temp = None
        n_fused = int(mlm) + int(itm)
        if n_fused:
            rows = torch.arange(b, device=dev)
            image_index = torch.cat(([rows] if mlm else []) + ([batch["itm_image_index"].to(dev)] if itm else []))
            fused = bt.fuse_pairs(
                text_states, image_states, masks, torch.arange(n_fused * b, device=dev), image_index, image_mask
            )
            if mlm:
                mlm_logits = self.mlm_score(fused.text_features[:b])  # (B, L, V)
                labels = batch["mlm_labels"]
                losses["mlm_loss"] = mlm_loss(mlm_logits, labels)
                normalizer = batch.get("mlm_normalizer")
                if normalizer is not None:
                    # a shard of a global batch: sum of its token losses / (global masked
                    # count / world size), so the ranks' average is the global token mean
                    losses["mlm_loss"] = losses["mlm_loss"] * ((labels != -100).sum().float() / normalizer)
            if itm:
                start = b if mlm else 0
                itm_logits = self.itm_score(fused.pooler_output[start : start + b])  # (B, 2)
                losses["itm_loss"] = itm_loss(itm_logits, batch["itm_labels"])
        if itc:
            sl = slice(itc_from * b, (itc_from + 1) * b)
            t_emb, i_emb = self.itc_embeds([t[sl] for t in text_states], [v[:b] for v in image_states])
            temp = self.itc.effective_temperature()
            losses["itc_loss"] = itc_loss(t_emb, i_emb, temp, gather=itc_gather, rank=rank)
        return BridgeTowerPretrainingOutput(
            loss=sum(losses.values()),
            mlm_logits=mlm_logits,
            itm_logits=itm_logits,
            itc_text_embeds=t_emb,
            itc_image_embeds=i_emb,
            itc_temperature=temp,
            **losses,
        )

    @torch.no_grad()
    def score(self, pixel_values, input_ids, attention_mask=None, *, batch_size=None) -> torch.Tensor:
        """ITM match logits of every (image, text) pair, ``(I, T)`` (see the ITM model)."""
        return score_pairs(self, self.itm_score, pixel_values, input_ids, attention_mask, batch_size)[..., 1]
