"""Where in the image the model looks: cross-modal attention maps and a relevance map of
the ITM score, as tensors and as a heat-map overlay PNG (``bridgetower explain``).

* :func:`cross_attention_maps`: the text-to-image attention probabilities of every cross
  layer (``output_attentions=True`` of :class:`~bridgetower.models.BridgeTowerModel`),
  ``(layers, heads, L, gh, gw)`` over the patch grid.
* :func:`relevance_map`: a Grad-CAM-style relevance of the ITM match log-odds
  (``logit[1] - logit[0]``): for each cross layer the text-to-image attention ``A`` times its
  gradient ``d log-odds / dA``, averaged over
  heads, negative parts clipped, summed over layers (the gradient-weighted attention of
  Chefer et al., 2021).  Per text token ``(L, gh, gw)``; the whole text is the sum over its
  tokens.
* :func:`explain` runs both for one (image, text) pair and :func:`save_overlay` draws a
  map over the image.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ._atomic import replaced_on_success

__all__ = ["Explanation", "cross_attention_maps", "explain", "relevance_map", "save_overlay"]


def _check_model(model: Any) -> None:
    if not hasattr(model, "bridgetower") or not hasattr(model, "itm_score"):
        raise TypeError(
            f"model must be a task model with an ITM head (BridgeTowerForPretraining, "
            f"BridgeTowerForImageAndTextRetrieval), got {type(model).__name__}"
        )


def _inputs(model, pixel_values, input_ids, attention_mask):
    if not isinstance(pixel_values, torch.Tensor):
        raise TypeError(f"pixel_values must be a (3, H, W) or (1, 3, H, W) tensor, got {type(pixel_values).__name__}")
    if pixel_values.ndim == 3:
        pixel_values = pixel_values.unsqueeze(0)
    if pixel_values.ndim != 4 or pixel_values.shape[0] != 1 or pixel_values.shape[1] != 3:
        raise ValueError(f"pixel_values must be one image (3, H, W), got shape {tuple(pixel_values.shape)}")
    if not isinstance(input_ids, torch.Tensor):
        raise TypeError(f"input_ids must be a tensor, got {type(input_ids).__name__}")
    if input_ids.ndim == 1:
        input_ids = input_ids.unsqueeze(0)
    if input_ids.ndim != 2 or input_ids.shape[0] != 1:
        raise ValueError(f"input_ids must be one text (L,) or (1, L), got shape {tuple(input_ids.shape)}")
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    elif attention_mask.ndim == 1:
        attention_mask = attention_mask.unsqueeze(0)
    p = next(model.parameters())
    return pixel_values.to(p.device, p.dtype), input_ids.to(p.device), attention_mask.to(p.device)


def _grid(model, pixel_values) -> tuple[int, int]:
    patch = model.config.vision.patch_size
    return pixel_values.shape[-2] // patch, pixel_values.shape[-1] // patch


def _forward(model, px, ids, mask):
    out = model.bridgetower(ids, mask, px, output_attentions=True, return_dict=True)
    text_to_image = [layer[0] for layer in out.cross_attentions]  # (1, heads, L, 1 + P) each
    logits = model.itm_score(out.pooler_output)[0]
    return logits[1] - logits[0], text_to_image  # the match log-odds


def cross_attention_maps(model, pixel_values: torch.Tensor, input_ids: torch.Tensor,
                         attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Text-to-image attention of every cross layer, ``(layers, heads, L, gh, gw)`` (the image
    CLS column dropped, so a row sums to at most 1)."""
    _check_model(model)
    px, ids, mask = _inputs(model, pixel_values, input_ids, attention_mask)
    gh, gw = _grid(model, px)
    with torch.no_grad():
        _, maps = _forward(model, px, ids, mask)
    a = torch.stack([m[0, :, :, 1:] for m in maps])  # (layers, heads, L, P)
    return a.reshape(*a.shape[:3], gh, gw).float()


def relevance_map(model, pixel_values: torch.Tensor, input_ids: torch.Tensor,
                  attention_mask: torch.Tensor | None = None, *, per_token: bool = False) -> torch.Tensor:
    """Grad-CAM-style relevance of the ITM match log-odds over the patch grid: ``(gh, gw)`` for
    the whole text, or ``(L, gh, gw)`` per token with ``per_token=True`` (padding rows zero)."""
    _check_model(model)
    px, ids, mask = _inputs(model, pixel_values, input_ids, attention_mask)
    gh, gw = _grid(model, px)
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            logit, maps = _forward(model, px, ids, mask)
            grads = torch.autograd.grad(logit, maps)
    finally:
        model.train(was_training)
    rel = sum((g * a).float().mean(dim=1).clamp_min(0)[0, :, 1:] for g, a in zip(grads, maps, strict=True))
    rel = rel * mask[0, :, None].to(rel.dtype)  # (L, P)
    rel = rel.reshape(-1, gh, gw).detach()
    return rel if per_token else rel.sum(0)


@dataclass
class Explanation:
    """What :func:`explain` returns: ``relevance`` (gh, gw) for the whole text (or the chosen
    token), ``token_relevance`` (L, gh, gw), ``attention`` (layers, heads, L, gh, gw), the
    ``tokens``, the ITM ``match_logit`` (``logit[1]``) and the ``image`` (PIL) it was computed on."""

    relevance: torch.Tensor
    token_relevance: torch.Tensor
    attention: torch.Tensor
    tokens: list[str]
    match_logit: float
    image: Any


def explain(model, tokenizer: Any, image: Any, text: str, *, token: str | int | None = None,
            image_processor: Any = None, out: str | os.PathLike | None = None) -> Explanation:
    """Attention maps and the relevance map of ``(image, text)``; ``image`` is a PIL image or a
    path.  ``token`` (a word of ``text`` or a token index) picks one token's relevance instead of
    the whole text's.  ``out``: write the heat-map overlay PNG there (:func:`save_overlay`)."""
    from .models.embeddings import _open_image

    _check_model(model)
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"text must be a non-empty string, got {text!r}")
    pil = _open_image(image, "image")
    tok = getattr(tokenizer, "tokenizer", tokenizer)
    enc = tok([text], truncation=True, max_length=model.bridgetower.text_model.max_length, return_tensors="pt")
    ids, mask = enc["input_ids"], enc["attention_mask"]
    tokens = tok.convert_ids_to_tokens(ids[0].tolist())
    if image_processor is None:
        from .models.image_processor import ImageProcessor

        image_processor = ImageProcessor(model.config.vision.image_size)
    px = torch.from_numpy(getattr(image_processor, "image_processor", image_processor).preprocess_image(pil))
    per_token = relevance_map(model, px, ids, mask, per_token=True)
    if token is None:
        rel = per_token.sum(0)
    else:
        if isinstance(token, str):
            matches = [i for i, t in enumerate(tokens) if t.lstrip("Ġ▁").lower() == token.lower()]
            if not matches:
                raise ValueError(f"token {token!r} is not among the text's tokens {tokens}")
            index = matches[0]
        elif isinstance(token, int) and not isinstance(token, bool) and 0 <= token < len(tokens):
            index = token
        else:
            raise ValueError(f"token must be a word of the text or an index in [0, {len(tokens)}), got {token!r}")
        rel = per_token[index]
    attention = cross_attention_maps(model, px, ids, mask)
    with torch.no_grad():
        p = next(model.parameters())
        logit = model.score(px[None].to(p.device, p.dtype), ids.to(p.device), mask.to(p.device))[0, 0]
    result = Explanation(rel, per_token, attention, tokens, float(logit), pil)
    if out is not None:
        save_overlay(pil, rel, out, crop=image_processor)
    return result


def _heat(v: np.ndarray) -> np.ndarray:
    """A black-red-yellow-white colour map of values in [0, 1]: (H, W) -> (H, W, 3) uint8."""
    rgb = np.stack([np.clip(3 * v, 0, 1), np.clip(3 * v - 1, 0, 1), np.clip(3 * v - 2, 0, 1)], -1)
    return (rgb * 255).astype(np.uint8)


def save_overlay(image: Any, relevance: torch.Tensor, out: str | os.PathLike, *, alpha: float = 0.55,
                 crop: Any = None) -> Path:
    """Draw ``relevance`` (gh, gw) over ``image`` (resized to the model's square input when
    ``crop`` is its image processor) as a heat map; write the PNG to ``out`` and return it."""
    from PIL import Image

    from .models.embeddings import _open_image

    if not isinstance(relevance, torch.Tensor) or relevance.ndim != 2:
        raise ValueError(f"relevance must be a (gh, gw) tensor, got {getattr(relevance, 'shape', type(relevance).__name__)}")
    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha!r}")
    pil = _open_image(image, "image")
    if crop is not None:
        size = getattr(crop, "size", None)
        if isinstance(size, int):
            pil = pil.resize((size, size))
    side = max(256, pil.width)
    base = pil.resize((side, round(side * pil.height / pil.width)))
    r = relevance.detach().float()
    r = (r - r.min()) / (r.max() - r.min()).clamp_min(1e-12)
    up = F.interpolate(r[None, None], size=(base.height, base.width), mode="bilinear", align_corners=False)[0, 0]
    heat = Image.fromarray(_heat(up.numpy()))
    blended = Image.blend(base.convert("RGB"), heat, float(alpha))
    out = Path(out)
    with replaced_on_success(out) as tmp:
        blended.save(tmp, format="PNG")
    return out
