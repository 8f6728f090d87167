"""The text tower: any ``transformers`` encoder, returning its top hidden states.

Built from :class:`TextConfig` through ``AutoConfig.for_model`` / ``AutoModel.from_config``
(random weights, no network); RoBERTa for the published sizes.  Attention is ``transformers``'
SDPA implementation by default (``TextConfig.attn_implementation="eager"`` for the explicit
path).  The encoder's pooler is not built (BridgeTower never uses it).

Parameter names are those of the ``transformers`` model under ``model.``, e.g.
``model.embeddings.word_embeddings.weight``, ``model.encoder.layer.N.*``.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import TextConfig

__all__ = ["TransformersTextEncoder"]


class TransformersTextEncoder(nn.Module):
    """A ``transformers`` text encoder returning the hidden states of its top layers.

    Args:
        config: the encoder description.
        num_outputs: how many top layers to return (the number of cross-modal layers).
        device, dtype: of the parameters.

    ``forward(input_ids, attention_mask=None)`` with ``input_ids`` ``(B, L)`` and
    ``attention_mask`` ``(B, L)`` (1 = token, 0 = padding) returns a list of ``num_outputs``
    tensors ``(B, L, hidden_size)``, bottom to top.
    """

    def __init__(
        self,
        config: TextConfig,
        *,
        num_outputs: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        from transformers import AutoModel

        if not 1 <= num_outputs <= config.num_layers:
            raise ValueError(
                f"num_outputs={num_outputs} must be in [1, {config.num_layers}] (text layers)"
            )
        self.config = config
        self.num_outputs = num_outputs
        hf_config = config.to_transformers()
        kwargs = {}
        if "add_pooling_layer" in _init_params(config.model_type):
            kwargs["add_pooling_layer"] = False
        self.model = AutoModel.from_config(
            hf_config, attn_implementation=config.attn_implementation, **kwargs
        )
        if device is not None or dtype is not None:
            self.model.to(device=device, dtype=dtype)

    @property
    def width(self) -> int:
        return self.config.hidden_size

    @property
    def word_embeddings(self) -> nn.Embedding:
        return self.model.get_input_embeddings()

    def reset_parameters(self) -> None:
        """The ``transformers`` initialisation of the encoder."""
        self.model.init_weights()

    def set_attn_implementation(self, name: str) -> None:
        """Switch between ``"sdpa"`` and ``"eager"`` attention."""
        if name not in ("sdpa", "eager"):
            raise ValueError(f"text attention implementation must be 'sdpa' or 'eager', got {name!r}")
        self.model.set_attn_implementation(name)

    def set_gradient_checkpointing(self, enable: bool = True) -> None:
        kwargs = {"use_reentrant": False}
        if hasattr(self.model, "activation_checkpointing_enable"):  # transformers >= 5 name
            if enable:
                self.model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
            else:
                self.model.activation_checkpointing_disable()
        elif enable:
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        else:
            self.model.gradient_checkpointing_disable()

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> list[torch.Tensor]:
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            output_hidden_states=True,
            return_dict=True,
        )
        # hidden_states: (embeddings, layer 1, ..., layer L), each (B, L, hidden)
        return list(out.hidden_states[-self.num_outputs :])

    def extra_repr(self) -> str:
        c = self.config
        return (
            f"{c.model_type}, hidden={c.hidden_size}, layers={c.num_layers}, heads={c.num_heads}, "
            f"attn={c.attn_implementation}, num_outputs={self.num_outputs}"
        )


def _init_params(model_type: str) -> set[str]:
    """Constructor parameters of the ``transformers`` base model class of ``model_type``."""
    import inspect

    from transformers import AutoConfig, AutoModel

    cls = AutoModel._model_mapping[type(AutoConfig.for_model(model_type))]
    return set(inspect.signature(cls.__init__).parameters)
