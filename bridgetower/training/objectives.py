"""The pretraining objective: MLM, ITM and ITC weighted and summed, with metrics.

:class:`PretrainingObjective` is the ``objective(model, batch) -> (loss, metrics)`` the
:class:`~bridgetower.training.trainer.Trainer` calls.  The step itself -- which tower runs on
what, which pairs are fused, each loss -- is the model's
:meth:`~bridgetower.models.BridgeTowerForPretraining.pretraining_step`; this class only
weights its losses::

    loss = mlm_weight * MLM + itm_weight * ITM + itc_weight * ITC

and measures accuracies.  The published recipe is MLM + ITM, unweighted (``itc_weight=0``;
the ``-itc`` checkpoints add ITC with weight 1).  A zero weight skips that objective's
computation entirely.

Metrics (0-d tensors): ``loss_mlm``, ``loss_itm``, ``loss_itc``, ``acc_mlm`` (on the predicted
positions), ``acc_itm``, ``acc_itc`` (image-to-text top-1), for the objectives computed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import nn

from ..models.pretraining import check_pretraining_batch

__all__ = ["PretrainingObjective", "check_pretraining_batch"]


class PretrainingObjective:
    """``objective(model, batch) -> (loss, metrics)``; see the module doc.

    Args:
        mlm_weight, itm_weight, itc_weight: non-negative weights (recipe: 1, 1, 0); at least
            one must be positive.
        itc_gather: optional all-gather for ITC across ranks (see
            :func:`~bridgetower.layers.itc_loss`); ``rank`` is this process's rank.
    """

    def __init__(
        self,
        *,
        mlm_weight: float = 1.0,
        itm_weight: float = 1.0,
        itc_weight: float = 0.0,
        itc_gather: Callable[[torch.Tensor], torch.Tensor] | None = None,
        rank: int = 0,
    ) -> None:
        for name, w in (("mlm_weight", mlm_weight), ("itm_weight", itm_weight), ("itc_weight", itc_weight)):
            if isinstance(w, bool) or not isinstance(w, (int, float)) or w < 0:
                raise ValueError(f"{name} must be a number >= 0, got {w!r}")
        if mlm_weight == itm_weight == itc_weight == 0:
            raise ValueError("at least one of mlm_weight, itm_weight, itc_weight must be > 0")
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 0:
            raise ValueError(f"rank must be an int >= 0, got {rank!r}")
        self.mlm_weight = float(mlm_weight)
        self.itm_weight = float(itm_weight)
        self.itc_weight = float(itc_weight)
        self.itc_gather = itc_gather
        self.rank = rank

    def __repr__(self) -> str:
        return (
            f"PretrainingObjective(mlm_weight={self.mlm_weight:g}, itm_weight={self.itm_weight:g}, "
            f"itc_weight={self.itc_weight:g})"
        )

    def __call__(self, model: nn.Module, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        do_mlm, do_itm, do_itc = self.mlm_weight > 0, self.itm_weight > 0, self.itc_weight > 0
        out = model.pretraining_step(
            batch, mlm=do_mlm, itm=do_itm, itc=do_itc, itc_gather=self.itc_gather, rank=self.rank
        )
        weights = {"mlm": self.mlm_weight, "itm": self.itm_weight, "itc": self.itc_weight}
        losses = {k: getattr(out, f"{k}_loss") for k in weights if getattr(out, f"{k}_loss") is not None}
        total = sum(weights[k] * v for k, v in losses.items())
        metrics = {f"loss_{k}": v.detach() for k, v in losses.items()}
        with torch.no_grad():
            if out.mlm_logits is not None:
                labels = batch["mlm_labels"]
                sel = labels != -100
                hits = (out.mlm_logits.argmax(-1) == labels) & sel
                metrics["acc_mlm"] = hits.sum().float() / sel.sum().clamp_min(1).float()
            if out.itm_logits is not None:
                metrics["acc_itm"] = (out.itm_logits.argmax(-1) == batch["itm_labels"]).float().mean()
            if out.itc_text_embeds is not None:
                t_emb, i_emb = out.itc_text_embeds, out.itc_image_embeds
                rows = torch.arange(t_emb.shape[0], device=t_emb.device)
                metrics["acc_itc"] = ((i_emb @ t_emb.t()).argmax(-1) == rows).float().mean()
        return total, metrics
