"""Image-text retrieval evaluation: ITC top-k candidates re-ranked by the fusion score, recall@k.

The BridgeTower recipe (official code; ALBEF style): score every (image, text) pair cheaply
with the contrastive (ITC) embeddings of the two towers, keep the ``k`` best candidates of
every query (128 texts per image / images per text for Flickr30k, 256 for COCO), and rank
those candidates by the cross-modal score -- the ITM "match" logit, or the IRTR head's
ranking score of a retrieval fine-tuned model.  Candidates outside the top ``k`` are never
retrieved.

:func:`retrieval_scores` runs each tower **once per image and once per text** (the tapped
uni-modal states are kept and reused), and the fusion once per distinct candidate pair --
a pair that is a candidate in both directions is fused once.  With ``k`` at least the
number of images and texts (or ``candidates="all"``) every pair is fused and the result is
the brute-force fusion ranking.

:func:`recall_at_k` turns score matrices into recall@k in both directions:

* image -> text (``i2t``, "text retrieval", ``tr`` in the official logs): an image counts
  as found at ``k`` when any of its texts is among its ``k`` best-scored texts;
* text -> image (``t2i``, "image retrieval", ``ir``): a text counts when its image is among
  its ``k`` best-scored images.

Ties are broken by index (the lower index ranks first, as a stable sort does); a pair scored
``-inf`` (not a candidate) is never found.

Memory: the kept uni-modal states take ``N x (images x (1 + P) x W_vision + texts x L x
W_text)`` floats (``N`` fused layers) and the score matrices ``3 x images x texts``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_KS",
    "RetrievalScores",
    "evaluate_retrieval",
    "pair_scorer",
    "recall_at_k",
    "retrieval_scores",
]

DEFAULT_KS: tuple[int, ...] = (1, 5, 10)


# ------------------------------------------------------------------------------------ recall


def _positions(scores: Tensor, chunk: int = 256) -> Tensor:
    """Row-wise rank of every entry: ``pos[r, c]`` = place of column ``c`` in row ``r`` sorted
    descending, ties by column index (stable).  (R, C) long."""
    out = torch.empty(scores.shape, dtype=torch.long)
    cols = torch.arange(scores.shape[1]).expand(min(chunk, scores.shape[0]), -1)
    for s in range(0, scores.shape[0], chunk):
        block = scores[s : s + chunk].float().cpu()
        order = torch.sort(block, dim=1, descending=True, stable=True).indices
        out[s : s + chunk].scatter_(1, order, cols[: block.shape[0]])
    return out


def recall_at_k(
    scores: Tensor,
    text_image: Tensor | Sequence[int],
    ks: Sequence[int] = DEFAULT_KS,
    *,
    t2i_scores: Tensor | None = None,
) -> dict[str, float]:
    """Recall@k of both directions from ``(images, texts)`` score matrices.

    Args:
        scores: ``(I, T)``; row ``i`` ranks the texts for image ``i`` (image -> text).
        text_image: ``(T,)``: text ``t`` describes image ``text_image[t]`` (several texts may
            share an image, as COCO's five captions do); every image needs at least one text.
        ks: the cut-offs.
        t2i_scores: ``(I, T)``; column ``t`` ranks the images for text ``t`` (text -> image).
            Default: ``scores`` (one matrix for both directions).

    Returns ``{"i2t_r{k}": ..., "t2i_r{k}": ..., "r_mean": mean of all}``, fractions in [0, 1].
    """
    if not isinstance(scores, Tensor) or scores.ndim != 2:
        raise ValueError(f"recall_at_k: scores must be an (images, texts) matrix, got {getattr(scores, 'shape', scores)}")
    n_img, n_txt = scores.shape
    text_image = torch.as_tensor(text_image, dtype=torch.long).cpu()
    if text_image.shape != (n_txt,):
        raise ValueError(f"recall_at_k: text_image must have shape ({n_txt},) for {n_txt} texts, got {tuple(text_image.shape)}")
    if n_txt and (int(text_image.min()) < 0 or int(text_image.max()) >= n_img):
        raise ValueError(f"recall_at_k: text_image values must be image indices in [0, {n_img}), got {text_image.tolist()[:20]}")
    counts = torch.bincount(text_image, minlength=n_img)
    if bool((counts == 0).any()):
        missing = torch.nonzero(counts == 0).squeeze(1).tolist()
        raise ValueError(f"recall_at_k: images {missing[:20]} have no text")
    if t2i_scores is None:
        t2i_scores = scores
    elif t2i_scores.shape != scores.shape:
        raise ValueError(f"recall_at_k: t2i_scores {tuple(t2i_scores.shape)} must match scores {tuple(scores.shape)}")
    ks = [int(k) for k in ks]
    if not ks or any(k < 1 for k in ks):
        raise ValueError(f"recall_at_k: ks must be positive ints, got {ks}")
    inf = torch.iinfo(torch.long).max

    # image -> text: the best-placed of the image's texts
    pos = _positions(scores)  # (I, T)
    pos[~torch.isfinite(scores.cpu()) & (scores.cpu() < 0)] = inf
    own = text_image.unsqueeze(0) == torch.arange(n_img).unsqueeze(1)  # (I, T)
    i2t_rank = torch.where(own, pos, torch.full_like(pos, inf)).min(dim=1).values  # (I,)

    # text -> image: the place of the text's image
    t2i = t2i_scores.cpu().t()  # (T, I)
    pos_t = _positions(t2i)
    pos_t[~torch.isfinite(t2i) & (t2i < 0)] = inf
    t2i_rank = pos_t.gather(1, text_image.unsqueeze(1)).squeeze(1)  # (T,)

    out: dict[str, float] = {}
    for k in ks:
        out[f"i2t_r{k}"] = float((i2t_rank < k).double().mean())
    for k in ks:
        out[f"t2i_r{k}"] = float((t2i_rank < k).double().mean())
    out["r_mean"] = float(sum(out.values()) / len(out))
    return out


# ------------------------------------------------------------------------------------ scores


@dataclass
class RetrievalScores:
    """What :func:`retrieval_scores` computed.

    Attributes:
        itc: ``(I, T)`` ITC cosine similarities, or ``None`` when candidates were all pairs.
        i2t: ``(I, T)`` fusion scores of each image's candidate texts, ``-inf`` elsewhere.
        t2i: ``(I, T)`` fusion scores of each text's candidate images, ``-inf`` elsewhere.
        num_fused: distinct (image, text) pairs run through the fusion.
        k_i2t, k_t2i: candidates per image / per text.
    """

    itc: Tensor | None
    i2t: Tensor
    t2i: Tensor
    num_fused: int
    k_i2t: int
    k_t2i: int


def pair_scorer(model: nn.Module) -> Callable[[Tensor], Tensor]:
    """The fusion score of a model: ``pooled (N, 2H) -> (N,)``.

    The IRTR ranking head (``rank_output``) when the model has one, else the ITM "match"
    logit (``itm_score`` index 1).  Any other model is a ``TypeError``.
    """
    head = getattr(model, "rank_output", None)
    if head is not None:
        return head
    itm = getattr(model, "itm_score", None)
    if itm is not None:
        return lambda pooled: itm(pooled)[:, 1]
    raise TypeError(
        f"{type(model).__name__} has neither an IRTR ranking head (rank_output) nor an ITM head "
        "(itm_score) to re-rank retrieval candidates with; pass scorer="
    )


def _has_itc(model: nn.Module) -> bool:
    return getattr(model, "itc", None) is not None and hasattr(model.itc, "itc_text_head")


def _encode_chunks(fn: Callable[..., list[Tensor]], *tensors: Tensor | None, batch_size: int) -> list[Tensor]:
    """Run ``fn`` over row chunks and concatenate each of the returned layer states."""
    n = tensors[0].shape[0]
    parts: list[list[Tensor]] = []
    for s in range(0, n, batch_size):
        parts.append(fn(*(t[s : s + batch_size] if t is not None else None for t in tensors)))
    return [torch.cat([p[layer] for p in parts], 0) for layer in range(len(parts[0]))]


@torch.no_grad()
def retrieval_scores(
    model: nn.Module,
    pixel_values: Tensor,
    input_ids: Tensor,
    attention_mask: Tensor | None = None,
    *,
    k: int = 128,
    candidates: str = "auto",
    batch_size: int = 64,
    fusion_batch_size: int = 256,
    scorer: Callable[[Tensor], Tensor] | None = None,
) -> RetrievalScores:
    """Candidate selection and re-ranking for ``I`` images and ``T`` texts (module doc).

    Args:
        model: a BridgeTower task model (``encode_image``, ``encode_text``,
            ``bridgetower.fuse_pairs``); with an ITC head (``itc``, e.g.
            :class:`~bridgetower.models.BridgeTowerForPretraining`) for ITC candidates.
        pixel_values: ``(I, 3, H, W)``.  input_ids, attention_mask: ``(T, L)``.
        k: candidates kept per query (capped at the number of texts / images).
        candidates: ``"itc"`` (top-``k`` by ITC similarity), ``"all"`` (every pair, the
            brute-force ranking) or ``"auto"`` (ITC when the model has an ITC head, else all).
        batch_size: images / texts per tower pass.  fusion_batch_size: pairs per fusion pass.
        scorer: ``pooled (N, 2H) -> (N,)`` (default :func:`pair_scorer` of the model).
    """
    if candidates not in ("auto", "itc", "all"):
        raise ValueError(f"candidates must be 'auto', 'itc' or 'all', got {candidates!r}")
    if not isinstance(pixel_values, Tensor) or pixel_values.ndim != 4:
        raise ValueError(f"pixel_values must be (I, 3, H, W), got {getattr(pixel_values, 'shape', pixel_values)}")
    if not isinstance(input_ids, Tensor) or input_ids.ndim != 2:
        raise ValueError(f"input_ids must be (T, L), got {getattr(input_ids, 'shape', input_ids)}")
    if attention_mask is not None and attention_mask.shape != input_ids.shape:
        raise ValueError(f"attention_mask {tuple(attention_mask.shape)} must match input_ids {tuple(input_ids.shape)}")
    for name, v in (("k", k), ("batch_size", batch_size), ("fusion_batch_size", fusion_batch_size)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    if candidates == "itc" and not _has_itc(model):
        raise ValueError(f"candidates='itc' needs a model with an ITC head; {type(model).__name__} has none")
    use_itc = candidates == "itc" or (candidates == "auto" and _has_itc(model))
    scorer = scorer or pair_scorer(model)
    n_img, n_txt = pixel_values.shape[0], input_ids.shape[0]
    dev = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        image_states = _encode_chunks(model.encode_image, pixel_values.to(dev), batch_size=batch_size)
        mask = attention_mask.to(dev) if attention_mask is not None else None
        text_states = _encode_chunks(model.encode_text, input_ids.to(dev), mask, batch_size=batch_size)
        k_i2t, k_t2i = min(k, n_txt), min(k, n_img)
        itc = None
        if use_itc:
            itc_head = model.itc
            t_emb = F.normalize(itc_head.itc_text_head(text_states[-1][:, 0]), dim=-1)  # (T, E)
            i_emb = F.normalize(itc_head.itc_image_head(image_states[-1][:, 0]), dim=-1)  # (I, E)
            itc = (i_emb @ t_emb.t()).float()  # (I, T)
            i2t_mask = torch.zeros(n_img, n_txt, dtype=torch.bool, device=dev)
            i2t_mask.scatter_(1, itc.topk(k_i2t, dim=1).indices, True)
            t2i_mask = torch.zeros(n_img, n_txt, dtype=torch.bool, device=dev)
            t2i_mask.scatter_(0, itc.topk(k_t2i, dim=0).indices, True)
        else:
            if k < max(n_img, n_txt) and candidates == "auto":
                logger.warning("%s has no ITC head: ranking all %d x %d pairs", type(model).__name__, n_img, n_txt)
            k_i2t, k_t2i = n_txt, n_img
            i2t_mask = t2i_mask = torch.ones(n_img, n_txt, dtype=torch.bool, device=dev)
        pairs = torch.nonzero(i2t_mask | t2i_mask)  # (P, 2): each distinct pair once
        fused = torch.full((n_img, n_txt), -math.inf, device=dev)
        bt = model.bridgetower
        for s in range(0, pairs.shape[0], fusion_batch_size):
            img_idx, txt_idx = pairs[s : s + fusion_batch_size, 0], pairs[s : s + fusion_batch_size, 1]
            out = bt.fuse_pairs(text_states, image_states, mask, txt_idx, img_idx, pooled_only=True)
            fused[img_idx, txt_idx] = scorer(out.pooler_output).float()
        neg_inf = torch.full_like(fused, -math.inf)
        i2t = torch.where(i2t_mask, fused, neg_inf)
        t2i = torch.where(t2i_mask, fused, neg_inf)
    finally:
        model.train(was_training)
    return RetrievalScores(
        itc=itc.cpu() if itc is not None else None,
        i2t=i2t.cpu(),
        t2i=t2i.cpu(),
        num_fused=int(pairs.shape[0]),
        k_i2t=k_i2t,
        k_t2i=k_t2i,
    )


def evaluate_retrieval(
    model: nn.Module,
    pixel_values: Tensor,
    input_ids: Tensor,
    attention_mask: Tensor | None,
    text_image: Tensor | Sequence[int],
    *,
    k: int = 128,
    ks: Sequence[int] = DEFAULT_KS,
    candidates: str = "auto",
    batch_size: int = 64,
    fusion_batch_size: int = 256,
) -> dict[str, float]:
    """:func:`retrieval_scores` then :func:`recall_at_k`; adds ``itc_*`` recalls (the
    candidate ranking alone) when ITC candidates were used, and ``num_fused``."""
    rs = retrieval_scores(
        model, pixel_values, input_ids, attention_mask, k=k, candidates=candidates,
        batch_size=batch_size, fusion_batch_size=fusion_batch_size,
    )
    out = recall_at_k(rs.i2t, text_image, ks, t2i_scores=rs.t2i)
    if rs.itc is not None:
        out.update({f"itc_{key}": v for key, v in recall_at_k(rs.itc, text_image, ks).items()})
    out["num_fused"] = float(rs.num_fused)
    return out
