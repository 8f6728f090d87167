"""Task models: BridgeTower with heads.

Hugging Face has four BridgeTower classes; ours keep their forward signatures
(``input_ids, attention_mask, pixel_values, pixel_mask, labels``) and return dataclasses with
``.logits`` (and ``.loss`` when labels are given):

=========================================== ============================== ==================
class                                       head(s)                        logits
=========================================== ============================== ==================
:class:`BridgeTowerForImageAndTextRetrieval` ``itm_score`` (ITM)            (B, 2), 1 = match
:class:`BridgeTowerForMaskedLM`             ``mlm_score``                  (B, L, V)
:class:`BridgeTowerForContrastiveLearning`  ``contrastive`` (HF's 3 heads) (B, 3, E)
:class:`BridgeTowerForPretraining`          MLM + ITM + official ITC       per objective
:class:`BridgeTowerForVisualQuestionAnswering` ``vqa_classifier``          (B, num_answers)
:class:`BridgeTowerForNLVR2`                ``nlvr2_classifier`` (2 images) (B, 2)
:class:`BridgeTowerForSNLIVE`               ``snli_classifier``            (B, 3)
:class:`BridgeTowerForIRTR`                 ``rank_output``                (B, 1 + K)
=========================================== ============================== ==================

Every task model holds the encoder as ``bridgetower`` (as HF does), exposes
``encode_text``/``encode_image``/``fuse`` of it, and has ``from_pretrained`` /
``save_pretrained`` (our safetensors format, or the HF format, see
:mod:`bridgetower.models.convert`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn

from ..layers.heads import (
    ContrastiveHeads,
    IRTRHead,
    ITCHead,
    ITMHead,
    MLMHead,
    NLVR2Head,
    SNLIVEHead,
    VQAHead,
    irtr_loss,
    itm_loss,
    mlm_loss,
    nlvr2_loss,
    snli_loss,
    vqa_loss,
)
from .bridgetower import (
    BridgeTowerModel,
    BridgeTowerOutput,
    BridgeTowerPreTrainedMixin,
    patch_mask_from_pixel_mask,
)
from .config import BridgeTowerConfig

logger = logging.getLogger(__name__)

__all__ = [
    "TASK_MODELS",
    "BridgeTowerContrastiveOutput",
    "BridgeTowerForContrastiveLearning",
    "BridgeTowerForIRTR",
    "BridgeTowerForImageAndTextRetrieval",
    "BridgeTowerForMaskedLM",
    "BridgeTowerForNLVR2",
    "BridgeTowerForPretraining",
    "BridgeTowerForSNLIVE",
    "BridgeTowerForVisualQuestionAnswering",
    "BridgeTowerPretrainingOutput",
    "TaskOutput",
]


# ---------------------------------------------------------------- outputs


@dataclass
class TaskOutput:
    """``logits`` of the task head, ``loss`` when labels were given, and the encoder output."""

    logits: torch.Tensor
    loss: torch.Tensor | None = None
    pooler_output: torch.Tensor | None = None
    encoder_output: BridgeTowerOutput | None = None


@dataclass
class BridgeTowerContrastiveOutput:
    """HF-style contrastive output: ``logits`` (B, 3, E) = stacked text/image/cross embeds."""

    logits: torch.Tensor
    text_embeds: torch.Tensor
    image_embeds: torch.Tensor
    cross_embeds: torch.Tensor
    loss: torch.Tensor | None = None
    encoder_output: BridgeTowerOutput | None = None


@dataclass
class BridgeTowerPretrainingOutput:
    """Everything the pre-training objectives need from one fused batch.

    Attributes:
        mlm_logits: (B, L, V) MLM logits on the cross-modal text features.
        itm_logits: (B, 2) ITM logits on the pooled output (index 1 = match).
        itc_text_embeds, itc_image_embeds: (B, itc_dim) L2-normalised uni-modal CLS
            projections (official ITC), or None when ``compute_itc=False``.
        itc_temperature: the clamped ITC temperature (0-d tensor).
        loss: sum of the losses computed (None when no labels and no ITC loss requested);
        mlm_loss / itm_loss / itc_loss: the individual losses (None when not computed).
        encoder_output: the :class:`BridgeTowerOutput` (features, pooler, tapped states).
    """

    mlm_logits: torch.Tensor | None
    itm_logits: torch.Tensor | None
    itc_text_embeds: torch.Tensor | None
    itc_image_embeds: torch.Tensor | None
    itc_temperature: torch.Tensor | None
    loss: torch.Tensor | None = None
    mlm_loss: torch.Tensor | None = None
    itm_loss: torch.Tensor | None = None
    itc_loss: torch.Tensor | None = None
    encoder_output: BridgeTowerOutput | None = None

    @property
    def logits(self) -> torch.Tensor | None:
        """The ITM logits (what HF's retrieval model calls ``logits``)."""
        return self.itm_logits


# ---------------------------------------------------------------- base


class _TaskModel(BridgeTowerPreTrainedMixin, nn.Module):
    """Holds ``bridgetower`` (the encoder) and forwards the three encoder steps."""

    def __init__(self, config: BridgeTowerConfig, *, device=None, dtype=None) -> None:
        super().__init__()
        if not isinstance(config, BridgeTowerConfig):
            raise TypeError(f"config must be a BridgeTowerConfig, got {type(config).__name__}")
        self.config = config
        self.bridgetower = BridgeTowerModel(config, device=device, dtype=dtype)

    @property
    def hidden_size(self) -> int:
        return self.config.fusion.hidden_size

    def encode_text(self, input_ids, attention_mask=None):
        return self.bridgetower.encode_text(input_ids, attention_mask)

    def encode_image(self, pixel_values):
        return self.bridgetower.encode_image(pixel_values)

    def fuse(self, text_states, image_states, attention_mask=None, image_mask=None, **kw):
        return self.bridgetower.fuse(text_states, image_states, attention_mask, image_mask, **kw)

    def set_gradient_checkpointing(self, enable: bool = True) -> None:
        self.bridgetower.set_gradient_checkpointing(enable)

    def set_attention_backend(self, backend: str | None) -> None:
        self.bridgetower.set_attention_backend(backend)

    def _encode(self, input_ids, attention_mask, pixel_values, pixel_mask, **kw) -> BridgeTowerOutput:
        """The encoder; task heads that read only the pooler pass ``pooled_only=True``."""
        return self.bridgetower(input_ids, attention_mask, pixel_values, pixel_mask, **kw)


def _score_pairs(model: _TaskModel, head, pixel_values, input_ids, attention_mask, batch_size):
    """(I images) x (T texts): encode each once, fuse all ``I*T`` pairs, ``head(pooled)``."""
    bt = model.bridgetower
    if pixel_values.ndim == 3:
        pixel_values = pixel_values.unsqueeze(0)
    if input_ids.ndim == 1:
        input_ids = input_ids.unsqueeze(0)
        attention_mask = attention_mask.unsqueeze(0) if attention_mask is not None else None
    image_states = bt.encode_image(pixel_values)
    text_states = bt.encode_text(input_ids, attention_mask)
    n_img, n_txt = pixel_values.shape[0], input_ids.shape[0]
    dev = input_ids.device
    image_index = torch.arange(n_img, device=dev).repeat_interleave(n_txt)  # (I*T,)
    text_index = torch.arange(n_txt, device=dev).repeat(n_img)  # (I*T,)
    step = batch_size or image_index.numel()
    if step <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    scores = []
    for s in range(0, image_index.numel(), step):
        out = bt.fuse_pairs(
            text_states, image_states, attention_mask, text_index[s : s + step], image_index[s : s + step],
            pooled_only=True,
        )
        scores.append(head(out.pooler_output))
    return torch.cat(scores, 0).reshape(n_img, n_txt, *scores[0].shape[1:])


# ---------------------------------------------------------------- HF-compatible tasks


class BridgeTowerForImageAndTextRetrieval(_TaskModel):
    """Image-text matching (HF ``BridgeTowerForImageAndTextRetrieval``).

    ``forward(input_ids, attention_mask, pixel_values, pixel_mask=None, labels=None)`` ->
    :class:`TaskOutput` with ``logits`` (B, 2) (index 1 = match) and the CE ``loss`` when
    ``labels`` (B,) are given.  :meth:`score` scores every image against every text.
    """

    def __init__(self, config: BridgeTowerConfig, *, device=None, dtype=None) -> None:
        super().__init__(config, device=device, dtype=dtype)
        self.itm_score = ITMHead(self.hidden_size, device=device, dtype=dtype)

    def forward(self, input_ids, attention_mask=None, pixel_values=None, pixel_mask=None, labels=None):
        out = self._encode(input_ids, attention_mask, pixel_values, pixel_mask, pooled_only=True)
        logits = self.itm_score(out.pooler_output)
        loss = itm_loss(logits, labels) if labels is not None else None
        return TaskOutput(logits=logits, loss=loss, pooler_output=out.pooler_output, encoder_output=out)

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
        logits = _score_pairs(self, self.itm_score, pixel_values, input_ids, attention_mask, batch_size)
        return logits[..., 1]


class BridgeTowerForMaskedLM(_TaskModel):
    """Masked language modelling (HF ``BridgeTowerForMaskedLM``): ``logits`` (B, L, V)."""

    def __init__(self, config: BridgeTowerConfig, *, device=None, dtype=None) -> None:
        super().__init__(config, device=device, dtype=dtype)
        self.mlm_score = MLMHead(
            self.hidden_size, config.text.vocab_size, eps=config.head_layer_norm_eps, device=device, dtype=dtype
        )

    def forward(self, input_ids, attention_mask=None, pixel_values=None, pixel_mask=None, labels=None):
        out = self._encode(input_ids, attention_mask, pixel_values, pixel_mask)
        logits = self.mlm_score(out.text_features)
        loss = mlm_loss(logits, labels) if labels is not None else None
        return TaskOutput(logits=logits, loss=loss, pooler_output=out.pooler_output, encoder_output=out)


def _image_cls_projected(bt: BridgeTowerModel, image_states, image_token_type_idx: int = 1) -> torch.Tensor:
    """``W_V ln_post(V_last)[:, 0] + e1``: the image CLS in the cross-modal space (B, H)."""
    return bt.cross_modal_image_transform(image_states[-1][:, 0]) + bt.token_type_embeddings.weight[
        image_token_type_idx
    ]


class BridgeTowerForContrastiveLearning(_TaskModel):
    """HF ``BridgeTowerForContrastiveLearning``: text, image and cross-modal embeddings.

    Text CLS of the text tower's last layer, image CLS of the last vision layer after
    ``ln_post``, projected by ``cross_modal_image_transform`` plus the image token type (so,
    unlike HF, any vision width works), and the pooled output, each through its head and
    L2-normalised.  ``forward(..., return_loss=False)``; ``logits`` (B, 3, E).
    """

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

    def forward(self, input_ids, attention_mask=None, pixel_values=None, pixel_mask=None, return_loss=False):
        out = self._encode(input_ids, attention_mask, pixel_values, pixel_mask, pooled_only=True)
        text_cls = out.text_hidden_states[-1][:, 0]  # (B, H)
        image_cls = _image_cls_projected(self.bridgetower, out.image_hidden_states)  # (B, H)
        c = self.contrastive(text_cls, image_cls, out.pooler_output)
        loss = self.contrastive.loss(c) if return_loss else None
        return BridgeTowerContrastiveOutput(
            logits=c.logits,
            text_embeds=c.text_embeds,
            image_embeds=c.image_embeds,
            cross_embeds=c.cross_embeds,
            loss=loss,
            encoder_output=out,
        )


# ---------------------------------------------------------------- pre-training


class BridgeTowerForPretraining(_TaskModel):
    """MLM + ITM + official ITC heads on one encoder (the pre-training model).

    Heads: ``mlm_score`` (:class:`MLMHead`, eps ``head_layer_norm_eps``), ``itm_score``
    (:class:`ITMHead`), ``itc`` (:class:`ITCHead` on the uni-modal CLS features: text width
    -> ``itc_dim``, vision width -> ``itc_dim``, temperature ``itc_temperature``; absent, and
    ``itc`` None, when ``itc_dim == 0``).

    ``forward(input_ids, attention_mask, pixel_values, pixel_mask=None, *, mlm_labels=None,
    itm_labels=None, compute_itc=True, return_itc_loss=False)`` fuses the given pairs once
    and returns :class:`BridgeTowerPretrainingOutput` with all logits; each loss is computed
    only when its labels are given (``return_itc_loss`` treats row ``i`` of texts and images
    as the matched pair).  For a step that needs several fusions (masked text for MLM,
    negatives for ITM) use :meth:`pretraining_step`, which encodes each input once.
    """

    def __init__(self, config: BridgeTowerConfig, *, device=None, dtype=None) -> None:
        super().__init__(config, device=device, dtype=dtype)
        fk = {"device": device, "dtype": dtype}
        self.mlm_score = MLMHead(self.hidden_size, config.text.vocab_size, eps=config.head_layer_norm_eps, **fk)
        self.itm_score = ITMHead(self.hidden_size, **fk)
        # itc_dim == 0: no ITC head (e.g. the official MLM+ITM pre-training checkpoints)
        self.itc = (
            ITCHead(
                config.text.hidden_size,
                config.itc_dim,
                image_hidden_size=config.vision.width,
                temperature=config.itc_temperature,
                **fk,
            )
            if config.itc_dim > 0
            else None
        )

    def itc_embeds(self, text_states, image_states) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised ITC embeddings (B, itc_dim) of the text/image CLS of the last layers."""
        if self.itc is None:
            raise ValueError("this model has no ITC head (config.itc_dim == 0)")
        return self.itc(text_states[-1][:, 0], image_states[-1][:, 0])

    def forward(
        self,
        input_ids,
        attention_mask=None,
        pixel_values=None,
        pixel_mask=None,
        *,
        mlm_labels=None,
        itm_labels=None,
        compute_itc: bool = True,
        return_itc_loss: bool = False,
    ) -> BridgeTowerPretrainingOutput:
        out = self._encode(input_ids, attention_mask, pixel_values, pixel_mask)
        mlm_logits = self.mlm_score(out.text_features)
        itm_logits = self.itm_score(out.pooler_output)
        t_emb = i_emb = temp = None
        if return_itc_loss or (compute_itc and self.itc is not None):
            t_emb, i_emb = self.itc_embeds(out.text_hidden_states, out.image_hidden_states)
            temp = self.itc.effective_temperature()
        losses = {}
        if mlm_labels is not None:
            losses["mlm_loss"] = mlm_loss(mlm_logits, mlm_labels)
        if itm_labels is not None:
            losses["itm_loss"] = itm_loss(itm_logits, itm_labels)
        if return_itc_loss:
            losses["itc_loss"] = self.itc.loss(t_emb, i_emb)
        return BridgeTowerPretrainingOutput(
            mlm_logits=mlm_logits,
            itm_logits=itm_logits,
            itc_text_embeds=t_emb,
            itc_image_embeds=i_emb,
            itc_temperature=temp,
            loss=sum(losses.values()) if losses else None,
            encoder_output=out,
            **losses,
        )

    def pretraining_step(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        pixel_values: torch.Tensor,
        *,
        mlm_input_ids: torch.Tensor | None = None,
        mlm_labels: torch.Tensor | None = None,
        itm_image_index: torch.Tensor | None = None,
        itm_labels: torch.Tensor | None = None,
        itc: bool = False,
        itc_gather=None,
    ) -> BridgeTowerPretrainingOutput:
        """One pre-training batch of matched pairs ``(input_ids[i], pixel_values[i])``.

        * MLM (when ``mlm_input_ids``/``mlm_labels`` given): the masked text fused with its
          own image; CE over positions with label != -100.
        * ITM (when ``itm_labels`` given): text ``i`` fused with image ``itm_image_index[i]``
          (default: its own); ``itm_labels[i]`` = 1 for a match, 0 otherwise.
        * ITC (``itc=True``): symmetric contrastive loss on the uni-modal CLS features of the
          unmasked texts and the images (``itc_gather`` for all-gather across ranks).

        The vision tower runs once on ``pixel_values``; the text tower once per text variant.
        Returns the logits and the unweighted sum of the computed losses as ``loss``.
        """
        bt = self.bridgetower
        image_states = bt.encode_image(pixel_values)
        losses: dict[str, torch.Tensor] = {}
        mlm_logits = itm_logits = t_emb = i_emb = temp = None
        enc_out = None
        if mlm_labels is not None:
            if mlm_input_ids is None:
                raise ValueError("pretraining_step: mlm_labels given without mlm_input_ids")
            masked_states = bt.encode_text(mlm_input_ids, attention_mask)
            enc_out = bt.fuse(masked_states, image_states, attention_mask)
            mlm_logits = self.mlm_score(enc_out.text_features)
            losses["mlm_loss"] = mlm_loss(mlm_logits, mlm_labels)
        if itm_labels is not None or itc:
            text_states = bt.encode_text(input_ids, attention_mask)
            if itm_labels is not None:
                b = input_ids.shape[0]
                idx = torch.arange(b, device=input_ids.device)
                img_idx = itm_image_index if itm_image_index is not None else idx
                itm_out = bt.fuse_pairs(text_states, image_states, attention_mask, idx, img_idx, pooled_only=True)
                itm_logits = self.itm_score(itm_out.pooler_output)
                losses["itm_loss"] = itm_loss(itm_logits, itm_labels)
                enc_out = enc_out or itm_out
            if itc:
                t_emb, i_emb = self.itc_embeds(text_states, image_states)
                temp = self.itc.effective_temperature()
                losses["itc_loss"] = self.itc.loss(t_emb, i_emb, gather=itc_gather)
        return BridgeTowerPretrainingOutput(
            mlm_logits=mlm_logits,
            itm_logits=itm_logits,
            itc_text_embeds=t_emb,
            itc_image_embeds=i_emb,
            itc_temperature=temp,
            loss=sum(losses.values()) if losses else None,
            encoder_output=enc_out,
            **losses,
        )

    @torch.no_grad()
    def score(self, pixel_values, input_ids, attention_mask=None, *, batch_size=None) -> torch.Tensor:
        """ITM match logits of every (image, text) pair, ``(I, T)`` (see the ITM model)."""
        return _score_pairs(self, self.itm_score, pixel_values, input_ids, attention_mask, batch_size)[..., 1]


# ---------------------------------------------------------------- downstream tasks


class _PooledClassifierTask(_TaskModel):
    """A classifier on the pooled output: subclasses name the head attribute (its checkpoint
    prefix), build the head, and give the loss."""

    head_name: str

    @staticmethod
    def task_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, input_ids, attention_mask=None, pixel_values=None, pixel_mask=None, labels=None):
        out = self._encode(input_ids, attention_mask, pixel_values, pixel_mask, pooled_only=True)
        logits = getattr(self, self.head_name)(out.pooler_output)
        loss = self.task_loss(logits, labels) if labels is not None else None
        return TaskOutput(logits=logits, loss=loss, pooler_output=out.pooler_output, encoder_output=out)


class BridgeTowerForVisualQuestionAnswering(_PooledClassifierTask):
    """VQA: ``vqa_classifier`` on the pooled output; ``labels`` are (B, num_answers) soft scores."""

    head_name = "vqa_classifier"
    task_loss = staticmethod(vqa_loss)

    def __init__(self, config: BridgeTowerConfig, *, device=None, dtype=None) -> None:
        super().__init__(config, device=device, dtype=dtype)
        self.vqa_classifier = VQAHead(self.hidden_size, config.vqa_num_labels, device=device, dtype=dtype)


class BridgeTowerForSNLIVE(_PooledClassifierTask):
    """SNLI-VE: ``snli_classifier`` (3-way) on the pooled output; ``labels`` (B,)."""

    head_name = "snli_classifier"
    task_loss = staticmethod(snli_loss)

    def __init__(self, config: BridgeTowerConfig, *, device=None, dtype=None) -> None:
        super().__init__(config, device=device, dtype=dtype)
        self.snli_classifier = SNLIVEHead(self.hidden_size, config.snli_num_labels, device=device, dtype=dtype)


class BridgeTowerForNLVR2(_TaskModel):
    """NLVR2: one text, two images.

    The text is fused with image 1 (image token type 1) and with image 2 (token type 2; the
    3-row token-type table, ``fusion.num_token_types = 3``, is set automatically), and
    ``nlvr2_classifier`` reads both pooled outputs concatenated (B, 4H).

    ``forward(input_ids, attention_mask, pixel_values, pixel_mask=None, labels=None,
    pixel_values_2=None)``: ``pixel_values`` (B, 2, 3, H, W), or (B, 3, H, W) with the second
    image in ``pixel_values_2``.  The text tower runs once, the vision tower once on both images.
    """

    def __init__(self, config: BridgeTowerConfig, *, device=None, dtype=None) -> None:
        if config.fusion.num_token_types != 3:
            config = config.replace(fusion={"num_token_types": 3})
        super().__init__(config, device=device, dtype=dtype)
        self.nlvr2_classifier = NLVR2Head(self.hidden_size, device=device, dtype=dtype)

    def forward(
        self, input_ids, attention_mask=None, pixel_values=None, pixel_mask=None, labels=None, pixel_values_2=None
    ):
        if pixel_values is None:
            raise ValueError("BridgeTowerForNLVR2 needs pixel_values")
        if pixel_values_2 is None:
            if pixel_values.ndim != 5 or pixel_values.shape[1] != 2:
                raise ValueError(
                    "BridgeTowerForNLVR2: pixel_values must be (B, 2, 3, H, W) or give pixel_values_2; "
                    f"got {tuple(pixel_values.shape)}"
                )
            pixel_values, pixel_values_2 = pixel_values[:, 0], pixel_values[:, 1]
        if pixel_values.shape != pixel_values_2.shape:
            raise ValueError(
                f"BridgeTowerForNLVR2: image shapes differ: {tuple(pixel_values.shape)} vs "
                f"{tuple(pixel_values_2.shape)}"
            )
        bt = self.bridgetower
        b = pixel_values.shape[0]
        text_states = bt.encode_text(input_ids, attention_mask)
        both = bt.encode_image(torch.cat([pixel_values, pixel_values_2], 0))  # (2B, ...)
        image_mask = patch_mask_from_pixel_mask(pixel_mask, self.config.vision.patch_size)
        out1 = bt.fuse(
            text_states, [v[:b] for v in both], attention_mask, image_mask, image_token_type_idx=1, pooled_only=True
        )
        out2 = bt.fuse(
            text_states, [v[b:] for v in both], attention_mask, image_mask, image_token_type_idx=2, pooled_only=True
        )
        logits = self.nlvr2_classifier(out1.pooler_output, out2.pooler_output)
        loss = nlvr2_loss(logits, labels) if labels is not None else None
        pooled = torch.cat([out1.pooler_output, out2.pooler_output], dim=-1)
        return TaskOutput(logits=logits, loss=loss, pooler_output=pooled, encoder_output=out1)

    @torch.no_grad()
    def init_token_type_from_pretrained(self) -> None:
        """Copy token-type row 1 into row 2, as the official NLVR2 fine-tuning starts."""
        w = self.bridgetower.token_type_embeddings.weight
        w[2].copy_(w[1])


class BridgeTowerForIRTR(_TaskModel):
    """Image-text retrieval ranking: ``rank_output`` (Linear(2H, 1)) on the pooled output.

    ``forward(input_ids, attention_mask, pixel_values, pixel_mask=None, labels=None)`` with
    ``input_ids``/``attention_mask`` (B, 1 + K, L) -- per image its positive text first and K
    false texts -- and ``pixel_values`` (B, 3, H, W): ``logits`` (B, 1 + K) ranking scores;
    the loss (CE with target 0) when ``labels`` is not None (any value; the positive is
    column 0).  Each image runs through the vision tower once for its 1 + K texts.
    :meth:`init_from_itm` copies ITM row 1 into the ranking head.
    """

    def __init__(self, config: BridgeTowerConfig, *, device=None, dtype=None) -> None:
        super().__init__(config, device=device, dtype=dtype)
        self.rank_output = IRTRHead(self.hidden_size, device=device, dtype=dtype)

    def init_from_itm(self, itm_head: ITMHead) -> None:
        self.rank_output.init_from_itm(itm_head)

    def forward(self, input_ids, attention_mask=None, pixel_values=None, pixel_mask=None, labels=None):
        if input_ids.ndim != 3:
            raise ValueError(f"BridgeTowerForIRTR: input_ids must be (B, 1+K, L), got {tuple(input_ids.shape)}")
        b, k1, length = input_ids.shape
        if pixel_values is None or pixel_values.shape[0] != b:
            raise ValueError(
                f"BridgeTowerForIRTR: pixel_values must be (B={b}, 3, H, W), got "
                f"{None if pixel_values is None else tuple(pixel_values.shape)}"
            )
        bt = self.bridgetower
        flat_ids = input_ids.reshape(b * k1, length)
        flat_mask = attention_mask.reshape(b * k1, length) if attention_mask is not None else None
        text_states = bt.encode_text(flat_ids, flat_mask)
        image_states = bt.encode_image(pixel_values)
        image_mask = patch_mask_from_pixel_mask(pixel_mask, self.config.vision.patch_size)
        dev = input_ids.device
        out = bt.fuse_pairs(
            text_states,
            image_states,
            flat_mask,
            torch.arange(b * k1, device=dev),
            torch.arange(b, device=dev).repeat_interleave(k1),
            image_mask,
            pooled_only=True,
        )
        logits = self.rank_output(out.pooler_output).reshape(b, k1)
        loss = irtr_loss(logits) if labels is not None else None
        return TaskOutput(logits=logits, loss=loss, pooler_output=out.pooler_output, encoder_output=out)


TASK_MODELS: dict[str, type[nn.Module]] = {
    "base": BridgeTowerModel,
    "itm": BridgeTowerForImageAndTextRetrieval,
    "mlm": BridgeTowerForMaskedLM,
    "contrastive": BridgeTowerForContrastiveLearning,
    "pretraining": BridgeTowerForPretraining,
    "vqa": BridgeTowerForVisualQuestionAnswering,
    "nlvr2": BridgeTowerForNLVR2,
    "snli_ve": BridgeTowerForSNLIVE,
    "irtr": BridgeTowerForIRTR,
}
