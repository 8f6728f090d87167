"""Benchmark of the fused bridge + LayerNorm op against the unfused PyTorch ops.

Three implementations of the same op on BridgeTower shapes (rows = batch x tokens, with 325
or 577 image tokens; D = 768 for base, 1024 for large):

* ``ours``     -- :func:`bridgetower.kernels.bridge_norm` with the default backend (the
  Triton kernels on CUDA; on the CPU the PyTorch reference, float32 statistics);
* ``eager``    -- :func:`bridgetower.kernels.bridge_norm_eager`: ``a*x + b*z`` then
  ``F.layer_norm``, every op in the input dtype (the baseline);
* ``compiled`` -- ``torch.compile`` of ``eager``.

Forward alone and forward + backward.  ``extra_info`` records the minimal memory traffic
of the op (forward 3NDe: read x and z, write out; forward+backward 8NDe: the backward
reads x, z, dout and writes dx, dz) and, on CUDA, the achieved bandwidth; the unfused
forward traffic (5/7/9 NDe for add/scaled_add/interpolate) is recorded next to it.

Run: ``python -m pytest benchmarks/test_bench_bridge_norm.py --benchmark-only``.
"""

from __future__ import annotations

import pytest
import torch

from bridgetower.kernels import bridge_norm, bridge_norm_eager

from .conftest import bench_device_type, run_benchmark

UNFUSED_FWD_PASSES = {"add": 5, "scaled_add": 7, "interpolate": 9}
IMPLS = ("eager", "ours", "compiled")  # the baseline first; one config's impls adjacent


def _cases():
    if bench_device_type() == "cuda":
        # Batch 32: every mode in bfloat16, add in float32.
        shapes = [(32 * t, d) for t in (325, 577) for d in (768, 1024)]
        return [(s, torch.bfloat16, m) for s in shapes for m in UNFUSED_FWD_PASSES] + [
            (s, torch.float32, "add") for s in shapes
        ]
    # CPU: a modest set (torch.compile costs seconds per configuration on two cores).
    return [
        ((2 * 325, 768), torch.float32, "add"),
        ((2 * 577, 1024), torch.float32, "add"),
        ((2 * 577, 1024), torch.bfloat16, "add"),
        ((2 * 577, 1024), torch.float32, "interpolate"),
    ]


CASES = _cases()


def _coef(mode, device, dtype):
    if mode == "add":
        return None
    return torch.tensor(0.5 if mode == "interpolate" else 1.5, device=device, dtype=dtype)


@pytest.fixture(scope="module")
def compiled_eager():
    """One compiled function per (direction, config); compiled on first use."""
    cache = {}

    def get(key):
        if key not in cache:
            cache[key] = torch.compile(bridge_norm_eager, dynamic=False)
        return cache[key]

    return get


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("direction", ["fwd", "fwd_bwd"])
@pytest.mark.parametrize(
    "shape,dtype,mode",
    CASES,
    ids=[f"{n}x{d}-{str(dt)[6:]}-{m}" for (n, d), dt, m in CASES],
)
def test_bench_bridge_norm(
    benchmark, bench_device, compiled_eager, shape, dtype, mode, direction, impl
):
    n, d = shape
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g).to(bench_device, dtype)
    z = torch.randn(shape, generator=g).to(bench_device, dtype)
    w = (1 + 0.1 * torch.randn(d, generator=g)).to(bench_device, dtype)
    b = (0.1 * torch.randn(d, generator=g)).to(bench_device, dtype)
    coef = _coef(mode, bench_device, dtype)
    config = f"{n}x{d}-{str(dtype)[6:]}-{mode}-{direction}"
    e = x.element_size()
    if direction == "fwd":
        bytes_moved = 3 * n * d * e

        def make(op):
            def fn():
                with torch.no_grad():
                    return op(x, z, w, b, coef, mode=mode)

            return fn
    else:
        bytes_moved = 8 * n * d * e
        params = [t.requires_grad_() for t in (x, z, w, b) + ((coef,) if coef is not None else ())]
        dy = torch.randn(shape, generator=g).to(bench_device, dtype)

        def make(op):
            def fn():
                out = op(x, z, w, b, coef, mode=mode)
                return torch.autograd.grad(out, params, dy)

            return fn

    ops = {"ours": bridge_norm, "eager": bridge_norm_eager}
    if impl == "compiled":
        ops["compiled"] = compiled_eager(config)
    fn, baseline_fn = make(ops[impl]), make(ops["eager"])
    fn()  # compile / warm the allocator outside the timing
    benchmark.extra_info["bytes_unfused_fwd"] = UNFUSED_FWD_PASSES[mode] * n * d * e
    benchmark.extra_info["bytes_fused_fwd"] = 3 * n * d * e
    run_benchmark(
        benchmark,
        fn,
        device=bench_device,
        config=config,
        impl=impl,
        baseline="eager",
        bytes_moved=bytes_moved,
        baseline_fn=baseline_fn if impl != "eager" else None,
        rounds=50 if bench_device.type == "cpu" else None,
    )
