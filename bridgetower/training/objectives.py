"""Pretraining objectives: MLM, ITM and ITC, weighted and summed.

:class:`PretrainingObjective` is the ``objective(model, batch) -> (loss, metrics)`` the
:class:`~bridgetower.training.trainer.Trainer` calls.  It composes the heads' loss functions
(:func:`~bridgetower.layers.heads.mlm_loss`, :func:`~bridgetower.layers.heads.itm_loss`,
:func:`~bridgetower.layers.heads.itc_loss`)::

    loss = mlm_weight * MLM + itm_weight * ITM + itc_weight * ITC

The published recipe is MLM + ITM, unweighted (``itc_weight=0``; the ``-itc`` checkpoints
add ITC with weight 1).  A zero weight skips that objective's computation entirely.

The batch is the :class:`~bridgetower.data.PretrainingCollator` layout:

* MLM: ``mlm_input_ids`` (the corrupted text) with its own image, ``mlm_labels`` (-100 =
  not predicted);
* ITM: text ``i`` (``itm_input_ids`` when present -- text-side negatives such as an altered
  caption -- else ``input_ids``) with image ``itm_image_index[i]``, label ``itm_labels[i]``
  (1 = match);
* ITC: the uncorrupted ``input_ids`` against ``pixel_values``, row ``i`` matching row ``i``.

The model must offer what :class:`~bridgetower.models.BridgeTowerForPretraining` does:
``encode_image``, ``encode_text``, ``bridgetower.fuse_pairs``, ``mlm_score``, ``itm_score``,
``itc_embeds`` and ``itc``.  The vision tower runs once per batch, the text tower once on
all text variants stacked, and the fusion once on all (text, image) pairs stacked (MLM pairs
and ITM pairs), so an MLM + ITM step costs one tower pass per input and one fusion pass.

Metrics (floats): ``loss_mlm``, ``loss_itm``, ``loss_itc``, ``acc_mlm`` (on the predicted
positions), ``acc_itm``, ``acc_itc`` (image-to-text top-1), for the objectives computed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from ..layers.heads import itc_loss, itm_loss, mlm_loss

__all__ = ["PretrainingObjective", "check_pretraining_batch"]

_MLM_KEYS = ("mlm_input_ids", "mlm_labels", "attention_mask", "pixel_values")
_ITM_KEYS = ("input_ids", "attention_mask", "pixel_values", "itm_image_index", "itm_labels")
_ITC_KEYS = ("input_ids", "attention_mask", "pixel_values")


def check_pretraining_batch(batch: Mapping[str, Any], *, mlm: bool, itm: bool, itc: bool) -> None:
    """Raise ``ValueError`` naming the missing keys / bad shapes for the requested objectives."""
    if not isinstance(batch, Mapping):
        raise TypeError(f"a pretraining batch is a dict of tensors, got {type(batch).__name__}")
    need: list[str] = []
    for on, keys in ((mlm, _MLM_KEYS), (itm, _ITM_KEYS), (itc, _ITC_KEYS)):
        if on:
            need += [k for k in keys if k not in need]
    missing = [k for k in need if k not in batch]
    if missing:
        raise ValueError(
            f"the batch lacks {missing} (has {sorted(batch)}); build it with "
            "bridgetower.data.PretrainingCollator"
        )
    # pixel_values may hold extra images after the B pair images: ITM negatives owned by another
    # rank's shard (see bridgetower.training.distributed.shard_batch)
    n_images = batch["pixel_values"].shape[0]
    b = batch["attention_mask"].shape[0] if "attention_mask" in batch else n_images
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


class PretrainingObjective:
    """``objective(model, batch) -> (loss, metrics)``; see the module doc.

    Args:
        mlm_weight, itm_weight, itc_weight: non-negative weights (recipe: 1, 1, 0); at least
            one must be positive.
        itc_gather: optional all-gather for ITC across ranks (see
            :func:`~bridgetower.layers.heads.itc_loss`).
    """

    def __init__(
        self,
        *,
        mlm_weight: float = 1.0,
        itm_weight: float = 1.0,
        itc_weight: float = 0.0,
        itc_gather: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        for name, w in (("mlm_weight", mlm_weight), ("itm_weight", itm_weight), ("itc_weight", itc_weight)):
            if isinstance(w, bool) or not isinstance(w, (int, float)) or w < 0:
                raise ValueError(f"{name} must be a number >= 0, got {w!r}")
        if mlm_weight == itm_weight == itc_weight == 0:
            raise ValueError("at least one of mlm_weight, itm_weight, itc_weight must be > 0")
        self.mlm_weight = float(mlm_weight)
        self.itm_weight = float(itm_weight)
        self.itc_weight = float(itc_weight)
        self.itc_gather = itc_gather

    def __repr__(self) -> str:
        return (
            f"PretrainingObjective(mlm_weight={self.mlm_weight:g}, itm_weight={self.itm_weight:g}, "
            f"itc_weight={self.itc_weight:g})"
        )

    def __call__(self, model: nn.Module, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        do_mlm, do_itm, do_itc = self.mlm_weight > 0, self.itm_weight > 0, self.itc_weight > 0
        check_pretraining_batch(batch, mlm=do_mlm, itm=do_itm, itc=do_itc)
        from ..models.bridgetower import patch_mask_from_pixel_mask

        pixel_values = batch["pixel_values"]
        attention_mask = batch["attention_mask"]
        b = attention_mask.shape[0]  # pairs; pixel_values may have extra ITM-only images after them
        dev = pixel_values.device
        rows = torch.arange(b, device=dev)
        bt = model.bridgetower
        image_states = model.encode_image(pixel_values)  # N x (B, 1+P, Dv)
        image_mask = patch_mask_from_pixel_mask(batch.get("pixel_mask"), bt.config.vision.patch_size)

        # texts stacked: [mlm (B)] [itm (B)] [clean for ITC (B), when not already there]
        texts: list[torch.Tensor] = []
        if do_mlm:
            texts.append(batch["mlm_input_ids"])
        itm_text = batch.get("itm_input_ids", batch.get("input_ids"))
        if do_itm:
            texts.append(itm_text)
        itc_from = None
        if do_itc:
            if do_itm and itm_text is batch["input_ids"]:
                itc_from = len(texts) - 1
            else:
                texts.append(batch["input_ids"])
                itc_from = len(texts) - 1
        text_states = model.encode_text(torch.cat(texts, 0), attention_mask.repeat(len(texts), 1))

        losses: dict[str, torch.Tensor] = {}
        metrics: dict[str, torch.Tensor] = {}
        n_fused = int(do_mlm) + int(do_itm)
        if n_fused:
            text_index = torch.arange(n_fused * b, device=dev)
            image_index = torch.cat(
                ([rows] if do_mlm else []) + ([batch["itm_image_index"].to(dev)] if do_itm else [])
            )
            fused = bt.fuse_pairs(
                text_states, image_states, attention_mask.repeat(len(texts), 1), text_index, image_index, image_mask
            )
            if do_mlm:
                logits = model.mlm_score(fused.text_features[:b])  # (B, L, V)
                labels = batch["mlm_labels"]
                sel = labels != -100
                losses["mlm"] = mlm_loss(logits, labels)
                if batch.get("mlm_normalizer") is not None:
                    # a rank's shard: sum of its token losses / (global masked count / world size),
                    # so that the ranks' average is the mean over the global batch's tokens
                    losses["mlm"] = losses["mlm"] * (sel.sum().float() / batch["mlm_normalizer"])
                with torch.no_grad():
                    hits = (logits.argmax(-1) == labels) & sel
                    metrics["acc_mlm"] = hits.sum().float() / sel.sum().clamp_min(1).float()
            if do_itm:
                start = b if do_mlm else 0
                logits = model.itm_score(fused.pooler_output[start : start + b])  # (B, 2)
                labels = batch["itm_labels"]
                losses["itm"] = itm_loss(logits, labels)
                with torch.no_grad():
                    metrics["acc_itm"] = (logits.argmax(-1) == labels).float().mean()
        if do_itc:
            sl = slice(itc_from * b, (itc_from + 1) * b)
            t_emb, i_emb = model.itc_embeds([t[sl] for t in text_states], [v[:b] for v in image_states])
            losses["itc"] = itc_loss(t_emb, i_emb, model.itc.effective_temperature(), gather=self.itc_gather)
            with torch.no_grad():
                metrics["acc_itc"] = ((i_emb @ t_emb.t()).argmax(-1) == rows).float().mean()

        weights = {"mlm": self.mlm_weight, "itm": self.itm_weight, "itc": self.itc_weight}
        total = sum(weights[k] * v for k, v in losses.items())
        for k, v in losses.items():
            metrics[f"loss_{k}"] = v.detach()
        return total, metrics
