"""Configuration dataclasses of BridgeTower models.

A model is described by four small frozen dataclasses composed into one:

* :class:`VisionConfig` -- the open_clip ViT visual tower,
* :class:`TextConfig` -- the ``transformers`` text encoder (RoBERTa for the published sizes),
* :class:`FusionConfig` -- the cross-modal part (projections, bridges, co-attention layers),
* :class:`ManagerConfig` -- optional: the managers of a ManagerTower model (BridgeTower's
  successor; ``manager=None``, the default, is BridgeTower),
* :class:`BridgeTowerConfig` -- the above plus the task-head sizes and the run-time
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
import math
import os
import warnings
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ..kernels import check_activation, check_attention_backend
from ..layers.bridge import bridge_names
from ..layers.manager import MANAGER_ALIASES, MANAGER_WEIGHTS, manager_names

__all__ = [
    "BridgeTowerConfig",
    "FusionConfig",
    "ManagerConfig",
    "TextConfig",
    "TEXT_FIELDS_TO_HF",
    "VisionConfig",
    "apply_overrides",
    "check_allocation",
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


# ---------------------------------------------------------------- field checks
# Every field is checked when a config is built, before anything is allocated: a model is
# only ever constructed from a config that passed these checks.


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _check(owner: str, obj: Any, *, positive_int=(), optional_positive_int=(), non_negative_int=(),
           positive=(), non_negative=(), probability=(), boolean=(), string=()) -> None:
    """Raise ``ValueError`` / ``TypeError`` naming ``owner.field`` for the first bad field."""
    def fail(name: str, want: str, exc: type[Exception] = ValueError):
        raise exc(f"{owner}.{name} must be {want}, got {getattr(obj, name)!r}")

    for name in positive_int:
        if not _is_int(getattr(obj, name)) or getattr(obj, name) <= 0:
            fail(name, "a positive int")
    for name in optional_positive_int:
        v = getattr(obj, name)
        if v is not None and (not _is_int(v) or v <= 0):
            fail(name, "None or a positive int")
    for name in non_negative_int:
        if not _is_int(getattr(obj, name)) or getattr(obj, name) < 0:
            fail(name, "an int >= 0")
    for name in positive:
        if not _is_number(getattr(obj, name)) or getattr(obj, name) <= 0:
            fail(name, "a finite number > 0")
    for name in non_negative:
        if not _is_number(getattr(obj, name)) or getattr(obj, name) < 0:
            fail(name, "a finite number >= 0")
    for name in probability:
        if not _is_number(getattr(obj, name)) or not 0 <= getattr(obj, name) < 1:
            fail(name, "a number in [0, 1)")
    for name in boolean:
        if not isinstance(getattr(obj, name), bool):
            fail(name, "True or False", TypeError)
    for name in string:
        if not isinstance(getattr(obj, name), str) or not getattr(obj, name):
            fail(name, "a non-empty str", TypeError)


def _check_divisible(owner: str, width_name: str, width: int, heads_name: str, heads: int) -> None:
    if width % heads:
        raise ValueError(f"{owner}.{width_name}={width} is not divisible by {heads_name}={heads}")


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
        _check("VisionConfig", self, positive_int=("width", "layers", "patch_size", "image_size"),
               optional_positive_int=("heads",), positive=("mlp_ratio",), non_negative=("layer_norm_eps",),
               boolean=("quick_gelu", "ln_separate"))
        _check_divisible("VisionConfig", "width", self.width, "heads", self.num_heads)
        if self.image_size < self.patch_size:
            raise ValueError(
                f"VisionConfig.image_size={self.image_size} is smaller than patch_size={self.patch_size}"
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
        _check("TextConfig", self, string=("model_type", "hidden_act"),
               positive_int=("vocab_size", "hidden_size", "num_layers", "num_heads", "intermediate_size",
                             "max_position_embeddings", "type_vocab_size"),
               non_negative_int=("pad_token_id", "bos_token_id", "eos_token_id"),
               non_negative=("layer_norm_eps",), probability=("dropout", "attn_dropout"))
        _check_divisible("TextConfig", "hidden_size", self.hidden_size, "num_heads", self.num_heads)
        for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
            if getattr(self, name) >= self.vocab_size:
                raise ValueError(
                    f"TextConfig.{name}={getattr(self, name)} is outside the vocabulary "
                    f"(vocab_size={self.vocab_size})"
                )
        if not isinstance(self.extra, dict):
            raise TypeError(f"TextConfig.extra must be a dict, got {type(self.extra).__name__}")

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
        _check("FusionConfig", self, positive_int=("hidden_size", "num_layers", "num_heads"),
               optional_positive_int=("intermediate_size",), string=("hidden_act",),
               probability=("dropout", "attn_dropout"), non_negative=("layer_norm_eps", "bridge_layer_norm_eps"))
        _check_divisible("FusionConfig", "hidden_size", self.hidden_size, "num_heads", self.num_heads)
        try:
            check_activation(self.hidden_act)
        except ValueError as err:
            raise ValueError(f"FusionConfig.hidden_act: {err}") from None
        names = [self.bridge] if isinstance(self.bridge, str) else list(self.bridge)
        unknown = [b for b in names if not isinstance(b, str) or b not in bridge_names()]
        if unknown:
            raise ValueError(f"FusionConfig.bridge: unknown bridge(s) {unknown}; valid: {', '.join(bridge_names())}")
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


@dataclass(frozen=True)
class ManagerConfig(_ConfigMixin):
    """The managers of a ManagerTower model (:mod:`bridgetower.layers.manager`).

    ``kind``: ``"adaptive"`` (the official default: a static manager in the first cross
    layer, adaptive ones after it) or ``"static"`` (the paper's AAUE and SAUE; those names are
    accepted too).  ``weights``: ``"vector"`` (a weight per channel, the default) or
    ``"scalar"``.  ``text_layers`` / ``image_layers``: how many top uni-modal layers every
    text / image manager aggregates.  ``temperature``: the initial softmax temperature;
    ``learnable`` / ``temperature_learnable``: whether the static scores and the
    previous-output weights / the temperatures train.  ``noise``: the training-only noise on
    the routed scores (on in the official code).  ``layer_norm_eps``: of the managers'
    LayerNorms (1e-5).  The fusion's ``bridge`` and ``bridge_layer_norm_eps`` do not apply.
    """

    kind: str = "adaptive"
    weights: str = "vector"
    text_layers: int = 6
    image_layers: int = 6
    temperature: float = 1.0
    learnable: bool = True
    temperature_learnable: bool = True
    noise: bool = True
    layer_norm_eps: float = 1e-5

    def __post_init__(self):
        _check("ManagerConfig", self, positive_int=("text_layers", "image_layers"), positive=("temperature",),
               non_negative=("layer_norm_eps",), boolean=("learnable", "temperature_learnable", "noise"))
        if self.kind not in manager_names():
            raise ValueError(f"ManagerConfig.kind must be one of {', '.join(manager_names())}, got {self.kind!r}")
        object.__setattr__(self, "kind", MANAGER_ALIASES.get(self.kind, self.kind))  # the paper's names
        if self.weights not in MANAGER_WEIGHTS:
            raise ValueError(f"ManagerConfig.weights must be one of {', '.join(MANAGER_WEIGHTS)}, got {self.weights!r}")


_SUB_CONFIGS = {"vision": VisionConfig, "text": TextConfig, "fusion": FusionConfig, "manager": ManagerConfig}
#: Sub-configs that may be None (absent): the managers exist in ManagerTower models only.
_OPTIONAL_SUB_CONFIGS = ("manager",)


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
    ``manager`` (a :class:`ManagerConfig`, or a dict) makes the model a ManagerTower: each
    cross layer gets a manager over the top uni-modal layers instead of a bridge; ``None``
    (the default) is BridgeTower.  It is left out of :meth:`to_dict` when ``None``.
    """

    vision: VisionConfig = field(default_factory=VisionConfig)
    text: TextConfig = field(default_factory=TextConfig)
    fusion: FusionConfig = field(default_factory=FusionConfig)
    manager: ManagerConfig | None = None
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
            elif not isinstance(value, cls) and not (value is None and name in _OPTIONAL_SUB_CONFIGS):
                raise TypeError(
                    f"BridgeTowerConfig.{name} must be a {cls.__name__} or dict"
                    f"{' (or None)' if name in _OPTIONAL_SUB_CONFIGS else ''}, got {type(value).__name__}"
                )
        _check("BridgeTowerConfig", self, non_negative_int=("itc_dim",),
               positive_int=("contrastive_dim", "vqa_num_labels", "snli_num_labels"),
               positive=("itc_temperature",), non_negative=("head_layer_norm_eps",),
               boolean=("gradient_checkpointing",))
        if not _is_number(self.logit_scale_init):
            raise ValueError(f"BridgeTowerConfig.logit_scale_init must be a finite number, got {self.logit_scale_init!r}")
        try:
            check_attention_backend(self.attn_backend)
        except ValueError as err:
            raise ValueError(f"BridgeTowerConfig.attn_backend: {err}") from None
        if self.manager is not None:
            for name, managed, depth in (("text_layers", self.manager.text_layers, self.text.num_layers),
                                         ("image_layers", self.manager.image_layers, self.vision.layers)):
                if managed > depth:
                    raise ValueError(
                        f"manager.{name}={managed} exceeds the uni-modal depth ({depth} layers): a manager "
                        "aggregates the top layers of its tower"
                    )
        elif self.fusion.num_layers > min(self.text.num_layers, self.vision.layers):
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

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if d["manager"] is None:  # BridgeTower configs keep their published layout
            del d["manager"]
        return d

    @property
    def architecture(self) -> str:
        """``"managertower"`` when ``manager`` is set, else ``"bridgetower"``."""
        return "bridgetower" if self.manager is None else "managertower"

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

    def parameter_estimate(self, parts: tuple[str, ...] = ("vision", "text", "fusion")) -> dict[str, int]:
        """Approximate parameter counts of the model's ``parts`` (within a few percent; the
        largest tables and matrices only), computed from the sizes without building anything."""
        v, t, f = self.vision, self.text, self.fusion
        h = f.hidden_size
        counts: dict[str, int] = {}
        if "vision" in parts:
            grid = (v.image_size // v.patch_size) ** 2 + 1
            counts["vision"] = (3 * v.patch_size**2 * v.width + grid * v.width
                                + v.layers * int((4 + 2 * v.mlp_ratio) * v.width**2))
        if "text" in parts:
            counts["text"] = ((t.vocab_size + t.max_position_embeddings + t.type_vocab_size) * t.hidden_size
                              + t.num_layers * (4 * t.hidden_size**2 + 2 * t.hidden_size * t.intermediate_size))
        if "fusion" in parts:
            counts["fusion"] = 2 * f.num_layers * (8 * h * h + 2 * h * f.ffn_size) + (t.hidden_size + v.width) * h
            counts["heads"] = t.vocab_size * h  # the MLM decoder
        return counts


def check_allocation(config: BridgeTowerConfig, *, dtype: Any = None, device: Any = None,
                     parts: tuple[str, ...] = ("vision", "text", "fusion")) -> None:
    """Refuse, before allocating anything, a model whose parameters alone would not fit in
    this machine's memory (CPU models; a config with a vocabulary of 1e12 or a million
    layers is a typo, not a model), naming the sizes that make it large."""
    if device is not None and str(device).split(":")[0] not in ("cpu",):
        return
    try:
        total_ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not a POSIX system
        return
    element = 4 if dtype is None else torch_element_size(dtype)
    counts = config.parameter_estimate(parts)
    need = sum(counts.values()) * element
    if need > total_ram:
        v, t, f = config.vision, config.text, config.fusion
        sizes = (f"vision width={v.width} layers={v.layers} image_size={v.image_size}; text "
                 f"vocab_size={t.vocab_size} hidden_size={t.hidden_size} num_layers={t.num_layers} "
                 f"max_position_embeddings={t.max_position_embeddings}; fusion hidden_size={f.hidden_size} "
                 f"num_layers={f.num_layers}")
        biggest = max(counts, key=counts.get)
        raise ValueError(
            f"this config needs about {need / 2**30:,.0f} GiB for its parameters alone (mostly the "
            f"{biggest} part), more than this machine's {total_ram / 2**30:,.0f} GiB: check its sizes ({sizes})"
        )


def torch_element_size(dtype: Any) -> int:
    import torch

    return torch.empty((), dtype=dtype).element_size()


def apply_overrides(config: BridgeTowerConfig, overrides: dict[str, Any]) -> BridgeTowerConfig:
    """Apply overrides with :func:`dataclasses.replace`.

    Three spellings, freely mixed:

    * top-level fields: ``{"attn_backend": "sdpa"}``;
    * a dict for a sub-config, merged into it: ``{"fusion": {"num_layers": 2}}``
      (a ``FusionConfig`` instance replaces it whole; ``{"manager": {}}`` turns a BridgeTower
      config into a ManagerTower one with the default managers, ``manager=None`` back);
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
        top[name] = _SUB_CONFIGS[name](**values) if base is None else dataclasses.replace(base, **values)
    return dataclasses.replace(config, **top)
