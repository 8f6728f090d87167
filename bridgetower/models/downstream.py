"""Downstream task models of the official fine-tuning recipes: VQA, SNLI-VE, NLVR2, IRTR.

=========================================== =============================== ==================
class                                       head                            logits
=========================================== =============================== ==================
:class:`BridgeTowerForVisualQuestionAnswering` ``vqa_classifier``           (B, num_answers)
:class:`BridgeTowerForSNLIVE`               ``snli_classifier``             (B, 3)
:class:`BridgeTowerForNLVR2`                ``nlvr2_classifier`` (2 images) (B, 2)
:class:`BridgeTowerForIRTR`                 ``rank_output``                 (B, 1 + K)
=========================================== =============================== ==================

``transformers`` has no class for these; they save in our format (and load from the official
``.ckpt`` files of the fine-tuned checkpoints).
"""

from __future__ import annotations

from typing import ClassVar

import torch

from ..layers import (
    IRTRHead,
    ITMHead,
    NLVR2Head,
    SNLIVEHead,
    VQAHead,
    irtr_loss,
    nlvr2_loss,
    snli_loss,
    vqa_loss,
)
from .base import BatchSpec
from .config import BridgeTowerConfig
from .model import check_pixel_values
from .outputs import TaskOutput
from .task_base import TaskModel, check_forward_options

__all__ = [
    "BridgeTowerForIRTR",
    "BridgeTowerForNLVR2",
    "BridgeTowerForSNLIVE",
    "BridgeTowerForVisualQuestionAnswering",
]


class _PooledClassifierTask(TaskModel):
    """A classifier on the pooled output: subclasses name the head attribute (its checkpoint
    prefix), build the head, and give the loss."""

    head_name: str

    @staticmethod
    def task_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, input_ids, attention_mask=None, pixel_values=None, pixel_mask=None, labels=None, **options):
        """``options``: the ``transformers`` forward keywords and ``mask_image_padding`` (see
        :meth:`~bridgetower.models.BridgeTowerModel.forward`)."""
        out = self._encode(input_ids, attention_mask, pixel_values, pixel_mask, pooled_only=True, **options)
        logits = getattr(self, self.head_name)(out.pooler_output)
        loss = self.task_loss(logits, labels) if labels is not None else None
        return self._output(TaskOutput, out, options.get("return_dict"), loss=loss, logits=logits,
                            pooler_output=out.pooler_output)


class BridgeTowerForVisualQuestionAnswering(_PooledClassifierTask):
    """VQA: ``vqa_classifier`` on the pooled output; ``labels`` are (B, num_answers) soft scores."""

    head_name = "vqa_classifier"
    head_names = ("vqa_classifier",)
    task_loss = staticmethod(vqa_loss)

    def __init__(self, config: BridgeTowerConfig, *, device=None, dtype=None) -> None:
        super().__init__(config, device=device, dtype=dtype)
        self.vqa_classifier = VQAHead(self.hidden_size, config.vqa_num_labels, device=device, dtype=dtype)


class BridgeTowerForSNLIVE(_PooledClassifierTask):
    """SNLI-VE: ``snli_classifier`` (3-way) on the pooled output; ``labels`` (B,)."""

    head_name = "snli_classifier"
    head_names = ("snli_classifier",)
    task_loss = staticmethod(snli_loss)

    def __init__(self, config: BridgeTowerConfig, *, device=None, dtype=None) -> None:
        super().__init__(config, device=device, dtype=dtype)
        self.snli_classifier = SNLIVEHead(self.hidden_size, config.snli_num_labels, device=device, dtype=dtype)


class BridgeTowerForNLVR2(TaskModel):
    """NLVR2: one text, two images.

    The text is fused with image 1 (image token type 1) and with image 2 (token type 2; the
    3-row token-type table, ``fusion.num_token_types = 3``, is set automatically), and
    ``nlvr2_classifier`` reads both pooled outputs concatenated (B, 4H).

    ``forward(input_ids, attention_mask, pixel_values, pixel_mask=None, labels=None,
    pixel_values_2=None, pixel_mask_2=None)``: ``pixel_values`` (B, 2, 3, H, W) with
    ``pixel_mask`` (B, 2, H, W), or (B, 3, H, W) with the second image in ``pixel_values_2``
    and its mask in ``pixel_mask_2``.  The text tower runs once, the vision tower once on both
    images.
    """

    batch_spec: ClassVar[BatchSpec] = BatchSpec(
        keys=("input_ids", "attention_mask", "pixel_values", "pixel_mask", "pixel_values_2", "pixel_mask_2",
              "labels"),
        image_keys=("pixel_values", "pixel_mask", "pixel_values_2", "pixel_mask_2"),
    )

    head_names = ("nlvr2_classifier",)

    def __init__(self, config: BridgeTowerConfig, *, device=None, dtype=None) -> None:
        if config.fusion.num_token_types != 3:
            config = config.replace(fusion={"num_token_types": 3})
        super().__init__(config, device=device, dtype=dtype)
        self.nlvr2_classifier = NLVR2Head(self.hidden_size, device=device, dtype=dtype)

    def forward(
        self,
        input_ids,
        attention_mask=None,
        pixel_values=None,
        pixel_mask=None,
        labels=None,
        pixel_values_2=None,
        pixel_mask_2=None,
        **options,
    ):
        """``options``: the ``transformers`` forward keywords and ``mask_image_padding`` (see
        :meth:`~bridgetower.models.BridgeTowerModel.forward`); ``hidden_states`` /
        ``attentions`` / ``cross_attentions`` are then pairs, one item per image."""
        check_forward_options(options)
        if pixel_values is None:
            raise ValueError("BridgeTowerForNLVR2 needs pixel_values")
        for name, value in (("pixel_values", pixel_values), ("pixel_values_2", pixel_values_2)):
            if value is not None and not isinstance(value, torch.Tensor):
                raise TypeError(f"BridgeTowerForNLVR2: {name} must be a tensor, got {type(value).__name__}")
            if value is not None and not value.is_floating_point():
                check_pixel_values(value)  # the same error as the other models give
        if pixel_values_2 is None:
            if pixel_values.ndim != 5 or pixel_values.shape[1] != 2:
                raise ValueError(
                    "BridgeTowerForNLVR2: pixel_values must be (B, 2, 3, H, W) or give pixel_values_2; "
                    f"got {tuple(pixel_values.shape)}"
                )
            if pixel_mask_2 is not None:
                raise ValueError("BridgeTowerForNLVR2: pixel_mask_2 goes with pixel_values_2")
            if pixel_mask is not None:
                if pixel_mask.ndim != 4 or pixel_mask.shape[1] != 2:
                    raise ValueError(
                        "BridgeTowerForNLVR2: with (B, 2, 3, H, W) pixel_values, pixel_mask must be "
                        f"(B, 2, H, W); got {tuple(pixel_mask.shape)}"
                    )
                pixel_mask, pixel_mask_2 = pixel_mask[:, 0], pixel_mask[:, 1]
            pixel_values, pixel_values_2 = pixel_values[:, 0], pixel_values[:, 1]
        if pixel_values.shape != pixel_values_2.shape:
            raise ValueError(
                f"BridgeTowerForNLVR2: image shapes differ: {tuple(pixel_values.shape)} vs "
                f"{tuple(pixel_values_2.shape)}"
            )
        if (pixel_mask is None) != (pixel_mask_2 is None):
            raise ValueError("BridgeTowerForNLVR2: give a pixel mask for both images or for neither")
        if isinstance(input_ids, torch.Tensor) and input_ids.ndim and input_ids.shape[0] != pixel_values.shape[0]:
            raise ValueError(
                f"BridgeTowerForNLVR2: batch sizes differ: input_ids {tuple(input_ids.shape)} and each image "
                f"{tuple(pixel_values.shape)}"
            )
        if self._wants_states(options):
            # every state requested: one whole encoder pass per image
            out1 = self._encode(input_ids, attention_mask, pixel_values, pixel_mask, image_token_type_idx=1, **options)
            out2 = self._encode(input_ids, attention_mask, pixel_values_2, pixel_mask_2, image_token_type_idx=2,
                                **options)
        else:
            bt = self.bridgetower
            b = pixel_values.shape[0]
            text_states = bt.encode_text(input_ids, attention_mask)
            both = bt.encode_image(torch.cat([pixel_values, pixel_values_2], 0))  # (2B, ...)
            on = options.get("mask_image_padding")
            mask_1 = bt.image_mask(pixel_mask, pixel_values, on)
            mask_2 = bt.image_mask(pixel_mask_2, pixel_values_2, on)
            out1 = bt.fuse(
                text_states, [v[:b] for v in both], attention_mask, mask_1, image_token_type_idx=1, pooled_only=True
            )
            out2 = bt.fuse(
                text_states, [v[b:] for v in both], attention_mask, mask_2, image_token_type_idx=2, pooled_only=True
            )
        logits = self.nlvr2_classifier(out1.pooler_output, out2.pooler_output)
        loss = nlvr2_loss(logits, labels) if labels is not None else None
        pooled = torch.cat([out1.pooler_output, out2.pooler_output], dim=-1)

        def pair(name):
            first, second = getattr(out1, name), getattr(out2, name)
            return None if first is None else (first, second)

        return self._output(
            TaskOutput, None, options.get("return_dict"), loss=loss, logits=logits, pooler_output=pooled,
            encoder_output=out1, hidden_states=pair("hidden_states"), attentions=pair("attentions"),
            cross_attentions=pair("cross_attentions"),
        )

    @torch.no_grad()
    def init_token_type_from_pretrained(self) -> None:
        """Copy token-type row 1 into row 2, as the official NLVR2 fine-tuning starts."""
        w = self.bridgetower.token_type_embeddings.weight
        w[2].copy_(w[1])


class BridgeTowerForIRTR(TaskModel):
    """Image-text retrieval ranking: ``rank_output`` (Linear(2H, 1)) on the pooled output.

    ``forward(input_ids, attention_mask, pixel_values, pixel_mask=None, labels=None)`` with
    ``input_ids``/``attention_mask`` (B, 1 + K, L) -- per image its positive text first and K
    false texts -- and ``pixel_values`` (B, 3, H, W): ``logits`` (B, 1 + K) ranking scores;
    the loss (CE with target 0) when ``labels`` is not None (any value; the positive is
    column 0).  Each image runs through the vision tower once for its 1 + K texts.
    :meth:`init_from_itm` copies ITM row 1 into the ranking head.
    """

    head_names = ("rank_output",)

    def __init__(self, config: BridgeTowerConfig, *, device=None, dtype=None) -> None:
        super().__init__(config, device=device, dtype=dtype)
        self.rank_output = IRTRHead(self.hidden_size, device=device, dtype=dtype)

    def init_from_itm(self, itm_head: ITMHead) -> None:
        self.rank_output.init_from_itm(itm_head)

    def forward(self, input_ids, attention_mask=None, pixel_values=None, pixel_mask=None, labels=None, **options):
        """``options``: the ``transformers`` forward keywords and ``mask_image_padding`` (see
        :meth:`~bridgetower.models.BridgeTowerModel.forward`); ``hidden_states`` and the
        attentions are then those of the ``B * (1 + K)`` pairs, image-major."""
        check_forward_options(options)
        if not isinstance(input_ids, torch.Tensor) or input_ids.ndim != 3:
            raise ValueError(
                f"BridgeTowerForIRTR: input_ids must be (B, 1+K, L), got {getattr(input_ids, 'shape', input_ids)}"
            )
        b, k1, length = input_ids.shape
        if attention_mask is not None and getattr(attention_mask, "shape", None) != input_ids.shape:
            raise ValueError(
                f"BridgeTowerForIRTR: attention_mask must have the shape of input_ids {tuple(input_ids.shape)}, got "
                f"{getattr(attention_mask, 'shape', type(attention_mask).__name__)}"
            )
        if pixel_values is None or pixel_values.shape[0] != b:
            raise ValueError(
                f"BridgeTowerForIRTR: pixel_values must be (B={b}, 3, H, W), got "
                f"{None if pixel_values is None else tuple(pixel_values.shape)}"
            )
        bt = self.bridgetower
        flat_ids = input_ids.reshape(b * k1, length)
        flat_mask = attention_mask.reshape(b * k1, length) if attention_mask is not None else None
        if self._wants_states(options):
            # every state requested: one whole encoder pass per pair
            pm = pixel_mask.repeat_interleave(k1, 0) if pixel_mask is not None else None
            out = self._encode(flat_ids, flat_mask, pixel_values.repeat_interleave(k1, 0), pm, pooled_only=True,
                               **options)
        else:
            text_states = bt.encode_text(flat_ids, flat_mask)
            image_states = bt.encode_image(pixel_values)
            image_mask = bt.image_mask(pixel_mask, pixel_values, options.get("mask_image_padding"))
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
        return self._output(TaskOutput, out, options.get("return_dict"), loss=loss, logits=logits,
                            pooler_output=out.pooler_output)
