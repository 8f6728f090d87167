"""Memory-saving autograd nodes of the MLP blocks: activation+Linear, LayerNorm+Linear, QuickGELU.

Each node computes what the plain composition computes but keeps less for the backward, and
recomputes the rest there (one cheap elementwise pass against one activation-sized tensor
kept per block, which matters for 576-px images):

* :func:`act_linear` -- ``linear(act(h))`` keeping only ``h``: the 4x-wide ``act(h)`` of a
  feed-forward block is recomputed instead of stored. ``act`` is one of
  :data:`ACTIVATIONS` (the names of Hugging Face's ``hidden_act``).
* :func:`layer_norm_linear` -- ``linear(layer_norm(x))`` keeping ``x`` and the row
  statistics instead of the normalised tensor (flash-attention's ``LayerNormLinearFn``
  idea, here on PyTorch's own LayerNorm kernels).
* :func:`quick_gelu` -- CLIP's ``x * sigmoid(1.702 x)`` keeping only ``x`` (the plain
  composition keeps three tensors).

The nodes run in training (grad enabled, parameters in the input dtype, no autocast, not
under ``torch.compile``, which does this itself); everywhere else the functions are the plain
composition. Each is tested against float64 autograd of its formula and ``gradcheck``
(``tests/kernels/test_fused_mlp.py``). No double backward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ACTIVATIONS", "act_linear", "check_activation", "layer_norm_linear", "quick_gelu"]

# Accepted name -> the function computed (several names of one function, as in HF configs).
_ACT_KINDS: dict[str, str] = {
    "gelu": "gelu",  # exact (erf), BERT's "gelu"
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu_fast": "gelu_tanh",
    "quick_gelu": "quick_gelu",  # x * sigmoid(1.702 x), OpenAI CLIP
    "quick": "quick_gelu",
    "relu": "relu",
    "silu": "silu",
    "swish": "silu",
}
#: The activation names :func:`act_linear` accepts.
ACTIVATIONS: tuple[str, ...] = tuple(_ACT_KINDS)


def check_activation(name: str) -> str:
    """The function ``name`` computes (``"gelu"``, ``"gelu_tanh"``, ``"quick_gelu"``,
    ``"relu"``, ``"silu"``); ``ValueError`` listing :data:`ACTIVATIONS` if unknown."""
    kind = _ACT_KINDS.get(name) if isinstance(name, str) else None
    if kind is None:
        raise ValueError(f"unknown activation {name!r}; valid: {', '.join(ACTIVATIONS)}")
    return kind


def _act(h: torch.Tensor, kind: str) -> torch.Tensor:
    """``act(h)`` for a resolved ``kind``."""
    if kind == "gelu":
        return F.gelu(h)
    if kind == "gelu_tanh":
        return F.gelu(h, approximate="tanh")
    if kind == "relu":
        return F.relu(h)
    if kind == "silu":
        return F.silu(h)
    return h * torch.sigmoid(1.702 * h)  # quick_gelu


def _act_backward(grad: torch.Tensor, h: torch.Tensor, kind: str) -> torch.Tensor:
    """``grad * act'(h)`` for the kinds other than quick_gelu (which shares its sigmoid)."""
    if kind == "gelu":
        return torch.ops.aten.gelu_backward(grad, h)
    if kind == "gelu_tanh":
        return torch.ops.aten.gelu_backward(grad, h, approximate="tanh")
    if kind == "relu":
        return torch.ops.aten.threshold_backward(grad, h, 0)
    return torch.ops.aten.silu_backward(grad, h)


class _ActLinearFn(torch.autograd.Function):
    """``linear(act(h), weight, bias)`` saving only ``h``: ``act(h)`` (as wide as ``h``, the
    4x-wide hidden layer of an FFN) is recomputed in the backward instead of being kept.
    ``kind`` is a resolved activation (see :func:`check_activation`)."""

    @staticmethod
    def forward(ctx, h, weight, bias, kind):
        ctx.save_for_backward(h, weight)
        ctx.kind, ctx.has_bias = kind, bias is not None
        if kind == "quick_gelu":  # one temporary, in place
            return F.linear((h * 1.702).sigmoid_().mul_(h), weight, bias)
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
        if ctx.kind == "quick_gelu":  # one sigmoid serves both the recomputed act and its slope
            s = (h * 1.702).sigmoid_()
            act = h * s
            if need_w:
                gw = g2.t().mm(act.reshape(-1, h.shape[-1]))  # (out, in)
            if need_h:
                # d/dh h s(1.702 h) = s + 1.702 h s (1 - s) = s + 1.702 act (1 - s)
                act.addcmul_(act, s, value=-1.0)  # act (1 - s)
                gh = grad.matmul(weight).mul_(s.add_(act, alpha=1.702))
            return gh, gw, gb, None
        if need_w:
            gw = g2.t().mm(_act(h, ctx.kind).reshape(-1, h.shape[-1]))  # (out, in)
        if need_h:
            gh = _act_backward(grad.matmul(weight), h, ctx.kind)
        return gh, gw, gb, None


def _fused_ok(x: torch.Tensor, *params: torch.Tensor | None) -> bool:
    """Training conditions of the autograd nodes (see the module docstring)."""
    return (torch.is_grad_enabled()
            and any(t is not None and t.requires_grad for t in (x, *params))
            and all(t is None or t.dtype == x.dtype for t in params)
            and not torch.is_autocast_enabled(x.device.type)
            and not torch.compiler.is_compiling())


def act_linear(h: torch.Tensor, linear: nn.Linear, kind: str) -> torch.Tensor:
    """``linear(act(h))`` with ``act`` named ``kind`` (one of :data:`ACTIVATIONS`; ``"gelu"``
    is the exact erf GELU, ``"quick"`` / ``"quick_gelu"`` CLIP's QuickGELU).

    In training through :class:`_ActLinearFn`, which keeps one FFN-wide tensor for the
    backward instead of two. Raises ``ValueError`` for an unknown ``kind``.
    """
    act = check_activation(kind)
    if _fused_ok(h, linear.weight):
        return _ActLinearFn.apply(h, linear.weight, linear.bias, act)
    return linear(_act(h, act))


class _LayerNormLinearFn(torch.autograd.Function):
    """``linear(layer_norm(x), weight, bias)`` keeping ``x`` and the row statistics instead
    of the normalised tensor, which the backward recomputes (one pass)."""

    @staticmethod
    def forward(ctx, x, ln_weight, ln_bias, eps, weight, bias):
        y, mean, rstd = torch.native_layer_norm(x, (x.shape[-1],), ln_weight, ln_bias, eps)
        ctx.save_for_backward(x, mean, rstd, ln_weight, ln_bias, weight)
        ctx.eps = eps
        return F.linear(y, weight, bias)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        x, mean, rstd, ln_weight, ln_bias, weight = ctx.saved_tensors
        need_x, need_lw, need_lb, _, need_w, need_b = ctx.needs_input_grad
        D = x.shape[-1]
        g2 = grad.reshape(-1, grad.shape[-1])  # (N, out)
        gx = glw = glb = gw = gb = None
        if need_w:
            y = torch.native_layer_norm(x, (D,), ln_weight, ln_bias, ctx.eps)[0]
            gw = g2.t().mm(y.reshape(-1, D))  # (out, D)
            del y
        if need_b:
            gb = g2.sum(0)
        if need_x or need_lw or need_lb:
            gx, glw, glb = torch.ops.aten.native_layer_norm_backward(
                grad.matmul(weight), x, [D], mean, rstd, ln_weight, ln_bias,
                [need_x, need_lw, need_lb])
        return gx, glw, glb, None, gw, gb


def layer_norm_linear(
    x: torch.Tensor,
    ln_weight: torch.Tensor | None,
    ln_bias: torch.Tensor | None,
    eps: float,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """``F.linear(F.layer_norm(x, (D,), ln_weight, ln_bias, eps), weight, bias)``.

    In training through :class:`_LayerNormLinearFn`, which keeps ``x`` and two per-row
    statistics for the backward instead of the normalised ``(..., D)`` tensor.
    """
    if _fused_ok(x, ln_weight, ln_bias, weight, bias):
        return _LayerNormLinearFn.apply(x, ln_weight, ln_bias, eps, weight, bias)
    return F.linear(F.layer_norm(x, (x.shape[-1],), ln_weight, ln_bias, eps), weight, bias)


class _QuickGELUFn(torch.autograd.Function):
    """``x * sigmoid(1.702 x)`` saving only ``x`` for backward (recomputes the sigmoid)."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return (x * 1.702).sigmoid_().mul_(x)  # one temporary, three passes

    @staticmethod
    def backward(ctx, grad):
        # d/dx x*s(1.702x) = s + 1.702 x s (1 - s): five passes, two temporaries
        (x,) = ctx.saved_tensors
        a = x * 1.702
        s = torch.sigmoid(a)
        a.mul_(grad)  # 1.702 x g
        return torch.ops.aten.sigmoid_backward(a, s).addcmul_(grad, s)  # a s (1-s) + g s


def quick_gelu(x: torch.Tensor) -> torch.Tensor:
    """OpenAI CLIP's activation ``x * sigmoid(1.702 x)``; in training through
    :class:`_QuickGELUFn`, which keeps only ``x`` for the backward."""
    if torch.is_grad_enabled() and x.requires_grad and not torch.compiler.is_compiling():
        return _QuickGELUFn.apply(x)
    return x * torch.sigmoid(1.702 * x)
