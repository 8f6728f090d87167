"""Bridge (link) layers: merge a projected uni-modal feature into the cross-modal stream.

Every bridge takes ``x`` -- the projected uni-modal feature of the next tapped encoder layer --
and ``z`` -- the previous cross-modal layer's output -- both ``(..., D)``, and returns the input
of the next cross-modal layer, ``(..., D)``.  One small class per variant; build them with
:func:`create_bridge` over the :data:`BRIDGES` name map.

==================================== ====================================================
name                                 output
==================================== ====================================================
``add`` (published default)          ``LN(x + z)``
``scaled_add``                       ``LN(s * x + z)``, scalar ``scale`` (init 1.0)
``interpolate``                      ``LN((1 - b) * x + b * z)``, scalar ``beta`` (init 0.5)
``scaled_add_tensor``                as ``scaled_add`` with per-channel ``scale`` (D,)
``interpolate_tensor``               as ``interpolate`` with per-channel ``beta`` (D,)
``gated_interpolate``                ``g = sigmoid(W [x; z])``, ``LN((1 - g) * x + g * z)``
``elementwise_product``              ``LN(x * z)``
``elementwise_product_residual``     ``LN(z + x * z)``
``linear_add``                       ``LN(D(x + z))``, ``D`` = Linear(D, D)
``linear_concat`` (alias ``concat``) ``LN(D([x; z]))``, ``D`` = Linear(2D, D)
``mlp_add`` / ``mlp_concat``         as above with ``D`` = Linear -> LN -> GELU -> Linear
``*_residual`` of the four above     ``LN(z + D(...))``
``cross_attention``                  ``LN(z + Attn(q=z, kv=x))``
``cross_attention_ffn``              the above, then ``LN(h + FFN(h))``
==================================== ====================================================

The five elementwise variants are one :func:`bridgetower.kernels.bridge_norm` call each, in
the mode of the same name: their coefficient (name, shape, initial value) comes from the mode
table :mod:`bridgetower.kernels.modes`, and ``bridge_norm`` validates their inputs.  Every
other variant whose last step is ``LN(u + v)`` runs that step on the fused op too.  The
rename from Hugging Face's ``BridgeTowerLinkTower`` lives with the converters
(``bridgetower.models.layer_keys``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..kernels import bridge_norm, check_bridge_norm_backend
from ..kernels.modes import BRIDGE_MODES
from ._compat import moved_names
from .attention import MultiHeadAttention
from .dropout import Dropout
from .validation import check_positive_int

__all__ = [
    "BRIDGES",
    "BRIDGE_ALIASES",
    "AddBridge",
    "Bridge",
    "CrossAttentionBridge",
    "CrossAttentionFFNBridge",
    "ElementwiseProductBridge",
    "ElementwiseProductResidualBridge",
    "GatedInterpolateBridge",
    "InterpolateBridge",
    "InterpolateTensorBridge",
    "LinearAddBridge",
    "LinearAddResidualBridge",
    "LinearConcatBridge",
    "LinearConcatResidualBridge",
    "MLPAddBridge",
    "MLPAddResidualBridge",
    "MLPConcatBridge",
    "MLPConcatResidualBridge",
    "ScaledAddBridge",
    "ScaledAddTensorBridge",
    "bridge_names",
    "create_bridge",
]


class Bridge(nn.Module):
    """Base class: the LayerNorm affine (``weight``, ``bias``), ``eps`` and the backend.

    ``__init__`` creates ``weight`` and ``bias``, calls :meth:`_build` (subclasses add their
    parameters and submodules there) and then :meth:`reset_parameters`.  Subclasses
    implement ``forward(x, z)`` or, to get the shape check of :meth:`_check` first,
    :meth:`_merge`.
    """

    name: str = ""

    def __init__(
        self,
        dim: int,
        *,
        eps: float = 1e-5,
        backend: str | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        check_positive_int(type(self).__name__, dim=dim)
        check_bridge_norm_backend(backend)
        self.dim = dim
        self.eps = float(eps)
        self.backend = backend
        factory = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(dim, **factory))  # (D,)
        self.bias = nn.Parameter(torch.empty(dim, **factory))  # (D,)
        self._build(factory)
        self.reset_parameters()

    def _build(self, factory: dict) -> None:
        """Create the subclass's parameters / submodules (``factory``: device and dtype)."""

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)
        nn.init.zeros_(self.bias)
        for child in self.children():
            _reset_tree(child)

    def _norm_add(self, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """``LN(u + v) * weight + bias`` on the fused kernel."""
        return bridge_norm(u, v, self.weight, self.bias, mode="add", eps=self.eps, backend=self.backend)

    def _norm(self, u: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(u, (self.dim,), self.weight, self.bias, self.eps)

    def _check(self, x: torch.Tensor, z: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor) or not isinstance(z, torch.Tensor):
            raise TypeError(f"{type(self).__name__} expects tensors x and z, got {type(x).__name__} and {type(z).__name__}")
        if x.shape != z.shape:
            raise ValueError(
                f"{type(self).__name__}: x and z must have the same shape, got x {tuple(x.shape)} and z {tuple(z.shape)}"
            )
        if x.ndim == 0 or x.shape[-1] != self.dim:
            raise ValueError(
                f"{type(self).__name__}(dim={self.dim}): last dimension of x must be {self.dim}, got shape {tuple(x.shape)}"
            )
        if x.dtype != z.dtype:
            raise TypeError(f"{type(self).__name__}: x and z must share a dtype, got {x.dtype} and {z.dtype}")

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """``x``: projected uni-modal feature (..., D); ``z``: previous cross-modal output (..., D)."""
        self._check(x, z)
        return self._merge(x, z)

    def _merge(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def extra_repr(self) -> str:
        s = f"{self.dim}, eps={self.eps:g}"
        if self.backend is not None:
            s += f", backend={self.backend!r}"
        return s


def _reset_tree(module: nn.Module) -> None:
    """Call ``reset_parameters`` on ``module`` (or, if it has none, on its children)."""
    if hasattr(module, "reset_parameters"):
        module.reset_parameters()
    else:
        for child in module.children():
            _reset_tree(child)


# ---------------------------------------------------------------- elementwise (fused kernel)


class _ModeBridge(Bridge):
    """An elementwise bridge: one :func:`~bridgetower.kernels.bridge_norm` call in mode
    ``mode``, with the coefficient the mode table declares (none, ``()`` or ``(D,)``).
    No checks of its own: ``bridge_norm`` validates ``x`` and ``z``."""

    mode: str = ""

    def _build(self, factory: dict) -> None:
        spec = BRIDGE_MODES[self.mode]
        self.coef_name = spec.coef_name
        if spec.has_coef:
            coef = nn.Parameter(torch.empty(spec.coef_shape(self.dim), **factory))
            self.register_parameter(spec.coef_name, coef)

    def reset_parameters(self) -> None:
        super().reset_parameters()
        if self.coef_name is not None:
            nn.init.constant_(getattr(self, self.coef_name), BRIDGE_MODES[self.mode].coef_init)

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """``x``: projected uni-modal feature (..., D); ``z``: previous cross-modal output (..., D)."""
        coef = getattr(self, self.coef_name) if self.coef_name is not None else None
        return bridge_norm(x, z, self.weight, self.bias, coef, mode=self.mode, eps=self.eps,
                           backend=self.backend)


class AddBridge(_ModeBridge):
    """``LN(x + z)`` -- the published BridgeTower bridge. Parameters ``weight``, ``bias``."""

    name = mode = "add"


class ScaledAddBridge(_ModeBridge):
    """``LN(scale * x + z)`` with a scalar ``scale`` (init 1.0)."""

    name = mode = "scaled_add"


class InterpolateBridge(_ModeBridge):
    """``LN((1 - beta) * x + beta * z)`` with a scalar ``beta`` (init 0.5)."""

    name = mode = "interpolate"


class ScaledAddTensorBridge(_ModeBridge):
    """``LN(scale * x + z)`` with a per-channel ``scale`` of shape (D,) (init 1.0)."""

    name = mode = "scaled_add_tensor"


class InterpolateTensorBridge(_ModeBridge):
    """``LN((1 - beta) * x + beta * z)`` with a per-channel ``beta`` of shape (D,) (init 0.5)."""

    name = mode = "interpolate_tensor"


class GatedInterpolateBridge(Bridge):
    """``g = sigmoid(gate([x; z]))``, ``LN((1 - g) * x + g * z)``; ``gate`` is Linear(2D, D)."""

    name = "gated_interpolate"

    def _build(self, factory: dict) -> None:
        self.gate = nn.Linear(2 * self.dim, self.dim, **factory)

    def _merge(self, x, z):
        g = torch.sigmoid(self.gate(torch.cat([x, z], dim=-1)))  # (..., D)
        # (1 - g) x + g z = x + g (z - x): one fused add + LN
        return self._norm_add(x, g * (z - x))


class ElementwiseProductBridge(Bridge):
    """``LN(x * z)``."""

    name = "elementwise_product"

    def _merge(self, x, z):
        return self._norm(x * z)


class ElementwiseProductResidualBridge(ElementwiseProductBridge):
    """``LN(z + x * z)``."""

    name = "elementwise_product_residual"

    def _merge(self, x, z):
        return self._norm_add(x * z, z)


# ---------------------------------------------------------------- projected (Linear / MLP)


class _ProjectedBridge(Bridge):
    """``LN(D(in))`` or, with ``residual``, ``LN(z + D(in))``; ``in`` is ``x + z`` or ``[x; z]``."""

    concat: bool = False
    mlp: bool = False
    residual: bool = False

    def __init__(
        self,
        dim: int,
        *,
        hidden_dim: int | None = None,
        eps: float = 1e-5,
        backend: str | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        if self.mlp:
            hidden_dim = dim if hidden_dim is None else int(hidden_dim)
            if hidden_dim <= 0:
                raise ValueError(f"{type(self).__name__}: hidden_dim must be positive, got {hidden_dim!r}")
        elif hidden_dim is not None:
            raise ValueError(f"{type(self).__name__} has no hidden layer; hidden_dim applies to mlp_* bridges only")
        self.hidden_dim = hidden_dim  # a plain int, read by _build
        super().__init__(dim, eps=eps, backend=backend, device=device, dtype=dtype)

    def _build(self, factory: dict) -> None:
        in_dim = 2 * self.dim if self.concat else self.dim
        if self.mlp:  # D = Linear -> LN -> GELU -> Linear
            self.proj = nn.Sequential(
                nn.Linear(in_dim, self.hidden_dim, **factory),
                nn.LayerNorm(self.hidden_dim, eps=self.eps, **factory),
                nn.GELU(),
                nn.Linear(self.hidden_dim, self.dim, **factory),
            )
        else:
            self.proj = nn.Linear(in_dim, self.dim, **factory)

    def _merge(self, x, z):
        u = torch.cat([x, z], dim=-1) if self.concat else x + z  # (..., 2D) or (..., D)
        d = self.proj(u)  # (..., D)
        return self._norm_add(d, z) if self.residual else self._norm(d)

    def extra_repr(self) -> str:
        s = super().extra_repr()
        return s + (f", hidden_dim={self.hidden_dim}" if self.hidden_dim is not None else "")


class LinearAddBridge(_ProjectedBridge):
    """``LN(Linear(x + z))``."""

    name = "linear_add"


class LinearAddResidualBridge(_ProjectedBridge):
    """``LN(z + Linear(x + z))``."""

    name, residual = "linear_add_residual", True


class LinearConcatBridge(_ProjectedBridge):
    """``LN(Linear([x; z]))`` -- the design card's ``concat``."""

    name, concat = "linear_concat", True


class LinearConcatResidualBridge(_ProjectedBridge):
    """``LN(z + Linear([x; z]))``."""

    name, concat, residual = "linear_concat_residual", True, True


class MLPAddBridge(_ProjectedBridge):
    """``LN(MLP(x + z))``, MLP = Linear -> LN -> GELU -> Linear."""

    name, mlp = "mlp_add", True


class MLPAddResidualBridge(_ProjectedBridge):
    """``LN(z + MLP(x + z))``."""

    name, mlp, residual = "mlp_add_residual", True, True


class MLPConcatBridge(_ProjectedBridge):
    """``LN(MLP([x; z]))``."""

    name, mlp, concat = "mlp_concat", True, True


class MLPConcatResidualBridge(_ProjectedBridge):
    """``LN(z + MLP([x; z]))``."""

    name, mlp, concat, residual = "mlp_concat_residual", True, True, True


# ---------------------------------------------------------------- cross-attention


class CrossAttentionBridge(Bridge):
    """``LN(z + Attn(query=z, key/value=x))``: the cross-modal stream reads the uni-modal one.

    ``num_heads`` defaults to ``max(1, dim // 64)``.  ``forward(x, z, key_padding_mask=None)``
    accepts an optional ``(B, Lx)`` mask over ``x`` (True/1 = real token).  ``x`` and ``z``
    may differ in length (``(B, Lx, D)`` and ``(B, Lz, D)``); the output has ``z``'s shape.
    """

    name = "cross_attention"
    ffn: bool = False

    def __init__(
        self,
        dim: int,
        *,
        num_heads: int | None = None,
        dropout: float = 0.0,
        attn_backend: str | None = None,
        mlp_ratio: float = 4.0,
        eps: float = 1e-5,
        backend: str | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        heads = max(1, dim // 64) if num_heads is None else num_heads
        if not isinstance(heads, int) or heads <= 0 or dim % heads:
            raise ValueError(f"{type(self).__name__}: dim={dim} must be divisible by num_heads={num_heads!r}")
        hidden = int(round(mlp_ratio * dim))
        if self.ffn and hidden <= 0:
            raise ValueError(f"{type(self).__name__}: mlp_ratio={mlp_ratio} gives no hidden units")
        # plain values, read by _build
        self.num_heads, self.dropout, self.attn_backend = heads, float(dropout), attn_backend
        self.mlp_ratio, self._hidden = float(mlp_ratio), hidden
        super().__init__(dim, eps=eps, backend=backend, device=device, dtype=dtype)

    def _build(self, factory: dict) -> None:
        self.attn = MultiHeadAttention(self.dim, self.num_heads, dropout=self.dropout,
                                       backend=self.attn_backend, **factory)
        self.drop = Dropout(self.dropout)  # cheap CPU masks
        if self.ffn:
            self.fc1 = nn.Linear(self.dim, self._hidden, **factory)
            self.fc2 = nn.Linear(self._hidden, self.dim, **factory)
            self.ffn_norm = nn.LayerNorm(self.dim, eps=self.eps, **factory)

    def forward(self, x: torch.Tensor, z: torch.Tensor, key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``x``: (B, Lx, D) keys/values; ``z``: (B, Lz, D) queries; returns (B, Lz, D).

        No checks here: the attention validates ``x`` (its context) and ``z`` (its queries).
        """
        a = self.drop(self.attn(z, context=x, key_padding_mask=key_padding_mask))  # (B, Lz, D)
        h = self._norm_add(a, z)
        if self.ffn:
            f = self.drop(self.fc2(F.gelu(self.fc1(h))))
            h = self.ffn_norm(h + f)
        return h

    def extra_repr(self) -> str:
        s = super().extra_repr() + f", num_heads={self.num_heads}"
        if self.dropout:
            s += f", dropout={self.dropout:g}"
        if self.ffn:
            s += f", mlp_ratio={self.mlp_ratio:g}"
        return s


class CrossAttentionFFNBridge(CrossAttentionBridge):
    """``h = LN(z + Attn(q=z, kv=x))``, then ``LN(h + FFN(h))`` (FFN: Linear -> GELU -> Linear)."""

    name, ffn = "cross_attention_ffn", True


# ---------------------------------------------------------------- registry

BRIDGES: dict[str, type[Bridge]] = {
    cls.name: cls
    for cls in (
        AddBridge,
        ScaledAddBridge,
        InterpolateBridge,
        ScaledAddTensorBridge,
        InterpolateTensorBridge,
        GatedInterpolateBridge,
        ElementwiseProductBridge,
        ElementwiseProductResidualBridge,
        LinearAddBridge,
        LinearAddResidualBridge,
        LinearConcatBridge,
        LinearConcatResidualBridge,
        MLPAddBridge,
        MLPAddResidualBridge,
        MLPConcatBridge,
        MLPConcatResidualBridge,
        CrossAttentionBridge,
        CrossAttentionFFNBridge,
    )
}
"""Bridge name -> class."""

BRIDGE_ALIASES: dict[str, str] = {"concat": "linear_concat", "concat_residual": "linear_concat_residual"}
"""Other accepted names (the design card's ``concat`` is ``linear_concat``)."""


def bridge_names() -> list[str]:
    """All accepted names, canonical names first, then aliases."""
    return list(BRIDGES) + list(BRIDGE_ALIASES)


def create_bridge(name: str, dim: int, **kwargs) -> Bridge:
    """Build the bridge called ``name`` for features of width ``dim``.

    ``kwargs`` go to the class (common to all: ``eps``, ``backend``, ``device``, ``dtype``;
    ``hidden_dim`` for ``mlp_*``; ``num_heads``, ``dropout``, ``attn_backend`` and
    ``mlp_ratio`` for ``cross_attention*``).

    >>> create_bridge("scaled_add", 768)
    ScaledAddBridge(768, eps=1e-05)
    """
    if not isinstance(name, str):
        raise TypeError(f"bridge name must be a str, got {type(name).__name__}")
    key = BRIDGE_ALIASES.get(name, name)
    if key not in BRIDGES:
        raise ValueError(f"unknown bridge {name!r}; valid names: {', '.join(bridge_names())}")
    return BRIDGES[key](dim, **kwargs)


# The Hugging Face key tables moved to bridgetower.models.layer_keys (a layer holds no other
# library's names); the old import paths still resolve, with a DeprecationWarning.
__getattr__ = moved_names(__name__, "bridgetower.models.layer_keys", ("convert_hf_link_tower_state_dict", "hf_link_tower_key_map", "rename_hf_link_tower_key"), warn=True)
