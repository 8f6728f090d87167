"""Task models for fine-tuning: from a pretrained checkpoint (with the encoder copied) or from
scratch.

* :func:`build_pair_task_model` -- a vision-language task model (VQA, NLVR2, SNLI-VE, IRTR):
  the source checkpoint is loaded (our run/model directory, a Hugging Face BridgeTower
  directory, an official ``.ckpt``, or an in-memory model), then its encoder is copied by
  :func:`load_pretrained_encoder`.
* :func:`build_unimodal_model` -- an image or text classifier holding one tower of a
  vision-language checkpoint (or a saved classifier).

The copy is the models' one weight copy (:func:`bridgetower.models.convert.copy_weights`); of
its adaptations fine-tuning meets two, as the official fine-tuning does: the text word
embeddings when the task tokenizer extends the vocabulary (old rows copied, new rows keep
their initialisation), and the modality token types when NLVR2 needs a third row (row 2 =
row 1).
"""

from __future__ import annotations

import json
import pickle
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..models.convert import copy_weights
from .run import resolve_model_dir

__all__ = ["build_pair_task_model", "build_unimodal_model", "load_pretrained_encoder", "load_source_model"]


def load_source_model(pretrained: str | Path | nn.Module, overrides: Mapping[str, Any]) -> nn.Module:
    """The model to fine-tune from: ``pretrained`` itself when it is a module; else loaded
    (config ``overrides`` applied, e.g. ``{"vision.image_size": 384}``) as the task model its
    saved config names, or as a pretraining model (HF / official checkpoints).  A pickle
    (``.ckpt``, ``.bin``) holding anything but tensors and plain containers is refused with a
    ``ValueError`` naming it (pickles are read with ``torch.load(weights_only=True)``: no code
    in them runs)."""
    from ..models import TASK_MODELS, BridgeTowerForPretraining

    if isinstance(pretrained, nn.Module):
        return pretrained
    p = Path(pretrained)
    if p.is_dir():
        p = resolve_model_dir(p)
        meta = json.loads((p / "config.json").read_text())
        ours = "format" in meta  # written by save_pretrained (HF directories have no "format")
        cls = TASK_MODELS.get(meta.get("task"), BridgeTowerForPretraining) if ours else BridgeTowerForPretraining
        strict = ours
    else:
        cls, strict = BridgeTowerForPretraining, False
    try:
        return cls.from_pretrained(p, strict=strict, **dict(overrides))
    except pickle.UnpicklingError as e:
        found = re.search(r"(?:unsupported|Unsupported global:) GLOBAL (\S+)", str(e))
        raise ValueError(
            f"{pretrained}: refused: unpickling it would call {found.group(1) if found else 'code'}, not only "
            "read tensors (load only checkpoints you trust; bridgetower never runs code from a pickle)"
        ) from None


@torch.no_grad()
def load_pretrained_encoder(model: nn.Module, source: nn.Module) -> dict[str, list[str]]:
    """Copy the encoder (``bridgetower.*``) of ``source`` into ``model`` with
    :func:`bridgetower.models.convert.copy_weights` (the adaptations of the module doc);
    when ``source`` is of ``model``'s own class its task head is copied too.  A missing /
    unexpected key or another shape difference is a ``ValueError``.  Returns ``{"copied":
    [...], "extended": [...], "head": [...]}`` (``extended``: a note per adapted table)."""
    report = copy_weights(model.bridgetower, source.bridgetower.state_dict(), what="encoder")
    head: list[str] = []
    if type(source) is type(model):
        own = {k: v for k, v in source.state_dict().items() if not k.startswith("bridgetower.")}
        model.load_state_dict({**model.state_dict(), **own})
        head = sorted(own)
    return {"copied": list(report.copied), "extended": [*report.extended, *report.resized], "head": head}


def _pretrained_name(pretrained: str | Path | nn.Module) -> str:
    return type(pretrained).__name__ if isinstance(pretrained, nn.Module) else str(pretrained)


def _scratch_config(config: Any, overrides: Mapping[str, Any], who: str) -> Any:
    from ..models import BridgeTowerConfig, get_config

    if config is None:
        raise ValueError(f"{who}: give a pretrained checkpoint or a config to train from scratch")
    if isinstance(config, str):
        config = get_config(config)
    if not isinstance(config, BridgeTowerConfig):
        raise TypeError(f"config must be a BridgeTowerConfig or a name, got {type(config).__name__}")
    return config.replace(**overrides) if overrides else config


def build_pair_task_model(
    model_cls: type,
    *,
    pretrained: str | Path | nn.Module | None = None,
    config: Any = None,
    vocab_size: int | None = None,
    image_size: int | None = None,
    overrides: Mapping[str, Any] | None = None,
    init_from_source: Callable[[nn.Module, nn.Module], None] | None = None,
) -> tuple[nn.Module, dict]:
    """A vision-language task model of ``model_cls`` from ``pretrained`` (encoder copied,
    then ``init_from_source(model, source)``) or from scratch (``config``: a
    :class:`~bridgetower.models.BridgeTowerConfig` or a configuration name).  ``overrides``:
    task config overrides (e.g. the VQA answer count).  Returns ``(model, report)``."""
    over: dict[str, Any] = dict(overrides or {})
    report: dict[str, Any] = {"pretrained": None}
    if pretrained is None:
        if vocab_size is not None:
            over["text.vocab_size"] = vocab_size
        if image_size:
            over["vision.image_size"] = image_size
        return model_cls(_scratch_config(config, over, "build_task_model")), report
    source = load_source_model(pretrained, {"vision.image_size": image_size} if image_size else {})
    base = source.config
    if vocab_size is not None:
        if vocab_size < base.text.vocab_size:
            raise ValueError(f"vocab_size {vocab_size} is smaller than the pretrained vocabulary ({base.text.vocab_size})")
        over["text.vocab_size"] = vocab_size
    model = model_cls(base.replace(**over))
    report.update(load_pretrained_encoder(model, source))
    report["pretrained"] = _pretrained_name(pretrained)
    if init_from_source is not None:
        init_from_source(model, source)
    return model, report


def build_unimodal_model(
    model_cls: type,
    num_labels: int,
    *,
    pretrained: str | Path | nn.Module | None = None,
    config: Any = None,
    vocab_size: int | None = None,
    image_size: int | None = None,
) -> tuple[nn.Module, dict]:
    """A uni-modal classifier from ``pretrained`` (a vision-language checkpoint -- run dir,
    model dir, HF directory, official ``.ckpt`` -- or an in-memory BridgeTower model, whose
    tower is copied; or a saved classifier of ``model_cls``) or from scratch (``config``: a
    :class:`~bridgetower.models.BridgeTowerConfig` or a configuration name).

    ``vocab_size`` extends the text vocabulary (text model), ``image_size`` sets the image
    size (vision model; position tables are resized).  Returns ``(model, report)`` with
    ``report["pretrained"]`` and the ``copied`` / ``extended`` / ``resized`` keys of the copy.
    """
    from ..models import BridgeTowerForTextClassification

    is_text = model_cls is BridgeTowerForTextClassification
    over: dict[str, Any] = {}
    if is_text and vocab_size is not None:
        over["text.vocab_size"] = vocab_size
    if not is_text and image_size:
        over["vision.image_size"] = image_size
    report: dict[str, Any] = {"pretrained": None}
    if pretrained is not None:
        source: Any = pretrained
        if not isinstance(pretrained, nn.Module) and Path(pretrained).is_dir():
            source = resolve_model_dir(pretrained)
        model = model_cls.from_pretrained(source, num_labels=num_labels, **over)
        report.update(getattr(model, "load_report", {}))
        report["pretrained"] = _pretrained_name(pretrained)
        return model, report
    return model_cls(_scratch_config(config, over, "build_unimodal_model"), num_labels=num_labels), report
