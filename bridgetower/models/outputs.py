"""What the models return: dataclasses that behave like ``transformers``' ``ModelOutput``.

Every output is a ``transformers.utils.ModelOutput`` subclass: attributes (``out.logits``),
string keys (``out["logits"]``), integer indices over the fields that are set
(``out[0]`` is ``loss`` when labels were given, else ``logits``), ``out.keys()`` and
``out.to_tuple()`` all work, so code and tools written for ``transformers`` (its ``Trainer``
among them) read our outputs unchanged.  Fields that are ``None`` are left out of the
mapping and the tuple, as in ``transformers``.

The mapping holds the fields ``transformers``' classes return, in their order
(``text_features, image_features, pooler_output, hidden_states, attentions`` for the encoder;
``loss, logits, hidden_states, attentions`` for the heads), plus ``cross_attentions`` when
attentions were requested.  What only ``bridgetower`` has (the pooled output of a task model,
its encoder output, the tapped uni-modal states) are *attributes* outside the mapping
(``_attribute_fields``): ``out.pooler_output`` works, ``out.keys()`` and ``out.to_tuple()``
are those of ``transformers``, and ``transformers.Trainer`` evaluates on ``logits`` alone.
Attributes do not survive ``torch.utils._pytree`` flattening (what ``torch.compile`` and DDP
with ``find_unused_parameters`` do to outputs): read them from an eager call.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import ClassVar

import torch
from transformers.utils import ModelOutput

__all__ = [
    "BridgeTowerContrastiveOutput",
    "BridgeTowerOutput",
    "BridgeTowerPretrainingOutput",
    "TaskOutput",
]


@dataclass
class _Output(ModelOutput):
    """A ``ModelOutput`` whose ``_attribute_fields`` are attributes only: not keys, not
    indices, not items of ``to_tuple()`` (see the module docstring)."""

    _attribute_fields: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in self._attribute_fields:
            if name in self.keys():
                OrderedDict.__delitem__(self, name)  # ModelOutput forbids ``del``; bypass it

    def __setattr__(self, name, value) -> None:
        if name in self._attribute_fields:  # an attribute, never a key
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)


@dataclass
class BridgeTowerOutput(_Output):
    """What :class:`~bridgetower.models.BridgeTowerModel` returns.

    Keys (those of ``transformers``' ``BridgeTowerModelOutput``):
        text_features: ``(B, L, H)`` last cross-modal text layer output.
        image_features: ``(B, 1 + P, H)`` last cross-modal image layer output.
        pooler_output: ``(B, 2H)`` ``[tanh(P_t text CLS); tanh(P_v image CLS)]``.
        hidden_states: with ``output_hidden_states=True``, ``transformers``' triple
            ``(text, image, cross)``: every text-tower state (embeddings, then each layer)
            ``(B, L, H_text)``; every vision state (``ln_pre`` output, then each block, no
            ``ln_post``) sequence-first ``(1 + P, B, H_vision)`` as ``transformers`` returns
            them; one ``(text, image)`` pair per cross-modal layer.
        attentions: with ``output_attentions=True``, one ``(text, image)`` pair of
            self-attention probabilities per cross-modal layer, ``(B, heads, L, L)`` and
            ``(B, heads, 1 + P, 1 + P)``, differentiable.
        cross_attentions: with ``output_attentions=True`` (``bridgetower`` only), one
            ``(text, image)`` pair of cross-attention probabilities per cross-modal layer,
            ``(B, heads, L, 1 + P)`` and ``(B, heads, 1 + P, L)``.

    Attributes only (not keys):
        text_hidden_states: the ``N`` tapped text-tower states ``(B, L, H_text)``, bottom to
            top (the last one is the text tower's output).
        image_hidden_states: the ``N`` tapped vision states after ``ln_post``
            ``(B, 1 + P, H_vision)``, bottom to top.
        cross_hidden_states: with ``output_hidden_states=True``, one ``(text, image)`` pair per
            cross-modal layer (``hidden_states[2]``); otherwise ``None``.
    """

    _attribute_fields: ClassVar[tuple[str, ...]] = (
        "text_hidden_states", "image_hidden_states", "cross_hidden_states",
    )

    text_features: torch.Tensor | None = None
    image_features: torch.Tensor | None = None
    pooler_output: torch.Tensor | None = None
    hidden_states: tuple | None = None
    attentions: tuple[tuple[torch.Tensor, torch.Tensor], ...] | None = None
    cross_attentions: tuple[tuple[torch.Tensor, torch.Tensor], ...] | None = None
    text_hidden_states: tuple[torch.Tensor, ...] | None = None
    image_hidden_states: tuple[torch.Tensor, ...] | None = None
    cross_hidden_states: tuple[tuple[torch.Tensor, torch.Tensor], ...] | None = None


@dataclass
class TaskOutput(_Output):
    """What a task model returns.

    Keys (those of ``transformers``' ``SequenceClassifierOutput`` / ``MaskedLMOutput``):
    ``loss`` when labels were given, the head's ``logits``, and ``hidden_states`` /
    ``attentions`` / ``cross_attentions`` when requested (as in :class:`BridgeTowerOutput`).
    Attributes only: ``pooler_output`` (B, 2H) and ``encoder_output``
    (:class:`BridgeTowerOutput`).
    """

    _attribute_fields: ClassVar[tuple[str, ...]] = ("pooler_output", "encoder_output")

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    hidden_states: tuple | None = None
    attentions: tuple | None = None
    cross_attentions: tuple | None = None
    pooler_output: torch.Tensor | None = None
    encoder_output: BridgeTowerOutput | None = None


@dataclass
class BridgeTowerContrastiveOutput(_Output):
    """HF-style contrastive output: ``logits`` (B, 3, E) = stacked text/image/cross embeds;
    ``hidden_states`` / ``attentions`` when requested; ``encoder_output`` is an attribute."""

    _attribute_fields: ClassVar[tuple[str, ...]] = ("encoder_output",)

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    text_embeds: torch.Tensor | None = None
    image_embeds: torch.Tensor | None = None
    cross_embeds: torch.Tensor | None = None
    hidden_states: tuple | None = None
    attentions: tuple | None = None
    cross_attentions: tuple | None = None
    encoder_output: BridgeTowerOutput | None = None


@dataclass
class BridgeTowerPretrainingOutput(ModelOutput):
    """Everything the pre-training objectives need from one step.

    Attributes:
        loss: unweighted sum of the losses computed (None when none was).
        mlm_loss / itm_loss / itc_loss: the individual losses (None when not computed).
        mlm_logits: (B, L, V) MLM logits on the cross-modal text features.
        itm_logits: (B, 2) ITM logits on the pooled output (index 1 = match).
        itc_text_embeds, itc_image_embeds: (B, itc_dim) L2-normalised uni-modal CLS
            projections (official ITC), when computed.
        itc_temperature: the clamped ITC temperature (0-d tensor), when computed.
        encoder_output: the :class:`BridgeTowerOutput` of the fusion (a single-fusion
            ``forward``; None from :meth:`~bridgetower.models.BridgeTowerForPretraining.pretraining_step`).
        hidden_states, attentions, cross_attentions: as in :class:`BridgeTowerOutput`, when
            requested from ``forward``.
    """

    loss: torch.Tensor | None = None
    mlm_loss: torch.Tensor | None = None
    itm_loss: torch.Tensor | None = None
    itc_loss: torch.Tensor | None = None
    mlm_logits: torch.Tensor | None = None
    itm_logits: torch.Tensor | None = None
    itc_text_embeds: torch.Tensor | None = None
    itc_image_embeds: torch.Tensor | None = None
    itc_temperature: torch.Tensor | None = None
    encoder_output: BridgeTowerOutput | None = None
    hidden_states: tuple | None = None
    attentions: tuple | None = None
    cross_attentions: tuple | None = None

    @property
    def logits(self) -> torch.Tensor | None:
        """The ITM logits (what HF's retrieval model calls ``logits``)."""
        return self.itm_logits
