"""Co-attention: BridgeTower's cross-modal layers and the two bridged stacks.

:class:`CoAttentionLayer` is one cross-modal layer in BERT's post-LN form::

    h = LN(x + Drop(SelfAttn(x, mask=x_mask)))                     # self_attn, self_norm
    h = LN(h + Drop(CrossAttn(q=h, kv=other, mask=other_mask)))    # cross_attn, cross_norm
    h = LN(h + Drop(fc2(GELU(fc1(h)))))                            # mlp, mlp_norm

Each ``LN(a + b)`` is one fused :class:`~bridgetower.layers.norm.AddLayerNorm` call, and the
attention runs on the capability-dispatched :func:`~bridgetower.layers.attention.attention`.
The parameter names differ from Hugging Face's ``BridgeTowerBertCrossLayer`` by a fixed
rename (:func:`hf_cross_layer_key_map`, :func:`convert_hf_cross_layer_state_dict`).

:class:`CoAttentionFusion` holds the text and image stacks of ``N`` such layers and the
``N - 1`` bridges between consecutive layers of each stack. With ``T_l``, ``V_l`` the
(projected, token-typed) uni-modal features handed in for layer ``l``::

    X~_1, Y~_1 = T_1, V_1                       # already normalised by the caller
    X~_l = TextBridge_{l-1}(T_l, X_{l-1});  Y~_l = ImageBridge_{l-1}(V_l, Y_{l-1})
    X_l  = TextLayer_l(X~_l, Y~_l);         Y_l  = ImageLayer_l(Y~_l, X~_l)

so both streams' layer ``l`` read the other stream's *bridged* input, as in the paper and
the official code.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .attention import MultiHeadAttention, _check_backend_name
from .bridge import create_bridge
from .dropout import Dropout
from .norm import AddLayerNorm

__all__ = [
    "CoAttentionFusion",
    "CoAttentionLayer",
    "CoAttentionMLP",
    "convert_hf_cross_layer_state_dict",
    "hf_cross_layer_key_map",
    "rename_hf_cross_layer_key",
]


# ---------------------------------------------------------------- Hugging Face names

_HF_CROSS_LAYER_RENAMES: dict[str, str] = {
    "attention.self.query": "self_attn.query",
    "attention.self.key": "self_attn.key",
    "attention.self.value": "self_attn.value",
    "attention.output.dense": "self_attn.proj",
    "attention.output.LayerNorm": "self_norm",
    "crossattention.self.query": "cross_attn.query",
    "crossattention.self.key": "cross_attn.key",
    "crossattention.self.value": "cross_attn.value",
    "crossattention.output.dense": "cross_attn.proj",
    "crossattention.output.LayerNorm": "cross_norm",
    "intermediate.dense": "mlp.fc1",
    "output.dense": "mlp.fc2",
    "output.LayerNorm": "mlp_norm",
}


def hf_cross_layer_key_map() -> dict[str, str]:
    """Module-path rename from HF ``BridgeTowerBertCrossLayer`` to :class:`CoAttentionLayer`.

    Keys and values are module paths without the parameter name (``.weight``/``.bias``
    follow unchanged), e.g. ``"attention.output.LayerNorm" -> "self_norm"``. A fresh copy.
    """
    return dict(_HF_CROSS_LAYER_RENAMES)


def rename_hf_cross_layer_key(key: str, *, reverse: bool = False) -> str | None:
    """Rename one parameter key, keeping any prefix.

    ``"cross_modal_text_layers.0.attention.output.LayerNorm.weight"`` ->
    ``"cross_modal_text_layers.0.self_norm.weight"``. ``reverse=True`` maps our names back
    to HF names. Returns None when no entry of the table matches the key.
    """
    table = _HF_CROSS_LAYER_RENAMES
    if reverse:
        table = {v: k for k, v in table.items()}
    module, _, param = key.rpartition(".")
    best = None
    for src in table:
        if (module == src or module.endswith("." + src)) and (best is None or len(src) > len(best)):
            best = src
    if best is None:
        return None
    prefix = module[: len(module) - len(best)]
    return f"{prefix}{table[best]}.{param}"


def convert_hf_cross_layer_state_dict(
    state_dict: Mapping[str, torch.Tensor], *, reverse: bool = False
) -> dict[str, torch.Tensor]:
    """Rename every key of a HF cross-layer state dict (or the reverse).

    Raises ``ValueError`` naming the keys that match no entry of the rename table, so
    nothing is dropped silently.
    """
    out, unknown = {}, []
    for k, v in state_dict.items():
        new = rename_hf_cross_layer_key(k, reverse=reverse)
        if new is None:
            unknown.append(k)
        else:
            out[new] = v
    if unknown:
        raise ValueError(f"keys not in the cross-layer rename table: {sorted(unknown)}")
    return out


# ---------------------------------------------------------------- layer


def _check_seq(name: str, t, batch: int | None, width: int) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a Tensor, got {type(t).__name__}")
    if t.dim() != 3 or t.shape[-1] != width or (batch is not None and t.shape[0] != batch):
        b = "B" if batch is None else str(batch)
        raise ValueError(f"{name} must have shape ({b}, L, {width}), got {tuple(t.shape)}")


def _check_mask(name: str, mask, seq: torch.Tensor) -> None:
    if mask is None:
        return
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"{name} must be a Tensor or None, got {type(mask).__name__}")
    if tuple(mask.shape) != tuple(seq.shape[:2]):
        raise ValueError(f"{name} must have shape (B, L) = {tuple(seq.shape[:2])} "
                         f"(True/1 = real token), got {tuple(mask.shape)}")
    if mask.is_floating_point():
        raise TypeError(f"{name} must be bool or integer (True/1 = real token), got {mask.dtype}")


def _act(h: torch.Tensor, kind: str) -> torch.Tensor:
    """act(h) for :class:`_ActLinearFn` (no autograd: in-place on a temporary)."""
    if kind == "gelu":
        return F.gelu(h)
    return (h * 1.702).sigmoid_().mul_(h)  # "quick": x * sigmoid(1.702 x)


class _ActLinearFn(torch.autograd.Function):
    """``linear(act(h), weight, bias)`` saving only ``h``: ``act(h)`` (as wide as ``h``, the
    4x-wide hidden layer of an FFN) is recomputed in the backward instead of being kept."""

    @staticmethod
    def forward(ctx, h, weight, bias, kind):
        ctx.save_for_backward(h, weight)
        ctx.kind, ctx.has_bias = kind, bias is not None
        return F.linear(_act(h, kind), weight, bias)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        h, weight = ctx.saved_tensors
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        g2 = grad.reshape(-1, grad.shape[-1])  # (N, out)
        gh = gw = gb = None
        if need_b and ctx.has_bias:
            gb = g2.sum(0)
        if ctx.kind == "quick":  # one sigmoid serves both the recomputed act and its slope
            s = (h * 1.702).sigmoid_()
            act = h * s
            if need_w:
                gw = g2.t().mm(act.reshape(-1, h.shape[-1]))  # (out, in)
            if need_h:
                # d/dh h s(1.702 h) = s + 1.702 h s (1 - s) = s + 1.702 act (1 - s)
                act.addcmul_(act, s, value=-1.0)  # act (1 - s)
                gh = grad.matmul(weight).mul_(s.add_(act, alpha=1.702))
            return gh, gw, gb, None
        if need_w:  # exact GELU
            gw = g2.t().mm(F.gelu(h).reshape(-1, h.shape[-1]))  # (out, in)
        if need_h:
            gh = torch.ops.aten.gelu_backward(grad.matmul(weight), h)
        return gh, gw, gb, None


def act_linear(h: torch.Tensor, linear: nn.Linear, kind: str) -> torch.Tensor:
    """``linear(act(h))`` with ``act`` exact GELU (``"gelu"``) or CLIP's QuickGELU
    (``"quick"``); in training (grad enabled, no autocast) through :class:`_ActLinearFn`,
    which keeps one FFN-wide tensor for the backward instead of two."""
    if (torch.is_grad_enabled() and (h.requires_grad or linear.weight.requires_grad)
            and h.dtype == linear.weight.dtype and not torch.is_autocast_enabled(h.device.type)
            and not torch.compiler.is_compiling()):
        return _ActLinearFn.apply(h, linear.weight, linear.bias, kind)
    return linear(F.gelu(h) if kind == "gelu" else h * torch.sigmoid(1.702 * h))


class CoAttentionMLP(nn.Module):
    """``fc2(GELU(fc1(x)))``: the feed-forward block of a cross-modal layer."""

    def __init__(self, dim: int, hidden_dim: int, *, device=None, dtype=None) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim, device=device, dtype=dtype)
        self.fc2 = nn.Linear(hidden_dim, dim, device=device, dtype=dtype)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for lin in (self.fc1, self.fc2):
            nn.init.normal_(lin.weight, std=0.02)
            nn.init.zeros_(lin.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return act_linear(self.fc1(x), self.fc2, "gelu")  # exact (erf) GELU, as BERT's "gelu"


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
        attn_backend: None (dispatch per call) or a backend name of
            :data:`~bridgetower.layers.attention.ATTENTION_BACKENDS`.
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
        attn_backend: str | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(dim, int) or dim <= 0:
            raise ValueError(f"CoAttentionLayer: dim must be a positive int, got {dim!r}")
        if not isinstance(num_heads, int) or num_heads <= 0 or dim % num_heads:
            raise ValueError(f"CoAttentionLayer: num_heads ({num_heads!r}) must be a positive "
                             f"int dividing dim ({dim})")
        hidden = int(round(mlp_ratio * dim))
        if hidden <= 0:
            raise ValueError(f"CoAttentionLayer: mlp_ratio must be > 0, got {mlp_ratio}")
        if not (0.0 <= dropout < 1.0) or not (0.0 <= attn_dropout < 1.0):
            raise ValueError(f"CoAttentionLayer: dropout ({dropout}) and attn_dropout "
                             f"({attn_dropout}) must be in [0, 1)")
        _check_backend_name(attn_backend)
        fk = {"device": device, "dtype": dtype}
        self.dim, self.num_heads = dim, num_heads
        self.kv_dim = dim if kv_dim is None else kv_dim
        self.mlp_ratio, self.dropout, self.attn_dropout = mlp_ratio, float(dropout), float(attn_dropout)
        self.eps, self.attn_backend = float(eps), attn_backend
        self.self_attn = MultiHeadAttention(dim, num_heads, dropout=attn_dropout,
                                            backend=attn_backend, **fk)
        self.self_norm = AddLayerNorm(dim, eps=eps, **fk)
        self.cross_attn = MultiHeadAttention(dim, num_heads, kv_dim=self.kv_dim,
                                             dropout=attn_dropout, backend=attn_backend, **fk)
        self.cross_norm = AddLayerNorm(dim, eps=eps, **fk)
        self.mlp = CoAttentionMLP(dim, hidden, **fk)
        self.mlp_norm = AddLayerNorm(dim, eps=eps, **fk)
        self.drop = Dropout(dropout)  # cheap CPU masks

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
    ) -> torch.Tensor:
        """x: (B, Lx, dim); other: (B, Lo, kv_dim); masks (B, Lx), (B, Lo), True/1 = real.

        Returns (B, Lx, dim).
        """
        _check_seq("CoAttentionLayer: x", x, None, self.dim)
        _check_seq("CoAttentionLayer: other", other, x.shape[0], self.kv_dim)
        _check_mask("CoAttentionLayer: x_mask", x_mask, x)
        _check_mask("CoAttentionLayer: other_mask", other_mask, other)
        h = self.self_norm(self.drop(self.self_attn(x, key_padding_mask=x_mask)), x)
        h = self.cross_norm(self.drop(self.cross_attn(h, other, key_padding_mask=other_mask)), h)
        return self.mlp_norm(self.drop(self.mlp(h)), h)

    def extra_repr(self) -> str:
        s = f"{self.dim}, num_heads={self.num_heads}"
        if self.kv_dim != self.dim:
            s += f", kv_dim={self.kv_dim}"
        s += (f", mlp_ratio={self.mlp_ratio}, dropout={self.dropout}, "
              f"attn_dropout={self.attn_dropout}, eps={self.eps:g}")
        if self.attn_backend is not None:
            s += f", attn_backend={self.attn_backend!r}"
        return s


# ---------------------------------------------------------------- fusion


class CoAttentionFusion(nn.Module):
    """The text and image stacks of cross-modal layers, bridged layer by layer.

    Args:
        dim: width of both streams.
        num_layers: ``N`` cross-modal layers per stream (``N - 1`` bridges per stream).
        num_heads: attention heads.
        bridge: bridge variant name for :func:`~bridgetower.layers.bridge.create_bridge`
            (``"add"``, the published default, is ``LN(x + z)``).
        mlp_ratio, dropout, attn_dropout, eps, attn_backend: for every
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
        bridge: str = "add",
        mlp_ratio: float = 4,
        dropout: float = 0.0,
        attn_dropout: float = 0.0,
        eps: float = 1e-12,
        bridge_eps: float = 1e-5,
        attn_backend: str | None = None,
        bridge_kwargs: Mapping[str, object] | None = None,
        gradient_checkpointing: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(num_layers, int) or num_layers <= 0:
            raise ValueError(f"CoAttentionFusion: num_layers must be a positive int, got "
                             f"{num_layers!r}")
        fk = {"device": device, "dtype": dtype}
        lk = dict(mlp_ratio=mlp_ratio, dropout=dropout, attn_dropout=attn_dropout, eps=eps,
                  attn_backend=attn_backend, **fk)
        self.dim, self.num_layers, self.num_heads = dim, num_layers, num_heads
        self.bridge = bridge
        self.gradient_checkpointing = bool(gradient_checkpointing)
        self.text_layers = nn.ModuleList(
            CoAttentionLayer(dim, num_heads, **lk) for _ in range(num_layers))
        self.image_layers = nn.ModuleList(
            CoAttentionLayer(dim, num_heads, **lk) for _ in range(num_layers))
        bk = dict(bridge_kwargs or {})
        self.text_bridges = nn.ModuleList(
            create_bridge(bridge, dim, eps=bridge_eps, **bk, **fk) for _ in range(num_layers - 1))
        self.image_bridges = nn.ModuleList(
            create_bridge(bridge, dim, eps=bridge_eps, **bk, **fk) for _ in range(num_layers - 1))

    def reset_parameters(self) -> None:
        for m in (*self.text_layers, *self.image_layers, *self.text_bridges,
                  *self.image_bridges):
            m.reset_parameters()

    def _layer(self, layer, x, other, x_mask, other_mask):
        if self.gradient_checkpointing and torch.is_grad_enabled():
            return checkpoint(layer, x, other, x_mask, other_mask, use_reentrant=False)
        return layer(x, other, x_mask, other_mask)

    def forward(
        self,
        text_inputs: Sequence[torch.Tensor],
        image_inputs: Sequence[torch.Tensor],
        text_mask: torch.Tensor | None = None,
        image_mask: torch.Tensor | None = None,
        *,
        return_all_layers: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor] | tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Run both stacks.

        Args:
            text_inputs: ``N`` tensors (B, Lt, dim); element ``l`` feeds text layer ``l``
                (element 0 already normalised, the others go through the bridges).
            image_inputs: ``N`` tensors (B, Li, dim), likewise.
            text_mask: (B, Lt), True/1 = real token. image_mask: (B, Li).
            return_all_layers: return the per-layer outputs (two lists of ``N``) instead of
                the last layer's.

        Returns:
            ``(text, image)``: (B, Lt, dim) and (B, Li, dim) after the last layer.
        """
        n = self.num_layers
        for name, seq in (("text_inputs", text_inputs), ("image_inputs", image_inputs)):
            if isinstance(seq, torch.Tensor) or not isinstance(seq, Sequence) or len(seq) != n:
                got = (f"a Tensor of shape {tuple(seq.shape)}" if isinstance(seq, torch.Tensor)
                       else f"{type(seq).__name__} of length {len(seq)}"
                       if isinstance(seq, Sequence) else type(seq).__name__)
                raise ValueError(f"CoAttentionFusion: {name} must be a list of {n} tensors "
                                 f"(one per cross-modal layer), got {got}")
        batch = text_inputs[0].shape[0] if isinstance(text_inputs[0], torch.Tensor) else None
        for name, seq in (("text_inputs", text_inputs), ("image_inputs", image_inputs)):
            for i, t in enumerate(seq):
                _check_seq(f"CoAttentionFusion: {name}[{i}]", t, batch, self.dim)
                if t.shape[1] != seq[0].shape[1]:
                    raise ValueError(f"CoAttentionFusion: {name}[{i}] has length {t.shape[1]}, "
                                     f"{name}[0] has {seq[0].shape[1]}")
        _check_mask("CoAttentionFusion: text_mask", text_mask, text_inputs[0])
        _check_mask("CoAttentionFusion: image_mask", image_mask, image_inputs[0])

        x_in, y_in = text_inputs[0], image_inputs[0]
        texts, images = [], []
        for i in range(n):
            if i > 0:
                x_in = self.text_bridges[i - 1](text_inputs[i], texts[-1])
                y_in = self.image_bridges[i - 1](image_inputs[i], images[-1])
            texts.append(self._layer(self.text_layers[i], x_in, y_in, text_mask, image_mask))
            images.append(self._layer(self.image_layers[i], y_in, x_in, image_mask, text_mask))
        if return_all_layers:
            return texts, images
        return texts[-1], images[-1]

    def extra_repr(self) -> str:
        return (f"{self.dim}, num_layers={self.num_layers}, num_heads={self.num_heads}, "
                f"bridge={self.bridge!r}, gradient_checkpointing={self.gradient_checkpointing}")
