"""Configuration dataclasses of BridgeTower models.

A model is described by four small frozen dataclasses composed into one:

* :class:`VisionConfig` -- the open_clip ViT visual tower,
* :class:`TextConfig` -- the ``transformers`` text encoder (RoBERTa for the published sizes),
* :class:`FusionConfig` -- the cross-modal part (projections, bridges, co-attention layers),
* :class:`BridgeTowerConfig` -- the three above plus the task-head sizes and the run-time
  switches (attention backend, gradient checkpointing).

They describe the *architecture* only; where the weights come from is the ``pretrained``
argument of :func:`bridgetower.models.create_model` or the checkpoint loaders.

Each named variant is one JSON file in ``models/configs/`` and loads with
:meth:`BridgeTowerConfig.from_dict` (= ``BridgeTowerConfig(**json)`` plus a key check):
an unknown key fails at once with a ``ValueError`` naming the closest valid keys.

LayerNorm epsilons are configuration, because the two checkpoint sources differ: the
official BridgeTower code uses eps 1e-12 in the cross-modal layers and in the MLM head's
transform, the Hugging Face port 1e-5 everywhere.  ``FusionConfig.layer_norm_eps`` (cross
layers), ``FusionConfig.bridge_layer_norm_eps`` (``cross_modal_*_layernorm`` and the bridges)
and ``BridgeTowerConfig.head_layer_norm_eps`` (MLM transform) carry them; the converters set
them per source.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import warnings
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

__all__ = [
    "BridgeTowerConfig",
    "FusionConfig",
    "TextConfig",
    "TEXT_FIELDS_TO_HF",
    "VisionConfig",
    "apply_overrides",
]


def _check_keys(cls: type, data: dict[str, Any]) -> None:
    """Raise ``ValueError`` for keys of ``data`` that are not fields of ``cls`` (with hints)."""
    if not isinstance(data, dict):
        raise TypeError(f"{cls.__name__} expects a dict, got {type(data).__name__}")
    valid = [f.name for f in fields(cls)]
    unknown = [k for k in data if k not in valid]
    if unknown:
        hints = []
        for k in unknown:
            close = difflib.get_close_matches(k, valid, n=3, cutoff=0.5)
            hints.append(f"{k!r}" + (f" (did you mean {', '.join(map(repr, close))}?)" if close else ""))
        raise ValueError(
            f"unknown {cls.__name__} key(s): {'; '.join(hints)}. Valid keys: {', '.join(valid)}"
        )


class _ConfigMixin:
    """``from_dict`` / ``to_dict`` for the frozen config dataclasses."""

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        """Build from a plain dict (e.g. parsed JSON); unknown keys raise ``ValueError``."""
        _check_keys(cls, data)
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[arg-type]


@dataclass(frozen=True)
class VisionConfig(_ConfigMixin):
    """An open_clip ``VisionTransformer`` (CLIP ViT) used as the vision tower.

    ``heads`` defaults to ``width // 64`` (CLIP's rule).  ``quick_gelu`` selects the
    OpenAI-CLIP activation (ViT-B/16 and ViT-L/14 of the published models).  ``ln_separate``
    replaces the shared ``ln_post`` applied to every tapped layer by one LayerNorm per layer.
    """

    width: int = 768
    layers: int = 12
    heads: int | None = None
    patch_size: int = 16
    image_size: int = 288
    mlp_ratio: float = 4.0
    quick_gelu: bool = True
    layer_norm_eps: float = 1e-5
    ln_separate: bool = False

    def __post_init__(self):
        for name in ("width", "layers", "patch_size", "image_size"):
            v = getattr(self, name)
            if not isinstance(v, int) or v <= 0:
                raise ValueError(f"VisionConfig.{name} must be a positive int, got {v!r}")
        if self.width % self.num_heads:
            raise ValueError(
                f"VisionConfig.width={self.width} is not divisible by heads={self.num_heads}"
            )
        if self.image_size % self.patch_size:
            raise ValueError(
                f"VisionConfig.image_size={self.image_size} is not a multiple of "
                f"patch_size={self.patch_size}"
            )

    @property
    def num_heads(self) -> int:
        return self.heads if self.heads is not None else max(1, self.width // 64)

    @property
    def num_tokens(self) -> int:
        """Tokens per image at ``image_size``: the patches plus CLS."""
        return (self.image_size // self.patch_size) ** 2 + 1

    @classmethod
    def from_open_clip(cls, model_name: str, **kwargs: Any) -> VisionConfig:
        """Sizes of an open_clip model config (e.g. ``"ViT-B-16"``), with ``kwargs`` on top.

        Only plain ViT towers are supported (width, layers, patch size, mlp ratio); a
        ``-quickgelu`` name or ``quick_gelu: true`` in the open_clip config sets
        ``quick_gelu``.
        """
        import open_clip

        cfg = open_clip.get_model_config(model_name)
        if cfg is None:
            close = difflib.get_close_matches(model_name, open_clip.list_models(), n=5)
            raise ValueError(f"unknown open_clip model {model_name!r}; close matches: {close}")
        vc = cfg["vision_cfg"]
        if not isinstance(vc.get("layers"), int) or "timm_model_name" in vc and vc["timm_model_name"]:
            raise ValueError(f"open_clip model {model_name!r} is not a plain ViT visual tower")
        values = dict(
            width=vc["width"],
            layers=vc["layers"],
            patch_size=vc["patch_size"],
            image_size=vc.get("image_size", 224),
            mlp_ratio=vc.get("mlp_ratio", 4.0),
            quick_gelu=bool(cfg.get("quick_gelu", False)) or "quickgelu" in model_name,
        )
        if vc.get("head_width"):
            values["heads"] = vc["width"] // vc["head_width"]
        values.update(kwargs)
        return cls(**values)


#: :class:`TextConfig` field -> the ``transformers`` (BERT/RoBERTa) config field: the one
#: mapping used by :meth:`TextConfig.to_transformers`, :meth:`TextConfig.from_transformers`
#: and the checkpoint converters.
TEXT_FIELDS_TO_HF: dict[str, str] = {
    "vocab_size": "vocab_size",
    "hidden_size": "hidden_size",
    "num_layers": "num_hidden_layers",
    "num_heads": "num_attention_heads",
    "intermediate_size": "intermediate_size",
    "hidden_act": "hidden_act",
    "max_position_embeddings": "max_position_embeddings",
    "type_vocab_size": "type_vocab_size",
    "layer_norm_eps": "layer_norm_eps",
    "dropout": "hidden_dropout_prob",
    "attn_dropout": "attention_probs_dropout_prob",
    "pad_token_id": "pad_token_id",
    "bos_token_id": "bos_token_id",
    "eos_token_id": "eos_token_id",
}

# Keys written by earlier versions that no longer exist; dropped on load, with a warning.
_LEGACY_TEXT_KEYS = {
    "attn_implementation": "the text tower's attention now follows the model's attn_backend",
}


@dataclass(frozen=True)
class TextConfig(_ConfigMixin):
    """A ``transformers`` encoder built from its config (``AutoModel.from_config``).

    The named fields follow the BERT/RoBERTa config names (see :data:`TEXT_FIELDS_TO_HF`);
    ``extra`` is passed through to the ``transformers`` config unchanged (for other encoder
    families).  Attention is not configured here: the text tower runs the model's one
    attention backend (:attr:`BridgeTowerConfig.attn_backend`).
    """

    model_type: str = "roberta"
    vocab_size: int = 50265
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    max_position_embeddings: int = 514
    type_vocab_size: int = 1
    layer_norm_eps: float = 1e-5
    dropout: float = 0.1
    attn_dropout: float = 0.1
    pad_token_id: int = 1
    bos_token_id: int = 0
    eos_token_id: int = 2
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"TextConfig.hidden_size={self.hidden_size} is not divisible by "
                f"num_heads={self.num_heads}"
            )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TextConfig:
        if isinstance(data, dict) and any(k in data for k in _LEGACY_TEXT_KEYS):
            data = dict(data)
            for key, why in _LEGACY_TEXT_KEYS.items():
                if key in data:
                    warnings.warn(f"TextConfig: ignoring the old key {key!r} ({why})", stacklevel=3)
                    del data[key]
        return super().from_dict(data)

    def to_transformers_kwargs(self) -> dict[str, Any]:
        """The ``transformers`` config fields of this encoder (``extra`` included)."""
        kwargs = {hf: getattr(self, ours) for ours, hf in TEXT_FIELDS_TO_HF.items()}
        kwargs.update(self.extra)
        return kwargs

    def to_transformers(self):
        """The ``transformers`` ``PretrainedConfig`` of this encoder."""
        from transformers import AutoConfig

        return AutoConfig.for_model(self.model_type, **self.to_transformers_kwargs())

    @classmethod
    def from_transformers(cls, hf_config: Any, **overrides: Any) -> TextConfig:
        """From a ``transformers`` config object or dict (missing fields keep our defaults);
        ``overrides`` win."""
        def get(name):
            return hf_config.get(name) if isinstance(hf_config, dict) else getattr(hf_config, name, None)

        values = {ours: get(hf) for ours, hf in TEXT_FIELDS_TO_HF.items() if get(hf) is not None}
        model_type = get("model_type")
        if model_type:
            values["model_type"] = model_type
        values.update(overrides)
        return cls(**values)


@dataclass(frozen=True)
class FusionConfig(_ConfigMixin):
    """The cross-modal encoder: ``num_layers`` co-attention layers per stream and the bridges.

    ``intermediate_size`` defaults to ``4 * hidden_size``.  ``layer_norm_eps`` is the eps of
    the LayerNorms inside the co-attention layers (official 1e-12, HF 1e-5);
    ``bridge_layer_norm_eps`` of ``cross_modal_{text,image}_layernorm`` and of the bridges
    (1e-5 in both sources).  ``num_token_types`` is 2, or 3 for NLVR2 (two images).
    """

    hidden_size: int = 768
    num_layers: int = 6
    num_heads: int = 12
    intermediate_size: int | None = None
    hidden_act: str = "gelu"
    dropout: float = 0.1
    attn_dropout: float = 0.1
    bridge: str | tuple[str, ...] = "add"
    layer_norm_eps: float = 1e-12
    bridge_layer_norm_eps: float = 1e-5
    num_token_types: int = 2

    def __post_init__(self):
        if self.num_layers < 1:
            raise ValueError(f"FusionConfig.num_layers must be >= 1, got {self.num_layers}")
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"FusionConfig.hidden_size={self.hidden_size} is not divisible by "
                f"num_heads={self.num_heads}"
            )
        if not isinstance(self.bridge, str):  # one name per bridge (a JSON list)
            object.__setattr__(self, "bridge", tuple(self.bridge))
            if len(self.bridge) != self.num_layers - 1:
                raise ValueError(
                    f"FusionConfig.bridge: a list needs num_layers - 1 = {self.num_layers - 1} names, "
                    f"got {len(self.bridge)}"
                )
        if self.num_token_types not in (2, 3):
            raise ValueError(f"FusionConfig.num_token_types must be 2 or 3, got {self.num_token_types}")

    @property
    def ffn_size(self) -> int:
        return self.intermediate_size if self.intermediate_size is not None else 4 * self.hidden_size

    @property
    def mlp_ratio(self) -> float:
        return self.ffn_size / self.hidden_size


_SUB_CONFIGS = {"vision": VisionConfig, "text": TextConfig, "fusion": FusionConfig}


@dataclass(frozen=True)
class BridgeTowerConfig(_ConfigMixin):
    """A whole BridgeTower model: towers, fusion, task-head sizes and run-time switches.

    ``head_layer_norm_eps`` is the eps of the MLM head's transform LayerNorm (official 1e-12,
    HF 1e-5).  ``itc_dim``/``itc_temperature`` are the official ITC head (256, 0.07;
    ``itc_dim=0``: no ITC head);
    ``contrastive_dim``/``logit_scale_init`` the HF contrastive heads (512, 2.6592).
    ``attn_backend`` (``None`` = automatic) is the one attention backend of the whole model:
    the fusion layers, the vision tower and the text tower all use it;
    ``gradient_checkpointing`` recomputes every tower and cross layer in the backward pass.
    """

    vision: VisionConfig = field(default_factory=VisionConfig)
    text: TextConfig = field(default_factory=TextConfig)
    fusion: FusionConfig = field(default_factory=FusionConfig)
    head_layer_norm_eps: float = 1e-12
    itc_dim: int = 256
    itc_temperature: float = 0.07
    contrastive_dim: int = 512
    logit_scale_init: float = 2.6592
    vqa_num_labels: int = 3129
    snli_num_labels: int = 3
    attn_backend: str | None = None
    gradient_checkpointing: bool = False

    def __post_init__(self):
        for name, cls in _SUB_CONFIGS.items():
            value = getattr(self, name)
            if isinstance(value, dict):
                object.__setattr__(self, name, cls.from_dict(value))
            elif not isinstance(value, cls):
                raise TypeError(
                    f"BridgeTowerConfig.{name} must be a {cls.__name__} or dict, got "
                    f"{type(value).__name__}"
                )
        if self.itc_dim < 0 or self.contrastive_dim <= 0:
            raise ValueError(
                f"itc_dim must be >= 0 (0 = no ITC head) and contrastive_dim > 0, got "
                f"{self.itc_dim}, {self.contrastive_dim}"
            )
        if self.fusion.num_layers > min(self.text.num_layers, self.vision.layers):
            raise ValueError(
                f"fusion.num_layers={self.fusion.num_layers} exceeds the uni-modal depth "
                f"(text {self.text.num_layers}, vision {self.vision.layers} layers): each cross "
                "layer is bridged to one of the top uni-modal layers"
            )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BridgeTowerConfig:
        _check_keys(cls, data)
        data = dict(data)
        for name, sub in _SUB_CONFIGS.items():
            if name in data and isinstance(data[name], dict):
                data[name] = sub.from_dict(data[name])
        return cls(**data)

    @classmethod
    def from_json(cls, path: str | Path) -> BridgeTowerConfig:
        with open(path, encoding="utf-8") as f:
            return cls.from_dict(json.load(f))

    def to_json(self, path: str | Path) -> None:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f, indent=2, sort_keys=False)
            f.write("\n")

    def replace(self, **overrides: Any) -> BridgeTowerConfig:
        """A copy with ``overrides`` applied (see :func:`apply_overrides`)."""
        return apply_overrides(self, overrides)


def apply_overrides(config: BridgeTowerConfig, overrides: dict[str, Any]) -> BridgeTowerConfig:
    """Apply overrides with :func:`dataclasses.replace`.

    Three spellings, freely mixed:

    * top-level fields: ``{"attn_backend": "sdpa"}``;
    * a dict for a sub-config, merged into it: ``{"fusion": {"num_layers": 2}}``
      (a ``FusionConfig`` instance replaces it whole);
    * dotted keys: ``{"fusion.num_layers": 2, "vision.image_size": 384}``.

    Unknown keys raise ``ValueError`` listing the close matches.
    """
    top: dict[str, Any] = {}
    nested: dict[str, dict[str, Any]] = {}
    for key, value in overrides.items():
        if "." in key:
            head, _, rest = key.partition(".")
            if head not in _SUB_CONFIGS or "." in rest:
                raise ValueError(
                    f"bad override key {key!r}: dotted keys are '<sub>.<field>' with <sub> one "
                    f"of {', '.join(_SUB_CONFIGS)}"
                )
            _check_keys(_SUB_CONFIGS[head], {rest: value})
            nested.setdefault(head, {})[rest] = value
        elif key in _SUB_CONFIGS and isinstance(value, dict):
            _check_keys(_SUB_CONFIGS[key], value)
            nested.setdefault(key, {}).update(value)
        else:
            _check_keys(BridgeTowerConfig, {key: value})
            top[key] = value
    for name, values in nested.items():
        base = top.pop(name, getattr(config, name))
        top[name] = dataclasses.replace(base, **values)
    return dataclasses.replace(config, **top)
