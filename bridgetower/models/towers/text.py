"""The text tower: any ``transformers`` encoder, returning its top hidden states.

Built from :class:`TextConfig` through ``AutoConfig.for_model`` / ``AutoModel.from_config``
(random weights, no network); RoBERTa for the published sizes.  The encoder's pooler is not
built (BridgeTower never uses it).

Attention runs through our capability-dispatched :func:`bridgetower.kernels.attention`, like
the fusion layers and the vision tower: the encoder is built with the attention
implementation ``"bridgetower"``, which this module registers with ``transformers``'
``AttentionInterface`` (keys padding from the mask ``transformers`` builds for SDPA).  The
backend is the model's one setting (:meth:`TransformersTextEncoder.set_attention_backend`).

Parameter names are those of the ``transformers`` model under ``model.``, e.g.
``model.embeddings.word_embeddings.weight``, ``model.encoder.layer.N.*``.
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from ...kernels import attention
from ..config import TextConfig

__all__ = ["ATTN_IMPLEMENTATION", "TransformersTextEncoder"]

#: The name under which our attention is registered with ``transformers``.
ATTN_IMPLEMENTATION = "bridgetower"


def _text_attention(module: nn.Module, query, key, value, attention_mask, scaling=None,
                    dropout: float = 0.0, **kwargs):
    """``transformers`` attention-interface function: (B, H, L, Dh) tensors in, ``(B, L, H,
    Dh)`` out, through our dispatcher with the backend set on ``module``."""
    key_padding_mask = None
    if attention_mask is not None:
        # the SDPA mask of a bidirectional encoder: bool (B, 1, Lq, Lk), True = attend, the
        # same for every query row; padding is its first row
        if attention_mask.dtype != torch.bool or attention_mask.ndim != 4:
            raise ValueError(
                f"unexpected text attention mask {attention_mask.dtype} {tuple(attention_mask.shape)}"
            )
        key_padding_mask = attention_mask[:, 0, 0, :]
    out = attention(query, key, value, key_padding_mask=key_padding_mask, dropout_p=dropout,
                    scale=scaling, backend=getattr(module, "attn_backend", None))
    return out.transpose(1, 2), None  # (B, L, H, Dh)


@functools.cache
def _register_attention() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(ATTN_IMPLEMENTATION, _text_attention)
    AttentionMaskInterface.register(ATTN_IMPLEMENTATION, sdpa_mask)


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
        _register_attention()
        self.model = AutoModel.from_config(hf_config, attn_implementation=ATTN_IMPLEMENTATION, **kwargs)
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

    def attention_modules(self) -> list[nn.Module]:
        """The encoder's attention modules (those that call the attention interface)."""
        return [m for m in self.model.modules() if hasattr(m, "attention_head_size") and hasattr(m, "query")]

    def set_attention_backend(self, backend: str | None) -> None:
        """Attention backend of every layer (``None``: chosen per call); validated by the caller."""
        for m in self.attention_modules():
            m.attn_backend = backend

    def block_types(self) -> tuple[type[nn.Module], ...]:
        """Types of the encoder's layers (the items of its layer lists), for FSDP units."""
        return tuple({type(item) for m in self.model.modules() if isinstance(m, nn.ModuleList) for item in m})

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

    @property
    def max_length(self) -> int:
        """The longest input the position table allows: ``max_position_embeddings``, less
        ``pad_token_id + 1`` for RoBERTa-style embeddings, whose positions start after the
        padding id."""
        offset = getattr(getattr(self.model, "embeddings", None), "padding_idx", None)
        n = self.config.max_position_embeddings
        return n - offset - 1 if isinstance(offset, int) else n

    def check_inputs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> None:
        """Validate a text batch at a model entry point: a non-empty integer ``(B, L)`` tensor,
        ids inside the vocabulary, ``L`` within :attr:`max_length`, a matching
        ``attention_mask`` with at least one token per text.  ``ValueError`` / ``TypeError``
        naming the argument and the limit."""
        if not isinstance(input_ids, torch.Tensor):
            raise TypeError(f"input_ids must be a tensor, got {type(input_ids).__name__}")
        if input_ids.ndim != 2 or input_ids.dtype not in (torch.int64, torch.int32):
            raise ValueError(
                f"input_ids must be an integer (B, L) tensor, got {input_ids.dtype} of shape "
                f"{tuple(input_ids.shape)}"
            )
        b, length = input_ids.shape
        if b == 0:
            raise ValueError("input_ids is an empty batch (B = 0): pass at least one text")
        if length == 0:
            raise ValueError("input_ids has no tokens (L = 0): every text needs at least one token")
        if length > self.max_length:
            raise ValueError(
                f"input_ids has {length} tokens, more than the {self.max_length} the text tower's "
                f"position table allows (max_position_embeddings={self.config.max_position_embeddings}); "
                "truncate the texts (the processor does by default: truncation=True)"
            )
        empty_rows = None
        if attention_mask is not None:
            if not isinstance(attention_mask, torch.Tensor):
                raise TypeError(f"attention_mask must be a tensor, got {type(attention_mask).__name__}")
            if attention_mask.shape != input_ids.shape:
                raise ValueError(
                    f"attention_mask {tuple(attention_mask.shape)} must have the shape of input_ids "
                    f"{tuple(input_ids.shape)}"
                )
            empty_rows = (attention_mask == 0).all(dim=1)  # (B,)
        # one host synchronisation for all the value checks
        stats = [input_ids.min(), input_ids.max()] + ([empty_rows.any()] if empty_rows is not None else [])
        lo, hi, *any_empty = torch.stack([t.to(torch.int64) for t in stats]).tolist()
        if lo < 0 or hi >= self.config.vocab_size:
            bad = lo if lo < 0 else hi
            raise ValueError(
                f"input_ids holds the id {bad}, outside the vocabulary [0, {self.config.vocab_size}) "
                "(vocab_size); was the text tokenized with this model's tokenizer?"
            )
        if any_empty and any_empty[0]:
            empty = empty_rows.nonzero().flatten().tolist()
            raise ValueError(
                f"attention_mask is all zeros for text(s) {empty[:10]}: an empty text has no "
                "token to attend to (the tokenizer adds <s> ... </s> even to an empty string)"
            )

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        *,
        output_hidden_states: bool = False,
    ) -> list[torch.Tensor] | tuple[list[torch.Tensor], tuple[torch.Tensor, ...]]:
        """The top ``num_outputs`` hidden states; with ``output_hidden_states`` also every
        hidden state (embeddings, then each layer), as ``(tapped, every)``."""
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            output_hidden_states=True,
            return_dict=True,
        )
        # hidden_states: (embeddings, layer 1, ..., layer L), each (B, L, hidden)
        tapped = list(out.hidden_states[-self.num_outputs :])
        return (tapped, tuple(out.hidden_states)) if output_hidden_states else tapped

    def extra_repr(self) -> str:
        c = self.config
        return (
            f"{c.model_type}, hidden={c.hidden_size}, layers={c.num_layers}, heads={c.num_heads}, "
            f"num_outputs={self.num_outputs}"
        )


def _init_params(model_type: str) -> set[str]:
    """Constructor parameters of the ``transformers`` base model class of ``model_type``."""
    import inspect

    from transformers import AutoConfig, AutoModel

    cls = AutoModel._model_mapping[type(AutoConfig.for_model(model_type))]
    return set(inspect.signature(cls.__init__).parameters)
