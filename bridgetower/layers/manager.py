"""Managers: merge the top ``N`` uni-modal layers into the input of a cross-modal layer.

ManagerTower (Xu et al., ACL 2023), BridgeTower's successor, gives each cross-modal layer a
*manager* instead of a bridge.  A bridge merges ONE projected uni-modal layer into the previous
cross-modal output; a manager merges ALL ``N`` managed uni-modal layers (the same ``N`` for
every manager of a stream), plus the previous cross-modal output after the first layer.  A
manager is to a list of uni-modal layers what a bridge is to one.

Notation: ``H_j`` (B, L, D), ``j < N``, the managed layers (projected, token-typed and
layer-embedded by the model); ``z`` (B, L, D) the previous cross-modal output of the manager's
own stream; ``z_o`` (B, L_o, D) the other stream's::

    R_j = LN_j(H_j)              one LayerNorm per managed layer                 (norms.j)
    C   = LN_z(z)                the previous output, managers after the first   (prev_norm)

:class:`StaticManager` (``"static"``, the paper's SAUE)::

    w   = softmax_j(s_j / tau)              s: scores (N, D) "vector" or (N, 1) "scalar"
    out = sum_j w_j * R_j  [+ c * C]        c: prev_scale (D,) or (1,), raw: no softmax

:class:`AdaptiveManager` (``"adaptive"``, AAUE; needs ``z`` and ``z_o``)::

    E   = LN_o(z_o)                                                            (other_norm)
    A   = softmax_k(query(C) key(E)^T / sqrt(D))   one head, no value projection, no mask
    g   = controller([A E ; C])                    (B, L, N): the attended other stream first
    w   = softmax_j(g / tau)                       a weight per sample, token and layer
    out = sum_j w_j * R_j + c * C

``tau`` is the learnable ``temperature`` (init 1).  The routed weights sum to one; ``c`` is
free and nothing normalises the sum, as in the official code.  In "vector" mode a static
manager has an independent softmax per channel; an adaptive one only broadcasts ``g`` over
the channels, so "vector" / "scalar" there only sets the shape of ``c``.

**Training-only noise.**  In training mode (``nn.Module.training``) and with ``noise=True``,
Gaussian noise of standard deviation ``1/N``, one draw per element of (B, N, L, D), is added to
the routed scores (``s`` or ``g``, broadcast to that shape) before the softmax; ``c`` gets none.
The official code does the same while Lightning's trainer is training (it keys on
``trainer.training``, this module on its own ``training`` flag, so ``model.eval()`` turns it
off).  Gradient checkpointing restores the RNG state, so the recomputation draws the same noise.

**Computation.**  The statistics of the ``N`` LayerNorms depend only on ``H``, so
:class:`ManagerFusion` standardises each stream's stack once (:func:`standardize_layers`, one
``F.layer_norm`` without affine, shared by every manager of the stream) and each manager
applies its own affines and weights (``forward(..., standardized=True)``); static weights fold
into the affines: ``out = sum_j (w_j g_j) * Hhat_j + sum_j w_j b_j``.  In training the noise,
softmax and weighted sum are recomputed in the backward (as the nodes of
``kernels/fused_mlp.py`` recompute theirs), so autograd keeps the shared stack and the scores,
not three (B, N, L, D) tensors per manager.  The fused ``bridge_norm`` kernel
(``LN(a*x + b*z)``) does not fit: a manager normalises each input *before* its weighted sum,
never after it; nor does ``layer_norm_linear`` (it spares a LayerNorm output that is not
needed later, but ``C`` and ``E`` are needed themselves).  The cross-stream attention runs on
:func:`bridgetower.kernels.attention` (one head of width D).
:func:`manager_ref` is the literal formula, the reference of the tests.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..kernels import attention, check_attention_backend
from .co_attention import CoAttentionLayer
from .validation import check_positive_int

__all__ = [
    "MANAGERS",
    "MANAGER_ALIASES",
    "MANAGER_WEIGHTS",
    "AdaptiveManager",
    "Manager",
    "ManagerFusion",
    "StaticManager",
    "create_manager",
    "manager_names",
    "manager_ref",
    "standardize_layers",
]

#: The weight shapes: one weight per channel (the official default) or one per layer.
MANAGER_WEIGHTS: tuple[str, ...] = ("vector", "scalar")


def standardize_layers(layers: torch.Tensor, eps: float) -> torch.Tensor:
    """``(..., D)`` rows to zero mean and unit variance: a LayerNorm without affine."""
    return F.layer_norm(layers, (layers.shape[-1],), eps=eps)


def _stack_layers(who: str, layers: torch.Tensor | Sequence[torch.Tensor], n: int, dim: int) -> torch.Tensor:
    """``layers`` as one (B, n, L, dim) tensor, checked."""
    if isinstance(layers, torch.Tensor):
        stacked = layers
    elif isinstance(layers, Sequence) and layers and all(isinstance(t, torch.Tensor) for t in layers):
        shapes = {tuple(t.shape) for t in layers}
        if len(shapes) != 1 or len({t.dtype for t in layers}) != 1:
            raise ValueError(f"{who}: the managed layers must share one shape and dtype, got "
                             f"{sorted(shapes)} and {sorted({str(t.dtype) for t in layers})}")
        stacked = torch.stack(list(layers), dim=1)  # (B, N, L, D)
    else:
        raise TypeError(f"{who}: layers must be a (B, N, L, D) tensor or a list of N (B, L, D) "
                        f"tensors, got {type(layers).__name__}")
    if stacked.ndim != 4 or stacked.shape[1] != n or stacked.shape[-1] != dim:
        raise ValueError(f"{who}: layers must be (B, N={n}, L, D={dim}) (or {n} tensors (B, L, {dim})), "
                         f"got shape {tuple(stacked.shape)}")
    if not stacked.is_floating_point():
        raise TypeError(f"{who}: layers must be floating point, got {stacked.dtype}")
    return stacked


def _check_stream(who: str, name: str, t: torch.Tensor | None, batch: int, dim: int, dtype: torch.dtype,
                  length: int | None = None) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{who}: {name} must be a (B, L, D) tensor, got {type(t).__name__}")
    if t.ndim != 3 or t.shape[0] != batch or t.shape[-1] != dim or (length is not None and t.shape[1] != length):
        want = f"(B={batch}, L={length if length is not None else 'L'}, D={dim})"
        raise ValueError(f"{who}: {name} must be {want}, got shape {tuple(t.shape)}")
    if t.dtype != dtype:
        raise TypeError(f"{who}: {name} has dtype {t.dtype}, the layers {dtype}")


class Manager(nn.Module):
    """Base class: the per-layer LayerNorms, the previous-output weight, the temperature.

    Args:
        dim: width ``D`` of the cross-modal stream.
        num_layers: ``N``, the managed uni-modal layers.
        weights: ``"vector"`` (a weight per channel, the official default) or ``"scalar"``.
        previous: whether the manager also takes the previous cross-modal output (every
            manager but the first layer's).
        eps: eps of the manager's LayerNorms (1e-5, as the official code).
        temperature: initial softmax temperature.
        learnable: whether the static scores and ``prev_scale`` train.
        temperature_learnable: whether the temperature trains.
        noise: add the training-only noise (see the module docstring).
        device, dtype: of the parameters.

    Parameters: ``norms.j`` (``nn.LayerNorm`` each), ``temperature`` (1,), and with
    ``previous`` ``prev_norm`` and ``prev_scale`` ((D,) or (1,), init 1).
    """

    name: str = ""

    def __init__(
        self,
        dim: int,
        num_layers: int,
        *,
        weights: str = "vector",
        previous: bool = True,
        eps: float = 1e-5,
        temperature: float = 1.0,
        learnable: bool = True,
        temperature_learnable: bool = True,
        noise: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        who = type(self).__name__
        check_positive_int(who, dim=dim, num_layers=num_layers)
        if weights not in MANAGER_WEIGHTS:
            raise ValueError(f"{who}: weights must be one of {', '.join(MANAGER_WEIGHTS)}, got {weights!r}")
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not (
                math.isfinite(temperature) and temperature > 0):
            raise ValueError(f"{who}: temperature must be a finite number > 0, got {temperature!r}")
        for flag, value in (("previous", previous), ("learnable", learnable),
                            ("temperature_learnable", temperature_learnable), ("noise", noise)):
            if not isinstance(value, bool):
                raise TypeError(f"{who}: {flag} must be True or False, got {value!r}")
        fk = {"device": device, "dtype": dtype}
        self.dim, self.num_layers, self.weights = dim, num_layers, weights
        self.previous, self.eps, self.noise = previous, float(eps), noise
        self.initial_temperature = float(temperature)
        width = dim if weights == "vector" else 1
        self.norms = nn.ModuleList(nn.LayerNorm(dim, eps=eps, **fk) for _ in range(num_layers))
        self.temperature = nn.Parameter(torch.empty(1, **fk), requires_grad=temperature_learnable)
        if previous:
            self.prev_norm = nn.LayerNorm(dim, eps=eps, **fk)
            self.prev_scale = nn.Parameter(torch.empty(width, **fk), requires_grad=learnable)
        else:
            self.register_module("prev_norm", None)
            self.register_parameter("prev_scale", None)
        self._build(width, learnable, fk)
        self.reset_parameters()

    def _build(self, width: int, learnable: bool, factory: dict) -> None:
        """Create the subclass's parameters and submodules."""

    def reset_parameters(self) -> None:
        """LayerNorms (1, 0), ``prev_scale`` 1, the temperature its initial value (the
        subclasses add theirs: static scores 1/N, Linear N(0, 0.02) with zero biases)."""
        for norm in self.norms:
            norm.reset_parameters()
        with torch.no_grad():
            self.temperature.fill_(self.initial_temperature)
            if self.previous:
                self.prev_norm.reset_parameters()
                self.prev_scale.fill_(1.0)

    # ------------------------------------------------------------------ pieces

    def _affines(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The managed layers' LayerNorm weights and biases, (N, D) each."""
        return (torch.stack([n.weight for n in self.norms]), torch.stack([n.bias for n in self.norms]))

    def _noisy(self, scores: torch.Tensor, hat: torch.Tensor) -> torch.Tensor:
        """``scores`` (broadcastable to ``hat``'s (B, N, L, D)) plus N(0, 1/N) noise per element,
        in training with ``noise`` on; else unchanged."""
        if not (self.training and self.noise):
            return scores
        return scores + torch.randn_like(hat) * (1.0 / self.num_layers)

    def _weighted_sum(self, hat: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """``sum_j w_j * (hat_j * g_j + b_j)`` (B, L, D): hat (B, N, L, D), w broadcastable to it.
        Whole-stack ops: the backward of a loop's ``hat[:, j]`` fills a (B, N, L, D) zero per j."""
        gamma, beta = self._affines()  # (N, D)
        if w.shape[0] == 1 and w.shape[2] == 1:  # static: fold the weights into the affines
            w = w[0, :, 0]  # (N, D) or (N, 1)
            return (hat * (w * gamma)[:, None]).sum(1) + (w * beta).sum(0)
        return (w * torch.addcmul(beta[:, None], hat, gamma[:, None])).sum(1)

    def _routed_sum(self, hat: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """``sum_j softmax_j((scores + noise) / tau)_j * (hat_j * g_j + b_j)``, scores broadcastable
        to hat; with gradients on, recomputed in the backward (the same noise: RNG state restored)."""

        def routed(hat: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
            return self._weighted_sum(hat, torch.softmax(self._noisy(scores, hat) / self.temperature, dim=1))

        if torch.is_grad_enabled():
            return checkpoint(routed, hat, scores, use_reentrant=False,
                              preserve_rng_state=self.training and self.noise)
        return routed(hat, scores)

    def _check(self, layers, prev, prev_other, standardized) -> torch.Tensor:
        who = type(self).__name__
        stacked = _stack_layers(who, layers, self.num_layers, self.dim)
        b, _, length, _ = stacked.shape
        if not isinstance(standardized, bool):
            raise TypeError(f"{who}: standardized must be True or False, got {standardized!r}")
        if self.previous:
            _check_stream(who, "prev", prev, b, self.dim, stacked.dtype, length)
        elif prev is not None or prev_other is not None:
            raise ValueError(f"{who}(previous=False) is a first layer's manager: it takes no prev / prev_other")
        return stacked

    # ------------------------------------------------------------------ forward

    def forward(
        self,
        layers: torch.Tensor | Sequence[torch.Tensor],
        prev: torch.Tensor | None = None,
        prev_other: torch.Tensor | None = None,
        *,
        standardized: bool = False,
    ) -> torch.Tensor:
        """Aggregate the managed layers.

        Args:
            layers: the ``N`` managed layers, a (B, N, L, D) tensor or a list of ``N``
                (B, L, D) tensors.
            prev: (B, L, D) the previous cross-modal output of this stream (``previous``
                managers only).
            prev_other: (B, L_o, D) the other stream's previous output (adaptive managers).
            standardized: ``layers`` already went through :func:`standardize_layers` with
                this manager's eps (what :class:`ManagerFusion` passes, once per stream).

        Returns (B, L, D), the input of the cross-modal layer.
        """
        stacked = self._check(layers, prev, prev_other, standardized)
        hat = stacked if standardized else standardize_layers(stacked, self.eps)
        return self._aggregate(hat, prev, prev_other)

    def _aggregate(self, hat, prev, prev_other) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def extra_repr(self) -> str:
        return (f"{self.dim}, num_layers={self.num_layers}, weights={self.weights!r}, "
                f"previous={self.previous}, eps={self.eps:g}, noise={self.noise}")


class StaticManager(Manager):
    """SAUE: learned weights, the same for every sample and token (see the module docstring).

    Extra parameter: ``scores`` (N, D) ("vector") or (N, 1) ("scalar"), init 1/N.
    """

    name = "static"

    def _build(self, width: int, learnable: bool, factory: dict) -> None:
        self.scores = nn.Parameter(torch.empty(self.num_layers, width, **factory), requires_grad=learnable)

    def reset_parameters(self) -> None:
        super().reset_parameters()
        with torch.no_grad():
            self.scores.fill_(1.0 / self.num_layers)

    def routing(self, prev: torch.Tensor | None = None, prev_other: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """``{"weights": softmax_j(s_j / tau)}``, (N, D) or (N, 1) (the noise-free weights)."""
        return {"weights": torch.softmax(self.scores / self.temperature, dim=0)}

    def _aggregate(self, hat, prev, prev_other):
        out = self._routed_sum(hat, self.scores[None, :, None, :])  # scores (1, N, 1, w)
        if self.previous:
            out = out + self.prev_scale * self.prev_norm(prev)
        return out


class AdaptiveManager(Manager):
    """AAUE: weights per sample and token from the previous outputs of both streams.

    ``previous`` must be True (a first layer has no previous output to form a query from;
    the official AAUE setting uses a :class:`StaticManager` there).  Extra submodules:
    ``other_norm`` (LayerNorm), ``query`` and ``key`` (Linear D -> D), ``controller``
    (Linear 2D -> N).  ``attn_backend``: the attention backend (None: automatic; a model
    sets it with its other attentions).
    """

    name = "adaptive"

    def __init__(self, dim: int, num_layers: int, *, attn_backend: str | None = None, **kwargs) -> None:
        if kwargs.get("previous", True) is not True:
            raise ValueError("AdaptiveManager needs the previous cross-modal outputs (previous=True); "
                             "the first layer's manager is a StaticManager")
        check_attention_backend(attn_backend)
        super().__init__(dim, num_layers, **kwargs)
        self.attn_backend = attn_backend

    def _build(self, width: int, learnable: bool, factory: dict) -> None:
        d = self.dim
        self.other_norm = nn.LayerNorm(d, eps=self.eps, **factory)
        self.query = nn.Linear(d, d, **factory)
        self.key = nn.Linear(d, d, **factory)
        self.controller = nn.Linear(2 * d, self.num_layers, **factory)

    def reset_parameters(self) -> None:
        super().reset_parameters()
        self.other_norm.reset_parameters()
        for lin in (self.query, self.key, self.controller):
            nn.init.normal_(lin.weight, std=0.02)
            nn.init.zeros_(lin.bias)

    def _check(self, layers, prev, prev_other, standardized):
        stacked = super()._check(layers, prev, prev_other, standardized)
        _check_stream(type(self).__name__, "prev_other", prev_other, stacked.shape[0], self.dim, stacked.dtype)
        return stacked

    def _controller_logits(self, c: torch.Tensor, prev_other: torch.Tensor) -> torch.Tensor:
        """``controller([A E; C])``, (B, L, N), from C = LN_z(z) and z_o."""
        e = self.other_norm(prev_other)  # (B, Lo, D)
        q, k = self.query(c)[:, None], self.key(e)[:, None]  # (B, 1, L, D), (B, 1, Lo, D): one head
        attended = attention(q, k, e[:, None], backend=self.attn_backend)[:, 0]  # (B, L, D)
        return self.controller(torch.cat([attended, c], dim=-1))

    def routing(self, prev: torch.Tensor, prev_other: torch.Tensor) -> dict[str, torch.Tensor]:
        """The noise-free routing: ``attention_scores`` (B, L, L_o) (scaled q.k before the
        softmax), ``controller_logits`` (B, L, N) and ``weights`` (B, N, L)."""
        c, e = self.prev_norm(prev), self.other_norm(prev_other)
        scores = self.query(c) @ self.key(e).transpose(1, 2) / math.sqrt(self.dim)
        logits = self._controller_logits(c, prev_other)
        return {"attention_scores": scores, "controller_logits": logits,
                "weights": torch.softmax(logits.transpose(1, 2) / self.temperature, dim=1)}

    def _aggregate(self, hat, prev, prev_other):
        c = self.prev_norm(prev)  # (B, L, D)
        g = self._controller_logits(c, prev_other).transpose(1, 2)[..., None]  # (B, N, L, 1)
        return self._routed_sum(hat, g) + self.prev_scale * c


# ---------------------------------------------------------------- registry

MANAGERS: dict[str, type[Manager]] = {cls.name: cls for cls in (StaticManager, AdaptiveManager)}
"""Manager name -> class."""

MANAGER_ALIASES: dict[str, str] = {"SAUE": "static", "AAUE": "adaptive"}
"""The paper's names."""


def manager_names() -> list[str]:
    """All accepted names, canonical names first, then aliases."""
    return list(MANAGERS) + list(MANAGER_ALIASES)


def create_manager(name: str, dim: int, num_layers: int, **kwargs) -> Manager:
    """Build the manager called ``name`` (``"static"`` / ``"SAUE"``, ``"adaptive"`` /
    ``"AAUE"``) for ``num_layers`` managed layers of width ``dim``.

    ``kwargs`` go to the class: ``weights``, ``previous``, ``eps``, ``temperature``,
    ``learnable``, ``temperature_learnable``, ``noise``, ``device``, ``dtype``, and
    ``attn_backend`` for the adaptive one.

    >>> create_manager("static", 768, 6, previous=False).scores.shape
    torch.Size([6, 768])
    """
    if not isinstance(name, str):
        raise TypeError(f"manager name must be a str, got {type(name).__name__}")
    key = MANAGER_ALIASES.get(name, name)
    if key not in MANAGERS:
        raise ValueError(f"unknown manager {name!r}; valid names: {', '.join(manager_names())}")
    return MANAGERS[key](dim, num_layers, **kwargs)


def manager_ref(
    manager: Manager,
    layers: torch.Tensor,
    prev: torch.Tensor | None = None,
    prev_other: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """The manager's formula written out literally (the reference of the tests), in the
    dtype of ``layers`` (B, N, L, D): one ``F.layer_norm`` per input with its own affine, the
    scores expanded to (B, N + P, L, D), ``noise`` (B, N, L, D) added to the routed ones when
    given, the softmax over the routed layers, the weighted sum over all."""
    dt = layers.dtype

    def p(t):
        return t.to(dt)

    def ln(x, norm):
        return F.layer_norm(x, (x.shape[-1],), p(norm.weight), p(norm.bias), norm.eps)

    b, n, length, d = layers.shape
    reps = [ln(layers[:, j], manager.norms[j]) for j in range(n)]
    if isinstance(manager, AdaptiveManager):
        c, e = ln(prev, manager.prev_norm), ln(prev_other, manager.other_norm)
        q = c @ p(manager.query.weight).T + p(manager.query.bias)
        k = e @ p(manager.key.weight).T + p(manager.key.bias)
        a = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(d), dim=-1)
        g = torch.cat([a @ e, c], -1) @ p(manager.controller.weight).T + p(manager.controller.bias)
        routed = g.transpose(1, 2)[..., None].expand(b, n, length, d)
    else:
        routed = p(manager.scores)[None, :, None, :].expand(b, n, length, d)
    scores = [routed + (noise.to(dt) if noise is not None else 0)]
    if manager.previous:
        reps.append(ln(prev, manager.prev_norm))
        scores.append(p(manager.prev_scale).expand(b, 1, length, d))
    weights = torch.cat([torch.softmax(scores[0] / p(manager.temperature), dim=1), *scores[1:]], dim=1)
    return (weights * torch.stack(reps, dim=1)).sum(1)


# ---------------------------------------------------------------- fusion


class ManagerFusion(nn.Module):
    """ManagerTower's cross-modal encoder: two stacks of co-attention layers, one manager each.

    Args:
        dim: width of both streams.
        num_layers: ``K`` cross-modal layers per stream (and ``K`` managers per stream).
        num_heads: attention heads of the co-attention layers.
        managed_text, managed_image: ``N``, the managed uni-modal layers of each stream.
        manager: ``"adaptive"`` (the official default: a static manager in the first layer,
            adaptive ones after it), ``"static"`` (static everywhere), or ``K`` names, one per
            layer (the first must be static).
        weights, manager_eps, temperature, learnable, temperature_learnable, noise: for every
            manager (:class:`Manager`).
        mlp_ratio, dropout, attn_dropout, eps, act, attn_backend: for every
            :class:`~bridgetower.layers.co_attention.CoAttentionLayer` (``attn_backend`` also
            for the adaptive managers).
        gradient_checkpointing: recompute each manager and layer in the backward.
        device, dtype: of the parameters.

    Submodules: ``text_layers.K``, ``image_layers.K``, ``text_managers.K``,
    ``image_managers.K``.  Layer ``i`` of both streams::

        X~_i = TextManager_i(H_T, X_{i-1}, Y_{i-1});  Y~_i = ImageManager_i(H_V, Y_{i-1}, X_{i-1})
        X_i  = TextLayer_i(X~_i, Y~_i);               Y_i  = ImageLayer_i(Y~_i, X~_i)

    (the first managers take ``H`` only), so each layer reads the other stream's *managed*
    input, as BridgeTower's reads the bridged one.
    """

    def __init__(
        self,
        dim: int,
        num_layers: int,
        num_heads: int,
        *,
        managed_text: int,
        managed_image: int,
        manager: str | Sequence[str] = "adaptive",
        weights: str = "vector",
        manager_eps: float = 1e-5,
        temperature: float = 1.0,
        learnable: bool = True,
        temperature_learnable: bool = True,
        noise: bool = True,
        mlp_ratio: float = 4,
        dropout: float = 0.0,
        attn_dropout: float = 0.0,
        eps: float = 1e-12,
        act: str = "gelu",
        attn_backend: str | None = None,
        gradient_checkpointing: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        check_positive_int("ManagerFusion", num_layers=num_layers, managed_text=managed_text,
                           managed_image=managed_image)
        fk = {"device": device, "dtype": dtype}
        lk = dict(mlp_ratio=mlp_ratio, dropout=dropout, attn_dropout=attn_dropout, eps=eps, act=act,
                  attn_backend=attn_backend, **fk)
        self.dim, self.num_layers, self.num_heads = dim, num_layers, num_heads
        self.managed_text, self.managed_image = managed_text, managed_image
        self.manager_eps = float(manager_eps)
        self.gradient_checkpointing = bool(gradient_checkpointing)
        self.names = self._manager_names(manager, num_layers)
        self.text_layers = nn.ModuleList(CoAttentionLayer(dim, num_heads, **lk) for _ in range(num_layers))
        self.image_layers = nn.ModuleList(CoAttentionLayer(dim, num_heads, **lk) for _ in range(num_layers))
        mk = dict(weights=weights, eps=manager_eps, temperature=temperature, learnable=learnable,
                  temperature_learnable=temperature_learnable, noise=noise, **fk)

        def build(i: int, n: int) -> Manager:
            extra = {"attn_backend": attn_backend} if self.names[i] == "adaptive" else {"previous": i > 0}
            return create_manager(self.names[i], dim, n, **extra, **mk)

        self.text_managers = nn.ModuleList(build(i, managed_text) for i in range(num_layers))
        self.image_managers = nn.ModuleList(build(i, managed_image) for i in range(num_layers))

    @staticmethod
    def _manager_names(manager: str | Sequence[str], k: int) -> tuple[str, ...]:
        if isinstance(manager, str):
            key = MANAGER_ALIASES.get(manager, manager)
            if key not in MANAGERS:
                raise ValueError(f"ManagerFusion: unknown manager {manager!r}; valid names: {', '.join(manager_names())}")
            return ("static",) + (key,) * (k - 1)
        names = tuple(MANAGER_ALIASES.get(m, m) if isinstance(m, str) else m for m in manager)
        if len(names) != k or any(m not in MANAGERS for m in names):
            raise ValueError(f"ManagerFusion: manager must be a name or {k} names (one per layer) of "
                             f"{', '.join(manager_names())}, got {list(manager)}")
        if names[0] != "static":
            raise ValueError(f"ManagerFusion: the first layer's manager must be static (it has no previous "
                             f"output to form a query from), got {manager[0]!r}")
        return names

    def reset_parameters(self) -> None:
        for m in (*self.text_layers, *self.image_layers, *self.text_managers, *self.image_managers):
            m.reset_parameters()

    def _call(self, module, *args, **kwargs):
        if self.gradient_checkpointing and torch.is_grad_enabled():
            return checkpoint(module, *args, use_reentrant=False, **kwargs)
        return module(*args, **kwargs)

    def forward(
        self,
        text_inputs: torch.Tensor | Sequence[torch.Tensor],
        image_inputs: torch.Tensor | Sequence[torch.Tensor],
        text_mask: torch.Tensor | None = None,
        image_mask: torch.Tensor | None = None,
        *,
        return_all_layers: bool = False,
        return_manager_outputs: bool = False,
        cls_only_last: bool = False,
    ):
        """Run both stacks.

        Args:
            text_inputs: the ``managed_text`` managed layers ``H_T``, a (B, N, Lt, dim)
                tensor or a list of (B, Lt, dim) tensors (projected, token-typed and
                layer-embedded); every text manager reads all of them.
            image_inputs: likewise (B, N, Li, dim).
            text_mask: (B, Lt), True/1 = real token; image_mask: (B, Li).  The managers read
                no mask (as the official code): padded text positions are attended to by
                the image managers' cross-stream attention.
            return_all_layers: return the per-layer outputs (two lists of ``K``).
            return_manager_outputs: also return the managers' outputs (two lists of ``K``,
                the inputs of the layers) as a third and fourth element.
            cls_only_last: run the last layer of both stacks for the first (CLS) row only
                (the last managers still produce every row: they are the keys).

        Returns ``(text, image)`` after the last layer (or the per-layer lists), then with
        ``return_manager_outputs`` ``(text_managed, image_managed)``.
        """
        ht = _stack_layers("ManagerFusion: text_inputs", text_inputs, self.managed_text, self.dim)
        hv = _stack_layers("ManagerFusion: image_inputs", image_inputs, self.managed_image, self.dim)
        if ht.shape[0] != hv.shape[0]:
            raise ValueError(f"ManagerFusion: text and image batch sizes differ: {tuple(ht.shape)} vs {tuple(hv.shape)}")
        ht = standardize_layers(ht, self.manager_eps)  # once per stream, shared by its managers
        hv = standardize_layers(hv, self.manager_eps)
        texts, images, text_managed, image_managed = [], [], [], []
        x = y = None
        for i in range(self.num_layers):
            if i == 0:
                x_in = self._call(self.text_managers[0], ht, standardized=True)
                y_in = self._call(self.image_managers[0], hv, standardized=True)
            else:
                adaptive = self.names[i] == "adaptive"  # reads the other stream's previous output
                x_in = self._call(self.text_managers[i], ht, x, y if adaptive else None, standardized=True)
                y_in = self._call(self.image_managers[i], hv, y, x if adaptive else None, standardized=True)
            cls = cls_only_last and i == self.num_layers - 1
            x = self._call(self.text_layers[i], x_in, y_in, text_mask, image_mask, cls_only=cls)
            y = self._call(self.image_layers[i], y_in, x_in, image_mask, text_mask, cls_only=cls)
            texts.append(x)
            images.append(y)
            text_managed.append(x_in)
            image_managed.append(y_in)
        out = (texts, images) if return_all_layers else (texts[-1], images[-1])
        return (*out, text_managed, image_managed) if return_manager_outputs else out

    def extra_repr(self) -> str:
        return (f"{self.dim}, num_layers={self.num_layers}, num_heads={self.num_heads}, "
                f"managed_text={self.managed_text}, managed_image={self.managed_image}, "
                f"managers={self.names!r}, gradient_checkpointing={self.gradient_checkpointing}")
