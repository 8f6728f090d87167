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

import dataclasses
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from ..layers.bridge import Bridge
from ..layers.norm import AddLayerNorm
from .config import BridgeTowerConfig

__all__ = [
    "PARAMETER_ROLES",
    "BatchSpec",
    "BridgeTowerPreTrainedModel",
    "ModelConfig",
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


class ModelConfig(BridgeTowerConfig):
    """The :class:`BridgeTowerConfig` a model holds as ``model.config``: the same frozen fields
    (equal to, and hashing as, the plain config), plus what ``transformers`` code expects of a
    model's config:

    * ``text_config`` / ``vision_config``: the towers' configs in ``transformers``' form and
      names (``num_hidden_layers``, ``num_attention_heads``, ``vocab_size`` ...; a
      ``transformers`` text config and a ``BridgeTowerVisionConfig``), built on access: reading
      them is fine, changing them does not change the model (the sizes are ``config.text`` /
      ``config.vision``);
    * run-time attributes that are not fields may be set (``transformers.Trainer`` sets
      ``config.use_cache``); ``output_hidden_states``, ``output_attentions`` and
      ``return_dict`` set this way are the defaults of ``forward``, as in ``transformers``;
    * ``get_text_config()`` and ``to_json_string()``, which ``transformers.Trainer`` and its
      trackers call.
    """

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, BridgeTowerConfig):
            return NotImplemented
        return all(getattr(self, f.name) == getattr(other, f.name) for f in dataclasses.fields(BridgeTowerConfig))

    __hash__ = BridgeTowerConfig.__hash__

    def __repr__(self) -> str:
        inner = ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in dataclasses.fields(BridgeTowerConfig))
        return f"BridgeTowerConfig({inner})"

    @classmethod
    def of(cls, config: BridgeTowerConfig) -> ModelConfig:
        if isinstance(config, ModelConfig):
            return config
        return cls(**{f.name: getattr(config, f.name) for f in dataclasses.fields(BridgeTowerConfig)})

    @property
    def text_config(self):
        """The text tower's config in ``transformers``' form (a snapshot)."""
        return self.text.to_transformers()

    def get_text_config(self, decoder: bool | None = None, encoder: bool | None = None):
        """:attr:`text_config` (``transformers.Trainer`` reads the special-token ids there)."""
        return self.text_config

    def to_json_string(self, use_diff: bool = True) -> str:
        """The config as JSON (``to_dict()``; ``transformers``' trackers log it)."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    @property
    def vision_config(self):
        """The vision tower's config as ``transformers``' ``BridgeTowerVisionConfig`` (a snapshot)."""
        from transformers import BridgeTowerVisionConfig

        v = self.vision
        return BridgeTowerVisionConfig(
            hidden_size=v.width, num_hidden_layers=v.layers, patch_size=v.patch_size, image_size=v.image_size,
            layer_norm_eps=v.layer_norm_eps, share_layernorm=not v.ln_separate,
        )


class BridgeTowerPreTrainedModel(nn.Module):
    """Base class: ``from_pretrained`` / ``save_pretrained`` and the training declarations
    (see the module docstring).  Subclasses set ``config`` and override
    :meth:`parameter_roles` / :meth:`fsdp_unit_types` / :attr:`batch_spec` as they need."""

    config: Any
    #: where :meth:`from_pretrained` loaded the model from (``transformers``' attribute)
    name_or_path: str | None = None
    #: for ``transformers.Trainer``: the losses are batch means and take no ``num_items_in_batch``
    #: (so the Trainer divides them by the gradient-accumulation steps itself)
    accepts_loss_kwargs: ClassVar[bool] = False
    #: the batch keys of the model's training step (None: the model declares none)
    batch_spec: ClassVar[BatchSpec | None] = None

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "config" and type(value) is BridgeTowerConfig:
            value = ModelConfig.of(value)  # see ModelConfig
        super().__setattr__(name, value)

    def _config_default(self, name: str, value: Any, default: Any) -> Any:
        """``value``, or when None the run-time attribute ``config.<name>`` (see
        :class:`ModelConfig`), or ``default``."""
        return getattr(self.config, name, default) if value is None else value

    # ------------------------------------------------------------------ checkpoints

    @classmethod
    def from_pretrained(cls, source: Any, *, strict: bool = True, **kwargs: Any):
        """Load weights: our directory (``config.json`` + safetensors), a HF BridgeTower
        checkpoint (directory, Hub id, or in-memory ``transformers`` model), or an official
        ``.ckpt``; one weight file or shards.  ``transformers``' keywords work (``revision``,
        ``cache_dir``, ``local_files_only``, ``token``, ``force_download``, ``dtype`` /
        ``torch_dtype``, ``device_map``), as do ``mask_image_padding`` and config overrides;
        others raise ``TypeError`` listing the valid ones.  See
        :func:`bridgetower.models.convert.load_pretrained`.  Returned in eval mode, as
        ``transformers`` returns its models."""
        from .convert import load_pretrained

        return load_pretrained(cls, source, strict=strict, **kwargs).eval()

    def save_pretrained(
        self,
        directory: str | Path,
        *,
        format: str = "bridgetower",
        max_shard_size: int | str = "5GB",
        safe_serialization: bool = True,
        processor: Any = None,
        tokenizer: Any = None,
        push_to_hub: bool = False,
        **hub_kwargs: Any,
    ) -> None:
        """Save to ``directory``: ``format="bridgetower"`` (default; safetensors + JSON) or
        ``"hf"`` (a directory ``transformers`` loads), in shards above ``max_shard_size``,
        with ``preprocessor_config.json`` and the tokenizer files (of ``processor`` /
        ``tokenizer``, else of the directory the model was loaded from).  ``push_to_hub=True``
        then uploads the same files (``hub_kwargs``: ``repo_id`` and the keywords of
        :meth:`push_to_hub`).  See :func:`bridgetower.models.convert.save_pretrained`."""
        from .convert import save_pretrained

        save_pretrained(self, directory, format=format, max_shard_size=max_shard_size,
                        safe_serialization=safe_serialization, processor=processor, tokenizer=tokenizer)
        if push_to_hub:
            repo_id = hub_kwargs.pop("repo_id", None) or Path(directory).name
            self.push_to_hub(repo_id, format=format, max_shard_size=max_shard_size, processor=processor,
                             tokenizer=tokenizer, **hub_kwargs)
        elif hub_kwargs:
            raise TypeError(f"save_pretrained got unexpected keyword(s) {sorted(hub_kwargs)} (Hub keywords need "
                            "push_to_hub=True)")

    def push_to_hub(self, repo_id: str, **kwargs: Any):
        """Upload the model (:meth:`save_pretrained`'s files) to the Hub repository ``repo_id``
        with ``huggingface_hub`` (``format``, ``private``, ``token``, ``revision``,
        ``commit_message``, ``create_pr``, ``max_shard_size``, ``processor``, ``tokenizer``).
        Needs the network and a token with write access."""
        from .convert import push_to_hub

        return push_to_hub(self, repo_id, **kwargs)

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

    def num_parameters(self, only_trainable: bool = False, exclude_embeddings: bool = False) -> int:
        """Number of parameters (each tied tensor once), as ``transformers`` counts them;
        ``exclude_embeddings`` leaves out the weights of the ``nn.Embedding`` modules."""
        return sum(
            p.numel()
            for _, own, owner, p in _named_own_parameters(self)
            if (p.requires_grad or not only_trainable)
            and not (exclude_embeddings and own == "weight" and isinstance(owner, nn.Embedding))
        )

    def activation_checkpointing_enable(
        self, activation_checkpointing_kwargs: dict | None = None, every_n_layers: int = 1, offload: bool = False
    ) -> None:
        """``transformers``' name (5.x; what ``transformers.Trainer`` calls) for
        :meth:`set_gradient_checkpointing` ``(True)``: every tower block and cross layer is
        recomputed in the backward pass, always with the non-reentrant
        ``torch.utils.checkpoint``.  Only what that means is accepted: ``every_n_layers=1``,
        ``offload=False`` and ``activation_checkpointing_kwargs`` of at most
        ``{"use_reentrant": False}``; anything else raises ``ValueError``."""
        kwargs = dict(activation_checkpointing_kwargs or {})
        if kwargs.pop("use_reentrant", False) is not False or kwargs:
            raise ValueError(
                "activation_checkpointing_kwargs: bridgetower always checkpoints with use_reentrant=False and takes "
                f"no other option; got {activation_checkpointing_kwargs!r}"
            )
        if every_n_layers != 1 or offload is not False:
            raise ValueError(
                f"activation checkpointing: every_n_layers={every_n_layers!r}, offload={offload!r} are not supported "
                "(bridgetower checkpoints every layer, on the device): use every_n_layers=1, offload=False"
            )
        self.set_gradient_checkpointing(True)

    def activation_checkpointing_disable(self) -> None:
        """``transformers``' name for :meth:`set_gradient_checkpointing` ``(False)``."""
        self.set_gradient_checkpointing(False)

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict | None = None, **kwargs: Any) -> None:
        """The older ``transformers`` name of :meth:`activation_checkpointing_enable` (``kwargs``:
        ``every_n_layers``, ``offload``)."""
        self.activation_checkpointing_enable(gradient_checkpointing_kwargs, **kwargs)

    def gradient_checkpointing_disable(self) -> None:
        """The older ``transformers`` name of :meth:`activation_checkpointing_disable`."""
        self.set_gradient_checkpointing(False)

    @property
    def is_activation_checkpointing(self) -> bool:
        """Whether some module recomputes its activations in the backward pass."""
        return any(getattr(m, "gradient_checkpointing", False) is True for m in self.modules())

    @property
    def is_gradient_checkpointing(self) -> bool:
        """The older ``transformers`` name of :attr:`is_activation_checkpointing`."""
        return self.is_activation_checkpointing

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
