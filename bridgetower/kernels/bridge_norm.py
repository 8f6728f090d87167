"""Fused bridge + LayerNorm: ``out = LayerNorm(a*x + b*z) * weight + bias`` in one pass.

What it computes (over the last dimension ``D``; ``mode`` fixes ``a`` and ``b``)::

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
  and keep the Triton interpreter (whose cost grows with the number of programs and loop
  iterations) fast on the CPU.
* Variants are ``tl.constexpr`` flags, so unused branches compile away.

Limits: the kernels read rows through a row stride with unit stride along ``D``; the
launchers pass views that have that layout as they are and copy other inputs to a
contiguous layout.  A row of up to 64 KB (``D <= 16384`` float32, ``32768`` float16 or
bfloat16) is held in one block; wider rows go to ``_bridge_norm_*_looped_kernel``, which
walk the row in chunks (reading x and z three times instead of once): correct for any
``D``, slower.  No double backward (the backward op has no derivative; differentiating it
raises).

Layers, top to bottom: ``_bridge_norm_fwd_kernel`` / ``_bridge_norm_bwd_kernel`` ->
launchers ``bridge_norm_fwd`` / ``bridge_norm_bwd`` -> the ``torch.library`` ops
``bridgetower::bridge_norm_fwd`` / ``bridgetower::bridge_norm_bwd`` (so ``torch.compile``
traces through them) -> ``BridgeNormFn`` -> the backends and ``bridge_norm()``.
"""

from __future__ import annotations

import functools
import logging
import math
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .reference import BRIDGE_NORM_MODES, bridge_norm_ref

try:  # Triton is optional: without it the PyTorch path still works.
    import triton
    import triton.language as tl

    _TRITON_IMPORT_ERROR: str | None = None
except Exception as exc:  # ImportError, or a broken install raising something else
    triton = None
    tl = None
    _TRITON_IMPORT_ERROR = f"{type(exc).__name__}: {exc}"

__all__ = [
    "BRIDGE_NORM_BACKENDS",
    "BridgeNormFn",
    "MAX_FUSED_ROW_BYTES",
    "bridge_norm",
    "bridge_norm_backend_reasons",
    "bridge_norm_bwd",
    "bridge_norm_fwd",
    "select_bridge_norm_backend",
]

logger = logging.getLogger(__name__)

# Rows of up to this many bytes (of the input dtype) are held in one block; wider rows take
# the looped kernels.
MAX_FUSED_ROW_BYTES = 65536

# Bridge modes as the kernels see them: MODE (0 add, 1 scaled_add, 2 interpolate) and
# whether coef is per channel.
_MODE_CODES: dict[str, tuple[int, bool]] = {
    "add": (0, False),
    "scaled_add": (1, False),
    "interpolate": (2, False),
    "scaled_add_tensor": (1, True),
    "interpolate_tensor": (2, True),
}

_KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

# Elements per tile for CPU tensors (the Triton interpreter pays per program and per loop
# iteration, so tiles are large there).
_INTERPRETER_TILE = 65536


# --------------------------------------------------------------------------------------
# Triton kernels
# --------------------------------------------------------------------------------------

if triton is not None:

    @triton.jit
    def _bridge_norm_fwd_kernel(
        X,  # pointer to x, rows of n_cols elements, last-dim stride 1
        Z,  # pointer to z, same layout rules as x
        OUT,  # pointer to out, rows of n_cols elements, last-dim stride 1
        W,  # pointer to weight (n_cols,), unused unless HAS_WEIGHT
        B,  # pointer to bias (n_cols,), unused unless HAS_BIAS
        COEF,  # pointer to coef: one element, or (n_cols,) if COEF_PER_CHANNEL; unused for add
        MEAN,  # pointer to mean (n_rows,) float32, written
        RSTD,  # pointer to rstd (n_rows,) float32, written
        stride_x_row,  # elements between consecutive rows of x
        stride_z_row,  # elements between consecutive rows of z
        stride_out_row,  # elements between consecutive rows of out
        n_rows,  # number of rows N
        n_cols,  # features per row D
        eps,  # LayerNorm epsilon
        MODE: tl.constexpr,  # 0 add (a=b=1), 1 scaled_add (a=coef, b=1), 2 interpolate (a=1-coef, b=coef)
        COEF_PER_CHANNEL: tl.constexpr,  # coef has shape (n_cols,) instead of one element
        HAS_WEIGHT: tl.constexpr,
        HAS_BIAS: tl.constexpr,
        BLOCK_M: tl.constexpr,  # rows per program
        BLOCK_D: tl.constexpr,  # power of two >= n_cols
    ):
        pid = tl.program_id(0)
        rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)
        cols = tl.arange(0, BLOCK_D)
        row_mask = rows < n_rows
        col_mask = cols < n_cols
        mask = row_mask[:, None] & col_mask[None, :]
        rows64 = rows.to(tl.int64)

        x = tl.load(X + rows64[:, None] * stride_x_row + cols[None, :], mask=mask, other=0.0)
        z = tl.load(Z + rows64[:, None] * stride_z_row + cols[None, :], mask=mask, other=0.0)
        x = x.to(tl.float32)
        z = z.to(tl.float32)
        if MODE == 0:
            s = x + z
        else:
            if COEF_PER_CHANNEL:
                c = tl.load(COEF + cols, mask=col_mask, other=0.0).to(tl.float32)[None, :]
            else:
                c = tl.load(COEF).to(tl.float32)
            if MODE == 1:
                s = c * x + z
            else:
                s = (1.0 - c) * x + c * z

        mean = tl.sum(s, axis=1) / n_cols
        diff = tl.where(mask, s - mean[:, None], 0.0)
        var = tl.sum(diff * diff, axis=1) / n_cols
        rstd = 1.0 / tl.sqrt(var + eps)
        y = diff * rstd[:, None]
        if HAS_WEIGHT:
            w = tl.load(W + cols, mask=col_mask, other=0.0).to(tl.float32)
            y = y * w[None, :]
        if HAS_BIAS:
            b = tl.load(B + cols, mask=col_mask, other=0.0).to(tl.float32)
            y = y + b[None, :]

        tl.store(
            OUT + rows64[:, None] * stride_out_row + cols[None, :],
            y.to(OUT.dtype.element_ty),
            mask=mask,
        )
        tl.store(MEAN + rows, mean, mask=row_mask)
        tl.store(RSTD + rows, rstd, mask=row_mask)

    @triton.jit
    def _bridge_norm_bwd_kernel(
        X,  # pointer to x (saved input), last-dim stride 1
        Z,  # pointer to z (saved input), last-dim stride 1
        DY,  # pointer to the incoming gradient d out, last-dim stride 1
        DX,  # pointer to dx, written, last-dim stride 1
        DZ,  # pointer to dz, written, last-dim stride 1
        W,  # pointer to weight (n_cols,), unused unless HAS_WEIGHT
        COEF,  # pointer to coef (one element or (n_cols,)), unused for add
        MEAN,  # pointer to the saved float32 mean (n_rows,)
        RSTD,  # pointer to the saved float32 rstd (n_rows,)
        DW_PART,  # pointer to float32 (programs, n_cols) partial sums of dy*xhat, unused unless HAS_WEIGHT
        DB_PART,  # pointer to float32 (programs, n_cols) partial sums of dy, unused unless HAS_BIAS
        DC_PART,  # pointer to float32 (programs, n_cols) partial sums for dcoef, unused for add
        stride_x_row,  # elements between rows of x
        stride_z_row,  # elements between rows of z
        stride_dy_row,  # elements between rows of dy
        stride_dx_row,  # elements between rows of dx
        stride_dz_row,  # elements between rows of dz
        n_rows,  # number of rows N
        n_cols,  # features per row D
        rows_per_prog,  # rows handled by one program, a multiple of BLOCK_M
        MODE: tl.constexpr,  # 0 add, 1 scaled_add, 2 interpolate (see the forward kernel)
        COEF_PER_CHANNEL: tl.constexpr,
        HAS_WEIGHT: tl.constexpr,
        HAS_BIAS: tl.constexpr,
        BLOCK_M: tl.constexpr,  # rows per loop iteration
        BLOCK_D: tl.constexpr,  # power of two >= n_cols
    ):
        pid = tl.program_id(0)
        cols = tl.arange(0, BLOCK_D)
        col_mask = cols < n_cols
        if HAS_WEIGHT:
            w = tl.load(W + cols, mask=col_mask, other=0.0).to(tl.float32)
        if MODE != 0:
            if COEF_PER_CHANNEL:
                c = tl.load(COEF + cols, mask=col_mask, other=0.0).to(tl.float32)[None, :]
            else:
                c = tl.load(COEF).to(tl.float32)

        acc_dw = tl.zeros([BLOCK_D], dtype=tl.float32)
        acc_db = tl.zeros([BLOCK_D], dtype=tl.float32)
        acc_dc = tl.zeros([BLOCK_D], dtype=tl.float32)
        row_start = pid * rows_per_prog
        for off in range(0, rows_per_prog, BLOCK_M):
            rows = row_start + off + tl.arange(0, BLOCK_M)
            row_mask = rows < n_rows
            mask = row_mask[:, None] & col_mask[None, :]
            rows64 = rows.to(tl.int64)

            x = tl.load(X + rows64[:, None] * stride_x_row + cols[None, :], mask=mask, other=0.0)
            z = tl.load(Z + rows64[:, None] * stride_z_row + cols[None, :], mask=mask, other=0.0)
            dy = tl.load(DY + rows64[:, None] * stride_dy_row + cols[None, :], mask=mask, other=0.0)
            x = x.to(tl.float32)
            z = z.to(tl.float32)
            dy = dy.to(tl.float32)
            mean = tl.load(MEAN + rows, mask=row_mask, other=0.0)
            rstd = tl.load(RSTD + rows, mask=row_mask, other=0.0)

            if MODE == 0:
                s = x + z
            elif MODE == 1:
                s = c * x + z
            else:
                s = (1.0 - c) * x + c * z
            xhat = tl.where(mask, (s - mean[:, None]) * rstd[:, None], 0.0)
            if HAS_WEIGHT:
                g = dy * w[None, :]
            else:
                g = dy
            # d s = rstd * (g - mean(g) - xhat * mean(g * xhat))
            c1 = tl.sum(xhat * g, axis=1) / n_cols
            c2 = tl.sum(g, axis=1) / n_cols
            ds = tl.where(mask, (g - (xhat * c1[:, None] + c2[:, None])) * rstd[:, None], 0.0)

            if MODE == 0:
                dx = ds
                dz = ds
            elif MODE == 1:
                dx = c * ds
                dz = ds
                acc_dc += tl.sum(ds * x, axis=0)
            else:
                dx = (1.0 - c) * ds
                dz = c * ds
                acc_dc += tl.sum(ds * (z - x), axis=0)
            if HAS_WEIGHT:
                acc_dw += tl.sum(dy * xhat, axis=0)
            if HAS_BIAS:
                acc_db += tl.sum(dy, axis=0)

            tl.store(
                DX + rows64[:, None] * stride_dx_row + cols[None, :],
                dx.to(DX.dtype.element_ty),
                mask=mask,
            )
            tl.store(
                DZ + rows64[:, None] * stride_dz_row + cols[None, :],
                dz.to(DZ.dtype.element_ty),
                mask=mask,
            )

        part = pid * n_cols + cols
        if HAS_WEIGHT:
            tl.store(DW_PART + part, acc_dw, mask=col_mask)
        if HAS_BIAS:
            tl.store(DB_PART + part, acc_db, mask=col_mask)
        if MODE != 0:
            tl.store(DC_PART + part, acc_dc, mask=col_mask)

    # Rows wider than one block: the same computation, looping over the row in chunks of
    # BLOCK_D columns (two passes for the statistics, one to write; the backward: one pass
    # for the row sums, one to write).  Slower (x and z are read three times) but with no
    # limit on D.

    @triton.jit
    def _bridge_norm_fwd_looped_kernel(
        X,  # pointer to x, rows of n_cols elements, last-dim stride 1
        Z,  # pointer to z, same layout rules as x
        OUT,  # pointer to out, rows of n_cols elements, last-dim stride 1
        W,  # pointer to weight (n_cols,), unused unless HAS_WEIGHT
        B,  # pointer to bias (n_cols,), unused unless HAS_BIAS
        COEF,  # pointer to coef: one element, or (n_cols,) if COEF_PER_CHANNEL; unused for add
        MEAN,  # pointer to mean (n_rows,) float32, written
        RSTD,  # pointer to rstd (n_rows,) float32, written
        stride_x_row,  # elements between consecutive rows of x
        stride_z_row,  # elements between consecutive rows of z
        stride_out_row,  # elements between consecutive rows of out
        n_rows,  # number of rows N
        n_cols,  # features per row D
        eps,  # LayerNorm epsilon
        MODE: tl.constexpr,  # 0 add, 1 scaled_add, 2 interpolate
        COEF_PER_CHANNEL: tl.constexpr,
        HAS_WEIGHT: tl.constexpr,
        HAS_BIAS: tl.constexpr,
        BLOCK_M: tl.constexpr,  # rows per program
        BLOCK_D: tl.constexpr,  # columns per chunk (power of two)
    ):
        pid = tl.program_id(0)
        rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)
        row_mask = rows < n_rows
        rows64 = rows.to(tl.int64)
        if MODE != 0:
            if not COEF_PER_CHANNEL:
                c_scalar = tl.load(COEF).to(tl.float32)

        acc = tl.zeros([BLOCK_M], dtype=tl.float32)
        for start in range(0, n_cols, BLOCK_D):  # pass 1: mean
            cols = start + tl.arange(0, BLOCK_D)
            col_mask = cols < n_cols
            mask = row_mask[:, None] & col_mask[None, :]
            x = tl.load(X + rows64[:, None] * stride_x_row + cols[None, :], mask=mask, other=0.0)
            z = tl.load(Z + rows64[:, None] * stride_z_row + cols[None, :], mask=mask, other=0.0)
            x = x.to(tl.float32)
            z = z.to(tl.float32)
            if MODE == 0:
                s = x + z
            else:
                if COEF_PER_CHANNEL:
                    c = tl.load(COEF + cols, mask=col_mask, other=0.0).to(tl.float32)[None, :]
                else:
                    c = c_scalar
                if MODE == 1:
                    s = c * x + z
                else:
                    s = (1.0 - c) * x + c * z
            acc += tl.sum(s, axis=1)
        mean = acc / n_cols

        acc = tl.zeros([BLOCK_M], dtype=tl.float32)
        for start in range(0, n_cols, BLOCK_D):  # pass 2: variance around the mean
            cols = start + tl.arange(0, BLOCK_D)
            col_mask = cols < n_cols
            mask = row_mask[:, None] & col_mask[None, :]
            x = tl.load(X + rows64[:, None] * stride_x_row + cols[None, :], mask=mask, other=0.0)
            z = tl.load(Z + rows64[:, None] * stride_z_row + cols[None, :], mask=mask, other=0.0)
            x = x.to(tl.float32)
            z = z.to(tl.float32)
            if MODE == 0:
                s = x + z
            else:
                if COEF_PER_CHANNEL:
                    c = tl.load(COEF + cols, mask=col_mask, other=0.0).to(tl.float32)[None, :]
                else:
                    c = c_scalar
                if MODE == 1:
                    s = c * x + z
                else:
                    s = (1.0 - c) * x + c * z
            diff = tl.where(mask, s - mean[:, None], 0.0)
            acc += tl.sum(diff * diff, axis=1)
        rstd = 1.0 / tl.sqrt(acc / n_cols + eps)

        for start in range(0, n_cols, BLOCK_D):  # pass 3: normalise and write
            cols = start + tl.arange(0, BLOCK_D)
            col_mask = cols < n_cols
            mask = row_mask[:, None] & col_mask[None, :]
            x = tl.load(X + rows64[:, None] * stride_x_row + cols[None, :], mask=mask, other=0.0)
            z = tl.load(Z + rows64[:, None] * stride_z_row + cols[None, :], mask=mask, other=0.0)
            x = x.to(tl.float32)
            z = z.to(tl.float32)
            if MODE == 0:
                s = x + z
            else:
                if COEF_PER_CHANNEL:
                    c = tl.load(COEF + cols, mask=col_mask, other=0.0).to(tl.float32)[None, :]
                else:
                    c = c_scalar
                if MODE == 1:
                    s = c * x + z
                else:
                    s = (1.0 - c) * x + c * z
            y = (s - mean[:, None]) * rstd[:, None]
            if HAS_WEIGHT:
                w = tl.load(W + cols, mask=col_mask, other=0.0).to(tl.float32)
                y = y * w[None, :]
            if HAS_BIAS:
                b = tl.load(B + cols, mask=col_mask, other=0.0).to(tl.float32)
                y = y + b[None, :]
            tl.store(
                OUT + rows64[:, None] * stride_out_row + cols[None, :],
                y.to(OUT.dtype.element_ty),
                mask=mask,
            )
        tl.store(MEAN + rows, mean, mask=row_mask)
        tl.store(RSTD + rows, rstd, mask=row_mask)

    @triton.jit
    def _bridge_norm_bwd_looped_kernel(
        X,  # pointer to x (saved input), last-dim stride 1
        Z,  # pointer to z (saved input), last-dim stride 1
        DY,  # pointer to the incoming gradient d out, last-dim stride 1
        DX,  # pointer to dx, written, last-dim stride 1
        DZ,  # pointer to dz, written, last-dim stride 1
        W,  # pointer to weight (n_cols,), unused unless HAS_WEIGHT
        COEF,  # pointer to coef (one element or (n_cols,)), unused for add
        MEAN,  # pointer to the saved float32 mean (n_rows,)
        RSTD,  # pointer to the saved float32 rstd (n_rows,)
        DW_PART,  # pointer to float32 (programs, n_cols) partial sums of dy*xhat, unused unless HAS_WEIGHT
        DB_PART,  # pointer to float32 (programs, n_cols) partial sums of dy, unused unless HAS_BIAS
        DC_PART,  # pointer to float32 (programs, n_cols) partial sums for dcoef, unused for add
        stride_x_row,  # elements between rows of x
        stride_z_row,  # elements between rows of z
        stride_dy_row,  # elements between rows of dy
        stride_dx_row,  # elements between rows of dx
        stride_dz_row,  # elements between rows of dz
        n_rows,  # number of rows N
        n_cols,  # features per row D
        rows_per_prog,  # rows handled by one program, a multiple of BLOCK_M
        MODE: tl.constexpr,  # 0 add, 1 scaled_add, 2 interpolate
        COEF_PER_CHANNEL: tl.constexpr,
        HAS_WEIGHT: tl.constexpr,
        HAS_BIAS: tl.constexpr,
        BLOCK_M: tl.constexpr,  # rows per loop iteration
        BLOCK_D: tl.constexpr,  # columns per chunk (power of two)
    ):
        pid = tl.program_id(0)
        part_row = pid.to(tl.int64) * n_cols
        if MODE != 0:
            if not COEF_PER_CHANNEL:
                c_scalar = tl.load(COEF).to(tl.float32)
        # This program owns row `pid` of the partial buffers: zero it, then accumulate into
        # it chunk by chunk (read-modify-write, no other program touches it).
        for start in range(0, n_cols, BLOCK_D):
            cols = start + tl.arange(0, BLOCK_D)
            col_mask = cols < n_cols
            zero = tl.zeros([BLOCK_D], dtype=tl.float32)
            if HAS_WEIGHT:
                tl.store(DW_PART + part_row + cols, zero, mask=col_mask)
            if HAS_BIAS:
                tl.store(DB_PART + part_row + cols, zero, mask=col_mask)
            if MODE != 0:
                tl.store(DC_PART + part_row + cols, zero, mask=col_mask)
        # The read-modify-writes below may pair a store and a later load of one element by
        # different threads: a block barrier makes the stores visible first.
        tl.debug_barrier()

        row_start = pid * rows_per_prog
        for off in range(0, rows_per_prog, BLOCK_M):
            rows = row_start + off + tl.arange(0, BLOCK_M)
            row_mask = rows < n_rows
            rows64 = rows.to(tl.int64)
            mean = tl.load(MEAN + rows, mask=row_mask, other=0.0)
            rstd = tl.load(RSTD + rows, mask=row_mask, other=0.0)

            acc1 = tl.zeros([BLOCK_M], dtype=tl.float32)
            acc2 = tl.zeros([BLOCK_M], dtype=tl.float32)
            for start in range(0, n_cols, BLOCK_D):  # pass 1: row sums of g*xhat and g
                cols = start + tl.arange(0, BLOCK_D)
                col_mask = cols < n_cols
                mask = row_mask[:, None] & col_mask[None, :]
                x = tl.load(
                    X + rows64[:, None] * stride_x_row + cols[None, :], mask=mask, other=0.0
                )
                z = tl.load(
                    Z + rows64[:, None] * stride_z_row + cols[None, :], mask=mask, other=0.0
                )
                dy = tl.load(
                    DY + rows64[:, None] * stride_dy_row + cols[None, :], mask=mask, other=0.0
                )
                x = x.to(tl.float32)
                z = z.to(tl.float32)
                dy = dy.to(tl.float32)
                if MODE == 0:
                    s = x + z
                else:
                    if COEF_PER_CHANNEL:
                        c = tl.load(COEF + cols, mask=col_mask, other=0.0).to(tl.float32)[None, :]
                    else:
                        c = c_scalar
                    if MODE == 1:
                        s = c * x + z
                    else:
                        s = (1.0 - c) * x + c * z
                xhat = tl.where(mask, (s - mean[:, None]) * rstd[:, None], 0.0)
                if HAS_WEIGHT:
                    w = tl.load(W + cols, mask=col_mask, other=0.0).to(tl.float32)
                    g = dy * w[None, :]
                else:
                    g = dy
                acc1 += tl.sum(xhat * g, axis=1)
                acc2 += tl.sum(g, axis=1)
            c1 = acc1 / n_cols
            c2 = acc2 / n_cols

            for start in range(0, n_cols, BLOCK_D):  # pass 2: write dx, dz; column sums
                cols = start + tl.arange(0, BLOCK_D)
                col_mask = cols < n_cols
                mask = row_mask[:, None] & col_mask[None, :]
                x = tl.load(
                    X + rows64[:, None] * stride_x_row + cols[None, :], mask=mask, other=0.0
                )
                z = tl.load(
                    Z + rows64[:, None] * stride_z_row + cols[None, :], mask=mask, other=0.0
                )
                dy = tl.load(
                    DY + rows64[:, None] * stride_dy_row + cols[None, :], mask=mask, other=0.0
                )
                x = x.to(tl.float32)
                z = z.to(tl.float32)
                dy = dy.to(tl.float32)
                if MODE == 0:
                    s = x + z
                else:
                    if COEF_PER_CHANNEL:
                        c = tl.load(COEF + cols, mask=col_mask, other=0.0).to(tl.float32)[None, :]
                    else:
                        c = c_scalar
                    if MODE == 1:
                        s = c * x + z
                    else:
                        s = (1.0 - c) * x + c * z
                xhat = tl.where(mask, (s - mean[:, None]) * rstd[:, None], 0.0)
                if HAS_WEIGHT:
                    w = tl.load(W + cols, mask=col_mask, other=0.0).to(tl.float32)
                    g = dy * w[None, :]
                else:
                    g = dy
                ds = tl.where(mask, (g - (xhat * c1[:, None] + c2[:, None])) * rstd[:, None], 0.0)
                if MODE == 0:
                    dx = ds
                    dz = ds
                elif MODE == 1:
                    dx = c * ds
                    dz = ds
                    part = tl.load(DC_PART + part_row + cols, mask=col_mask, other=0.0)
                    tl.store(
                        DC_PART + part_row + cols, part + tl.sum(ds * x, axis=0), mask=col_mask
                    )
                else:
                    dx = (1.0 - c) * ds
                    dz = c * ds
                    part = tl.load(DC_PART + part_row + cols, mask=col_mask, other=0.0)
                    tl.store(
                        DC_PART + part_row + cols,
                        part + tl.sum(ds * (z - x), axis=0),
                        mask=col_mask,
                    )
                if HAS_WEIGHT:
                    part = tl.load(DW_PART + part_row + cols, mask=col_mask, other=0.0)
                    tl.store(
                        DW_PART + part_row + cols, part + tl.sum(dy * xhat, axis=0), mask=col_mask
                    )
                if HAS_BIAS:
                    part = tl.load(DB_PART + part_row + cols, mask=col_mask, other=0.0)
                    tl.store(DB_PART + part_row + cols, part + tl.sum(dy, axis=0), mask=col_mask)
                tl.store(
                    DX + rows64[:, None] * stride_dx_row + cols[None, :],
                    dx.to(DX.dtype.element_ty),
                    mask=mask,
                )
                tl.store(
                    DZ + rows64[:, None] * stride_dz_row + cols[None, :],
                    dz.to(DZ.dtype.element_ty),
                    mask=mask,
                )
            tl.debug_barrier()


def _kernels_interpreted() -> bool:
    """True if the ``@triton.jit`` decorator ran with ``TRITON_INTERPRET=1`` (at import)."""
    if triton is None:
        return False
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(_bridge_norm_fwd_kernel, InterpretedFunction)


# --------------------------------------------------------------------------------------
# Launchers
# --------------------------------------------------------------------------------------


def _empty(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Every buffer the launchers write is allocated here (tests poison it with NaN)."""
    return torch.empty(shape, dtype=dtype, device=device)


def _as_rows(t: torch.Tensor) -> torch.Tensor:
    """``(..., D) -> (N, D)`` with last-dim stride 1 (a view when possible, else a copy)."""
    rows = t.reshape(-1, t.shape[-1])
    if rows.shape[-1] > 1 and rows.stride(-1) != 1:
        rows = rows.contiguous()
    return rows


@functools.cache
def _num_sms(device_index: int) -> int:
    try:
        return torch.cuda.get_device_properties(device_index).multi_processor_count
    except (RuntimeError, AssertionError):  # no usable device (e.g. tracing with fake tensors)
        logger.debug("no CUDA device properties for device %d; assuming 108 SMs", device_index)
        return 108


@dataclass(frozen=True)
class _LaunchConfig:
    block_m: int  # rows per tile
    block_d: int  # power of two >= D, or the chunk width of the looped kernels
    looped: bool  # the row is wider than one block: the looped kernels
    num_warps: int
    programs: int  # backward programs (partial-buffer rows)
    rows_per_prog: int  # backward rows per program, a multiple of block_m


def _launch_config(
    n_rows: int, n_cols: int, element_size: int, device: torch.device, *, backward: bool
) -> _LaunchConfig:
    looped = n_cols * element_size > MAX_FUSED_ROW_BYTES
    if looped:
        # Chunks of at most one block; 4096 columns on a GPU keep a chunk in registers.
        block_d = 1 << ((MAX_FUSED_ROW_BYTES // element_size).bit_length() - 1)
        if device.type == "cuda":
            block_d = min(block_d, 4096)
    else:
        block_d = triton.next_power_of_2(n_cols)
    if device.type == "cuda":
        # Enough rows per tile to give every warp work, few enough to stay in registers.
        tile = 4096 if backward else 8192
        block_m = max(1, min(16, tile // block_d))
        target_programs = 4 * _num_sms(device.index if device.index is not None else 0)
    else:
        # The interpreter (CPU tensors) pays per program and per loop iteration, not per
        # element: large tiles, few programs.
        block_m = max(1, _INTERPRETER_TILE // block_d)
        target_programs = 4
    block_m = min(block_m, triton.next_power_of_2(max(n_rows, 1)))
    # Warps so that each thread holds ~16 (forward) or ~8 (backward, more live tensors)
    # elements of a tile.  Checked with ptxas -v for sm_80: bf16 D=1024 uses 64 registers
    # forward and 92 backward, the looped kernels ~110, no spills; only the backward of a
    # full 64 KB float32 row spills a little.
    per_thread = 8 if backward else 16
    num_warps = min(32, max(1, block_m * block_d // (32 * per_thread)))
    tiles = triton.cdiv(n_rows, block_m)
    tiles_per_prog = triton.cdiv(tiles, min(tiles, target_programs))
    programs = triton.cdiv(tiles, tiles_per_prog)
    return _LaunchConfig(block_m, block_d, looped, num_warps, programs, tiles_per_prog * block_m)


def _launch(kernel):
    """``wrap_triton`` makes the launch visible to ``torch.compile`` inside the triton_op."""
    return torch.library.wrap_triton(kernel)


def bridge_norm_fwd(
    x: torch.Tensor,
    z: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    coef: torch.Tensor | None,
    mode: str,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Launch the forward kernel: returns ``out`` (x's shape and dtype) and float32 ``mean``,
    ``rstd`` of shape ``(N,)`` with ``N`` the number of rows.  Inputs are assumed valid."""
    mode_code, per_channel = _MODE_CODES[mode]
    x2, z2 = _as_rows(x), _as_rows(z)  # (N, D)
    n_rows, n_cols = x2.shape
    out = _empty(tuple(x.shape), x.dtype, x.device)
    mean = _empty((n_rows,), torch.float32, x.device)
    rstd = _empty((n_rows,), torch.float32, x.device)
    if n_rows == 0:
        return out, mean, rstd
    out2 = out.view(n_rows, n_cols)
    cfg = _launch_config(n_rows, n_cols, x.element_size(), x.device, backward=False)
    weight, bias, coef = (t.contiguous() if t is not None else None for t in (weight, bias, coef))
    kernel = _bridge_norm_fwd_looped_kernel if cfg.looped else _bridge_norm_fwd_kernel
    _launch(kernel)[(triton.cdiv(n_rows, cfg.block_m),)](
        x2, z2, out2, weight, bias, coef, mean, rstd,
        x2.stride(0), z2.stride(0), out2.stride(0),
        n_rows, n_cols, eps,
        MODE=mode_code,
        COEF_PER_CHANNEL=per_channel,
        HAS_WEIGHT=weight is not None,
        HAS_BIAS=bias is not None,
        BLOCK_M=cfg.block_m,
        BLOCK_D=cfg.block_d,
        num_warps=cfg.num_warps,
    )  # fmt: skip
    return out, mean, rstd


def bridge_norm_bwd(
    dout: torch.Tensor,
    x: torch.Tensor,
    z: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    coef: torch.Tensor | None,
    mean: torch.Tensor,
    rstd: torch.Tensor,
    mode: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Launch the backward kernel: returns ``dx, dz, dweight, dbias, dcoef``.

    ``dweight`` / ``dbias`` / ``dcoef`` take the dtype and shape of ``weight`` / bias (D,) /
    ``coef`` (``bias`` is only read for its presence and dtype); an absent one is returned as an empty tensor of shape ``(0,)`` (a custom op
    cannot return ``None``).  The cross-row sums are reduced per program into float32
    ``(programs, D)`` buffers, then summed over programs: deterministic.
    """
    mode_code, per_channel = _MODE_CODES[mode]
    x2, z2, dy2 = _as_rows(x), _as_rows(z), _as_rows(dout)  # (N, D)
    n_rows, n_cols = x2.shape
    dev = x.device
    dx = _empty(tuple(x.shape), x.dtype, dev)
    dz = _empty(tuple(z.shape), z.dtype, dev)
    dx2, dz2 = dx.view(n_rows, n_cols), dz.view(n_rows, n_cols)
    cfg = _launch_config(max(n_rows, 1), n_cols, x.element_size(), dev, backward=True)
    parts = cfg.programs if n_rows > 0 else 0
    dw_part = _empty((parts, n_cols), torch.float32, dev) if weight is not None else None
    db_part = _empty((parts, n_cols), torch.float32, dev) if bias is not None else None
    dc_part = _empty((parts, n_cols), torch.float32, dev) if mode_code != 0 else None
    weight_c, coef_c = (t.contiguous() if t is not None else None for t in (weight, coef))
    if n_rows > 0:
        kernel = _bridge_norm_bwd_looped_kernel if cfg.looped else _bridge_norm_bwd_kernel
        _launch(kernel)[(cfg.programs,)](
            x2, z2, dy2, dx2, dz2, weight_c, coef_c, mean, rstd,
            dw_part, db_part, dc_part,
            x2.stride(0), z2.stride(0), dy2.stride(0), dx2.stride(0), dz2.stride(0),
            n_rows, n_cols, cfg.rows_per_prog,
            MODE=mode_code,
            COEF_PER_CHANNEL=per_channel,
            HAS_WEIGHT=weight is not None,
            HAS_BIAS=bias is not None,
            BLOCK_M=cfg.block_m,
            BLOCK_D=cfg.block_d,
            num_warps=cfg.num_warps,
        )  # fmt: skip

    # Second stage of the deterministic reduction: a fixed-order sum over programs.
    def empty() -> torch.Tensor:  # a fresh one each time: op outputs may not alias
        return x.new_empty((0,))

    dw = dw_part.sum(0).to(weight.dtype) if weight is not None else empty()
    db = db_part.sum(0).to(bias.dtype) if bias is not None else empty()
    if coef is None:
        dcoef = empty()
    elif per_channel:
        dcoef = dc_part.sum(0).to(coef.dtype)
    else:
        dcoef = dc_part.sum().to(coef.dtype).reshape(coef.shape)
    return dx, dz, dw, db, dcoef


# --------------------------------------------------------------------------------------
# torch.library ops (torch.compile traces through them) and the autograd Function
# --------------------------------------------------------------------------------------

if triton is not None:

    @torch.library.triton_op(
        "bridgetower::bridge_norm_fwd",
        mutates_args=(),
        schema="(Tensor x, Tensor z, Tensor? weight, Tensor? bias, Tensor? coef, str mode, "
        "float eps) -> (Tensor, Tensor, Tensor)",
    )
    def _bridge_norm_fwd_op(x, z, weight, bias, coef, mode, eps):
        return bridge_norm_fwd(x, z, weight, bias, coef, mode, eps)

    @torch.library.triton_op(
        "bridgetower::bridge_norm_bwd",
        mutates_args=(),
        schema="(Tensor dout, Tensor x, Tensor z, Tensor? weight, Tensor? bias, Tensor? coef, "
        "Tensor mean, Tensor rstd, str mode) -> (Tensor, Tensor, Tensor, Tensor, Tensor)",
    )
    def _bridge_norm_bwd_op(dout, x, z, weight, bias, coef, mean, rstd, mode):
        return bridge_norm_bwd(dout, x, z, weight, bias, coef, mean, rstd, mode)


class BridgeNormFn(torch.autograd.Function):
    """Autograd glue over the two ops; inputs must already be validated (use :func:`bridge_norm`)."""

    @staticmethod
    def forward(ctx, x, z, weight, bias, coef, mode: str, eps: float):
        if triton is None:
            raise RuntimeError(
                f"BridgeNormFn needs Triton, which is not importable ({_TRITON_IMPORT_ERROR})"
            )
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
# Backends, chosen by declared capability
# --------------------------------------------------------------------------------------


class _TritonBackend:
    """The fused Triton kernels: CUDA tensors, or CPU tensors under the Triton interpreter."""

    name = "triton"

    def not_supported_reasons(self, x: torch.Tensor) -> list[str]:
        if triton is None:
            return [f"triton is not importable ({_TRITON_IMPORT_ERROR})"]
        reasons = []
        dev = x.device.type
        if dev == "cpu":
            if os.environ.get("TRITON_INTERPRET") != "1":
                reasons.append(
                    "CPU tensors need the Triton interpreter: TRITON_INTERPRET=1 is not set "
                    "(set it before importing bridgetower)"
                )
            elif not _kernels_interpreted():
                reasons.append(
                    "TRITON_INTERPRET=1 is set now but was not when bridgetower.kernels.bridge_norm "
                    "was imported (@triton.jit reads it at import)"
                )
            elif torch.compiler.is_compiling():
                reasons.append("the Triton interpreter cannot run inside torch.compile")
        elif dev != "cuda":
            reasons.append(
                f"device {dev!r} is not supported (CUDA, or CPU with TRITON_INTERPRET=1)"
            )
        if x.dtype not in _KERNEL_DTYPES:
            reasons.append(f"dtype {x.dtype} is not supported (float32, float16, bfloat16)")
        return reasons

    def __call__(self, x, z, weight, bias, coef, mode, eps):
        return BridgeNormFn.apply(x, z, weight, bias, coef, mode, eps)


class _TorchBackend:
    """The PyTorch reference: every device and floating dtype."""

    name = "torch"

    def not_supported_reasons(self, x: torch.Tensor) -> list[str]:
        return []

    def __call__(self, x, z, weight, bias, coef, mode, eps):
        return bridge_norm_ref(x, z, weight, bias, coef, mode=mode, eps=eps)


# Priority order: the first backend that fits is taken; "torch" always fits.
_BACKENDS = (_TritonBackend(), _TorchBackend())
BRIDGE_NORM_BACKENDS = tuple(b.name for b in _BACKENDS)


def bridge_norm_backend_reasons(x: torch.Tensor) -> dict[str, list[str]]:
    """For each backend, why it cannot run ``x`` (an empty list if it can)."""
    return {b.name: b.not_supported_reasons(x) for b in _BACKENDS}


def _pick_backend(x: torch.Tensor, backend: str | None) -> Callable:
    if backend is None:
        for b in _BACKENDS:
            if not b.not_supported_reasons(x):
                return b
        raise AssertionError("the torch backend always fits")  # unreachable
    for b in _BACKENDS:
        if b.name == backend:
            reasons = b.not_supported_reasons(x)
            if reasons:
                raise ValueError(
                    f"bridge_norm backend={backend!r} cannot run x of shape {tuple(x.shape)}, "
                    f"dtype {x.dtype}, device {x.device}: " + "; ".join(reasons)
                )
            return b
    raise ValueError(
        f"unknown bridge_norm backend {backend!r}; valid: None (automatic), "
        + ", ".join(repr(n) for n in BRIDGE_NORM_BACKENDS)
    )


def select_bridge_norm_backend(x: torch.Tensor, backend: str | None = None) -> str:
    """The name of the backend :func:`bridge_norm` would use for ``x`` (raises like it)."""
    return _pick_backend(x, backend).name


# --------------------------------------------------------------------------------------
# Public entry point
# --------------------------------------------------------------------------------------


def _check_inputs(x, z, weight, bias, coef, mode, eps) -> None:
    for name, t in (("x", x), ("z", z)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"bridge_norm: {name} must be a torch.Tensor, got {type(t).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"bridge_norm: x must be a floating-point tensor, got dtype {x.dtype}")
    if z.dtype != x.dtype:
        raise TypeError(
            f"bridge_norm: x and z must have the same dtype, got x {x.dtype} and z {z.dtype}"
        )
    if x.dim() == 0 or x.shape[-1] == 0:
        raise ValueError(
            f"bridge_norm: x needs a non-empty last (feature) dimension, got shape {tuple(x.shape)}"
        )
    if z.shape != x.shape:
        raise ValueError(
            f"bridge_norm: x and z must have the same shape, got x {tuple(x.shape)} and z {tuple(z.shape)}"
        )
    if mode not in BRIDGE_NORM_MODES:
        raise ValueError(
            f"bridge_norm: unknown mode {mode!r}; valid modes: {', '.join(BRIDGE_NORM_MODES)}"
        )
    if (
        isinstance(eps, bool)
        or not isinstance(eps, (int, float))
        or not eps >= 0
        or math.isinf(eps)
    ):
        raise ValueError(f"bridge_norm: eps must be a finite number >= 0, got {eps!r}")
    d = x.shape[-1]
    if mode == "add":
        if coef is not None:
            raise ValueError(
                "bridge_norm: mode 'add' takes no coef (use scaled_add or interpolate for a coefficient)"
            )
        expected = {}
    elif coef is None:
        raise ValueError(f"bridge_norm: mode {mode!r} needs coef")
    else:
        expected = {"coef": (coef, () if mode in ("scaled_add", "interpolate") else (d,))}
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None:
            expected[name] = (t, (d,))
    allowed = {x.dtype, torch.float32}
    for name, (t, shape) in expected.items():
        if not isinstance(t, torch.Tensor):
            raise TypeError(
                f"bridge_norm: {name} must be a torch.Tensor or None, got {type(t).__name__}"
            )
        if tuple(t.shape) != shape:
            what = "a 0-d tensor" if shape == () else f"shape {shape}"
            raise ValueError(
                f"bridge_norm: {name} must be {what} for mode {mode!r} and x of shape "
                f"{tuple(x.shape)}, got shape {tuple(t.shape)}"
            )
        if t.dtype not in allowed:
            raise TypeError(
                f"bridge_norm: {name} dtype {t.dtype} does not match x dtype {x.dtype} "
                f"(allowed: {', '.join(sorted(str(a) for a in allowed))})"
            )
        if t.device != x.device:
            raise ValueError(f"bridge_norm: {name} is on {t.device} but x is on {x.device}")
    if z.device != x.device:
        raise ValueError(f"bridge_norm: z is on {z.device} but x is on {x.device}")


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
        mode: one of :data:`BRIDGE_NORM_MODES`.
        eps: LayerNorm epsilon.
        backend: ``None`` picks the first backend that fits (``"triton"`` then ``"torch"``);
            naming one forces it, and a ``ValueError`` lists why if it cannot run the inputs.

    Returns:
        ``(..., D)`` tensor in x's dtype.
    """
    x, z = _autocast_align(x, z)
    _check_inputs(x, z, weight, bias, coef, mode, eps)
    impl = _pick_backend(x, backend)
    return impl(x, z, weight, bias, coef, mode, float(eps))
