"""``create_model``: named configurations and a registry of task models.

Named variants are the JSON files in ``bridgetower/models/configs/`` (``bridgetower-base``,
``bridgetower-large``, ``bridgetower-tiny``, ``managertower-base``, ``managertower-tiny``);
:func:`register_config` adds more at run time.

Examples::

    model = create_model("bridgetower-tiny")                        # BridgeTowerModel
    model = create_model("bridgetower-tiny", task="pretraining")    # BridgeTowerForPretraining
    model = create_model("bridgetower-base", fusion={"num_layers": 2}, **{"vision.image_size": 384})
    model = create_model("bridgetower-base", task="itm", pretrained="path/or/hf-checkpoint")
"""

from __future__ import annotations

import difflib
from importlib import resources
from pathlib import Path
from typing import Any

from torch import nn

from .config import BridgeTowerConfig, apply_overrides

__all__ = ["create_model", "get_config", "list_models", "register_config"]

_EXTRA_CONFIGS: dict[str, BridgeTowerConfig | Path] = {}


def _builtin_configs() -> dict[str, Path]:
    root = resources.files("bridgetower.models") / "configs"
    return {Path(str(p)).stem: Path(str(p)) for p in root.iterdir() if str(p).endswith(".json")}


def list_models() -> list[str]:
    """Names of the known configurations."""
    return sorted({*_builtin_configs(), *_EXTRA_CONFIGS})


def register_config(name: str, config: BridgeTowerConfig | str | Path) -> None:
    """Make ``name`` known to :func:`create_model` (a config or a JSON file path)."""
    if not isinstance(config, (BridgeTowerConfig, str, Path)):
        raise TypeError(f"config must be a BridgeTowerConfig or a JSON path, got {type(config).__name__}")
    _EXTRA_CONFIGS[name] = config if isinstance(config, BridgeTowerConfig) else Path(config)


def get_config(name: str, **overrides: Any) -> BridgeTowerConfig:
    """The configuration ``name`` with ``overrides`` applied (see :func:`apply_overrides`)."""
    if not isinstance(name, str):
        raise TypeError(f"model name must be a str, got {type(name).__name__}")
    builtin = _builtin_configs()
    if name in _EXTRA_CONFIGS:
        src = _EXTRA_CONFIGS[name]
        config = src if isinstance(src, BridgeTowerConfig) else BridgeTowerConfig.from_json(src)
    elif name in builtin:
        config = BridgeTowerConfig.from_json(builtin[name])
    else:
        names = list_models()
        close = difflib.get_close_matches(name, names, n=3, cutoff=0.4)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise ValueError(f"unknown model {name!r}.{hint} Known models: {', '.join(names)}")
    return apply_overrides(config, overrides) if overrides else config


def create_model(
    name: str,
    pretrained: Any = None,
    *,
    task: str = "base",
    device=None,
    dtype=None,
    strict: bool = True,
    vision_pretrained: Any = None,
    text_pretrained: Any = None,
    **overrides: Any,
) -> nn.Module:
    """Build the model ``name`` (random weights, or loaded from ``pretrained``).

    Args:
        name: a configuration name (:func:`list_models`).
        pretrained: ``None`` (random init), or a weight source for
            :func:`bridgetower.models.convert.load_pretrained`: our directory, a HF checkpoint
            directory / hub name / in-memory ``transformers`` model, or an official ``.ckpt``.
            The checkpoint's own architecture is used; ``name`` only checks it matches
            nothing -- pass the overrides you need.
        task: ``"base"`` (:class:`BridgeTowerModel`, or :class:`ManagerTowerModel` for a
            ManagerTower config such as ``managertower-tiny``), ``"itm"``, ``"mlm"``, ``"contrastive"``,
            ``"pretraining"``, ``"vqa"``, ``"nlvr2"``, ``"snli-ve"``, ``"irtr"``
            (:data:`~bridgetower.models.tasks.TASK_MODELS`; ``_`` may stand for ``-``).
        device, dtype: of the parameters; ``dtype`` may be a ``torch.dtype`` or its name, and
            with ``pretrained`` also ``"auto"`` (the checkpoint's dtype): the weights are
            converted once on loading (``torch.bfloat16`` is the fast CPU path; LayerNorm
            statistics, softmax and the losses still accumulate in float32).
        strict: for ``pretrained``: raise when checkpoint keys do not match.
        vision_pretrained, text_pretrained: pretrained uni-modal towers for a new model (see
            :mod:`~bridgetower.models.pretrained_towers`): a local open_clip checkpoint file
            or ``"MODEL:TAG"``; a ``transformers`` model name or directory.  The rest stays
            randomly initialised; the reports are in ``model.pretrained_towers_report``.
        **overrides: config overrides: top-level fields, ``sub={"field": v}`` dicts merged into
            a sub-config, or dotted ``"sub.field"`` keys (``**{"fusion.num_layers": 2}``).
    """
    from .managertower import encoder_class
    from .model import BridgeTowerModel
    from .tasks import get_task_model

    cls = get_task_model(task)
    if pretrained is not None and (vision_pretrained is not None or text_pretrained is not None):
        raise ValueError("pass either pretrained= (a whole model) or vision_pretrained= / "
                         "text_pretrained= (uni-modal towers for a new model), not both")
    if pretrained is not None:
        named = get_config(name)  # the name must exist
        if cls is BridgeTowerModel:  # the bare encoder: BridgeTower or ManagerTower, as the name says
            cls = encoder_class(named)
        # dtype / device go to the loader: it converts the weights once and resolves dtype
        # names and "auto" (the checkpoint's dtype)
        model = cls.from_pretrained(pretrained, strict=strict, **({"dtype": dtype} if dtype is not None else {}),
                                    **overrides)
        return model.to(device) if device is not None else model
    if isinstance(dtype, str):
        from .convert.load import _one_dtype

        dtype = _one_dtype(dtype, "dtype")
        if dtype == "auto":
            raise ValueError("dtype='auto' needs pretrained= (it means the checkpoint's dtype)")
    config = get_config(name, **overrides)
    if cls is BridgeTowerModel:
        cls = encoder_class(config)
    model = cls(config, device=device, dtype=dtype)
    if vision_pretrained is not None or text_pretrained is not None:
        from .pretrained_towers import load_pretrained_towers

        model.pretrained_towers_report = load_pretrained_towers(
            model, vision=vision_pretrained, text=text_pretrained)
    return model
