"""The base of every task model: the encoder as ``bridgetower`` plus heads.

:class:`TaskModel` holds a :class:`~bridgetower.models.BridgeTowerModel` under the attribute
``bridgetower`` (as the Hugging Face classes do, so checkpoint keys line up), forwards its
three steps (``encode_text``, ``encode_image``, ``fuse``) and its switches, and declares the
roles of its parameters: the encoder's own, and ``"head"`` for everything else.
:func:`score_pairs` scores every image against every text with each input encoded once.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from .base import BatchSpec, BridgeTowerPreTrainedModel, roles_with_prefix
from .config import BridgeTowerConfig
from .managertower import encoder_class
from .outputs import BridgeTowerOutput

__all__ = ["FORWARD_OPTIONS", "PAIR_BATCH_SPEC", "TaskModel", "check_forward_options", "normalize_task_name",
           "score_pairs"]

#: The keyword options every task model's ``forward`` takes besides its inputs and labels: the
#: ``transformers`` ones and ``mask_image_padding`` (see :meth:`BridgeTowerModel.forward`).
FORWARD_OPTIONS: tuple[str, ...] = (
    "output_hidden_states", "output_attentions", "return_dict", "token_type_ids", "interpolate_pos_encoding",
    "mask_image_padding", "inputs_embeds", "image_embeds",
)


def check_forward_options(options: dict) -> None:
    """``TypeError`` naming the keywords of ``options`` that are not :data:`FORWARD_OPTIONS`."""
    unknown = sorted(k for k in options if k not in FORWARD_OPTIONS)
    if unknown:
        raise TypeError(f"unexpected forward keyword(s) {unknown}; valid options: {', '.join(FORWARD_OPTIONS)}")

#: The batch of a task model that reads (text, image) pairs with labels.
PAIR_BATCH_SPEC = BatchSpec(
    keys=("input_ids", "attention_mask", "pixel_values", "pixel_mask", "labels"),
    image_keys=("pixel_values", "pixel_mask"),
)


def normalize_task_name(name: str) -> str:
    """Task names are spelled with hyphens (``"snli-ve"``); underscores are accepted."""
    if not isinstance(name, str):
        raise TypeError(f"a task name must be a str, got {type(name).__name__}")
    return name.replace("_", "-")


class TaskModel(BridgeTowerPreTrainedModel):
    """Holds ``bridgetower`` (the encoder) and forwards the three encoder steps.

    Subclasses add their heads as attributes; every parameter outside ``bridgetower`` has
    the role ``"head"``.
    """

    batch_spec: ClassVar[BatchSpec | None] = PAIR_BATCH_SPEC
    #: the attributes holding this model's heads (their checkpoint prefixes)
    head_names: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config: BridgeTowerConfig, *, device=None, dtype=None) -> None:
        super().__init__()
        if not isinstance(config, BridgeTowerConfig):
            raise TypeError(f"config must be a BridgeTowerConfig, got {type(config).__name__}")
        self.config = config
        self.bridgetower = encoder_class(config)(config, device=device, dtype=dtype)  # BridgeTower or ManagerTower
        self.bridgetower.config = self.config  # one config object (its run-time attributes shared)

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

    @property
    def mask_image_padding(self) -> bool:
        """Whether ``pixel_mask`` masks padded patches (see :class:`BridgeTowerModel`)."""
        return self.bridgetower.mask_image_padding

    def set_image_padding_mask(self, enable: bool = True) -> None:
        self.bridgetower.set_image_padding_mask(enable)

    def parameter_roles(self) -> dict[str, str]:
        roles = roles_with_prefix(self.bridgetower.parameter_roles(), "bridgetower.")
        return {name: roles.get(name, "head") for name, _ in self.named_parameters()}

    def fsdp_unit_types(self) -> tuple[type[nn.Module], ...]:
        return self.bridgetower.fsdp_unit_types()

    def _encode(self, input_ids, attention_mask, pixel_values, pixel_mask, **options) -> BridgeTowerOutput:
        """The encoder, with the ``transformers`` forward options of :meth:`BridgeTowerModel.forward`
        (``return_dict`` is the task output's business); task heads that read only the pooler
        pass ``pooled_only=True``."""
        check_forward_options({k: v for k, v in options.items() if k not in ("pooled_only", "image_token_type_idx")})
        options.pop("return_dict", None)
        for name in ("output_hidden_states", "output_attentions"):
            options[name] = self._config_default(name, options.get(name), False)
        if self._wants_states(options):
            options["pooled_only"] = False  # every row of every layer, as transformers returns them
        return self.bridgetower(input_ids, attention_mask, pixel_values, pixel_mask, **options)

    def _wants_states(self, options: dict) -> bool:
        """Whether ``options`` (or the config's run-time defaults) ask for hidden states or attentions."""
        return any(bool(self._config_default(n, options.get(n), False))
                   for n in ("output_hidden_states", "output_attentions"))

    def _output(self, output_cls, encoder_out: BridgeTowerOutput | None, return_dict: bool | None, **fields):
        """``output_cls`` with the encoder's ``hidden_states`` / ``attentions`` /
        ``cross_attentions`` (when requested) and ``fields``; a tuple when ``return_dict=False``."""
        if encoder_out is not None:
            fields = {
                "hidden_states": encoder_out.hidden_states,
                "attentions": encoder_out.attentions,
                "cross_attentions": encoder_out.cross_attentions,
                "encoder_output": encoder_out,
                **fields,
            }
        out = output_cls(**fields)
        return out.to_tuple() if self._config_default("return_dict", return_dict, True) is False else out


def score_pairs(model: TaskModel, head: nn.Module, pixel_values, input_ids, attention_mask, batch_size):
    """(I images) x (T texts): encode each once, fuse all ``I*T`` pairs, ``head(pooled)``.

    Returns ``(I, T, *head_output_shape)``.
    """
    bt = model.bridgetower
    if pixel_values.ndim == 3:
        pixel_values = pixel_values.unsqueeze(0)
    if input_ids.ndim == 1:
        input_ids = input_ids.unsqueeze(0)
        attention_mask = attention_mask.unsqueeze(0) if attention_mask is not None else None
    if batch_size is not None and (not isinstance(batch_size, int) or batch_size <= 0):
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    image_states = bt.encode_image(pixel_values)
    text_states = bt.encode_text(input_ids, attention_mask)
    n_img, n_txt = pixel_values.shape[0], input_ids.shape[0]
    dev = input_ids.device
    image_index = torch.arange(n_img, device=dev).repeat_interleave(n_txt)  # (I*T,)
    text_index = torch.arange(n_txt, device=dev).repeat(n_img)  # (I*T,)
    step = batch_size or image_index.numel()
    scores = []
    for s in range(0, image_index.numel(), step):
        out = bt.fuse_pairs(
            text_states, image_states, attention_mask, text_index[s : s + step], image_index[s : s + step],
            pooled_only=True,
        )
        scores.append(head(out.pooler_output))
    return torch.cat(scores, 0).reshape(n_img, n_txt, *scores[0].shape[1:])
