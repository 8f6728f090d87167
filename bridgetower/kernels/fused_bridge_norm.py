"""Fused bridge + LayerNorm: ``out = LayerNorm(a*x + b*z) * weight + bias`` in one pass.

What it computes (over the last dimension ``D``; ``mode`` fixes ``a`` and ``b``, see the
table in :mod:`bridgetower.kernels.modes`)::

    s   = a*x + b*z      add: a=b=1                 scaled_add: a=coef (0-d), b=1
                         interpolate: a=1-coef, b=coef (0-d)
                         scaled_add_tensor / interpolate_tensor: the same with coef of shape (D,)
    out = (s - mean(s)) * rstd(s) * weight + bias,   rstd = 1/sqrt(var(s) + eps)

Why it is built this way:

* Memory traffic is the limit of a norm on a GPU.  The forward reads ``x`` and ``z`` once
  and writes ``out`` (3NDe bytes) where the unfused ops move 5NDe (add) to 9NDe
  (interpolate).  ``s`` is never written: the backward recomputes it from ``x`` and ``z``.
* Statistics (``mean``, ``rstd``) are kept in float32 whatever the input dtype; every
  load is upcast to float32 before arithmetic (also the only way bf16 works in the Triton
  interpreter).
* The backward returns ``dx``, ``dz``, ``dweight``, ``dbias`` *and* the gradient of the
  bridge coefficient (``sum(ds*x)`` for scaled_add, ``sum(ds*(z-x))`` for interpolate;
  column sums for the per-channel variants).  Cross-row sums go through per-program float32
  partial buffers of shape ``(programs, D)`` followed by a second reduction, never atomics,
  so the result is the same bits on every run.
* Each program handles a tile of several rows (``BLOCK_M x BLOCK_D``); the backward
  programs loop over several tiles.  Fewer programs keep the partial buffers small on a GPU
  and keep the Triton interpreter (whose cost grows with the number of programs) fast on the
  CPU.  Variants are ``tl.constexpr`` flags, so unused branches compile away.

Limits: a row is held in one block, so it may be at most :data:`MAX_FUSED_ROW_BYTES` (64 KB:
``D <= 16384`` float32, ``32768`` float16/bfloat16).  The ``triton`` backend declares that
limit: automatic dispatch gives wider rows to the PyTorch path and ``backend="triton"``
refuses them with a ``ValueError`` naming it (flash-attention's LayerNorm does the same; a
second, looped kernel family for rows no BridgeTower model has is not worth its code).  The
kernels read rows through a row stride with unit stride along ``D``; other layouts are
copied.  No double backward (differentiating the backward op raises).

Triton is imported lazily: the kernels (:mod:`bridgetower.kernels.bridge_norm_triton`) are
defined and the ``torch.library`` ops ``bridgetower::bridge_norm_fwd`` / ``_bwd`` registered
on the first use of the ``triton`` backend, so ``import bridgetower`` on a CPU machine
imports neither ``triton`` nor ``torch._inductor``.

Layers, top to bottom: ``_bridge_norm_fwd_kernel`` / ``_bridge_norm_bwd_kernel`` ->
launchers ``bridge_norm_fwd`` / ``bridge_norm_bwd`` -> the ``torch.library`` ops (so
``torch.compile`` traces through them) -> :class:`BridgeNormFn` -> the backends and
:func:`bridge_norm`.
"""

from __future__ import annotations

import importlib.util
import math
import os
from types import ModuleType

import torch

from .dispatch import Backend, backend_reasons, check_backend_name, select_backend
from .modes import bridge_mode
from .reference import bridge_norm_ref

__all__ = [
    "BRIDGE_NORM_BACKENDS",
    "BridgeNormFn",
    "MAX_FUSED_ROW_BYTES",
    "bridge_norm",
    "bridge_norm_backend_reasons",
    "check_bridge_norm_backend",
    "load_triton_kernels",
    "select_bridge_norm_backend",
]

#: The widest row (in bytes of the input dtype) the Triton kernels hold in one block.
MAX_FUSED_ROW_BYTES = 65536

_KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


# --------------------------------------------------------------------------------------
# Lazy Triton
# --------------------------------------------------------------------------------------


def _triton_install_problem() -> str | None:
    """Whether a ``triton`` package is there at all, without importing it."""
    try:
        found = importlib.util.find_spec("triton") is not None
    except (ImportError, ValueError) as exc:
        return f"triton is not importable ({type(exc).__name__}: {exc})"
    return None if found else "triton is not importable (not installed)"


_TRITON_INSTALL_PROBLEM = _triton_install_problem()


_LOADED: ModuleType | None = None  # bridge_norm_triton once imported
_LOAD_ERROR: str | None = None  # why importing it failed (tried once)


def _import_triton_kernels() -> tuple[ModuleType | None, str | None]:
    """``(module, None)``, or ``(None, why)`` when importing it fails.

    The result is kept in two globals, except while ``torch.compile`` traces this: then the
    import still happens (the ops get registered) but no global is written, so the trace
    has no side effect to replay (``torch.export`` would warn about one).
    """
    global _LOADED, _LOAD_ERROR
    if _LOADED is not None or _LOAD_ERROR is not None:
        return _LOADED, _LOAD_ERROR
    try:
        from . import bridge_norm_triton
    except Exception as exc:  # ImportError, or a broken install raising something else
        module, error = None, f"triton is not importable ({type(exc).__name__}: {exc})"
    else:
        module, error = bridge_norm_triton, None
    if not torch.compiler.is_compiling():
        _LOADED, _LOAD_ERROR = module, error
    return module, error


def load_triton_kernels() -> ModuleType | None:
    """Import :mod:`bridgetower.kernels.bridge_norm_triton` (defines the ``@triton.jit``
    kernels, registers the ``torch.library`` ops) on first call; None if that fails.

    ``TRITON_INTERPRET`` is read by ``@triton.jit`` at this moment: kernels loaded without it
    run on CUDA only, kernels loaded with it on CPU tensors (in the interpreter).
    """
    return _import_triton_kernels()[0]


def _row_problem(x: torch.Tensor) -> str | None:
    row = x.shape[-1] * x.element_size()
    if row <= MAX_FUSED_ROW_BYTES:
        return None
    return (f"row of {row} bytes ({x.shape[-1]} x {x.dtype}) exceeds the 64 KB one-block "
            "limit of the fused kernel")


# --------------------------------------------------------------------------------------
# The autograd Function over the two ops
# --------------------------------------------------------------------------------------


class BridgeNormFn(torch.autograd.Function):
    """Autograd glue over the two Triton ops; inputs must already be validated (use
    :func:`bridge_norm`). Loads the kernels on first use; refuses rows over 64 KB."""

    @staticmethod
    def forward(ctx, x, z, weight, bias, coef, mode: str, eps: float):
        kernels, error = _import_triton_kernels()
        if kernels is None:
            raise RuntimeError(f"BridgeNormFn needs Triton: {error}")
        problem = _row_problem(x)
        if problem is not None:
            raise ValueError(f"BridgeNormFn: {problem}")
        out, mean, rstd = torch.ops.bridgetower.bridge_norm_fwd(x, z, weight, bias, coef, mode, eps)
        ctx.save_for_backward(x, z, weight, bias, coef, mean, rstd)
        ctx.mode = mode
        return out

    @staticmethod
    def backward(ctx, dout):
        x, z, weight, bias, coef, mean, rstd = ctx.saved_tensors
        dx, dz, dw, db, dcoef = torch.ops.bridgetower.bridge_norm_bwd(
            dout, x, z, weight, bias, coef, mean, rstd, ctx.mode
        )
        return (
            dx,
            dz,
            dw if weight is not None else None,
            db if bias is not None else None,
            dcoef if coef is not None else None,
            None,
            None,
        )


# --------------------------------------------------------------------------------------
# Backends, chosen by declared capability (bridgetower.kernels.dispatch); the call is x
# --------------------------------------------------------------------------------------


class _TritonBackend(Backend):
    """The fused Triton kernels: CUDA tensors, or CPU tensors under the Triton interpreter."""

    name = "triton"

    def unsupported_reasons(self, x: torch.Tensor) -> list[str]:
        reasons = []
        dev = x.device.type
        runnable = dev == "cuda"
        if dev == "cpu":
            if os.environ.get("TRITON_INTERPRET") != "1":
                reasons.append("CPU tensors need the Triton interpreter: TRITON_INTERPRET=1 is "
                               "not set (set it before the first bridge_norm call)")
            elif torch.compiler.is_compiling():
                reasons.append("the Triton interpreter cannot run inside torch.compile")
            else:
                runnable = True
        elif dev != "cuda":
            reasons.append(f"device {dev!r} is not supported (CUDA, or CPU with TRITON_INTERPRET=1)")
        if x.dtype not in _KERNEL_DTYPES:
            reasons.append(f"dtype {x.dtype} is not supported (float32, float16, bfloat16)")
        else:
            problem = _row_problem(x)
            if problem is not None:
                reasons.append(problem)
        if _TRITON_INSTALL_PROBLEM is not None:
            reasons.append(_TRITON_INSTALL_PROBLEM)
        elif runnable:  # import Triton only where it could run
            kernels, error = _import_triton_kernels()
            if kernels is None:
                reasons.append(error)
            elif dev == "cpu" and not kernels.INTERPRETED:
                reasons.append("TRITON_INTERPRET=1 is set now but was not when the Triton "
                               "kernels were loaded (@triton.jit reads it at their first use)")
        return reasons

    def __call__(self, x, z, weight, bias, coef, mode, eps):
        return BridgeNormFn.apply(x, z, weight, bias, coef, mode, eps)


class _TorchBackend(Backend):
    """The PyTorch reference: every device and floating dtype."""

    name = "torch"

    def __call__(self, x, z, weight, bias, coef, mode, eps):
        return bridge_norm_ref(x, z, weight, bias, coef, mode=mode, eps=eps)


# Priority order: the first backend that fits is taken; "torch" always fits.
_BACKENDS = (_TritonBackend(), _TorchBackend())
BRIDGE_NORM_BACKENDS = tuple(b.name for b in _BACKENDS)


def _describe(x: torch.Tensor) -> str:
    return f"x of shape {tuple(x.shape)}, dtype {x.dtype}, device {x.device}"


def bridge_norm_backend_reasons(x: torch.Tensor) -> dict[str, list[str]]:
    """For each backend, why it cannot run ``x`` (an empty list if it can)."""
    return backend_reasons(_BACKENDS, x)


def check_bridge_norm_backend(name: str | None) -> None:
    """Validate a backend name: None (automatic) or one of :data:`BRIDGE_NORM_BACKENDS`;
    ``ValueError`` listing the valid names otherwise (modules call it at construction)."""
    check_backend_name("bridge_norm", _BACKENDS, name)


def select_bridge_norm_backend(x: torch.Tensor, backend: str | None = None) -> str:
    """The name of the backend :func:`bridge_norm` would use for ``x`` (raises like it)."""
    return select_backend("bridge_norm", _BACKENDS, x, backend, _describe).name


# --------------------------------------------------------------------------------------
# Public entry point
# --------------------------------------------------------------------------------------


def _check_tensor_arg(name: str, t, shape: tuple[int, ...], x: torch.Tensor, mode: str) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"bridge_norm: {name} must be a torch.Tensor or None, got {type(t).__name__}")
    if tuple(t.shape) != shape:
        what = "a 0-d tensor" if shape == () else f"shape {shape}"
        raise ValueError(f"bridge_norm: {name} must be {what} for mode {mode!r} and x of shape "
                         f"{tuple(x.shape)}, got shape {tuple(t.shape)}")
    if t.dtype not in (x.dtype, torch.float32):
        allowed = ", ".join(sorted({str(x.dtype), str(torch.float32)}))
        raise TypeError(f"bridge_norm: {name} dtype {t.dtype} does not match x dtype {x.dtype} "
                        f"(allowed: {allowed})")
    if t.device != x.device:
        raise ValueError(f"bridge_norm: {name} is on {t.device} but x is on {x.device}")


def _check_inputs(x, z, weight, bias, coef, mode, eps) -> None:
    for name, t in (("x", x), ("z", z)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"bridge_norm: {name} must be a torch.Tensor, got {type(t).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"bridge_norm: x must be a floating-point tensor, got dtype {x.dtype}")
    if z.dtype != x.dtype:
        raise TypeError(f"bridge_norm: x and z must have the same dtype, got x {x.dtype} and z {z.dtype}")
    if x.dim() == 0 or x.shape[-1] == 0:
        raise ValueError(f"bridge_norm: x needs a non-empty last (feature) dimension, got shape "
                         f"{tuple(x.shape)}")
    if z.shape != x.shape:
        raise ValueError(f"bridge_norm: x and z must have the same shape, got x {tuple(x.shape)} "
                         f"and z {tuple(z.shape)}")
    if z.device != x.device:
        raise ValueError(f"bridge_norm: z is on {z.device} but x is on {x.device}")
    spec = bridge_mode(mode)
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps >= 0 or math.isinf(eps):
        raise ValueError(f"bridge_norm: eps must be a finite number >= 0, got {eps!r}")
    d = x.shape[-1]
    if not spec.has_coef and coef is not None:
        raise ValueError(f"bridge_norm: mode {mode!r} takes no coef (use scaled_add or "
                         "interpolate for a coefficient)")
    if spec.has_coef:
        if coef is None:
            raise ValueError(f"bridge_norm: mode {mode!r} needs coef")
        _check_tensor_arg("coef", coef, spec.coef_shape(d), x, mode)
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None:
            _check_tensor_arg(name, t, (d,), x, mode)


def _autocast_align(x, z):
    """Under autocast, a residual stream (float32) meets a Linear output (bf16/fp16): promote
    both to the wider dtype, as autocast runs ``layer_norm`` in float32.  Outside autocast,
    mixed dtypes stay an error (raised by ``_check_inputs``)."""
    if (
        isinstance(x, torch.Tensor)
        and isinstance(z, torch.Tensor)
        and x.dtype != z.dtype
        and x.is_floating_point()
        and z.is_floating_point()
        and torch.is_autocast_enabled(x.device.type)
    ):
        dtype = torch.promote_types(x.dtype, z.dtype)
        return x.to(dtype), z.to(dtype)
    return x, z


def bridge_norm(
    x: torch.Tensor,
    z: torch.Tensor,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    coef: torch.Tensor | None = None,
    *,
    mode: str = "add",
    eps: float = 1e-5,
    backend: str | None = None,
) -> torch.Tensor:
    """``LayerNorm(a*x + b*z) * weight + bias`` over the last dimension (see the module doc).

    Args:
        x, z: ``(..., D)`` floating-point tensors of the same shape, dtype and device (under
            autocast, differing float dtypes are promoted to the wider one).
        weight, bias: optional ``(D,)`` LayerNorm affine parameters (dtype of x or float32).
        coef: the bridge coefficient: ``None`` for ``add``, a 0-d tensor for ``scaled_add``
            and ``interpolate``, shape ``(D,)`` for ``scaled_add_tensor`` and
            ``interpolate_tensor``.  Differentiable.
        mode: one of :data:`~bridgetower.kernels.modes.BRIDGE_NORM_MODES`.
        eps: LayerNorm epsilon.
        backend: ``None`` picks the first backend that fits (``"triton"`` then ``"torch"``);
            naming one forces it, and a ``ValueError`` lists why if it cannot run the inputs.

    Returns:
        ``(..., D)`` tensor in x's dtype.
    """
    x, z = _autocast_align(x, z)
    _check_inputs(x, z, weight, bias, coef, mode, eps)
    impl = select_backend("bridge_norm", _BACKENDS, x, backend, _describe)
    return impl(x, z, weight, bias, coef, mode, float(eps))
