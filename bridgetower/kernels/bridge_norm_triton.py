"""The Triton side of ``bridge_norm``: the two ``@triton.jit`` kernels, their launchers and
the ``torch.library`` ops ``bridgetower::bridge_norm_fwd`` / ``bridgetower::bridge_norm_bwd``.

Imported on the first use of the ``triton`` backend (by
:func:`bridgetower.kernels.fused_bridge_norm.load_triton_kernels`), never by ``import
bridgetower``: importing Triton and registering ``triton_op`` s costs seconds and pulls in
``torch._inductor``, which a CPU run never needs.  ``@triton.jit`` reads ``TRITON_INTERPRET``
when this module is imported, so the interpreter is chosen by the environment at first use.

One kernel family only: each program holds whole rows in one ``BLOCK_M x BLOCK_D`` tile, so a
row may be at most 64 KB (``D <= 16384`` float32, ``32768`` float16/bfloat16;
:data:`~bridgetower.kernels.fused_bridge_norm.MAX_FUSED_ROW_BYTES`).  Wider rows are refused
by the backend (automatic dispatch then takes the PyTorch path; a forced ``backend="triton"``
gets a ``ValueError`` naming the limit), as flash-attention's LayerNorm does.  A second,
looped family (walking the row in chunks, reading x and z three times) used to cover them; it
doubled the kernel code for rows no BridgeTower model has (768 or 1024 features).

Layers: kernels -> launchers :func:`bridge_norm_fwd` / :func:`bridge_norm_bwd` (flatten to
rows, allocate, choose tile and warps) -> the ``triton_op`` s that ``torch.compile`` traces
through.  The autograd Function and the public entry point are in
:mod:`bridgetower.kernels.fused_bridge_norm`.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from triton.runtime.interpreter import InterpretedFunction

from .modes import BridgeMode, bridge_mode

__all__ = ["INTERPRETED", "bridge_norm_bwd", "bridge_norm_fwd"]

logger = logging.getLogger(__name__)

# Elements per tile for CPU tensors (the Triton interpreter pays per program and per loop
# iteration, so tiles are large there).
_INTERPRETER_TILE = 65536


# --------------------------------------------------------------------------------------
# Triton kernels
# --------------------------------------------------------------------------------------


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


#: True when the kernels above were defined under the Triton interpreter (TRITON_INTERPRET=1
#: when this module was imported): they then run on CPU tensors.
INTERPRETED = isinstance(_bridge_norm_fwd_kernel, InterpretedFunction)


# --------------------------------------------------------------------------------------
# Launchers
# --------------------------------------------------------------------------------------


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
    block_d: int  # power of two >= D: one block holds a whole row
    num_warps: int
    programs: int  # backward programs (partial-buffer rows)
    rows_per_prog: int  # backward rows per program, a multiple of block_m


def _launch_config(
    n_rows: int, n_cols: int, element_size: int, device: torch.device, *, backward: bool
) -> _LaunchConfig:
    block_d = triton.next_power_of_2(n_cols)  # rows of at most 64 KB: checked by the caller
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
    # forward and 92 backward, no spills; only the backward of a full 64 KB float32 row
    # spills a little.
    per_thread = 8 if backward else 16
    num_warps = min(32, max(1, block_m * block_d // (32 * per_thread)))
    tiles = triton.cdiv(n_rows, block_m)
    tiles_per_prog = triton.cdiv(tiles, min(tiles, target_programs))
    programs = triton.cdiv(tiles, tiles_per_prog)
    return _LaunchConfig(block_m, block_d, num_warps, programs, tiles_per_prog * block_m)


def _variant(spec: BridgeMode, weight, bias, cfg: _LaunchConfig) -> dict:
    """The ``tl.constexpr`` flags and launch options shared by both kernels."""
    return {
        "MODE": spec.code,
        "COEF_PER_CHANNEL": spec.per_channel,
        "HAS_WEIGHT": weight is not None,
        "HAS_BIAS": bias is not None,
        "BLOCK_M": cfg.block_m,
        "BLOCK_D": cfg.block_d,
        "num_warps": cfg.num_warps,
    }


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
    ``rstd`` of shape ``(N,)`` with ``N`` the number of rows.  Inputs are assumed valid
    (rows of at most 64 KB; see :class:`~bridgetower.kernels.fused_bridge_norm.BridgeNormFn`)."""
    spec = bridge_mode(mode)
    x2, z2 = _as_rows(x), _as_rows(z)  # (N, D)
    n_rows, n_cols = x2.shape
    out = torch.empty(tuple(x.shape), dtype=x.dtype, device=x.device)
    mean = torch.empty((n_rows,), dtype=torch.float32, device=x.device)
    rstd = torch.empty((n_rows,), dtype=torch.float32, device=x.device)
    if n_rows == 0:
        return out, mean, rstd
    out2 = out.view(n_rows, n_cols)
    cfg = _launch_config(n_rows, n_cols, x.element_size(), x.device, backward=False)
    weight, bias, coef = (t.contiguous() if t is not None else None for t in (weight, bias, coef))
    _launch(_bridge_norm_fwd_kernel)[(triton.cdiv(n_rows, cfg.block_m),)](
        x2, z2, out2, weight, bias, coef, mean, rstd,
        x2.stride(0), z2.stride(0), out2.stride(0),
        n_rows, n_cols, eps,
        **_variant(spec, weight, bias, cfg),
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
    ``coef`` (``bias`` is only read for its presence and dtype); an absent one is returned as
    an empty tensor of shape ``(0,)`` (a custom op cannot return ``None``).  The cross-row sums are reduced per program into float32
    ``(programs, D)`` buffers, then summed over programs: deterministic.
    """
    spec = bridge_mode(mode)
    x2, z2, dy2 = _as_rows(x), _as_rows(z), _as_rows(dout)  # (N, D)
    n_rows, n_cols = x2.shape
    dev = x.device
    dx = torch.empty(tuple(x.shape), dtype=x.dtype, device=dev)
    dz = torch.empty(tuple(z.shape), dtype=z.dtype, device=dev)
    dx2, dz2 = dx.view(n_rows, n_cols), dz.view(n_rows, n_cols)
    cfg = _launch_config(max(n_rows, 1), n_cols, x.element_size(), dev, backward=True)
    parts = cfg.programs if n_rows > 0 else 0
    # (programs, D) float32 partial sums; every program writes its whole row
    part = {"dtype": torch.float32, "device": dev}
    dw_part = torch.empty((parts, n_cols), **part) if weight is not None else None
    db_part = torch.empty((parts, n_cols), **part) if bias is not None else None
    dc_part = torch.empty((parts, n_cols), **part) if spec.has_coef else None
    weight_c, coef_c = (t.contiguous() if t is not None else None for t in (weight, coef))
    if n_rows > 0:
        _launch(_bridge_norm_bwd_kernel)[(cfg.programs,)](
            x2, z2, dy2, dx2, dz2, weight_c, coef_c, mean, rstd,
            dw_part, db_part, dc_part,
            x2.stride(0), z2.stride(0), dy2.stride(0), dx2.stride(0), dz2.stride(0),
            n_rows, n_cols, cfg.rows_per_prog,
            **_variant(spec, weight, bias, cfg),
        )  # fmt: skip

    # Second stage of the deterministic reduction: a fixed-order sum over programs.
    def empty() -> torch.Tensor:  # a fresh one each time: op outputs may not alias
        return x.new_empty((0,))

    dw = dw_part.sum(0).to(weight.dtype) if weight is not None else empty()
    db = db_part.sum(0).to(bias.dtype) if bias is not None else empty()
    if coef is None:
        dcoef = empty()
    elif spec.per_channel:
        dcoef = dc_part.sum(0).to(coef.dtype)
    else:
        dcoef = dc_part.sum().to(coef.dtype).reshape(coef.shape)
    return dx, dz, dw, db, dcoef


# --------------------------------------------------------------------------------------
# torch.library ops (torch.compile traces through them)
# --------------------------------------------------------------------------------------


@torch.library.triton_op(
    "bridgetower::bridge_norm_fwd",
    mutates_args=(),
    schema="(Tensor x, Tensor z, Tensor? weight, Tensor? bias, Tensor? coef, str mode, "
    "float eps) -> (Tensor, Tensor, Tensor)",
)
def _bridge_norm_fwd_op(
    x: torch.Tensor, z: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, coef: torch.Tensor | None, mode: str, eps: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # annotated as well: torch < 2.11 infers the schema from them
    return bridge_norm_fwd(x, z, weight, bias, coef, mode, eps)


@torch.library.triton_op(
    "bridgetower::bridge_norm_bwd",
    mutates_args=(),
    schema="(Tensor dout, Tensor x, Tensor z, Tensor? weight, Tensor? bias, Tensor? coef, "
    "Tensor mean, Tensor rstd, str mode) -> (Tensor, Tensor, Tensor, Tensor, Tensor)",
)
def _bridge_norm_bwd_op(
    dout: torch.Tensor, x: torch.Tensor, z: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, coef: torch.Tensor | None, mean: torch.Tensor, rstd: torch.Tensor, mode: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return bridge_norm_bwd(dout, x, z, weight, bias, coef, mean, rstd, mode)
