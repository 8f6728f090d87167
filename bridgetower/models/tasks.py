"""Task models: BridgeTower with heads, and the registry of task names.

Hugging Face has four BridgeTower classes; ours keep their forward signatures
(``input_ids, attention_mask, pixel_values, pixel_mask, labels``) and return
``ModelOutput``-like dataclasses (:mod:`bridgetower.models.outputs`) with ``.logits`` (and
``.loss`` when labels are given):

=========================================== ============================== ==================
class                                       head(s)                        logits
=========================================== ============================== ==================
:class:`BridgeTowerForImageAndTextRetrieval` ``itm_score`` (ITM)            (B, 2), 1 = match
:class:`BridgeTowerForMaskedLM`             ``mlm_score``                  (B, L, V)
:class:`BridgeTowerForContrastiveLearning`  ``contrastive`` (HF's 3 heads) (B, 3, E)
:class:`BridgeTowerForPretraining`          MLM + ITM + official ITC       per objective
=========================================== ============================== ==================

(this module), and the downstream models of :mod:`bridgetower.models.downstream` (VQA,
NLVR2, SNLI-VE, IRTR).  Every task model holds the encoder as ``bridgetower`` (as HF does;
:class:`~bridgetower.models.task_base.TaskModel`).  :data:`TASK_MODELS` maps the task names
of :func:`~bridgetower.models.create_model` (``task=``) to the classes.
"""

from __future__ import annotations

import torch
from torch import nn

from ..layers import ContrastiveHeads, ITMHead, MLMHead, itm_loss, mlm_loss
from .config import BridgeTowerConfig
from .downstream import (
    BridgeTowerForIRTR,
    BridgeTowerForNLVR2,
    BridgeTowerForSNLIVE,
    BridgeTowerForVisualQuestionAnswering,
)
from .embeddings import EmbeddingsMixin
from .model import BridgeTowerModel
from .outputs import BridgeTowerContrastiveOutput, TaskOutput
from .pretraining import BridgeTowerForPretraining
from .task_base import TaskModel, normalize_task_name, score_pairs

__all__ = [
    "TASK_MODELS",
    "BridgeTowerForContrastiveLearning",
    "BridgeTowerForImageAndTextRetrieval",
    "BridgeTowerForMaskedLM",
    "get_task_model",
    "task_name_of",
]


class BridgeTowerForImageAndTextRetrieval(TaskModel):
    """Image-text matching (HF ``BridgeTowerForImageAndTextRetrieval``).

    ``forward(input_ids, attention_mask, pixel_values, pixel_mask=None, labels=None)`` ->
    :class:`TaskOutput` with ``logits`` (B, 2) (index 1 = match) and the CE ``loss`` when
    ``labels`` (B,) are given.  :meth:`score` scores every image against every text.
    """

    head_names = ("itm_score",)

    def __init__(self, config: BridgeTowerConfig, *, device=None, dtype=None) -> None:
        super().__init__(config, device=device, dtype=dtype)
        self.itm_score = ITMHead(self.hidden_size, device=device, dtype=dtype)

    def forward(self, input_ids, attention_mask=None, pixel_values=None, pixel_mask=None, labels=None, **options):
        """``options``: the ``transformers`` forward keywords (``output_hidden_states``,
        ``output_attentions``, ``return_dict``, ``token_type_ids``, ``interpolate_pos_encoding``)
        and ``mask_image_padding``; see :meth:`BridgeTowerModel.forward`."""
        out = self._encode(input_ids, attention_mask, pixel_values, pixel_mask, pooled_only=True, **options)
        logits = self.itm_score(out.pooler_output)
        loss = itm_loss(logits, labels) if labels is not None else None
        return self._output(TaskOutput, out, options.get("return_dict"), loss=loss, logits=logits,
                            pooler_output=out.pooler_output)

    @torch.no_grad()
    def score(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        *,
        batch_size: int | None = None,
    ) -> torch.Tensor:
        """ITM match logits ``logits[..., 1]`` of every (image, text) pair: ``(I, T)``.

        ``pixel_values`` (I, 3, H, W), ``input_ids``/``attention_mask`` (T, L).  Each image and
        each text goes through its tower once; only the fusion runs per pair (in chunks of
        ``batch_size`` pairs when given).
        """
        logits = score_pairs(self, self.itm_score, pixel_values, input_ids, attention_mask, batch_size)
        return logits[..., 1]


class BridgeTowerForMaskedLM(TaskModel):
    """Masked language modelling (HF ``BridgeTowerForMaskedLM``): ``logits`` (B, L, V)."""

    head_names = ("mlm_score",)

    def __init__(self, config: BridgeTowerConfig, *, device=None, dtype=None) -> None:
        super().__init__(config, device=device, dtype=dtype)
        self.mlm_score = MLMHead(
            self.hidden_size, config.text.vocab_size, eps=config.head_layer_norm_eps, device=device, dtype=dtype
        )

    def forward(self, input_ids, attention_mask=None, pixel_values=None, pixel_mask=None, labels=None, **options):
        """``options``: as :meth:`BridgeTowerForImageAndTextRetrieval.forward`'s."""
        out = self._encode(input_ids, attention_mask, pixel_values, pixel_mask, **options)
        logits = self.mlm_score(out.text_features)
        loss = mlm_loss(logits, labels) if labels is not None else None
        return self._output(TaskOutput, out, options.get("return_dict"), loss=loss, logits=logits,
                            pooler_output=out.pooler_output)


def _image_cls_projected(bt: BridgeTowerModel, image_states, image_token_type_idx: int = 1) -> torch.Tensor:
    """``W_V ln_post(V_last)[:, 0] + e1``: the image CLS in the cross-modal space (B, H)."""
    return bt.cross_modal_image_transform(image_states[-1][:, 0]) + bt.token_type_embeddings.weight[
        image_token_type_idx
    ]


class BridgeTowerForContrastiveLearning(EmbeddingsMixin, TaskModel):
    """HF ``BridgeTowerForContrastiveLearning``: text, image and cross-modal embeddings.

    Text CLS of the text tower's last layer, image CLS of the last vision layer after
    ``ln_post``, projected by ``cross_modal_image_transform`` plus the image token type (so,
    unlike HF, any vision width works), and the pooled output, each through its head and
    L2-normalised.  ``forward(..., return_loss=False)``; ``logits`` (B, 3, E).
    """

    head_names = ("contrastive",)

    def __init__(self, config: BridgeTowerConfig, *, device=None, dtype=None) -> None:
        super().__init__(config, device=device, dtype=dtype)
        if config.text.hidden_size != self.hidden_size:
            raise ValueError(
                "BridgeTowerForContrastiveLearning reads the raw text CLS feature: text.hidden_size "
                f"({config.text.hidden_size}) must equal fusion.hidden_size ({self.hidden_size})"
            )
        self.contrastive = ContrastiveHeads(
            self.hidden_size,
            config.contrastive_dim,
            logit_scale_init=config.logit_scale_init,
            device=device,
            dtype=dtype,
        )

    def forward(
        self, input_ids, attention_mask=None, pixel_values=None, pixel_mask=None, return_loss=False, **options
    ):
        """``options``: as :meth:`BridgeTowerForImageAndTextRetrieval.forward`'s."""
        out = self._encode(input_ids, attention_mask, pixel_values, pixel_mask, pooled_only=True, **options)
        text_cls = out.text_hidden_states[-1][:, 0]  # (B, H)
        image_cls = _image_cls_projected(self.bridgetower, out.image_hidden_states)  # (B, H)
        c = self.contrastive(text_cls, image_cls, out.pooler_output)
        loss = self.contrastive.loss(c) if return_loss else None
        return self._output(
            BridgeTowerContrastiveOutput,
            out,
            options.get("return_dict"),
            loss=loss,
            logits=c.logits,
            text_embeds=c.text_embeds,
            image_embeds=c.image_embeds,
            cross_embeds=c.cross_embeds,
        )

    # EmbeddingsMixin: embed_text / embed_image / embed_pair = text_embeds / image_embeds / cross_embeds
    def _text_embedding(self, text_states):
        return self.contrastive.itc_text_head(text_states[-1][:, 0])

    def _image_embedding(self, image_states):
        return self.contrastive.itc_image_head(_image_cls_projected(self.bridgetower, image_states))

    def _pair_embedding(self, pooler_output):
        return self.contrastive.itc_cross_modal_head(pooler_output)


TASK_MODELS: dict[str, type[nn.Module]] = {
    "base": BridgeTowerModel,
    "itm": BridgeTowerForImageAndTextRetrieval,
    "mlm": BridgeTowerForMaskedLM,
    "contrastive": BridgeTowerForContrastiveLearning,
    "pretraining": BridgeTowerForPretraining,
    "vqa": BridgeTowerForVisualQuestionAnswering,
    "nlvr2": BridgeTowerForNLVR2,
    "snli-ve": BridgeTowerForSNLIVE,
    "irtr": BridgeTowerForIRTR,
}
"""Task name (``create_model(task=...)``) -> model class.  Names are spelled with hyphens;
:func:`get_task_model` also accepts underscores (``"snli_ve"``)."""


def get_task_model(task: str) -> type[nn.Module]:
    """The model class of ``task`` (``ValueError`` listing the valid names and close matches)."""
    import difflib

    key = normalize_task_name(task)
    if key not in TASK_MODELS:
        close = difflib.get_close_matches(key, list(TASK_MODELS), n=3, cutoff=0.4)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise ValueError(f"unknown task {task!r}.{hint} Valid tasks: {', '.join(TASK_MODELS)}")
    return TASK_MODELS[key]


def task_name_of(cls: type) -> str:
    """The registry name of a model class (``"base"`` for anything unregistered)."""
    for name, c in TASK_MODELS.items():
        if c is cls:
            return name
    return "base"
