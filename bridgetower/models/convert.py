"""Checkpoint conversion: Hugging Face <-> ours, official ``.ckpt`` -> ours, and our format.

Everything here is a pure function over state dicts driven by explicit rename tables; the
loaders then check shapes, load with ``strict`` semantics and report what did not match
(:class:`LoadReport`, also logged) instead of dropping it silently.

Three formats:

* **ours** (default of ``save_pretrained``): a directory with ``config.json``
  (``{"format": "bridgetower", "task": ..., "config": <BridgeTowerConfig>}``) and
  ``model.safetensors`` holding our parameter names.
* **Hugging Face** ``transformers`` BridgeTower: ``config.json`` (``model_type
  "bridgetower"``) + ``model.safetensors`` (or ``pytorch_model.bin``, read with
  ``torch.load(weights_only=True)``); also a hub name (needs network) or an in-memory
  ``transformers`` model.  Written back by ``save_pretrained(dir, format="hf")``.
* **official** BridgeTower (Lightning ``.ckpt`` whose ``state_dict`` holds the official
  module names, read with ``torch.load(weights_only=True)``, or a ``.safetensors`` state dict),
  with the official ``config.json`` (``bt_config`` ...) beside it or passed in.

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

LayerNorm eps per source: HF configs give 1e-5 (cross layers take the text config's, the
MLM head and bridges the top-level one); the official code uses 1e-12 in the cross layers
and the MLM head.  The config converters carry those into our config.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..layers.bridge import rename_hf_link_tower_key
from ..layers.co_attention import rename_hf_cross_layer_key
from .config import BridgeTowerConfig, FusionConfig, TextConfig, VisionConfig
from .vision import resize_pos_embed

logger = logging.getLogger(__name__)

__all__ = [
    "LazyTensor",
    "LoadReport",
    "config_from_hf",
    "config_from_official",
    "config_to_hf",
    "convert_hf_state_dict",
    "convert_official_state_dict",
    "convert_to_hf_state_dict",
    "load_converted_state_dict",
    "load_official_checkpoint",
    "load_pretrained",
    "save_pretrained",
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
        if _is_unused(bare):
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

    Our official-ITC head (``itc.*``) and the downstream heads have no HF counterpart and are
    reported in ``unknown``.
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


# ---------------------------------------------------------------- loading with a report


@dataclass
class LoadReport:
    """What happened when a checkpoint was loaded into a model.

    ``missing``: model keys the checkpoint did not provide; ``unexpected``: converted keys the
    model does not have; ``mismatched``: ``(key, checkpoint shape, model shape)``;
    ``dropped``: source keys BridgeTower never uses; ``unused_heads``: heads of other tasks;
    ``resized``: position tables resized to the configured image size, and 2-row token-type
    tables extended to the 3 rows of NLVR2 (row 2 copied from row 1).
    """

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple, tuple]] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    unused_heads: list[str] = field(default_factory=list)
    resized: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def __str__(self) -> str:
        parts = []
        for name in ("missing", "unexpected", "mismatched", "unused_heads", "dropped", "resized"):
            v = getattr(self, name)
            if v:
                shown = ", ".join(map(str, v[:12])) + (f", ... ({len(v)} in all)" if len(v) > 12 else "")
                parts.append(f"{name}: {shown}")
        return "; ".join(parts) if parts else "all keys matched"


_HEAD_PREFIXES = (
    "mlm_score.",
    "itm_score.",
    "itc.",
    "contrastive.",
    "vqa_classifier.",
    "nlvr2_classifier.",
    "snli_classifier.",
    "rank_output.",
)


def load_converted_state_dict(
    model: nn.Module,
    converted: ConvertedStateDict | Mapping[str, Any],
    *,
    strict: bool = True,
) -> LoadReport:
    """Check a converted state dict against ``model``, load it and report.

    Heads that the model lacks are ``unused_heads`` (not an error: an ITM+MLM checkpoint
    loads into the ITM model).  Position tables of another grid are resized bicubically.
    With ``strict``, missing, unexpected or shape-mismatched keys raise ``ValueError``
    naming them; otherwise they are logged as a warning and the rest is loaded.
    """
    if not isinstance(converted, ConvertedStateDict):
        converted = ConvertedStateDict(dict(converted))
    report = LoadReport(dropped=list(converted.dropped), unexpected=list(converted.unknown))
    target = model.state_dict()
    to_load: dict[str, torch.Tensor] = {}
    for key, value in converted.state_dict.items():
        if key not in target:
            if key.startswith(_HEAD_PREFIXES):
                report.unused_heads.append(key)
            else:
                report.unexpected.append(key)
            continue
        want = tuple(target[key].shape)
        if tuple(value.shape) != want:
            if key.endswith("visual.positional_embedding") and value.ndim == 2 and value.shape[1] == want[1]:
                g = int(round(math.sqrt(want[0] - 1)))
                value = resize_pos_embed(value.load() if isinstance(value, LazyTensor) else value, (g, g))
                report.resized.append(key)
            elif key.endswith("token_type_embeddings.weight") and tuple(value.shape) == (2, want[1]) and want[0] == 3:
                # NLVR2 starts from a 2-row table: row 2 (second image) is a copy of row 1
                value = value.load() if isinstance(value, LazyTensor) else value
                value = torch.cat([value, value[1:2]], dim=0)
                report.resized.append(key)
            else:
                report.mismatched.append((key, tuple(value.shape), want))
                continue
        to_load[key] = value
    mismatched = {m[0] for m in report.mismatched}
    report.missing = sorted(k for k in target if k not in to_load and k not in mismatched)
    if not report.ok:
        msg = f"checkpoint does not match {type(model).__name__}: {report}"
        if strict:
            raise ValueError(msg)
        logger.warning(msg)
    elif report.unused_heads or report.dropped:
        logger.info("loaded %s; %s", type(model).__name__, report)
    with torch.no_grad():  # in place, tensor by tensor (lazy tensors read straight into place)
        for key, value in to_load.items():
            if isinstance(value, LazyTensor):
                value.read_into(target[key])
            else:
                target[key].copy_(value)
    return report


# ---------------------------------------------------------------- configs


def _get(cfg: Any, name: str, default: Any = None) -> Any:
    if isinstance(cfg, Mapping):
        return cfg.get(name, default)
    return getattr(cfg, name, default)


def config_from_hf(hf_config: Any) -> BridgeTowerConfig:
    """A ``transformers`` ``BridgeTowerConfig`` (object or dict) -> ours.

    HF sizes its cross layers from ``text_config`` (width, heads, FFN, eps, dropout) and
    uses the top-level ``layer_norm_eps`` for ``cross_modal_*_layernorm``, the bridges and
    the MLM head; all of that is carried over so our model computes what HF computes.
    """
    tc = _get(hf_config, "text_config")
    vc = _get(hf_config, "vision_config")
    if tc is None or vc is None:
        raise ValueError("HF BridgeTower config needs text_config and vision_config")
    if not _get(hf_config, "share_cross_modal_transformer_layers", True):
        raise ValueError("share_cross_modal_transformer_layers=False (per-layer projections) is not supported")
    if _get(hf_config, "share_link_tower_layers", False):
        raise ValueError("share_link_tower_layers=True is not supported (it breaks HF's forward too)")
    if _get(vc, "remove_last_layer", False):
        raise ValueError("vision_config.remove_last_layer=True is not supported")
    hidden = _get(hf_config, "hidden_size", 768)
    if _get(tc, "hidden_size") != hidden:
        raise ValueError(
            f"HF BridgeTower needs text width == cross-modal width; got text {_get(tc, 'hidden_size')} "
            f"and hidden_size {hidden}"
        )
    eps = _get(hf_config, "layer_norm_eps", 1e-5)
    vwidth = _get(vc, "hidden_size", 768)
    return BridgeTowerConfig(
        vision=VisionConfig(
            width=vwidth,
            layers=_get(vc, "num_hidden_layers", 12),
            heads=max(1, vwidth // 64),
            patch_size=_get(vc, "patch_size", 16),
            image_size=_get(vc, "image_size", 288),
            mlp_ratio=4.0,
            quick_gelu=True,
            layer_norm_eps=_get(vc, "layer_norm_eps", 1e-5),
            ln_separate=not _get(vc, "share_layernorm", True),
        ),
        text=TextConfig(
            model_type="roberta",
            vocab_size=_get(tc, "vocab_size", 50265),
            hidden_size=_get(tc, "hidden_size", 768),
            num_layers=_get(tc, "num_hidden_layers", 12),
            num_heads=_get(tc, "num_attention_heads", 12),
            intermediate_size=_get(tc, "intermediate_size", 3072),
            hidden_act=_get(tc, "hidden_act", "gelu"),
            max_position_embeddings=_get(tc, "max_position_embeddings", 514),
            type_vocab_size=_get(tc, "type_vocab_size", 1),
            layer_norm_eps=_get(tc, "layer_norm_eps", 1e-5),
            dropout=_get(tc, "hidden_dropout_prob", 0.1),
            attn_dropout=_get(tc, "attention_probs_dropout_prob", 0.1),
            pad_token_id=_get(tc, "pad_token_id", 1),
            bos_token_id=_get(tc, "bos_token_id", 0),
            eos_token_id=_get(tc, "eos_token_id", 2),
        ),
        fusion=FusionConfig(
            hidden_size=hidden,
            num_layers=_get(hf_config, "num_hidden_layers", 6),
            num_heads=_get(tc, "num_attention_heads", 12),
            intermediate_size=_get(tc, "intermediate_size", 4 * hidden),
            hidden_act=_get(tc, "hidden_act", "gelu"),
            dropout=_get(tc, "hidden_dropout_prob", 0.1),
            attn_dropout=_get(tc, "attention_probs_dropout_prob", 0.1),
            bridge=_get(hf_config, "link_tower_type", "add"),
            layer_norm_eps=_get(tc, "layer_norm_eps", 1e-5),
            bridge_layer_norm_eps=eps,
            num_token_types=2,
        ),
        head_layer_norm_eps=eps,
        contrastive_dim=_get(hf_config, "contrastive_hidden_size", None) or 512,
        logit_scale_init=_get(hf_config, "logit_scale_init_value", None) or 2.6592,
    )


def config_to_hf(config: BridgeTowerConfig, *, architectures: list[str] | None = None):
    """Ours -> a ``transformers`` ``BridgeTowerConfig``.

    Raises ``ValueError`` for what HF cannot express (text width != cross width, cross heads or
    FFN != the text tower's, other bridges, non-CLIP vision shapes, 3 token types).  Epsilons
    HF cannot express separately (cross-layer eps must equal the text tower's; MLM-head eps
    must equal the bridges') are logged as a warning: HF will differ slightly.
    """
    from transformers import BridgeTowerConfig as HFConfig

    v, t, f = config.vision, config.text, config.fusion
    problems = []
    if t.model_type != "roberta":
        problems.append(f"text.model_type={t.model_type!r} (HF: roberta)")
    if t.hidden_size != f.hidden_size:
        problems.append(f"text.hidden_size={t.hidden_size} != fusion.hidden_size={f.hidden_size}")
    if f.num_heads != t.num_heads:
        problems.append(f"fusion.num_heads={f.num_heads} != text.num_heads={t.num_heads}")
    if f.ffn_size != t.intermediate_size:
        problems.append(f"fusion FFN {f.ffn_size} != text.intermediate_size={t.intermediate_size}")
    if f.bridge not in ("add", "scaled_add", "interpolate"):
        problems.append(f"fusion.bridge={f.bridge!r} (HF: add, scaled_add, interpolate)")
    if v.num_heads != max(1, v.width // 64) or v.mlp_ratio != 4.0 or not v.quick_gelu:
        problems.append("vision tower must have heads = width // 64, mlp_ratio 4 and QuickGELU")
    if f.num_token_types != 2:
        problems.append(f"fusion.num_token_types={f.num_token_types} (HF: 2)")
    if problems:
        raise ValueError("cannot express in the HF BridgeTower format: " + "; ".join(problems))
    if f.layer_norm_eps != t.layer_norm_eps or config.head_layer_norm_eps != f.bridge_layer_norm_eps:
        logger.warning(
            "HF BridgeTower uses text.layer_norm_eps (%g) in the cross layers and one eps (%g) for "
            "the bridges and the MLM head; this model has cross-layer eps %g and MLM-head eps %g, "
            "so HF outputs will differ slightly",
            t.layer_norm_eps,
            f.bridge_layer_norm_eps,
            f.layer_norm_eps,
            config.head_layer_norm_eps,
        )
    return HFConfig(
        hidden_size=f.hidden_size,
        num_hidden_layers=f.num_layers,
        num_attention_heads=f.num_heads,
        hidden_act=f.hidden_act,
        layer_norm_eps=f.bridge_layer_norm_eps,
        link_tower_type=f.bridge,
        share_link_tower_layers=False,
        share_cross_modal_transformer_layers=True,
        tie_word_embeddings=False,
        contrastive_hidden_size=config.contrastive_dim,
        logit_scale_init_value=config.logit_scale_init,
        architectures=architectures,
        text_config=dict(
            vocab_size=t.vocab_size,
            hidden_size=t.hidden_size,
            num_hidden_layers=t.num_layers,
            num_attention_heads=t.num_heads,
            intermediate_size=t.intermediate_size,
            hidden_act=t.hidden_act,
            hidden_dropout_prob=t.dropout,
            attention_probs_dropout_prob=t.attn_dropout,
            max_position_embeddings=t.max_position_embeddings,
            type_vocab_size=t.type_vocab_size,
            layer_norm_eps=t.layer_norm_eps,
            pad_token_id=t.pad_token_id,
            bos_token_id=t.bos_token_id,
            eos_token_id=t.eos_token_id,
        ),
        vision_config=dict(
            hidden_size=v.width,
            num_hidden_layers=v.layers,
            patch_size=v.patch_size,
            image_size=v.image_size,
            layer_norm_eps=v.layer_norm_eps,
            share_layernorm=not v.ln_separate,
        ),
    )


def config_from_official(
    bt_config: Mapping[str, Any],
    state_dict: Mapping[str, torch.Tensor],
    *,
    roberta_config: Mapping[str, Any] | None = None,
    clip_args: Mapping[str, Any] | None = None,
) -> BridgeTowerConfig:
    """Our config for an official checkpoint.

    Tower sizes are read from the state dict's shapes (the official config names the towers,
    e.g. ``ViT-B/16`` and ``roberta-base``, instead of giving their sizes); head counts from
    ``roberta_config`` / ``clip_args`` when given (else ``width // 64``).  Cross layers and
    the MLM head use eps 1e-12 as the official code does.
    """
    sd = state_dict
    conv = sd["vit_model.visual.conv1.weight"]  # (W, 3, p, p)
    vwidth, patch = conv.shape[0], conv.shape[-1]
    vlayers = 1 + max(
        int(k.split(".")[4]) for k in sd if k.startswith("vit_model.visual.transformer.resblocks.")
    )
    image_size = int(bt_config.get("image_size", round(math.sqrt(sd["vit_model.visual.positional_embedding"].shape[0] - 1)) * patch))
    tlayers = 1 + max(int(k.split(".")[3]) for k in sd if k.startswith("text_transformer.encoder.layer."))
    vocab, twidth = sd["text_transformer.embeddings.word_embeddings.weight"].shape
    tpos = sd["text_transformer.embeddings.position_embeddings.weight"].shape[0]
    ttypes = sd["text_transformer.embeddings.token_type_embeddings.weight"].shape[0]
    tffn = sd["text_transformer.encoder.layer.0.intermediate.dense.weight"].shape[0]
    rc = dict(roberta_config or {})
    hidden = int(bt_config["hidden_size"])
    nlayers = int(bt_config["num_layers"])
    loss_names = bt_config.get("loss_names", {}) or {}
    has_itc = "itc_text_head.fc.weight" in sd or any(
        loss_names.get(k, 0) for k in ("itc", "irtr_itm_itc", "itm_itc")
    )
    vheads = (clip_args or {}).get("vision_width", vwidth) // 64
    drop = float(bt_config.get("drop_rate", 0.1))
    return BridgeTowerConfig(
        vision=VisionConfig(
            width=vwidth,
            layers=vlayers,
            heads=max(1, vheads),
            patch_size=patch,
            image_size=image_size,
            quick_gelu=True,
            layer_norm_eps=1e-5,
            ln_separate=not bool(bt_config.get("vit_layernorm_shared", True)),
        ),
        text=TextConfig(
            model_type="roberta",
            vocab_size=vocab,
            hidden_size=twidth,
            num_layers=tlayers,
            num_heads=int(rc.get("num_attention_heads", max(1, twidth // 64))),
            intermediate_size=tffn,
            hidden_act=rc.get("hidden_act", "gelu"),
            max_position_embeddings=tpos,
            type_vocab_size=ttypes,
            layer_norm_eps=float(rc.get("layer_norm_eps", 1e-5)),
            dropout=float(rc.get("hidden_dropout_prob", 0.1)),
            attn_dropout=float(rc.get("attention_probs_dropout_prob", 0.1)),
            pad_token_id=int(rc.get("pad_token_id", 1)),
            bos_token_id=int(rc.get("bos_token_id", 0)),
            eos_token_id=int(rc.get("eos_token_id", 2)),
        ),
        fusion=FusionConfig(
            hidden_size=hidden,
            num_layers=nlayers,
            num_heads=int(bt_config["num_heads"]),
            intermediate_size=int(hidden * float(bt_config.get("mlp_ratio", 4))),
            dropout=drop,
            attn_dropout=drop,
            bridge="add",
            layer_norm_eps=1e-12,
            bridge_layer_norm_eps=1e-5,
            num_token_types=sd["token_type_embeddings.weight"].shape[0],
        ),
        head_layer_norm_eps=1e-12,
        itc_dim=int(bt_config.get("contrastive_hidden_size", 256)) if has_itc else 0,
        itc_temperature=float(bt_config.get("temperature", 0.07)),
        vqa_num_labels=int(bt_config.get("vqav2_label_size", 3129)),
    )


# ---------------------------------------------------------------- reading sources


_SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}


class LazyTensor:
    """One tensor of a ``.safetensors`` file, read on demand with plain file reads.

    Reading straight into the destination parameter (:meth:`read_into`) keeps the peak memory
    of loading at one copy of the weights (no state-dict copy, no memory-mapped pages).
    """

    def __init__(self, path: Path, dtype: torch.dtype, shape: tuple[int, ...], start: int, end: int):
        self.path, self.dtype, self.shape = path, dtype, torch.Size(shape)
        self.start, self.end = start, end

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def read_into(self, dst: torch.Tensor) -> None:
        if dst.dtype != self.dtype or not dst.is_contiguous() or dst.device.type != "cpu":
            dst.copy_(self.load())
            return
        with open(self.path, "rb") as f:
            f.seek(self.start)
            buf = dst.view(-1).view(torch.uint8).numpy()
            if f.readinto(buf) != self.end - self.start:
                raise ValueError(f"{self.path}: truncated tensor data")

    def load(self) -> torch.Tensor:
        t = torch.empty(self.shape, dtype=self.dtype)
        self.read_into(t)
        return t

    def __repr__(self) -> str:
        return f"LazyTensor({tuple(self.shape)}, {self.dtype})"


def _lazy_safetensors(path: Path) -> dict[str, LazyTensor]:
    import struct

    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    out = {}
    for key, info in header.items():
        if key == "__metadata__":
            continue
        if info["dtype"] not in _SAFETENSORS_DTYPES:
            raise ValueError(f"{path}: unsupported dtype {info['dtype']} for {key}")
        s, e = info["data_offsets"]
        out[key] = LazyTensor(path, _SAFETENSORS_DTYPES[info["dtype"]], tuple(info["shape"]), 8 + n + s, 8 + n + e)
    return out


def _read_state_dict(path: Path, *, lazy: bool = False) -> dict[str, Any]:
    if path.suffix == ".safetensors":
        if lazy:
            return _lazy_safetensors(path)
        from safetensors.torch import load_file

        return load_file(str(path))
    obj = torch.load(str(path), map_location="cpu", weights_only=True)
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        return dict(obj["state_dict"])
    if isinstance(obj, Mapping):
        return dict(obj)
    raise ValueError(f"{path}: not a state dict or Lightning checkpoint")


def _hf_weights_in(directory: Path) -> dict[str, torch.Tensor]:
    st = directory / "model.safetensors"
    if st.exists():
        return _read_state_dict(st, lazy=True)
    shards = sorted(directory.glob("model-*.safetensors"))
    if shards:
        out: dict[str, Any] = {}
        for s in shards:
            out.update(_read_state_dict(s, lazy=True))
        return out
    binf = directory / "pytorch_model.bin"
    if binf.exists():
        return _read_state_dict(binf)
    raise FileNotFoundError(f"{directory}: no model.safetensors or pytorch_model.bin")


def _task_name(cls: type) -> str:
    from .tasks import TASK_MODELS

    for name, c in TASK_MODELS.items():
        if c is cls:
            return name
    return "base"


def _encoder_prefix(cls: type) -> str:
    from .bridgetower import BridgeTowerModel

    return "" if issubclass(cls, BridgeTowerModel) else "bridgetower."


def load_official_checkpoint(
    cls: type,
    path: str | Path,
    *,
    config_json: str | Path | Mapping[str, Any] | None = None,
    strict: bool = True,
    **overrides: Any,
):
    """Build ``cls`` for an official checkpoint (``.ckpt`` or ``.safetensors`` state dict).

    The config comes from ``config_json`` (a path or dict with ``bt_config`` and optionally
    ``text_encoder_roberta_config`` / ``clip_model_CLIP_args``), else ``config.json`` beside
    the checkpoint, else the ``.ckpt``'s ``hyper_parameters.config``.
    """
    path = Path(path)
    sd = _read_state_dict(path)
    meta: dict[str, Any] = {}
    if isinstance(config_json, Mapping):
        meta = dict(config_json)
    elif config_json is not None:
        meta = json.loads(Path(config_json).read_text())
    elif (path.parent / CONFIG_NAME).exists():
        meta = json.loads((path.parent / CONFIG_NAME).read_text())
    if "bt_config" not in meta and path.suffix != ".safetensors":
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
        hp = obj.get("hyper_parameters", {}) if isinstance(obj, Mapping) else {}
        if "config" in hp:
            meta = {"bt_config": hp["config"]}
    if "bt_config" not in meta:
        raise ValueError(f"{path}: no official config found (pass config_json= with a 'bt_config' entry)")
    config = config_from_official(
        meta["bt_config"],
        sd,
        roberta_config=meta.get("text_encoder_roberta_config"),
        clip_args=meta.get("clip_model_CLIP_args"),
    )
    if overrides:
        config = config.replace(**overrides)
    model = cls(config)
    report = load_converted_state_dict(
        model, convert_official_state_dict(sd, encoder_prefix=_encoder_prefix(cls)), strict=strict
    )
    model.load_report = report
    return model


def load_pretrained(cls: type, source: Any, *, strict: bool = True, config_json: Any = None, **overrides: Any):
    """Build ``cls`` and load ``source`` (see :meth:`from_pretrained` of the models).

    ``source``: our directory; a HF directory, hub name or in-memory ``transformers``
    BridgeTower model; an official ``.ckpt`` / ``.safetensors`` state dict (or a directory
    holding one ``.ckpt``).  ``overrides`` apply to the derived config (e.g. run-time switches
    such as ``attn_backend``).  The returned model has ``load_report`` (:class:`LoadReport`).
    """
    prefix = _encoder_prefix(cls)
    if isinstance(source, nn.Module):
        hf_cfg = getattr(source, "config", None)
        if _get(hf_cfg, "model_type") != "bridgetower":
            raise TypeError(
                f"expected a transformers BridgeTower model, got {type(source).__name__}"
            )
        config = config_from_hf(hf_cfg)
        sd = source.state_dict()
        return _build_and_load(cls, config, convert_hf_state_dict(sd, encoder_prefix=prefix), strict, overrides)
    if not isinstance(source, (str, Path)):
        raise TypeError(f"pretrained source must be a path, hub name or model, got {type(source).__name__}")
    path = Path(source)
    if path.is_file():
        return load_official_checkpoint(cls, path, config_json=config_json, strict=strict, **overrides)
    if path.is_dir():
        cfg_file = path / CONFIG_NAME
        meta = json.loads(cfg_file.read_text()) if cfg_file.exists() else {}
        if meta.get("format") == FORMAT_NAME:
            config = BridgeTowerConfig.from_dict(meta["config"])
            sd = _read_state_dict(path / WEIGHTS_NAME, lazy=True)
            return _build_and_load(cls, config, ConvertedStateDict(_retarget(sd, meta.get("task"), cls)), strict, overrides)
        if meta.get("model_type") == "bridgetower":
            from transformers import BridgeTowerConfig as HFConfig

            config = config_from_hf(HFConfig.from_dict(meta))
            sd = _hf_weights_in(path)
            return _build_and_load(cls, config, convert_hf_state_dict(sd, encoder_prefix=prefix), strict, overrides)
        ckpts = sorted(path.glob("*.ckpt"))
        if len(ckpts) == 1:
            return load_official_checkpoint(cls, ckpts[0], config_json=config_json, strict=strict, **overrides)
        raise ValueError(f"{path}: not a bridgetower, HF BridgeTower or official checkpoint directory")
    if str(source).startswith(("/", ".", "~")) or str(source).count("/") != 1:
        raise FileNotFoundError(f"no checkpoint at {str(source)!r} (not a file, directory or hub name 'org/name')")
    # a hub name: needs network (or a filled local cache)
    import huggingface_hub
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError
    from transformers import BridgeTowerConfig as HFConfig

    name = str(source)
    try:
        hf_config = HFConfig.from_pretrained(name)
        try:
            weights = Path(hf_hub_download(name, "model.safetensors"))
        except EntryNotFoundError as err:  # older repos ship only the pickle
            if isinstance(err, LocalEntryNotFoundError):
                raise
            weights = Path(hf_hub_download(name, "pytorch_model.bin"))
    except (OSError, ValueError) as err:  # offline and not cached, unknown repo, malformed id
        offline = (
            " (HF_HUB_OFFLINE is set and it is not cached)"
            if huggingface_hub.constants.HF_HUB_OFFLINE
            else ""
        )
        raise OSError(
            f"{name!r} is not a local file or directory, and loading it as a Hugging Face "
            f"Hub id failed{offline}: {err}"
        ) from err
    config = config_from_hf(hf_config)
    sd = _read_state_dict(weights)
    return _build_and_load(cls, config, convert_hf_state_dict(sd, encoder_prefix=prefix), strict, overrides)


def _retarget(sd: Mapping[str, torch.Tensor], saved_task: str | None, cls: type) -> dict[str, torch.Tensor]:
    """Our own checkpoint saved from one task model, loaded into another: move the encoder prefix."""
    from .tasks import TASK_MODELS

    saved_cls = TASK_MODELS.get(saved_task or "base", cls)
    src, dst = _encoder_prefix(saved_cls), _encoder_prefix(cls)
    if src == dst:
        return dict(sd)
    out = {}
    for k, v in sd.items():
        if src and k.startswith(src):
            out[dst + k[len(src) :]] = v
        elif not src and not k.startswith(_HEAD_PREFIXES):
            out[dst + k] = v
        else:
            out[k] = v
    return out


def _build_and_load(cls, config, converted, strict, overrides):
    if overrides:
        config = config.replace(**overrides)
    model = cls(config)
    model.load_report = load_converted_state_dict(model, converted, strict=strict)
    return model


# ---------------------------------------------------------------- saving


_HF_ARCHITECTURES = {
    "base": ["BridgeTowerModel"],
    "itm": ["BridgeTowerForImageAndTextRetrieval"],
    "mlm": ["BridgeTowerForMaskedLM"],
    "contrastive": ["BridgeTowerForContrastiveLearning"],
    "pretraining": ["BridgeTowerForMaskedLM", "BridgeTowerForImageAndTextRetrieval"],
}


def save_pretrained(model: nn.Module, directory: str | Path, *, format: str = FORMAT_NAME) -> None:
    """Write ``model`` to ``directory`` in our format (default) or ``format="hf"``.

    The HF export writes only what ``transformers`` has: the encoder and the MLM, ITM and HF
    contrastive heads; the official ITC head of the pre-training model is left out (logged),
    models with downstream classifiers raise.  The text tower's pooler (unused by BridgeTower) is written as
    zeros so ``transformers`` loads without missing keys.
    """
    from safetensors.torch import save_file

    if format not in (FORMAT_NAME, "hf"):
        raise ValueError(f"format must be {FORMAT_NAME!r} or 'hf', got {format!r}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config: BridgeTowerConfig = model.config
    task = _task_name(type(model))
    sd = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    if format == FORMAT_NAME:
        save_file(sd, str(directory / WEIGHTS_NAME), metadata={"format": "pt"})
        meta = {"format": FORMAT_NAME, "task": task, "config": config.to_dict()}
        (directory / CONFIG_NAME).write_text(json.dumps(meta, indent=2) + "\n")
        return
    if task not in _HF_ARCHITECTURES:
        raise ValueError(f"{type(model).__name__} has no transformers counterpart; save it in our format")
    prefix = _encoder_prefix(type(model))
    converted = convert_to_hf_state_dict(sd, encoder_prefix=prefix, hf_prefix=prefix)
    itc_only = [k for k in converted.unknown if k.startswith("itc.")]
    if itc_only:
        logger.warning("HF format has no official ITC head; not exported: %s", itc_only)
    rest = [k for k in converted.unknown if not k.startswith("itc.")]
    if rest:
        raise ValueError(f"no HF names for: {rest}")
    out = converted.state_dict
    h = config.text.hidden_size
    ref = next(iter(out.values()))
    out[f"{prefix}text_model.pooler.dense.weight"] = torch.zeros(h, h, dtype=ref.dtype)
    out[f"{prefix}text_model.pooler.dense.bias"] = torch.zeros(h, dtype=ref.dtype)
    hf_config = config_to_hf(config, architectures=_HF_ARCHITECTURES[task])
    hf_config.save_pretrained(str(directory))
    save_file(out, str(directory / WEIGHTS_NAME), metadata={"format": "pt"})
