"""What the models return: dataclasses that behave like ``transformers``' ``ModelOutput``.

Every output is a ``transformers.utils.ModelOutput`` subclass: attributes (``out.logits``),
string keys (``out["logits"]``), integer indices over the fields that are set
(``out[0]`` is ``loss`` when labels were given, else ``logits``), ``out.keys()`` and
``out.to_tuple()`` all work, so code and tools written for ``transformers`` (its ``Trainer``
among them) read our outputs unchanged.  Fields that are ``None`` are left out of the
mapping and the tuple, as in ``transformers``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.utils import ModelOutput

__all__ = [
    "BridgeTowerContrastiveOutput",
    "BridgeTowerOutput",
    "BridgeTowerPretrainingOutput",
    "TaskOutput",
]


@dataclass
class BridgeTowerOutput(ModelOutput):
    """What :class:`~bridgetower.models.BridgeTowerModel` returns.

    Attributes:
        text_features: ``(B, L, H)`` last cross-modal text layer output.
        image_features: ``(B, 1 + P, H)`` last cross-modal image layer output.
        pooler_output: ``(B, 2H)`` ``[tanh(P_t text CLS); tanh(P_v image CLS)]``.
        text_hidden_states: the ``N`` tapped text-tower states ``(B, L, H_text)``, bottom to
            top (the last one is the text tower's output).
        image_hidden_states: the ``N`` tapped vision states after ``ln_post``
            ``(B, 1 + P, H_vision)``, bottom to top.
        cross_hidden_states: with ``output_hidden_states=True``, one ``(text, image)`` pair per
            cross-modal layer; otherwise ``None``.
    """

    text_features: torch.Tensor | None = None
    image_features: torch.Tensor | None = None
    pooler_output: torch.Tensor | None = None
    text_hidden_states: tuple[torch.Tensor, ...] | None = None
    image_hidden_states: tuple[torch.Tensor, ...] | None = None
    cross_hidden_states: tuple[tuple[torch.Tensor, torch.Tensor], ...] | None = None


@dataclass
class TaskOutput(ModelOutput):
    """``loss`` when labels were given, the task head's ``logits``, the pooled output and the
    encoder output."""

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    pooler_output: torch.Tensor | None = None
    encoder_output: BridgeTowerOutput | None = None


@dataclass
class BridgeTowerContrastiveOutput(ModelOutput):
    """HF-style contrastive output: ``logits`` (B, 3, E) = stacked text/image/cross embeds."""

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    text_embeds: torch.Tensor | None = None
    image_embeds: torch.Tensor | None = None
    cross_embeds: torch.Tensor | None = None
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

    @property
    def logits(self) -> torch.Tensor | None:
        """The ITM logits (what HF's retrieval model calls ``logits``)."""
        return self.itm_logits
