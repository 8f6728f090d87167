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
from .model import BridgeTowerModel
from .outputs import BridgeTowerOutput

__all__ = ["PAIR_BATCH_SPEC", "TaskModel", "normalize_task_name", "score_pairs"]

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

    def parameter_roles(self) -> dict[str, str]:
        roles = roles_with_prefix(self.bridgetower.parameter_roles(), "bridgetower.")
        return {name: roles.get(name, "head") for name, _ in self.named_parameters()}

    def fsdp_unit_types(self) -> tuple[type[nn.Module], ...]:
        return self.bridgetower.fsdp_unit_types()

    def _encode(self, input_ids, attention_mask, pixel_values, pixel_mask, **kw) -> BridgeTowerOutput:
        """The encoder; task heads that read only the pooler pass ``pooled_only=True``."""
        return self.bridgetower(input_ids, attention_mask, pixel_values, pixel_mask, **kw)


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
