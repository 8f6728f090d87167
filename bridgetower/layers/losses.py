"""The losses of BridgeTower's pretraining and downstream tasks.

Functions of logits and labels (the heads that produce the logits are in
:mod:`bridgetower.layers.heads`); each validates its inputs and computes in float32.

=======================  ======================================================================
loss                     computes
=======================  ======================================================================
:func:`mlm_loss`         cross-entropy over the masked positions (``ignore_index`` elsewhere)
:func:`itm_loss`         cross-entropy of (N, 2) match logits
:func:`itc_loss`         symmetric image-text contrastive loss, optionally over gathered ranks
:func:`contrastive_loss` HF's three-way contrastive loss (text, image, cross embeddings)
:func:`vqa_loss`         BCE-with-logits against soft answer scores, times ``num_answers``
:func:`nlvr2_loss`       cross-entropy of (N, 2) logits
:func:`snli_loss`        cross-entropy of (N, 3) logits
:func:`irtr_loss`        ranking cross-entropy over 1 positive + K negatives
=======================  ======================================================================

No process-group calls here: :func:`itc_loss` takes the all-gather and this process's
rank as arguments.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

__all__ = ["contrastive_loss", "irtr_loss", "itc_loss", "itm_loss", "mlm_loss", "nlvr2_loss",
           "snli_loss", "vqa_loss"]


def _check_tensor(x, who: str, what: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{who}: {what} must be a torch.Tensor, got {type(x).__name__}")


def _check_logits_labels(logits: torch.Tensor, labels: torch.Tensor, num_classes: int | None, who: str) -> None:
    _check_tensor(logits, who, "logits")
    _check_tensor(labels, who, "labels")
    if logits.ndim != 2:
        raise ValueError(f"{who}: logits must be (N, C), got shape {tuple(logits.shape)}")
    if num_classes is not None and logits.shape[1] != num_classes:
        raise ValueError(f"{who}: logits must have {num_classes} classes, got shape {tuple(logits.shape)}")
    if labels.shape != logits.shape[:1]:
        raise ValueError(f"{who}: labels must be (N,) = ({logits.shape[0]},), got shape {tuple(labels.shape)}")
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise TypeError(f"{who}: labels must be an integer tensor of class indices, got {labels.dtype}")


def mlm_loss(logits: torch.Tensor, labels: torch.Tensor, *, ignore_index: int = -100) -> torch.Tensor:
    """Cross-entropy over the masked positions: ``logits`` (..., V), ``labels`` (...).

    Positions with ``labels == ignore_index`` do not count.  If no position counts, the loss is
    a zero that still depends on ``logits`` (instead of PyTorch's NaN).
    """
    _check_tensor(logits, "mlm_loss", "logits")
    _check_tensor(labels, "mlm_loss", "labels")
    if logits.ndim < 2 or labels.shape != logits.shape[:-1]:
        raise ValueError(
            f"mlm_loss: labels must have the shape of logits without the vocab dim; "
            f"got logits {tuple(logits.shape)} and labels {tuple(labels.shape)}"
        )
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise TypeError(f"mlm_loss: labels must be integer token ids, got {labels.dtype}")
    flat_logits = logits.reshape(-1, logits.shape[-1])  # (N, V)
    flat_labels = labels.reshape(-1)  # (N,)
    if not (flat_labels != ignore_index).any():
        return flat_logits.sum() * 0.0
    return F.cross_entropy(flat_logits.float(), flat_labels, ignore_index=ignore_index)


def itm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of ITM logits ``(N, 2)`` with labels ``(N,)`` (1 = match, 0 = no match)."""
    _check_logits_labels(logits, labels, 2, "itm_loss")
    return F.cross_entropy(logits.float(), labels)


def itc_loss(
    text_embeds: torch.Tensor,
    image_embeds: torch.Tensor,
    temperature: torch.Tensor | float,
    *,
    gather: Callable[[torch.Tensor], torch.Tensor] | None = None,
    rank: int = 0,
    labels: torch.Tensor | None = None,
) -> torch.Tensor:
    """Symmetric image-text contrastive loss (official BridgeTower / ALBEF form).

    ``text_embeds``, ``image_embeds``: (B, E) L2-normalised local features.  ``gather`` maps a
    local (B, E) tensor to the (W*B, E) concatenation over ranks (e.g. an all-gather that keeps
    the local gradient); the local block must sit at rows ``rank*B : (rank+1)*B``, with
    ``rank`` this process's rank (given by the caller: the loss asks no process group).  Logits are
    ``image @ all_text.T / temperature`` and ``text @ all_image.T / temperature``; the loss is
    the mean of the two cross-entropies.  ``labels``: (B,) indices into the gathered axis
    (default ``arange(B) + rank*B``) or (B, W*B) soft targets (e.g. for several captions of
    one image).
    """
    who = "itc_loss"
    _check_tensor(text_embeds, who, "text_embeds")
    _check_tensor(image_embeds, who, "image_embeds")
    if text_embeds.ndim != 2 or text_embeds.shape != image_embeds.shape:
        raise ValueError(
            f"{who}: text_embeds and image_embeds must both be (B, E), got {tuple(text_embeds.shape)} "
            f"and {tuple(image_embeds.shape)}"
        )
    b = text_embeds.shape[0]
    if gather is None:
        all_text, all_image, offset = text_embeds, image_embeds, 0
    else:
        all_text, all_image = gather(text_embeds), gather(image_embeds)
        for name, t in (("text", all_text), ("image", all_image)):
            if t.ndim != 2 or t.shape[1] != text_embeds.shape[1] or t.shape[0] % b:
                raise ValueError(
                    f"{who}: gather must return (W*B, E) with B={b}, E={text_embeds.shape[1]}; "
                    f"got {tuple(t.shape)} for {name}"
                )
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 0:
            raise ValueError(f"{who}: rank must be an int >= 0, got {rank!r}")
        offset = rank * b
        if offset + b > all_text.shape[0]:
            raise ValueError(f"{who}: rank {offset // b} out of range for {all_text.shape[0] // b} gathered blocks")
    n = all_text.shape[0]
    if labels is None:
        labels = torch.arange(b, device=text_embeds.device) + offset
    elif labels.shape not in ((b,), (b, n)):
        raise ValueError(f"{who}: labels must be ({b},) or ({b}, {n}), got {tuple(labels.shape)}")
    if isinstance(temperature, torch.Tensor) and temperature.numel() != 1:
        raise ValueError(f"{who}: temperature must be a scalar, got shape {tuple(temperature.shape)}")
    logits_i2t = image_embeds.float() @ all_text.float().t() / temperature  # (B, W*B)
    logits_t2i = text_embeds.float() @ all_image.float().t() / temperature  # (B, W*B)
    return (F.cross_entropy(logits_i2t, labels) + F.cross_entropy(logits_t2i, labels)) / 2


def contrastive_loss(
    text_embeds: torch.Tensor, image_embeds: torch.Tensor, cross_embeds: torch.Tensor, logit_scale: torch.Tensor
) -> torch.Tensor:
    """HF ``BridgeTowerForContrastiveLearning`` loss.

    With ``s = exp(logit_scale)`` and targets ``arange(B)``: the mean of the cross-entropies of
    ``s * text @ image.T``, ``s * text @ cross.T`` and ``s * image @ cross.T`` (rows only).
    """
    who = "contrastive_loss"
    for name, t in (("text_embeds", text_embeds), ("image_embeds", image_embeds), ("cross_embeds", cross_embeds)):
        _check_tensor(t, who, name)
    if text_embeds.ndim != 2 or not (text_embeds.shape == image_embeds.shape == cross_embeds.shape):
        raise ValueError(
            f"{who}: text, image and cross embeds must all be (B, E), got {tuple(text_embeds.shape)}, "
            f"{tuple(image_embeds.shape)}, {tuple(cross_embeds.shape)}"
        )
    scale = logit_scale.exp()
    labels = torch.arange(text_embeds.shape[0], device=text_embeds.device)
    t, i, c = text_embeds.float(), image_embeds.float(), cross_embeds.float()
    losses = [F.cross_entropy(a @ b.t() * scale, labels) for a, b in ((t, i), (t, c), (i, c))]
    return (losses[0] + losses[1] + losses[2]) / 3.0


def vqa_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """BCE-with-logits against soft answer scores, mean over all entries, times ``num_answers``.

    ``logits``, ``targets``: (B, num_answers); targets in [0, 1].
    """
    _check_tensor(logits, "vqa_loss", "logits")
    _check_tensor(targets, "vqa_loss", "targets")
    if logits.ndim != 2 or targets.shape != logits.shape:
        raise ValueError(
            f"vqa_loss: logits and targets must both be (B, num_answers), got {tuple(logits.shape)} "
            f"and {tuple(targets.shape)}"
        )
    if not targets.dtype.is_floating_point:
        raise TypeError(f"vqa_loss: targets must be floating-point soft scores, got {targets.dtype}")
    return F.binary_cross_entropy_with_logits(logits.float(), targets.float()) * targets.shape[1]


def nlvr2_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of NLVR2 logits (N, 2) with labels (N,) in {0, 1}."""
    _check_logits_labels(logits, labels, 2, "nlvr2_loss")
    return F.cross_entropy(logits.float(), labels)


def snli_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of SNLI-VE logits (N, 3) with labels (N,) in {0, 1, 2}."""
    _check_logits_labels(logits, labels, 3, "snli_loss")
    return F.cross_entropy(logits.float(), labels)


def irtr_loss(scores: torch.Tensor, group_size: int | None = None) -> torch.Tensor:
    """Ranking loss over groups of 1 positive + K negatives: cross-entropy with target 0.

    ``scores``: (B, 1+K) with the positive text first in every row, or flat (B*(1+K),) grouped
    consecutively (then give ``group_size = 1+K``).
    """
    _check_tensor(scores, "irtr_loss", "scores")
    if scores.ndim == 1:
        if group_size is None or group_size < 2 or scores.shape[0] % group_size:
            raise ValueError(
                f"irtr_loss: flat scores of shape {tuple(scores.shape)} need group_size >= 2 dividing "
                f"{scores.shape[0]}, got group_size={group_size!r}"
            )
        scores = scores.view(-1, group_size)  # (B, 1+K)
    elif scores.ndim != 2 or scores.shape[1] < 2:
        raise ValueError(f"irtr_loss: scores must be (B, 1+K) with K >= 1, got shape {tuple(scores.shape)}")
    elif group_size is not None and group_size != scores.shape[1]:
        raise ValueError(f"irtr_loss: group_size={group_size} disagrees with scores {tuple(scores.shape)}")
    target = torch.zeros(scores.shape[0], dtype=torch.long, device=scores.device)
    return F.cross_entropy(scores.float(), target)
