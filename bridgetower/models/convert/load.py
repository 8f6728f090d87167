"""Loading checkpoints into our models, with a report of everything that did not match.

:func:`load_pretrained` reads our directories, Hugging Face BridgeTower checkpoints
(directory, hub name, in-memory model) and official ``.ckpt`` files; the key renames are
:mod:`.keys`, the config translation :mod:`.configs`, the file reading :mod:`.io`, the shape
adaptations :mod:`.adapt`.  Missing, unexpected or mismatched keys raise with ``strict``
(else they are logged); heads of other tasks and keys BridgeTower never uses are reported
(:class:`LoadReport`), never dropped silently.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import BridgeTowerConfig
from .adapt import adapt_tensor
from .configs import config_from_hf, config_from_official, hf_field
from .io import LazyTensor, hf_weights_in, read_state_dict
from .keys import (
    CONFIG_NAME,
    FORMAT_NAME,
    WEIGHTS_NAME,
    ConvertedStateDict,
    convert_hf_state_dict,
    convert_official_state_dict,
)

logger = logging.getLogger(__name__)

__all__ = [
    "LoadReport",
    "all_head_names",
    "encoder_prefix",
    "load_converted_state_dict",
    "load_official_checkpoint",
    "load_pretrained",
]


@dataclass
class LoadReport:
    """What happened when a checkpoint was loaded into a model.

    ``missing``: model keys the checkpoint did not provide; ``unexpected``: converted keys the
    model does not have; ``mismatched``: ``(key, checkpoint shape, model shape)``;
    ``dropped``: source keys BridgeTower never uses; ``unused_heads``: heads of other tasks;
    ``resized``: the shape adaptations of :func:`~bridgetower.models.convert.adapt.adapt_tensor`
    (position tables of another grid, 2 -> 3 token types, extended word embeddings).
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


def load_converted_state_dict(
    model: nn.Module,
    converted: ConvertedStateDict | Mapping[str, Any],
    *,
    strict: bool = True,
) -> LoadReport:
    """Check a converted state dict against ``model``, load it and report.

    Heads that the model lacks are ``unused_heads`` (not an error: an ITM+MLM checkpoint
    loads into the ITM model).  Shapes are adapted as :func:`~.adapt.adapt_tensor` allows.
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
            if key.split(".", 1)[0] in all_head_names():
                report.unused_heads.append(key)
            else:
                report.unexpected.append(key)
            continue
        want = tuple(target[key].shape)
        if tuple(value.shape) != want:
            adapted = adapt_tensor(key, value, target[key])
            if adapted is None:
                report.mismatched.append((key, tuple(value.shape), want))
                continue
            value = adapted[0]
            report.resized.append(key)
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




def all_head_names() -> set[str]:
    """The head attributes of every registered task model (``itm_score``, ``vqa_classifier`` ...)."""
    from ..tasks import TASK_MODELS

    return {name for cls in TASK_MODELS.values() for name in getattr(cls, "head_names", ())}


def encoder_prefix(cls: type) -> str:
    """Where the encoder's keys sit in ``cls``'s state dict: ``""`` for the bare encoder,
    ``"bridgetower."`` for the task models."""
    from ..model import BridgeTowerModel

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
    sd = read_state_dict(path)
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
        model, convert_official_state_dict(sd, encoder_prefix=encoder_prefix(cls)), strict=strict
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
    prefix = encoder_prefix(cls)
    if isinstance(source, nn.Module):
        hf_cfg = getattr(source, "config", None)
        if hf_field(hf_cfg, "model_type") != "bridgetower":
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
            sd = read_state_dict(path / WEIGHTS_NAME, lazy=True)
            return _build_and_load(cls, config, ConvertedStateDict(_retarget(sd, meta.get("task"), cls)), strict, overrides)
        if meta.get("model_type") == "bridgetower":
            from transformers import BridgeTowerConfig as HFConfig

            config = config_from_hf(HFConfig.from_dict(meta))
            sd = hf_weights_in(path)
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
    sd = read_state_dict(weights)
    return _build_and_load(cls, config, convert_hf_state_dict(sd, encoder_prefix=prefix), strict, overrides)


def _retarget(sd: Mapping[str, torch.Tensor], saved_task: str | None, cls: type) -> dict[str, torch.Tensor]:
    """Our own checkpoint saved from one task model, loaded into another: move the encoder prefix."""
    from ..task_base import normalize_task_name
    from ..tasks import TASK_MODELS

    saved_cls = TASK_MODELS.get(normalize_task_name(saved_task or "base"), cls)
    src, dst = encoder_prefix(saved_cls), encoder_prefix(cls)
    if src == dst:
        return dict(sd)
    out = {}
    for k, v in sd.items():
        if src and k.startswith(src):
            out[dst + k[len(src) :]] = v
        elif not src and k.split(".", 1)[0] not in all_head_names():
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
