"""Checkpoint key names: every rename table between the Hugging Face, official and our
state dicts, as pure functions over state dicts.

Renames (encoder part; HF task checkpoints put it under ``bridgetower.``):

=============================================== ==========================================
Hugging Face                                    ours
=============================================== ==========================================
``vision_model.visual.embeddings.patch_embedding.weight``  ``vision_model.visual.conv1.weight``
``vision_model.visual.embeddings.class_embedding``         ``vision_model.visual.class_embedding``
``vision_model.visual.embeddings.position_embedding.weight`` ``vision_model.visual.positional_embedding``
``vision_model.visual.{ln_pre,transformer,ln_post}.*``     same
``vision_model.visual.ln_separate.N.*``                    ``vision_model.ln_separate.N.*``
``text_model.*``                                            ``text_model.model.*``
``cross_modal_{text,image}_layers.N.<HF cross layer>``      ``fusion.{text,image}_layers.N.<ours>``
``cross_modal_{text,image}_link_tower.K.LayerNorm.*``       ``fusion.{text,image}_bridges.K.*``
``cross_modal_*_{transform,layernorm,pooler}``, ``token_type_embeddings``  same
``itc_{text,image,cross_modal}_head``, ``logit_scale``      ``contrastive.*``
=============================================== ==========================================

Official names are the HF ones with ``vit_model.visual.{conv1, class_embedding,
positional_embedding}`` for the embeddings and ``text_transformer`` for ``text_model``.
Never used, dropped (and reported): the text tower's pooler, CLIP's text-side leftovers, the
``position_ids`` buffers.

The cross-layer and link-tower renames (inside ``cross_modal_*_layers.N`` and
``cross_modal_*_link_tower.K``) are in :mod:`bridgetower.models.layer_keys`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from ..layer_keys import rename_hf_cross_layer_key, rename_hf_link_tower_key

__all__ = [
    "CONFIG_NAME",
    "FORMAT_NAME",
    "WEIGHTS_NAME",
    "ConvertedStateDict",
    "convert_hf_state_dict",
    "convert_official_state_dict",
    "convert_to_hf_state_dict",
]

FORMAT_NAME = "bridgetower"
WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"

# ---------------------------------------------------------------- rename tables

# Encoder-part prefixes, HF -> ours (longest match wins).  Cross layers and link towers are
# renamed further by the layer modules' own tables.
_HF_ENCODER_PREFIXES: dict[str, str] = {
    "vision_model.visual.embeddings.patch_embedding.": "vision_model.visual.conv1.",
    "vision_model.visual.embeddings.class_embedding": "vision_model.visual.class_embedding",
    "vision_model.visual.embeddings.position_embedding.weight": "vision_model.visual.positional_embedding",
    "vision_model.visual.ln_pre.": "vision_model.visual.ln_pre.",
    "vision_model.visual.transformer.": "vision_model.visual.transformer.",
    "vision_model.visual.ln_post.": "vision_model.visual.ln_post.",
    "vision_model.visual.ln_separate.": "vision_model.ln_separate.",
    "text_model.": "text_model.model.",
    "cross_modal_text_layers.": "fusion.text_layers.",
    "cross_modal_image_layers.": "fusion.image_layers.",
    "cross_modal_text_link_tower.": "fusion.text_bridges.",
    "cross_modal_image_link_tower.": "fusion.image_bridges.",
    "cross_modal_text_transform.": "cross_modal_text_transform.",
    "cross_modal_image_transform.": "cross_modal_image_transform.",
    "token_type_embeddings.": "token_type_embeddings.",
    "cross_modal_text_layernorm.": "cross_modal_text_layernorm.",
    "cross_modal_image_layernorm.": "cross_modal_image_layernorm.",
    "cross_modal_text_pooler.": "cross_modal_text_pooler.",
    "cross_modal_image_pooler.": "cross_modal_image_pooler.",
}

# Head prefixes, HF -> ours (task-model level).
_HF_HEAD_PREFIXES: dict[str, str] = {
    "mlm_score.": "mlm_score.",
    "itm_score.": "itm_score.",
    "itc_text_head.": "contrastive.itc_text_head.",
    "itc_image_head.": "contrastive.itc_image_head.",
    "itc_cross_modal_head.": "contrastive.itc_cross_modal_head.",
    "logit_scale": "contrastive.logit_scale",
    # bridgetower's downstream heads, written beside an HF encoder under their own names
    "vqa_classifier.": "vqa_classifier.",
    "snli_classifier.": "snli_classifier.",
    "rank_output.": "rank_output.",
}

# Official top-level prefixes -> HF encoder names (then the HF table applies).
_OFFICIAL_ENCODER_PREFIXES: dict[str, str] = {
    "vit_model.visual.conv1.": "vision_model.visual.embeddings.patch_embedding.",
    "vit_model.visual.class_embedding": "vision_model.visual.embeddings.class_embedding",
    "vit_model.visual.positional_embedding": "vision_model.visual.embeddings.position_embedding.weight",
    "vit_model.visual.": "vision_model.visual.",
    "text_transformer.": "text_model.",
}

# Official heads -> ours.
_OFFICIAL_HEAD_PREFIXES: dict[str, str] = {
    "mlm_score.": "mlm_score.",
    "itm_score.": "itm_score.",
    "itc_text_head.": "itc.itc_text_head.",
    "itc_image_head.": "itc.itc_image_head.",
    "temperature": "itc.temperature",
    "vqa_classifier.": "vqa_classifier.classifier.",
    "nlvr2_classifier.": "nlvr2_classifier.classifier.",
    "snli_classifier.": "snli_classifier.classifier.",
    "rank_output.": "rank_output.fc.",
}

# Source keys that BridgeTower never uses (dropped, reported).
_UNUSED_PATTERNS = (
    "text_model.pooler.",
    "text_transformer.pooler.",
    "vit_model.positional_embedding",
    "vit_model.ln_final.",
    "vit_model.token_embedding.",
    "vit_model.transformer.",
    "vit_model.text_projection",
    "vit_model.logit_scale",
    "vit_model.visual.proj",
    "position_ids",
    "token_type_ids",
)


# transformers builds per-layer vision LayerNorms for share_layernorm=False but its forward
# never reads them (it applies ln_post); dropped from HF checkpoints, reported.
_HF_UNUSED_LN_SEPARATE = "vision_model.visual.ln_separate."


def _match_prefix(key: str, table: Mapping[str, str]) -> tuple[str, str] | None:
    best = None
    for src in table:
        if (key == src or key.startswith(src)) and (best is None or len(src) > len(best)):
            best = src
    return (best, table[best]) if best is not None else None


def _is_unused(key: str) -> bool:
    return any(key.startswith(p) or key.endswith(p) or f".{p}" in key for p in _UNUSED_PATTERNS)


def _hf_encoder_key_to_ours(key: str) -> str | None:
    """One HF encoder key (no ``bridgetower.`` prefix) -> ours, or None if not in the table."""
    m = _match_prefix(key, _HF_ENCODER_PREFIXES)
    if m is None:
        return None
    src, dst = m
    new = dst + key[len(src) :]
    if src.startswith("cross_modal_") and src.endswith("_layers."):
        return rename_hf_cross_layer_key(new)
    if src.endswith("_link_tower."):
        return rename_hf_link_tower_key(new)
    return new


def _ours_encoder_key_to_hf(key: str) -> str | None:
    """Inverse of :func:`_hf_encoder_key_to_ours` for one of our encoder keys."""
    if key.startswith("fusion.") and ("_layers." in key):
        key = rename_hf_cross_layer_key(key, reverse=True) or key
    elif key.startswith("fusion.") and "_bridges." in key:
        key = rename_hf_link_tower_key(key, reverse=True) or key
    inverse = {v: k for k, v in _HF_ENCODER_PREFIXES.items()}
    m = _match_prefix(key, inverse)
    if m is None:
        return None
    src, dst = m
    return dst + key[len(src) :]


# ---------------------------------------------------------------- state-dict conversion


@dataclass
class ConvertedStateDict:
    """A renamed state dict plus the source keys that were dropped (never used) or unknown."""

    state_dict: dict[str, torch.Tensor]
    dropped: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)


def convert_hf_state_dict(
    state_dict: Mapping[str, torch.Tensor], *, encoder_prefix: str = "bridgetower."
) -> ConvertedStateDict:
    """HF BridgeTower state dict (base or task model) -> our names.

    Encoder keys come out under ``encoder_prefix`` (``"bridgetower."`` for our task models,
    ``""`` for :class:`BridgeTowerModel`), head keys at the top level.
    """
    out = ConvertedStateDict({})
    for key, value in state_dict.items():
        bare = key[len("bridgetower.") :] if key.startswith("bridgetower.") else key
        if _is_unused(bare) or bare.startswith(_HF_UNUSED_LN_SEPARATE):
            out.dropped.append(key)
            continue
        new = _hf_encoder_key_to_ours(bare)
        if new is not None:
            out.state_dict[encoder_prefix + new] = value
            continue
        head = _match_prefix(bare, _HF_HEAD_PREFIXES)
        if head is not None and bare == key:
            out.state_dict[head[1] + bare[len(head[0]) :]] = value
            continue
        out.unknown.append(key)
    return out


def convert_official_state_dict(
    state_dict: Mapping[str, torch.Tensor], *, encoder_prefix: str = "bridgetower."
) -> ConvertedStateDict:
    """Official BridgeTower state dict -> our names (see the module table)."""
    out = ConvertedStateDict({})
    for key, value in state_dict.items():
        if _is_unused(key):
            out.dropped.append(key)
            continue
        head = _match_prefix(key, _OFFICIAL_HEAD_PREFIXES)
        if head is not None:
            out.state_dict[head[1] + key[len(head[0]) :]] = value
            continue
        m = _match_prefix(key, _OFFICIAL_ENCODER_PREFIXES)
        hf_key = m[1] + key[len(m[0]) :] if m is not None else key
        new = _hf_encoder_key_to_ours(hf_key)
        if new is None:
            out.unknown.append(key)
        else:
            out.state_dict[encoder_prefix + new] = value
    return out


def convert_to_hf_state_dict(
    state_dict: Mapping[str, torch.Tensor], *, encoder_prefix: str = "bridgetower.", hf_prefix: str = "bridgetower."
) -> ConvertedStateDict:
    """Our state dict -> HF names (encoder under ``hf_prefix``, heads at the top level).

    Our official-ITC head (``itc.*``) has no HF counterpart and is reported in ``unknown``; the
    downstream heads (VQA, SNLI-VE, IRTR) keep their own names (see :func:`save_pretrained`).
    """
    out = ConvertedStateDict({})
    head_inverse = {v: k for k, v in _HF_HEAD_PREFIXES.items()}
    for key, value in state_dict.items():
        if key.startswith(encoder_prefix):
            new = _ours_encoder_key_to_hf(key[len(encoder_prefix) :])
            if new is not None:
                out.state_dict[hf_prefix + new] = value
                continue
        head = _match_prefix(key, head_inverse)
        if head is not None:
            out.state_dict[head[1] + key[len(head[0]) :]] = value
            continue
        out.unknown.append(key)
    return out
