"""Official ManagerTower checkpoints (LooperXX/ManagerTower) -> :class:`ManagerTowerModel`.

An official ManagerTower ``.ckpt`` is a Lightning checkpoint (read with
``torch.load(weights_only=True)``) whose ``state_dict`` holds BridgeTower's official names
for the shared parts -- renamed by :func:`~bridgetower.models.convert.convert_official_state_dict`
-- plus ``layer_embeddings_{text,image}.weight`` and the manager towers.  These are renamed
here (``i`` the cross layer, ``N`` the managed layers, ``P`` = 1 after the first layer)::

    cross_modal_{s}_manager_tower.i.manager_layer.           fusion.{s}_managers.i.
        layer_scores            [1, N+P, 1, D|1]             scores [N, D|1] (+ prev_scale [D|1])
        layer_scores_cross      [1, 1, 1, D|1]               prev_scale [D|1]
        softmax_temperature                                  temperature
        LayerNorm.j (j < N) / LayerNorm.N                    norms.j / prev_norm
        extra_query_LayerNorm                                other_norm
        fusion_attention.{q_proj,k_proj}                     query, key
        linear_controller                                    controller
    layer_embeddings_{s}.weight  [U, D]                      rows U-N .. U-1 (the managed layers)

Never used, dropped and reported: every ``softmax_temperature_cross`` and the layer-embedding
rows of the unmanaged layers (besides BridgeTower's unused keys).  The config comes from the
official ``mt_config`` (``config.json`` beside the checkpoint, ``config_json=``, or the
``.ckpt``'s ``hyper_parameters.config``); the managers' settings map as ``manager_type``
(``AAUE`` / ``SAUE``) -> ``kind``, ``manager_weight_type`` -> ``weights``,
``managed_layers_{text,image}`` -> ``{text,image}_layers``, ``manager_softmax_temperature``,
``manager_learnable``, ``manager_softmax_temperature_learnable``.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from .config import BridgeTowerConfig, ManagerConfig
from .convert.configs import config_from_official
from .convert.keys import CONFIG_NAME, ConvertedStateDict, convert_official_state_dict
from .convert.load import encoder_prefix, load_converted_state_dict
from .managertower import encoder_class
from .model import BridgeTowerModel

__all__ = [
    "convert_official_managertower_state_dict",
    "is_managertower_state_dict",
    "load_official_managertower_checkpoint",
    "managertower_config_from_official",
]

_TOWERS = {"cross_modal_text_manager_tower.": "text", "cross_modal_image_manager_tower.": "image"}
_LAYER_EMBEDDINGS = {"layer_embeddings_text.weight": "text", "layer_embeddings_image.weight": "image"}
# official manager parameter prefix -> ours (layer_scores and LayerNorm.j need the counts)
_MANAGER_NAMES = {
    "softmax_temperature": "temperature",
    "layer_scores_cross": "prev_scale",
    "extra_query_LayerNorm.": "other_norm.",
    "fusion_attention.q_proj.": "query.",
    "fusion_attention.k_proj.": "key.",
    "linear_controller.": "controller.",
}


def is_managertower_state_dict(state_dict: Mapping[str, Any]) -> bool:
    """Whether an official state dict is ManagerTower's (it has manager towers)."""
    return any(k.startswith(tuple(_TOWERS)) for k in state_dict)


def managertower_config_from_official(
    mt_config: Mapping[str, Any],
    state_dict: Mapping[str, torch.Tensor],
    *,
    roberta_config: Mapping[str, Any] | None = None,
    clip_args: Mapping[str, Any] | None = None,
) -> BridgeTowerConfig:
    """Our config for an official ManagerTower checkpoint: BridgeTower's official config
    translation (:func:`~bridgetower.models.convert.config_from_official`: towers from the
    tensor shapes, eps 1e-12 in the cross layers and the MLM head) plus the managers."""
    base = config_from_official(mt_config, state_dict, roberta_config=roberta_config, clip_args=clip_args)
    manager = ManagerConfig(
        kind=str(mt_config.get("manager_type", "AAUE")),
        weights=str(mt_config.get("manager_weight_type", "vector")),
        text_layers=int(mt_config.get("managed_layers_text", 6)),
        image_layers=int(mt_config.get("managed_layers_image", 6)),
        temperature=float(mt_config.get("manager_softmax_temperature", 1.0)),
        learnable=bool(mt_config.get("manager_learnable", True)),
        temperature_learnable=bool(mt_config.get("manager_softmax_temperature_learnable", True)),
        layer_norm_eps=1e-5,  # the managers' nn.LayerNorm default
    )
    for stream in ("text", "image"):
        norms = {k for k in state_dict if k.startswith(f"cross_modal_{stream}_manager_tower.0.manager_layer.LayerNorm.")}
        if len(norms) != 2 * getattr(manager, f"{stream}_layers"):
            raise ValueError(f"official config says managed_layers_{stream}={getattr(manager, f'{stream}_layers')}, "
                             f"but the first {stream} manager has {len(norms) // 2} LayerNorms")
    return dataclasses.replace(base, manager=manager)


def _manager_key(rest: str, value: torch.Tensor, n: int) -> list[tuple[str, torch.Tensor]] | None:
    """One official manager parameter (the part after ``manager_layer.``) -> ``[(ours, tensor)]``;
    ``[]`` for an unused one, None for an unknown one."""
    if rest == "softmax_temperature_cross":
        return []
    if rest == "layer_scores":  # (1, N + P, 1, w): the routed scores, then the previous output's
        out = [("scores", value[0, :n, 0])]
        return out + [("prev_scale", value[0, n, 0])] if value.shape[1] > n else out
    if rest == "layer_scores_cross":  # (1, 1, 1, w)
        return [("prev_scale", value[0, 0, 0])]
    if rest.startswith("LayerNorm."):
        j, _, leaf = rest[len("LayerNorm."):].partition(".")
        return [(f"norms.{j}.{leaf}" if int(j) < n else f"prev_norm.{leaf}", value)]
    for src, dst in _MANAGER_NAMES.items():
        if rest.startswith(src):
            return [(dst + rest[len(src):], value)]
    return None


def convert_official_managertower_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    *,
    text_layers: int,
    image_layers: int,
    encoder_prefix: str = "bridgetower.",
) -> ConvertedStateDict:
    """Official ManagerTower state dict -> our names (see the module table); ``text_layers``
    / ``image_layers``: the managed layers ``N`` of each stream."""
    managed = {"text": text_layers, "image": image_layers}
    shared: dict[str, torch.Tensor] = {}
    ours = ConvertedStateDict({})
    for key, value in state_dict.items():
        if key in _LAYER_EMBEDDINGS:
            n = managed[_LAYER_EMBEDDINGS[key]]
            ours.state_dict[encoder_prefix + key] = value[value.shape[0] - n:]
            if value.shape[0] > n:
                ours.dropped.append(f"{key}[0:{value.shape[0] - n}] (rows of unmanaged layers)")
            continue
        tower = next((t for t in _TOWERS if key.startswith(t)), None)
        if tower is None:
            shared[key] = value
            continue
        index, _, rest = key[len(tower):].partition(".manager_layer.")
        renamed = _manager_key(rest, value, managed[_TOWERS[tower]]) if index.isdigit() else None
        if renamed is None:
            ours.unknown.append(key)
        elif not renamed:
            ours.dropped.append(key)
        for name, tensor in renamed or ():
            ours.state_dict[f"{encoder_prefix}fusion.{_TOWERS[tower]}_managers.{index}.{name}"] = tensor
    base = convert_official_state_dict(shared, encoder_prefix=encoder_prefix)
    return ConvertedStateDict({**base.state_dict, **ours.state_dict}, dropped=[*base.dropped, *ours.dropped],
                              unknown=[*base.unknown, *ours.unknown])


def _official_meta(path: Path, config_json: str | Path | Mapping[str, Any] | None) -> dict[str, Any]:
    """``{"mt_config": ..., optional "text_encoder_roberta_config", "clip_model_CLIP_args"}``."""
    if isinstance(config_json, Mapping):
        meta = dict(config_json)
    elif config_json is not None or (path.parent / CONFIG_NAME).exists():
        meta = json.loads(Path(config_json or path.parent / CONFIG_NAME).read_text())
    else:
        meta = {}
    if "mt_config" not in meta and path.suffix != ".safetensors":
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
        hparams = obj.get("hyper_parameters", {}) if isinstance(obj, Mapping) else {}
        if "config" in hparams:
            meta = {**meta, "mt_config": hparams["config"]}
    if "mt_config" not in meta:
        raise ValueError(f"{path}: no official ManagerTower config found (pass config_json= with an 'mt_config' entry)")
    return meta


def load_official_managertower_checkpoint(
    cls: type,
    path: str | Path,
    state_dict: Mapping[str, torch.Tensor],
    *,
    config_json: str | Path | Mapping[str, Any] | None = None,
    strict: bool = True,
    **overrides: Any,
):
    """Build ``cls`` (a task model, or the encoder: ``BridgeTowerModel`` gives a
    :class:`ManagerTowerModel`) for the official ManagerTower checkpoint at ``path`` whose
    ``state_dict`` has been read, and load it (``model.load_report`` says what did not match).
    Called by :func:`bridgetower.models.convert.load_official_checkpoint`."""
    path = Path(path)
    meta = _official_meta(path, config_json)
    config = managertower_config_from_official(
        meta["mt_config"], state_dict, roberta_config=meta.get("text_encoder_roberta_config"),
        clip_args=meta.get("clip_model_CLIP_args"),
    )
    if overrides:
        config = config.replace(**overrides)
    if config.manager is None:
        raise ValueError(f"{path} is a ManagerTower checkpoint: its config needs managers (manager=None given)")
    if cls is BridgeTowerModel:
        cls = encoder_class(config)
    model = cls(config)
    converted = convert_official_managertower_state_dict(
        state_dict, text_layers=config.manager.text_layers, image_layers=config.manager.image_layers,
        encoder_prefix=encoder_prefix(cls),
    )
    model.load_report = load_converted_state_dict(model, converted, strict=strict)
    return model
