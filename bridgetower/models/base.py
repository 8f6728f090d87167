"""What every BridgeTower model shares: loading and saving, and what it declares to trainers.

:class:`BridgeTowerPreTrainedModel` is the base class of :class:`~bridgetower.models.BridgeTowerModel`,
the task models and the uni-modal classifiers.  Besides ``from_pretrained`` /
``save_pretrained`` it *declares* what training code needs to know about a model, so that
nothing in :mod:`bridgetower.training` matches parameter names or class names:

* :meth:`~BridgeTowerPreTrainedModel.parameter_roles` -- each parameter's role,
  ``"uni_modal"`` (the two towers, and the modality token types, as the official recipe
  has it), ``"cross_modal"`` (projections, bridges, co-attention layers, poolers) or
  ``"head"`` (task heads).  The optimizer gives each role its learning-rate multiplier.
* :meth:`~BridgeTowerPreTrainedModel.no_weight_decay` -- the parameters trained without
  weight decay: every bias and the affine weight of every normalisation module.
* :meth:`~BridgeTowerPreTrainedModel.fsdp_unit_types` -- the module types that FSDP shards as
  units of their own (transformer blocks, co-attention layers, bridges).
* :attr:`~BridgeTowerPreTrainedModel.batch_spec` -- the batch keys the model's training
  step consumes (:class:`BatchSpec`), so data-parallel code can split a batch without
  knowing the collator.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from ..layers.bridge import Bridge
from ..layers.norm import AddLayerNorm

__all__ = [
    "PARAMETER_ROLES",
    "BatchSpec",
    "BridgeTowerPreTrainedModel",
    "no_weight_decay_names",
]

#: The roles :meth:`BridgeTowerPreTrainedModel.parameter_roles` assigns.
PARAMETER_ROLES: tuple[str, ...] = ("uni_modal", "cross_modal", "head")

# Modules whose ``weight`` is a normalisation affine (no weight decay).  The bridges own
# their LayerNorm's affine directly.
_NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.LayerNorm,
    nn.GroupNorm,
    nn.LocalResponseNorm,
    nn.modules.batchnorm._NormBase,
    AddLayerNorm,
    Bridge,
) + ((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ())


def _named_own_parameters(module: nn.Module) -> Iterator[tuple[str, str, nn.Module, nn.Parameter]]:
    """``(qualified name, own name, owner, parameter)``, each parameter once (tied weights
    under the first name ``named_parameters`` gives them)."""
    seen: set[int] = set()
    for mod_name, owner in module.named_modules():
        for own, p in owner.named_parameters(recurse=False):
            if id(p) in seen:
                continue
            seen.add(id(p))
            yield (f"{mod_name}.{own}" if mod_name else own), own, owner, p


def no_weight_decay_names(module: nn.Module) -> set[str]:
    """Qualified names of the parameters of ``module`` that take no weight decay: every
    ``bias``, and the ``weight`` of every normalisation module (``nn.LayerNorm`` and the
    other torch norms, :class:`~bridgetower.layers.AddLayerNorm`, the bridges).  The rule
    of the published recipe; also the default for models that declare nothing."""
    return {
        full
        for full, own, owner, _ in _named_own_parameters(module)
        if own == "bias" or (own == "weight" and isinstance(owner, _NORM_TYPES))
    }


@dataclass(frozen=True)
class BatchSpec:
    """The batch keys a model's training step consumes.

    Attributes:
        keys: every key read (other keys of a batch are ignored).
        image_keys: keys holding one row per *image*; they may carry extra images after
            the paired ones (e.g. ITM negatives owned by another data-parallel shard).
        image_index_keys: keys holding indices into the rows of ``image_keys``.

    Every other key in ``keys`` holds one row per pair (or is a scalar).
    """

    keys: tuple[str, ...]
    image_keys: tuple[str, ...] = ()
    image_index_keys: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in ("image_keys", "image_index_keys"):
            stray = [k for k in getattr(self, name) if k not in self.keys]
            if stray:
                raise ValueError(f"BatchSpec.{name} {stray} are not in keys {self.keys}")


class BridgeTowerPreTrainedModel(nn.Module):
    """Base class: ``from_pretrained`` / ``save_pretrained`` and the training declarations
    (see the module docstring).  Subclasses set ``config`` and override
    :meth:`parameter_roles` / :meth:`fsdp_unit_types` / :attr:`batch_spec` as they need."""

    config: Any
    #: the batch keys of the model's training step (None: the model declares none)
    batch_spec: ClassVar[BatchSpec | None] = None

    # ------------------------------------------------------------------ checkpoints

    @classmethod
    def from_pretrained(cls, source: Any, *, strict: bool = True, **overrides: Any):
        """Load weights: our directory (``config.json`` + ``model.safetensors``), a HF
        BridgeTower checkpoint (directory, hub name, or in-memory ``transformers`` model), or
        an official ``.ckpt``.  See :func:`bridgetower.models.convert.load_pretrained`.
        Returned in eval mode, as ``transformers`` returns its models."""
        from .convert import load_pretrained

        return load_pretrained(cls, source, strict=strict, **overrides).eval()

    def save_pretrained(self, directory: str | Path, *, format: str = "bridgetower") -> None:
        """Save to ``directory``: ``format="bridgetower"`` (default; safetensors + JSON) or
        ``"hf"`` (a directory ``transformers`` loads)."""
        from .convert import save_pretrained

        save_pretrained(self, directory, format=format)

    # ------------------------------------------------------------------ declarations

    def parameter_roles(self) -> dict[str, str]:
        """Qualified parameter name -> role (one of :data:`PARAMETER_ROLES`)."""
        raise NotImplementedError

    def no_weight_decay(self) -> set[str]:
        """Qualified names of the parameters trained without weight decay."""
        return no_weight_decay_names(self)

    def fsdp_unit_types(self) -> tuple[type[nn.Module], ...]:
        """Module types that FSDP shards as units of their own."""
        return ()

    # ------------------------------------------------------------------ conveniences

    def num_parameters(self, only_trainable: bool = False) -> int:
        """Number of parameters (each tied tensor once), as ``transformers`` counts them."""
        return sum(
            p.numel() for _, _, _, p in _named_own_parameters(self) if p.requires_grad or not only_trainable
        )

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict | None = None) -> None:
        """``transformers``' name for :meth:`set_gradient_checkpointing` ``(True)``."""
        self.set_gradient_checkpointing(True)

    def gradient_checkpointing_disable(self) -> None:
        """``transformers``' name for :meth:`set_gradient_checkpointing` ``(False)``."""
        self.set_gradient_checkpointing(False)

    def set_gradient_checkpointing(self, enable: bool = True) -> None:  # pragma: no cover
        raise NotImplementedError

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(p for p in self.parameters() if p.is_floating_point()).dtype


def roles_with_prefix(roles: dict[str, str], prefix: str) -> dict[str, str]:
    """``roles`` of a submodule, re-keyed under ``prefix`` (e.g. ``"bridgetower."``)."""
    return {prefix + name: role for name, role in roles.items()}
