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
from .io import LazyTensor, read_state_dict
from .keys import (
    CONFIG_NAME,
    FORMAT_NAME,
    ConvertedStateDict,
    convert_hf_state_dict,
    convert_official_state_dict,
)
from .sources import HubOptions, hub_error, hub_locator, local_locator, looks_local, read_weights

logger = logging.getLogger(__name__)

__all__ = [
    "ATTN_IMPLEMENTATIONS",
    "LOAD_KEYWORDS",
    "RUNTIME_DEFAULTS",
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
    #: the dtype of the checkpoint's floating-point tensors (``from_pretrained(dtype="auto")``)
    dtype: torch.dtype | None = None

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
        if report.dtype is None and value.dtype.is_floating_point:
            report.dtype = value.dtype
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
    if any(k.startswith("cross_modal_text_manager_tower.") for k in sd):  # ManagerTower: its own converter
        from ..managertower_convert import load_official_managertower_checkpoint

        return load_official_managertower_checkpoint(cls, path, sd, config_json=config_json, strict=strict, **overrides)
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


#: The run-time defaults of ``forward`` that ``transformers`` keeps on its configs: ``from_pretrained``
#: keywords, and read from a ``transformers`` config, set on ``model.config`` (see ``ModelConfig``).
RUNTIME_DEFAULTS: dict[str, bool] = {"output_hidden_states": False, "output_attentions": False, "return_dict": True}

#: The keywords of ``from_pretrained`` besides config overrides (``transformers``' names).
LOAD_KEYWORDS: tuple[str, ...] = (
    "strict", "config", "config_json", "revision", "cache_dir", "local_files_only", "token", "force_download",
    "dtype", "torch_dtype", "device_map", "attn_implementation", "mask_image_padding", *RUNTIME_DEFAULTS,
)

#: ``transformers``' ``attn_implementation`` values and our attention backend for each
ATTN_IMPLEMENTATIONS: dict[str, str] = {"eager": "math", "sdpa": "sdpa"}


def load_pretrained(
    cls: type,
    source: Any,
    *,
    strict: bool = True,
    config: Any = None,
    config_json: Any = None,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    local_files_only: bool = False,
    token: str | bool | None = None,
    force_download: bool = False,
    dtype: Any = None,
    torch_dtype: Any = None,
    device_map: Any = None,
    attn_implementation: str | None = None,
    mask_image_padding: bool | None = None,
    output_hidden_states: bool | None = None,
    output_attentions: bool | None = None,
    return_dict: bool | None = None,
    **overrides: Any,
):
    """Build ``cls`` and load ``source`` (see :meth:`from_pretrained` of the models).

    ``source``: our directory; a HF directory, Hub id or in-memory ``transformers``
    BridgeTower model; an official ``.ckpt`` / ``.safetensors`` state dict (or a directory
    holding one ``.ckpt``).  Weights may be one file or shards
    (``model.safetensors.index.json``), locally and on the Hub.  A name that looks like a local
    path but does not exist raises ``FileNotFoundError`` at once.

    Keywords (``transformers``' spelling): ``revision``, ``cache_dir``, ``local_files_only``,
    ``token``, ``force_download`` for Hub downloads; ``dtype`` (alias ``torch_dtype``; a
    ``torch.dtype``, its name, or ``"auto"`` for the checkpoint's); ``device_map`` (one device:
    ``"cpu"``, ``"cuda:0"``, an index, a ``torch.device``, or ``"auto"`` = the first GPU if
    any, else the CPU); ``attn_implementation`` (``"eager"`` = our ``attn_backend="math"``,
    ``"sdpa"``); ``config`` (ours or a ``transformers`` ``BridgeTowerConfig``: the
    architecture, instead of the directory's ``config.json``, which may then be absent -- what
    ``transformers.Trainer.save_model`` writes for our models is the weights alone);
    ``mask_image_padding`` (default: ``False`` for ``transformers`` and official checkpoints,
    the saved setting for ours, ``True`` for ours written before the option existed);
    ``output_hidden_states`` / ``output_attentions`` / ``return_dict`` (the defaults of
    ``forward``, set on ``model.config`` as ``transformers`` does; a ``transformers`` config's own
    values of them are carried over too).  Other keywords are config overrides (e.g.
    ``attn_backend``); anything else raises ``TypeError`` listing the valid keywords.  The returned model has
    ``load_report`` (:class:`LoadReport`).
    """
    _check_override_keys(overrides)
    if attn_implementation is not None:
        if attn_implementation not in ATTN_IMPLEMENTATIONS:
            raise ValueError(
                f"attn_implementation={attn_implementation!r}: bridgetower takes {sorted(ATTN_IMPLEMENTATIONS)} here "
                "(or attn_backend=, one of its own attention backends)"
            )
        backend = ATTN_IMPLEMENTATIONS[attn_implementation]
        if overrides.setdefault("attn_backend", backend) != backend:
            raise ValueError(f"attn_implementation={attn_implementation!r} and attn_backend={overrides['attn_backend']!r} "
                             "disagree")
    dtype = _resolve_dtype(dtype, torch_dtype)
    device = _resolve_device(device_map)
    if mask_image_padding is not None and not isinstance(mask_image_padding, bool):
        raise TypeError(f"mask_image_padding must be True, False or None, got {mask_image_padding!r}")
    hub = HubOptions(revision, cache_dir, local_files_only, token, force_download)
    if config is not None:
        model = _load_with_config(cls, source, config, strict, hub, overrides)
    else:
        model = _load(cls, source, strict, config_json, hub, overrides)
    if isinstance(source, (str, Path)):
        model.name_or_path = str(source)  # transformers' name; save_pretrained copies its tokenizer files
    if mask_image_padding is not None:
        model.set_image_padding_mask(mask_image_padding)
    for name, value in (("output_hidden_states", output_hidden_states), ("output_attentions", output_attentions),
                        ("return_dict", return_dict)):
        if value is not None:
            if not isinstance(value, bool):
                raise TypeError(f"{name} must be True, False or None, got {value!r}")
            setattr(model.config, name, value)
    if dtype == "auto":
        dtype = model.load_report.dtype
    if dtype is not None or device is not None:
        model.to(device=device, dtype=dtype)
    return model


def _load(cls, source, strict, config_json, hub: HubOptions, overrides):
    if isinstance(source, nn.Module):
        hf_cfg = getattr(source, "config", None)
        if hf_field(hf_cfg, "model_type") != "bridgetower":
            raise TypeError(
                f"expected a transformers BridgeTower model, got {type(source).__name__}"
            )
        return _load_hf(cls, hf_cfg, source.state_dict(), strict, overrides)
    if not isinstance(source, (str, Path)):
        raise TypeError(f"pretrained source must be a path, hub name or model, got {type(source).__name__}")
    path = Path(source)
    if path.is_file():
        return load_official_checkpoint(cls, path, config_json=config_json, strict=strict, **overrides)
    if path.is_dir():
        meta = _read_json(local_locator(path)(CONFIG_NAME))
        if meta.get("format") == FORMAT_NAME or meta.get("model_type") == "bridgetower":
            return _load_directory(cls, meta, local_locator(path), str(path), strict, overrides)
        ckpts = sorted(path.glob("*.ckpt"))
        if len(ckpts) == 1:
            return load_official_checkpoint(cls, ckpts[0], config_json=config_json, strict=strict, **overrides)
        raise ValueError(f"{path}: not a bridgetower, HF BridgeTower or official checkpoint directory")
    name = str(source)
    if looks_local(name):
        raise FileNotFoundError(f"no checkpoint at {name!r}: no such file or directory (and not a Hub id 'org/name')")
    # a Hub repository: needs the network (or a filled local cache)
    misses: list[BaseException] = []
    locate = hub_locator(name, hub, misses)
    config_file = locate(CONFIG_NAME)
    if config_file is None:
        cause = misses[-1] if misses else None
        raise hub_error(name, CONFIG_NAME, cause or FileNotFoundError("the repository has no config.json")) from cause
    meta = _read_json(config_file)
    if meta.get("format") != FORMAT_NAME and meta.get("model_type") != "bridgetower":
        raise ValueError(f"{name!r} on the Hub is not a bridgetower or HF BridgeTower checkpoint")
    return _load_directory(cls, meta, locate, name, strict, overrides)


def _read_json(path: Path | None) -> dict[str, Any]:
    return json.loads(path.read_text()) if path is not None else {}


def _load_directory(cls, meta: dict, locate, where: str, strict: bool, overrides):
    """Our format or the HF one, from a local directory or a Hub repository (``locate``)."""
    sd = read_weights(locate, where)
    if meta.get("format") == FORMAT_NAME:
        config = BridgeTowerConfig.from_dict(meta["config"])
        converted = ConvertedStateDict(_retarget(sd, meta.get("task"), cls))
        tied = meta.get("tied", {})
        for dst, src in tied.items():  # tied tensors are stored once
            if dst not in converted.state_dict and src in converted.state_dict:
                converted.state_dict[dst] = converted.state_dict[src]
        model = _build_and_load(cls, config, converted, strict, overrides)
        if hasattr(model, "set_image_padding_mask"):
            # checkpoints written before the option existed were made with masking on
            model.set_image_padding_mask(bool(meta.get("mask_image_padding", True)))
        _tie_saved(model, tied)
        return model
    from transformers import BridgeTowerConfig as HFConfig

    return _load_hf(cls, HFConfig.from_dict(meta), sd, strict, overrides)


def _load_hf(cls, hf_config, sd, strict, overrides):
    config = config_from_hf(hf_config)
    model = _build_and_load(cls, config, convert_hf_state_dict(sd, encoder_prefix=encoder_prefix(cls)), strict, overrides)
    for name, default in RUNTIME_DEFAULTS.items():  # what transformers' forward would default to
        value = hf_field(hf_config, name, default)
        if isinstance(value, bool) and value != default:
            setattr(model.config, name, value)
    if hf_field(hf_config, "tie_word_embeddings", False) and hasattr(model, "mlm_score"):
        # transformers ties the MLM decoder to the word embeddings when the config says so
        model.mlm_score.tie_weights(model.bridgetower.text_model.word_embeddings.weight)
    return model


def _tie_saved(model: nn.Module, tied: Mapping[str, str]) -> None:
    """Share again the parameters saved once (``tied`` = {dropped name: kept name}): through
    the owning head's ``tie_weights`` when it has one, else by assignment."""
    params = dict(model.named_parameters(remove_duplicate=False))
    for dst, src in tied.items():
        if dst not in params or src not in params:
            continue
        path = dst.split(".")
        for cut in range(len(path) - 1, 0, -1):  # the nearest owner with tie_weights
            owner = model.get_submodule(".".join(path[:cut]))
            if hasattr(owner, "tie_weights"):
                owner.tie_weights(params[src])
                break
        else:
            owner = model.get_submodule(".".join(path[:-1]))
            setattr(owner, path[-1], params[src])


def _check_override_keys(overrides: Mapping[str, Any]) -> None:
    import dataclasses

    fields = [f.name for f in dataclasses.fields(BridgeTowerConfig)]
    bad = sorted(k for k in overrides if k.split(".", 1)[0] not in fields)
    if bad:
        raise TypeError(
            f"from_pretrained got unexpected keyword(s) {bad}. Valid: {', '.join(LOAD_KEYWORDS)}, and config "
            f"overrides (BridgeTowerConfig fields: {', '.join(fields)}; 'sub.field' keys)"
        )


_DTYPE_NAMES = {
    "float32": torch.float32, "float": torch.float32, "float64": torch.float64, "double": torch.float64,
    "float16": torch.float16, "half": torch.float16, "bfloat16": torch.bfloat16,
}


def _resolve_dtype(dtype: Any, torch_dtype: Any) -> torch.dtype | str | None:
    """``dtype`` (or its old name ``torch_dtype``) as a floating ``torch.dtype``, ``"auto"`` or None."""
    new, old = _one_dtype(dtype, "dtype"), _one_dtype(torch_dtype, "torch_dtype")
    if new is not None and old is not None and new != old:
        raise ValueError(f"dtype={dtype!r} and torch_dtype={torch_dtype!r} disagree (torch_dtype is the old name)")
    return new if new is not None else old


def _one_dtype(dtype: Any, name: str) -> torch.dtype | str | None:
    if dtype is None or dtype == "auto" or isinstance(dtype, torch.dtype) and dtype.is_floating_point:
        return dtype
    if isinstance(dtype, str) and dtype.removeprefix("torch.") in _DTYPE_NAMES:
        return _DTYPE_NAMES[dtype.removeprefix("torch.")]
    raise ValueError(f"{name} must be a floating torch.dtype, one of {sorted(_DTYPE_NAMES)} or 'auto', got {dtype!r}")


def _resolve_device(device_map: Any) -> torch.device | None:
    """One device for the whole model (``device_map`` that spread a model are refused)."""
    if device_map is None:
        return None
    if device_map == "auto":
        return torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    if isinstance(device_map, dict):
        devices = set(device_map.values())
        if len(devices) != 1:
            raise ValueError(
                f"device_map: bridgetower places a model on one device; got {len(devices)} devices {sorted(map(str, devices))}"
            )
        device_map = devices.pop()
    try:
        return torch.device(device_map)
    except (RuntimeError, TypeError):
        raise ValueError(
            f"device_map must be 'auto', a device ('cpu', 'cuda:0', an index, a torch.device) or "
            f"{{'': device}}, got {device_map!r}"
        ) from None


def _retarget(sd: Mapping[str, torch.Tensor], saved_task: str | None, cls: type) -> dict[str, torch.Tensor]:
    """Our own checkpoint saved from one task model, loaded into another: move the encoder prefix."""
    from ..task_base import normalize_task_name
    from ..tasks import TASK_MODELS

    saved_cls = TASK_MODELS.get(normalize_task_name(saved_task or "base"), cls)
    return _move_encoder_prefix(sd, encoder_prefix(saved_cls), encoder_prefix(cls))


def _move_encoder_prefix(sd: Mapping[str, torch.Tensor], src: str, dst: str) -> dict[str, torch.Tensor]:
    """Encoder keys from under ``src`` to under ``dst`` (``""`` or ``"bridgetower."``); heads stay."""
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


# keys that only a transformers BridgeTower state dict has (ours are ``fusion.*``)
_HF_ONLY_KEYS = ("cross_modal_text_layers.", "bridgetower.cross_modal_text_layers.")


def _load_with_config(cls, source, config, strict: bool, hub: HubOptions, overrides):
    """``from_pretrained(source, config=...)``: the weights of ``source`` (a directory or Hub
    repository; our key names, as ``state_dict()`` gives them, or ``transformers``' ones) into
    ``cls(config)``; the directory's ``config.json`` is not read."""
    if not isinstance(config, BridgeTowerConfig):
        if hf_field(config, "model_type") != "bridgetower":
            raise TypeError(
                f"config must be a bridgetower BridgeTowerConfig or a transformers BridgeTowerConfig, got "
                f"{type(config).__name__}"
            )
        config = config_from_hf(config)
    if not isinstance(source, (str, Path)):
        raise TypeError(f"with config=, the source is a checkpoint directory or Hub id, got {type(source).__name__}")
    name = str(source)
    if Path(name).is_dir():
        locate = local_locator(Path(name))
    elif looks_local(name) or Path(name).is_file():
        raise FileNotFoundError(f"with config=, {name!r} must be a checkpoint directory (no such directory)")
    else:
        locate = hub_locator(name, hub)
    sd = read_weights(locate, name)
    if any(k.startswith(_HF_ONLY_KEYS) for k in sd):
        converted = convert_hf_state_dict(sd, encoder_prefix=encoder_prefix(cls))
    else:
        saved = "bridgetower." if any(k.startswith("bridgetower.") for k in sd) else ""
        converted = ConvertedStateDict(_move_encoder_prefix(sd, saved, encoder_prefix(cls)))
    return _build_and_load(cls, config, converted, strict, overrides)


def _build_and_load(cls, config, converted, strict, overrides):
    if overrides:
        config = config.replace(**overrides)
    model = cls(config)
    model.load_report = load_converted_state_dict(model, converted, strict=strict)
    return model
