"""Pretrained uni-modal towers: the vision tower from open_clip weights, the text tower and its
tokenizer from a ``transformers`` model.

The published BridgeTower pretraining starts from CLIP ViT-B/16 (vision) and RoBERTa-base
(text); the cross-modal part starts new.  :func:`load_pretrained_towers` copies such weights
into a model built by :func:`~bridgetower.models.create_model` (which calls it for
``vision_pretrained=`` / ``text_pretrained=``) and returns a :class:`TowerLoadReport` per tower:
what was copied (same shape), resized (the position table of another image size) or
extended (a larger word-embedding table), what stays newly initialised, and what of the
source was not used (CLIP's projection, the text pooler ...).

Vision sources (``vision=``):

* a local open_clip checkpoint file (``.pt`` / ``.bin`` / ``.safetensors``; a whole CLIP
  state dict with ``visual.*`` keys, or a visual tower's own keys; ``state_dict`` wrappers and
  ``module.`` prefixes are accepted);
* ``"MODEL:TAG"`` or ``("MODEL", "TAG")``: ``open_clip.create_model(MODEL, pretrained=TAG)``
  (a tag such as ``"openai"`` downloads through open_clip; a tag may also be a local file).

Text sources (``text=``): a ``transformers`` model name on the Hub or a local directory
(``save_pretrained``), loaded with ``AutoModel.from_pretrained`` (the ``roberta.`` prefix of a
task checkpoint is handled by ``transformers``); :func:`load_tokenizer` loads its tokenizer.

The tower's configuration must describe the source: widths, depths, heads, patch size,
MLP sizes and vocabulary are checked against it first, and a mismatch is a ``ValueError``
naming the field, both values and the override that fixes it; nothing is copied then.
(A checkpoint file does not record the vision heads or the activation: a named model's
open_clip config is checked for them.)  The weights are copied with the shape rules of
:mod:`bridgetower.models.convert.adapt`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .convert.adapt import plan_copy
from .convert.io import read_state_dict

__all__ = [
    "PretrainedTowersReport",
    "TowerLoadReport",
    "load_pretrained_towers",
    "load_text_tower",
    "load_tokenizer",
    "load_vision_tower",
    "parse_vision_source",
]

#: Parameters of our towers that no uni-modal checkpoint has (they stay newly initialised).
_VISION_NEW_PREFIXES = ("ln_separate.",)


@dataclass
class TowerLoadReport:
    """What :func:`load_vision_tower` / :func:`load_text_tower` did (keys are the tower's).

    ``copied``: tensors copied unchanged; ``resized`` / ``extended``: notes on adapted tables;
    ``new``: tower tensors the source does not have (they keep their initialisation);
    ``unused``: source tensors the tower has no place for.
    """

    tower: str
    source: str
    copied: list[str] = field(default_factory=list)
    resized: list[str] = field(default_factory=list)
    extended: list[str] = field(default_factory=list)
    new: list[str] = field(default_factory=list)
    unused: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"tower": self.tower, "source": self.source, "copied": list(self.copied),
                "resized": list(self.resized), "extended": list(self.extended),
                "new": list(self.new), "unused": list(self.unused)}

    def summary(self) -> str:
        return (f"{self.tower} tower from {self.source}: {len(self.copied)} tensors copied, "
                f"{len(self.resized)} resized, {len(self.extended)} extended, {len(self.new)} new, "
                f"{len(self.unused)} unused from the source")


# --------------------------------------------------------------------------- helpers
def _check_fields(tower: str, pairs: list[tuple[str, Any, Any]], source: str) -> None:
    """``pairs``: (config field, our value, the source's value); one ValueError for all."""
    bad = [(name, ours, theirs) for name, ours, theirs in pairs if theirs is not None and ours != theirs]
    if bad:
        lines = "; ".join(f"{tower}.{n}={o!r} but the source has {t!r}" for n, o, t in bad)
        fix = ", ".join(f'"{tower}.{n}": {t!r}' for n, o, t in bad)
        raise ValueError(
            f"the {tower} tower's config does not match {source}: {lines}. Build the model with "
            f"these overrides: **{{{fix}}}"
        )


@torch.no_grad()
def _copy(tower_name: str, module: nn.Module, source_state: Mapping[str, torch.Tensor], source: str,
          *, allowed_new: tuple[str, ...] = ()) -> TowerLoadReport:
    """Copy the tensors of ``source_state`` (keys already ours) into ``module``."""
    report = TowerLoadReport(tower_name, source)
    target = module.state_dict()
    params = {k for k, _ in module.named_parameters()}
    report.new = [k for k in target if k not in source_state]
    plan, bad = plan_copy(target, source_state, report)
    report.unused = sorted(set(source_state) - set(target))
    missing = [k for k in report.new if k in params and not k.startswith(allowed_new)]
    if bad:
        raise ValueError(f"{source}: shape mismatches with the {tower_name} tower (key, source, ours): {bad[:8]}")
    if missing:
        raise ValueError(
            f"{source} lacks {len(missing)} parameter(s) of the {tower_name} tower, e.g. {missing[:8]}; "
            f"is it a {tower_name} model of this architecture? (unused source keys: {report.unused[:8]})"
        )
    for key, value in plan:
        target[key].copy_(value.to(device=target[key].device, dtype=target[key].dtype))
    return report


# ---------------------------------------------------------------------------- vision
def parse_vision_source(source: Any) -> tuple[str | None, str | None, Path | None]:
    """``(model_name, tag, file)`` of a vision source (see the module doc)."""
    if isinstance(source, (tuple, list)):
        if len(source) != 2 or not all(isinstance(s, str) and s for s in source):
            raise ValueError(f"vision_pretrained as a pair must be (open_clip model name, pretrained tag), got {source!r}")
        return source[0], source[1], None
    if isinstance(source, Path) or (isinstance(source, str) and Path(source).is_file()):
        path = Path(source)
        if not path.is_file():
            raise ValueError(f"vision_pretrained: no such checkpoint file {str(path)!r}")
        return None, None, path
    if isinstance(source, str) and ":" in source and not source.startswith(("hf-hub:", "local-dir:")):
        name, tag = source.split(":", 1)
        if name and tag:
            return name, tag, None
    raise ValueError(
        f"vision_pretrained must be a local open_clip checkpoint file, 'MODEL:TAG' (e.g. "
        f"'ViT-B-16:openai') or a (model, tag) pair, got {source!r}"
    )


def _visual_state(state: Mapping[str, Any], source: str) -> dict[str, torch.Tensor]:
    """The ``visual.*`` tensors of an open_clip state dict (whole CLIP or visual only)."""
    state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
    if any(k.startswith("visual.trunk.") for k in state):
        raise ValueError(f"{source}: a timm visual tower ('visual.trunk.*'); only plain open_clip ViTs are supported")
    visual = {k: v for k, v in state.items() if k.startswith("visual.")}
    if not visual and "conv1.weight" in state:  # a VisionTransformer's own state dict
        visual = {f"visual.{k}": v for k, v in state.items()}
    if "visual.conv1.weight" not in visual:
        raise ValueError(
            f"{source}: no open_clip ViT weights (no 'visual.conv1.weight'); keys start with "
            f"{sorted({k.split('.')[0] for k in state})[:8]}"
        )
    return visual


def _vision_shapes(visual: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """Width, layers, patch size and MLP ratio read from the weights."""
    conv = visual["visual.conv1.weight"]  # (width, 3, p, p)
    layers = {int(k.split(".")[3]) for k in visual if k.startswith("visual.transformer.resblocks.")}
    width = int(conv.shape[0])
    fc = visual.get("visual.transformer.resblocks.0.mlp.c_fc.weight")
    return {"width": width, "layers": len(layers), "patch_size": int(conv.shape[-1]),
            "mlp_ratio": float(fc.shape[0]) / width if fc is not None else None}


def load_vision_tower(tower: nn.Module, source: Any) -> TowerLoadReport:
    """Copy open_clip ViT weights into ``tower`` (an
    :class:`~bridgetower.models.towers.vision.OpenCLIPVisionEncoder`); see the module doc."""
    name, tag, path = parse_vision_source(source)
    cfg = tower.config
    if path is not None:
        label = str(path)
        visual = _visual_state(read_state_dict(path), label)
    else:
        import open_clip

        from .config import VisionConfig

        label = f"open_clip {name}:{tag}"
        named = VisionConfig.from_open_clip(name)  # unknown names raise with close matches
        _check_fields("vision", [("heads", cfg.num_heads, named.num_heads),
                                 ("quick_gelu", cfg.quick_gelu, named.quick_gelu)], label)
        try:
            clip = open_clip.create_model(name, pretrained=tag, device="cpu")
        except Exception as exc:  # download errors, unknown tags
            raise ValueError(f"could not load {label}: {exc}") from exc
        visual = {f"visual.{k}": v for k, v in clip.visual.state_dict().items()}
    shapes = _vision_shapes(visual)
    _check_fields("vision", [(k, getattr(cfg, k), v) for k, v in shapes.items()], label)
    return _copy("vision", tower, visual, label, allowed_new=_VISION_NEW_PREFIXES)


# ------------------------------------------------------------------------------ text
def load_text_tower(tower: nn.Module, source: str | Path) -> TowerLoadReport:
    """Copy a ``transformers`` encoder (Hub name or local directory) into ``tower`` (a
    :class:`~bridgetower.models.towers.text.TransformersTextEncoder`); see the module doc."""
    from transformers import AutoConfig, AutoModel

    from .config import TEXT_FIELDS_TO_HF

    if not isinstance(source, (str, Path)) or not str(source):
        raise TypeError(f"text_pretrained must be a model name or a directory, got {source!r}")
    label = str(source)
    try:
        hf_config = AutoConfig.from_pretrained(label)
    except Exception as exc:
        raise ValueError(f"could not read the transformers config of text_pretrained={label!r}: {exc}") from exc
    cfg = tower.config
    pairs = [("model_type", cfg.model_type, getattr(hf_config, "model_type", None))]
    for ours in ("hidden_size", "num_layers", "num_heads", "intermediate_size",
                 "max_position_embeddings", "type_vocab_size", "hidden_act"):
        pairs.append((ours, getattr(cfg, ours), getattr(hf_config, TEXT_FIELDS_TO_HF[ours], None)))
    theirs_vocab = getattr(hf_config, "vocab_size", None)
    if theirs_vocab is not None and theirs_vocab > cfg.vocab_size:  # more rows of ours are allowed
        pairs.append(("vocab_size", cfg.vocab_size, theirs_vocab))
    _check_fields("text", pairs, label)
    try:
        model = AutoModel.from_pretrained(label)
    except Exception as exc:
        raise ValueError(f"could not load text_pretrained={label!r}: {exc}") from exc
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    return _copy("text", tower, state, label)


def load_tokenizer(source: str | Path):
    """The tokenizer of a Hub name or a local directory (``AutoTokenizer.from_pretrained``),
    with a ``ValueError`` naming the source when it cannot be loaded."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(source))
    except Exception as exc:
        raise ValueError(f"could not load a tokenizer from {str(source)!r} (a Hub name or a "
                         f"directory with tokenizer files): {exc}") from exc


# ---------------------------------------------------------------------------- model
def _encoder(model: nn.Module) -> nn.Module:
    if hasattr(model, "vision_model") and hasattr(model, "text_model"):
        return model
    inner = getattr(model, "bridgetower", None)
    if inner is not None and hasattr(inner, "vision_model"):
        return inner
    raise TypeError(f"{type(model).__name__} has no vision_model / text_model towers")


@dataclass
class PretrainedTowersReport:
    """What :func:`load_pretrained_towers` did: a :class:`TowerLoadReport` per tower loaded
    (``None`` for a tower left random) and ``new``: every tensor of the whole model that was
    not loaded (the cross-modal part, the heads, a tower without a source), model keys."""

    vision: TowerLoadReport | None = None
    text: TowerLoadReport | None = None
    new: list[str] = field(default_factory=list)

    def summary(self) -> str:
        parts = [r.summary() for r in (self.vision, self.text) if r is not None]
        return "; ".join(parts + [f"{len(self.new)} tensors of the model newly initialised"])


def load_pretrained_towers(model: nn.Module, *, vision: Any = None, text: Any = None) -> PretrainedTowersReport:
    """Copy pretrained uni-modal weights into the towers of ``model`` (a BridgeTower model or
    task model); returns a :class:`PretrainedTowersReport`."""
    enc = _encoder(model)
    report = PretrainedTowersReport()
    if vision is not None:
        report.vision = load_vision_tower(enc.vision_model, vision)
    if text is not None:
        report.text = load_text_tower(enc.text_model, text)
    names = {id(m): n for n, m in model.named_modules()}
    loaded = set()
    for r, tower in ((report.vision, enc.vision_model), (report.text, enc.text_model)):
        if r is not None:
            prefix = names[id(tower)] + "."
            loaded |= {prefix + k for k in (*r.copied, *(n.split(":")[0] for n in r.resized + r.extended))}
    report.new = [k for k in model.state_dict() if k not in loaded]
    return report
