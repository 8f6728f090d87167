"""Co-attention: BridgeTower's cross-modal layers and the two bridged stacks.

:class:`CoAttentionLayer` is one cross-modal layer in BERT's post-LN form::

    h = LN(x + Drop(SelfAttn(x, mask=x_mask)))                     # self_attn, self_norm
    h = LN(h + Drop(CrossAttn(q=h, kv=other, mask=other_mask)))    # cross_attn, cross_norm
    h = LN(h + Drop(fc2(act(fc1(h)))))                             # mlp, mlp_norm

Each ``LN(a + b)`` is one fused :class:`~bridgetower.layers.norm.AddLayerNorm` call, the
attention runs on the capability-dispatched :func:`bridgetower.kernels.attention`, and
``act`` (FusionConfig's ``hidden_act``, exact GELU by default) with ``fc2`` is one
:func:`bridgetower.kernels.act_linear` node. With ``cls_only=True`` a layer computes the first
(CLS) query row only, against all keys of both streams: what the poolers read, for a
fraction of the cost. The rename from Hugging Face's ``BridgeTowerBertCrossLayer`` lives with
the converters (``bridgetower.models.layer_keys``).

:class:`CoAttentionFusion` holds the text and image stacks of ``N`` such layers and the
``N - 1`` bridges between consecutive layers of each stack. With ``T_l``, ``V_l`` the
(projected, token-typed) uni-modal features handed in for layer ``l``::

    X~_1, Y~_1 = T_1, V_1                       # already normalised by the caller
    X~_l = TextBridge_{l-1}(T_l, X_{l-1});  Y~_l = ImageBridge_{l-1}(V_l, Y_{l-1})
    X_l  = TextLayer_l(X~_l, Y~_l);         Y_l  = ImageLayer_l(Y~_l, X~_l)

so both streams' layer ``l`` read the other stream's *bridged* input, as in the paper and
the official code. ``cls_only_last=True`` runs the last layer of both stacks for the CLS row
only (the model's pooler-only tasks); gradient checkpointing applies to every layer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..kernels import act_linear, check_activation, check_attention_backend
from ._compat import moved_names
from .attention import MultiHeadAttention
from .bridge import create_bridge
from .dropout import Dropout
from .norm import AddLayerNorm
from .validation import check_positive_int

__all__ = ["CoAttentionFusion", "CoAttentionLayer", "CoAttentionMLP", "act_linear"]


# ---------------------------------------------------------------- layer


class CoAttentionMLP(nn.Module):
    """``fc2(act(fc1(x)))``: the feed-forward block of a cross-modal layer.

    ``act`` is a name of :data:`bridgetower.kernels.ACTIVATIONS` (``"gelu"``: exact erf GELU,
    BERT's; ``"gelu_new"`` / ``"gelu_pytorch_tanh"``: tanh approximation; ``"quick_gelu"``,
    ``"relu"``, ``"silu"`` ...); ``act`` and ``fc2`` run as one :func:`act_linear` node.
    """

    def __init__(self, dim: int, hidden_dim: int, *, act: str = "gelu",
                 device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        check_activation(act)
        self.act = act
        self.fc1 = nn.Linear(dim, hidden_dim, device=device, dtype=dtype)
        self.fc2 = nn.Linear(hidden_dim, dim, device=device, dtype=dtype)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for lin in (self.fc1, self.fc2):
            nn.init.normal_(lin.weight, std=0.02)
            nn.init.zeros_(lin.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return act_linear(self.fc1(x), self.fc2, self.act)

    def extra_repr(self) -> str:
        return f"act={self.act!r}"


class CoAttentionLayer(nn.Module):
    """One BridgeTower cross-modal layer: self-attention, cross-attention, FFN (post-LN).

    Args:
        dim: width of this stream.
        num_heads: attention heads (must divide ``dim``).
        kv_dim: width of the other stream (keys/values of the cross-attention), default dim.
        mlp_ratio: FFN hidden width = ``mlp_ratio * dim``.
        dropout: dropout after each dense output (BERT's ``hidden_dropout_prob``).
        attn_dropout: dropout on attention probabilities.
        eps: LayerNorm eps (1e-12 official BridgeTower, 1e-5 in the HF port).
        act: FFN activation, a name of :data:`bridgetower.kernels.ACTIVATIONS` (HF's
            ``hidden_act``; ``"gelu"`` = exact GELU, the published models').
        attn_backend: None (dispatch per call) or a backend name of
            :data:`~bridgetower.kernels.ATTENTION_BACKENDS` for both attentions (each
            :class:`MultiHeadAttention`'s ``backend`` attribute may be changed later).
        device, dtype: of the parameters.

    Parameters: ``self_attn.{query,key,value,proj}``, ``self_norm``,
    ``cross_attn.{query,key,value,proj}``, ``cross_norm``, ``mlp.fc1``, ``mlp.fc2``,
    ``mlp_norm``.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        *,
        kv_dim: int | None = None,
        mlp_ratio: float = 4,
        dropout: float = 0.0,
        attn_dropout: float = 0.0,
        eps: float = 1e-12,
        act: str = "gelu",
        attn_backend: str | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        check_positive_int("CoAttentionLayer", dim=dim)  # num_heads: checked by the attentions
        hidden = int(round(mlp_ratio * dim))
        if hidden <= 0:
            raise ValueError(f"CoAttentionLayer: mlp_ratio must be > 0, got {mlp_ratio}")
        if not (0.0 <= dropout < 1.0) or not (0.0 <= attn_dropout < 1.0):
            raise ValueError(f"CoAttentionLayer: dropout ({dropout}) and attn_dropout "
                             f"({attn_dropout}) must be in [0, 1)")
        check_attention_backend(attn_backend)
        fk = {"device": device, "dtype": dtype}
        self.dim, self.num_heads = dim, num_heads
        self.kv_dim = dim if kv_dim is None else kv_dim
        self.mlp_ratio, self.dropout, self.attn_dropout = mlp_ratio, float(dropout), float(attn_dropout)
        self.eps = float(eps)
        self.self_attn = MultiHeadAttention(dim, num_heads, dropout=attn_dropout,
                                            backend=attn_backend, **fk)
        self.self_norm = AddLayerNorm(dim, eps=eps, **fk)
        self.cross_attn = MultiHeadAttention(dim, num_heads, kv_dim=self.kv_dim,
                                             dropout=attn_dropout, backend=attn_backend, **fk)
        self.cross_norm = AddLayerNorm(dim, eps=eps, **fk)
        self.mlp = CoAttentionMLP(dim, hidden, act=act, **fk)
        self.mlp_norm = AddLayerNorm(dim, eps=eps, **fk)
        self.drop = Dropout(dropout)  # cheap CPU masks

    @property
    def attn_backend(self) -> str | None:
        """The self-attention's backend (the model sets both attentions' ``backend``)."""
        return self.self_attn.backend

    def reset_parameters(self) -> None:
        for m in (self.self_attn, self.self_norm, self.cross_attn, self.cross_norm, self.mlp,
                  self.mlp_norm):
            m.reset_parameters()

    def forward(
        self,
        x: torch.Tensor,
        other: torch.Tensor,
        x_mask: torch.Tensor | None = None,
        other_mask: torch.Tensor | None = None,
        *,
        cls_only: bool = False,
        output_attentions: bool = False,
        part: str = "all",
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x: (B, Lx, dim); other: (B, Lo, kv_dim); masks (B, Lx), (B, Lo), True/1 = real.

        ``part="self"`` runs only the self-attention sub-block (``other`` unused) and
        ``part="cross"`` only the rest, on the output of the first; :meth:`self_block` and
        :meth:`cross_block` call them through the module, so that hooks (FSDP's gathering of
        the parameters among them) run for each part.

        Returns (B, Lx, dim), or with ``cls_only=True`` (B, 1, dim): the first query row
        only (its keys and values still span all of ``x`` and ``other``), exactly
        ``forward(...)[:, :1]`` in evaluation. With ``output_attentions=True`` returns
        ``(out, self_probs, cross_probs)``, the attention probabilities (B, heads, Lx, Lx)
        and (B, heads, Lx, Lo), differentiable. No checks of its own: the attentions
        validate shapes and masks.
        """
        if part not in ("all", "self", "cross"):
            raise ValueError(f"CoAttentionLayer: part must be 'all', 'self' or 'cross', got {part!r}")
        if part != "all" and output_attentions:
            raise ValueError("CoAttentionLayer: output_attentions needs part='all'")
        if part == "cross":
            h, self_probs = x, None
        else:
            q = x[:, :1] if cls_only else x  # (B, 1, dim) or (B, Lx, dim)
            a = self.self_attn(q, x, key_padding_mask=x_mask, need_weights=output_attentions)
            a, self_probs = a if output_attentions else (a, None)
            h = self.self_norm(self.drop(a), q)
            if part == "self":
                return h
        c = self.cross_attn(h, other, key_padding_mask=other_mask, need_weights=output_attentions)
        c, cross_probs = c if output_attentions else (c, None)
        h = self.cross_norm(self.drop(c), h)
        out = self.mlp_norm(self.drop(self.mlp(h)), h)
        return (out, self_probs, cross_probs) if output_attentions else out

    def self_block(self, x: torch.Tensor, x_mask: torch.Tensor | None = None, *,
                   cls_only: bool = False) -> torch.Tensor:
        """The self-attention sub-block ``self_norm(self_attn(x) + x)``: the part of
        :meth:`forward` that depends on this stream only (see :meth:`cross_block`)."""
        return self(x, None, x_mask, cls_only=cls_only, part="self")

    def cross_block(self, h: torch.Tensor, other: torch.Tensor,
                    other_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The rest of :meth:`forward` after :meth:`self_block`: cross-attention on ``other``
        and the FFN.  ``forward(x, other) == cross_block(self_block(x), other)``."""
        return self(h, other, None, other_mask, part="cross")

    @property
    def stochastic(self) -> bool:
        """Whether a call draws dropout masks (training mode with a dropout > 0)."""
        return self.training and (self.dropout > 0 or self.attn_dropout > 0)

    def extra_repr(self) -> str:
        s = f"{self.dim}, num_heads={self.num_heads}"
        if self.kv_dim != self.dim:
            s += f", kv_dim={self.kv_dim}"
        s += (f", mlp_ratio={self.mlp_ratio}, dropout={self.dropout}, "
              f"attn_dropout={self.attn_dropout}, eps={self.eps:g}")
        return s


# ---------------------------------------------------------------- fusion


class CoAttentionFusion(nn.Module):
    """The text and image stacks of cross-modal layers, bridged layer by layer.

    Args:
        dim: width of both streams.
        num_layers: ``N`` cross-modal layers per stream (``N - 1`` bridges per stream).
        num_heads: attention heads.
        bridge: bridge variant name for :func:`~bridgetower.layers.bridge.create_bridge`
            (``"add"``, the published default, is ``LN(x + z)``), or a sequence of ``N - 1``
            names, one per bridge (the same for both streams).
        mlp_ratio, dropout, attn_dropout, eps, act, attn_backend: for every
            :class:`CoAttentionLayer`.
        bridge_eps: LayerNorm eps of the bridges (1e-5 in the HF port and official code).
        bridge_kwargs: extra keyword arguments for ``create_bridge`` (e.g. ``num_heads``
            for the cross-attention bridges).
        gradient_checkpointing: recompute each layer in the backward
            (``torch.utils.checkpoint``, non-reentrant); the attribute may be toggled later.
        device, dtype: of the parameters.

    Submodules: ``text_layers.N``, ``image_layers.N``, ``text_bridges.K``,
    ``image_bridges.K`` (K = 0 .. N-2).
    """

    def __init__(
        self,
        dim: int,
        num_layers: int,
        num_heads: int,
        *,
        bridge: str | Sequence[str] = "add",
        mlp_ratio: float = 4,
        dropout: float = 0.0,
        attn_dropout: float = 0.0,
        eps: float = 1e-12,
        bridge_eps: float = 1e-5,
        act: str = "gelu",
        attn_backend: str | None = None,
        bridge_kwargs: Mapping[str, object] | None = None,
        gradient_checkpointing: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        check_positive_int("CoAttentionFusion", num_layers=num_layers)
        fk = {"device": device, "dtype": dtype}
        lk = dict(mlp_ratio=mlp_ratio, dropout=dropout, attn_dropout=attn_dropout, eps=eps,
                  act=act, attn_backend=attn_backend, **fk)
        self.dim, self.num_layers, self.num_heads = dim, num_layers, num_heads
        self.bridge = bridge if isinstance(bridge, str) else tuple(bridge)
        self.act = act
        self.gradient_checkpointing = bool(gradient_checkpointing)
        self.text_layers = nn.ModuleList(
            CoAttentionLayer(dim, num_heads, **lk) for _ in range(num_layers))
        self.image_layers = nn.ModuleList(
            CoAttentionLayer(dim, num_heads, **lk) for _ in range(num_layers))
        names = [bridge] * (num_layers - 1) if isinstance(bridge, str) else list(bridge)
        if len(names) != num_layers - 1:
            raise ValueError(f"CoAttentionFusion: bridge must be a name or {num_layers - 1} names (one per "
                             f"bridge of {num_layers} layers), got {len(names)}: {names}")
        bk = dict(bridge_kwargs or {})
        self.text_bridges = nn.ModuleList(create_bridge(b, dim, eps=bridge_eps, **bk, **fk) for b in names)
        self.image_bridges = nn.ModuleList(create_bridge(b, dim, eps=bridge_eps, **bk, **fk) for b in names)

    def reset_parameters(self) -> None:
        for m in (*self.text_layers, *self.image_layers, *self.text_bridges,
                  *self.image_bridges):
            m.reset_parameters()

    def _layer(self, layer, x, other, x_mask, other_mask, cls_only, output_attentions):
        kw = {"cls_only": cls_only, "output_attentions": output_attentions}
        if self.gradient_checkpointing and torch.is_grad_enabled():
            return checkpoint(layer, x, other, x_mask, other_mask, use_reentrant=False, **kw)
        return layer(x, other, x_mask, other_mask, **kw)

    def forward(
        self,
        text_inputs: Sequence[torch.Tensor],
        image_inputs: Sequence[torch.Tensor],
        text_mask: torch.Tensor | None = None,
        image_mask: torch.Tensor | None = None,
        *,
        return_all_layers: bool = False,
        cls_only_last: bool = False,
        output_attentions: bool = False,
        text_index: torch.Tensor | None = None,
        image_index: torch.Tensor | None = None,
    ) -> tuple:
        """Run both stacks.

        Args:
            text_inputs: ``N`` tensors (B, Lt, dim); element ``l`` feeds text layer ``l``
                (element 0 already normalised, the others go through the bridges).
            image_inputs: ``N`` tensors (B, Li, dim), likewise.
            text_mask: (B, Lt), True/1 = real token. image_mask: (B, Li).
            return_all_layers: return the per-layer outputs (two lists of ``N``) instead of
                the last layer's.
            cls_only_last: run the last layer of both stacks for the first (CLS) row only
                (:class:`CoAttentionLayer` ``cls_only``): the last outputs are then
                (B, 1, dim), equal to the full run's first rows in evaluation.
            output_attentions: also return, per layer, the attention probabilities
                ``(text_self, image_self, text_cross, image_cross)``: (B, heads, Lt, Lt),
                (B, heads, Li, Li), (B, heads, Lt, Li), (B, heads, Li, Lt) (these
                attentions run on the ``math`` backend).
            text_index, image_index: (P,) long tensors, given together: the inputs and
                masks are then per distinct text / image and the pairs ``(text_index[k],
                image_index[k])`` are fused (the outputs are per pair).  The first layer's
                self-attention sub-blocks, which depend on one stream only, then run once
                per distinct text / image and are gathered after (when no dropout mask is
                drawn, no attention probabilities are asked for and no checkpointing runs;
                otherwise the inputs are gathered first: the same result).

        Returns:
            ``(text, image)``: (B, Lt, dim) and (B, Li, dim) after the last layer (or the
            two lists of per-layer outputs); with ``output_attentions`` a third element, the
            list of per-layer probability 4-tuples.
        """
        n = self.num_layers
        for name, seq in (("text_inputs", text_inputs), ("image_inputs", image_inputs)):
            if isinstance(seq, torch.Tensor) or not isinstance(seq, Sequence) or len(seq) != n:
                got = (f"a Tensor of shape {tuple(seq.shape)}" if isinstance(seq, torch.Tensor)
                       else f"{type(seq).__name__} of length {len(seq)}"
                       if isinstance(seq, Sequence) else type(seq).__name__)
                raise ValueError(f"CoAttentionFusion: {name} must be a list of {n} tensors "
                                 f"(one per cross-modal layer), got {got}")

        if (text_index is None) != (image_index is None):
            raise ValueError("CoAttentionFusion: pass text_index and image_index together")
        first = None
        if text_index is not None:
            text_inputs, image_inputs, text_mask, image_mask, first = self._pairs(
                text_inputs, image_inputs, text_mask, image_mask, text_index, image_index,
                cls_only_last and n == 1, output_attentions)
        x_in, y_in = text_inputs[0], image_inputs[0]
        texts, images, probs = [], [], []
        for i in range(n):
            if i == 0 and first is not None:  # the self-attention sub-blocks ran per distinct input
                texts.append(self.text_layers[0].cross_block(first[0], y_in, image_mask))
                images.append(self.image_layers[0].cross_block(first[1], x_in, text_mask))
                continue
            if i > 0:
                x_in = self.text_bridges[i - 1](text_inputs[i], texts[-1])
                y_in = self.image_bridges[i - 1](image_inputs[i], images[-1])
            cls = cls_only_last and i == n - 1
            t = self._layer(self.text_layers[i], x_in, y_in, text_mask, image_mask, cls, output_attentions)
            v = self._layer(self.image_layers[i], y_in, x_in, image_mask, text_mask, cls, output_attentions)
            if output_attentions:
                (t, t_self, t_cross), (v, v_self, v_cross) = t, v
                probs.append((t_self, v_self, t_cross, v_cross))
            texts.append(t)
            images.append(v)
        out = (texts, images) if return_all_layers else (texts[-1], images[-1])
        return (*out, probs) if output_attentions else out

    def _pairs(self, text_inputs, image_inputs, text_mask, image_mask, text_index, image_index,
               cls_only, output_attentions):
        """Per-pair inputs and masks from per-distinct ones, and the first layer's
        self-attention outputs per pair (or None where they cannot be shared)."""
        first = None
        t0, v0 = self.text_layers[0], self.image_layers[0]
        if not (output_attentions or t0.stochastic or v0.stochastic
                or (self.gradient_checkpointing and torch.is_grad_enabled())):
            first = (t0.self_block(text_inputs[0], text_mask, cls_only=cls_only).index_select(0, text_index),
                     v0.self_block(image_inputs[0], image_mask, cls_only=cls_only).index_select(0, image_index))
        texts = [t.index_select(0, text_index) for t in text_inputs]
        images = [v.index_select(0, image_index) for v in image_inputs]
        tm = text_mask.index_select(0, text_index) if text_mask is not None else None
        im = image_mask.index_select(0, image_index) if image_mask is not None else None
        return texts, images, tm, im, first

    def extra_repr(self) -> str:
        return (f"{self.dim}, num_layers={self.num_layers}, num_heads={self.num_heads}, "
                f"bridge={self.bridge!r}, act={self.act!r}, "
                f"gradient_checkpointing={self.gradient_checkpointing}")


# The Hugging Face key tables moved to bridgetower.models.layer_keys (a layer holds no other
# library's names); the old import paths still resolve, with a DeprecationWarning.
__getattr__ = moved_names(__name__, "bridgetower.models.layer_keys", ("convert_hf_cross_layer_state_dict", "hf_cross_layer_key_map", "rename_hf_cross_layer_key"), warn=True)
