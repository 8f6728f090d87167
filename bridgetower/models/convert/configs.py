"""Configuration conversion: a ``transformers`` BridgeTower config <-> ours, and the official
config (plus the checkpoint's tensor shapes) -> ours.

The text tower's fields map through the one table of :data:`~bridgetower.models.config.TEXT_FIELDS_TO_HF`
(:meth:`TextConfig.from_transformers` / :meth:`TextConfig.to_transformers_kwargs`).

LayerNorm eps per source: HF configs give 1e-5 (cross layers take the text config's, the
MLM head and bridges the top-level one); the official code uses 1e-12 in the cross layers
and the MLM head.  The converters carry those into our config.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

import torch

from ..config import BridgeTowerConfig, FusionConfig, TextConfig, VisionConfig

logger = logging.getLogger(__name__)

__all__ = ["config_from_hf", "config_from_official", "config_to_hf", "hf_field"]


def hf_field(cfg: Any, name: str, default: Any = None) -> Any:
    if isinstance(cfg, Mapping):
        return cfg.get(name, default)
    return getattr(cfg, name, default)


def config_from_hf(hf_config: Any) -> BridgeTowerConfig:
    """A ``transformers`` ``BridgeTowerConfig`` (object or dict) -> ours.

    HF sizes its cross layers from ``text_config`` (width, heads, FFN, eps, dropout) and
    uses the top-level ``layer_norm_eps`` for ``cross_modal_*_layernorm``, the bridges and
    the MLM head; all of that is carried over so our model computes what HF computes.  A
    vision ``share_layernorm=False`` becomes ``ln_separate=False``: HF's forward applies
    ``ln_post`` to every fusion input whatever that flag says (the ``ln_separate`` weights are
    reported as dropped).
    """
    tc = hf_field(hf_config, "text_config")
    vc = hf_field(hf_config, "vision_config")
    if tc is None or vc is None:
        raise ValueError("HF BridgeTower config needs text_config and vision_config")
    if not hf_field(hf_config, "share_cross_modal_transformer_layers", True):
        raise ValueError("share_cross_modal_transformer_layers=False (per-layer projections) is not supported")
    if hf_field(hf_config, "share_link_tower_layers", False):
        raise ValueError("share_link_tower_layers=True is not supported (it breaks HF's forward too)")
    if hf_field(vc, "remove_last_layer", False):
        raise ValueError("vision_config.remove_last_layer=True is not supported")
    hidden = hf_field(hf_config, "hidden_size", 768)
    if hf_field(tc, "hidden_size") != hidden:
        raise ValueError(
            f"HF BridgeTower needs text width == cross-modal width; got text {hf_field(tc, 'hidden_size')} "
            f"and hidden_size {hidden}"
        )
    eps = hf_field(hf_config, "layer_norm_eps", 1e-5)
    vwidth = hf_field(vc, "hidden_size", 768)
    return BridgeTowerConfig(
        vision=VisionConfig(
            width=vwidth,
            layers=hf_field(vc, "num_hidden_layers", 12),
            heads=max(1, vwidth // 64),
            patch_size=hf_field(vc, "patch_size", 16),
            image_size=hf_field(vc, "image_size", 288),
            mlp_ratio=4.0,
            quick_gelu=True,
            layer_norm_eps=hf_field(vc, "layer_norm_eps", 1e-5),
            # transformers builds ln_separate for share_layernorm=False but its forward normalises
            # every fusion input with ln_post: so do we (the ln_separate weights are dropped)
            ln_separate=False,
        ),
        text=TextConfig.from_transformers(tc, model_type="roberta"),
        fusion=FusionConfig(
            hidden_size=hidden,
            num_layers=hf_field(hf_config, "num_hidden_layers", 6),
            num_heads=hf_field(tc, "num_attention_heads", 12),
            intermediate_size=hf_field(tc, "intermediate_size", 4 * hidden),
            hidden_act=hf_field(tc, "hidden_act", "gelu"),
            dropout=hf_field(tc, "hidden_dropout_prob", 0.1),
            attn_dropout=hf_field(tc, "attention_probs_dropout_prob", 0.1),
            bridge=hf_field(hf_config, "link_tower_type", "add"),
            layer_norm_eps=hf_field(tc, "layer_norm_eps", 1e-5),
            bridge_layer_norm_eps=eps,
            num_token_types=2,
        ),
        head_layer_norm_eps=eps,
        contrastive_dim=hf_field(hf_config, "contrastive_hidden_size", None) or 512,
        logit_scale_init=hf_field(hf_config, "logit_scale_init_value", None) or 2.6592,
        # written by our HF export of the downstream models (transformers keeps unknown fields)
        vqa_num_labels=hf_field(hf_config, "vqa_num_labels", None) or 3129,
        snli_num_labels=hf_field(hf_config, "snli_num_labels", None) or 3,
    )


def config_to_hf(
    config: BridgeTowerConfig, *, architectures: list[str] | None = None, tie_word_embeddings: bool = False
):
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
    if v.ln_separate:
        problems.append("vision.ln_separate=True (HF's forward normalises every fusion input with ln_post)")
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
        tie_word_embeddings=tie_word_embeddings,
        contrastive_hidden_size=config.contrastive_dim,
        logit_scale_init_value=config.logit_scale_init,
        architectures=architectures,
        text_config=t.to_transformers_kwargs(),
        vision_config=dict(
            hidden_size=v.width,
            num_hidden_layers=v.layers,
            patch_size=v.patch_size,
            image_size=v.image_size,
            layer_norm_eps=v.layer_norm_eps,
            share_layernorm=True,
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
        # sizes from the tensors; the rest from the RoBERTa config when given
        text=TextConfig.from_transformers(
            rc,
            model_type="roberta",
            vocab_size=vocab,
            hidden_size=twidth,
            num_layers=tlayers,
            num_heads=int(rc.get("num_attention_heads", max(1, twidth // 64))),
            intermediate_size=tffn,
            max_position_embeddings=tpos,
            type_vocab_size=ttypes,
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
