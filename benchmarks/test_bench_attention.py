"""Attention backends and the co-attention layer: forward+backward time and peak memory.

Run with ``make bench`` (or ``pytest benchmarks/test_bench_attention.py --benchmark-only``).

Shapes: BridgeTower-base attention (12 heads of 64) over the image-token counts of the
paper's resolutions: 325 (288 px), 577 (384 px) and 1297 (576 px) tokens, batch 1,
self-attention with a key padding mask, with and without attention dropout 0.1.

Time: pytest-benchmark through ``run_benchmark`` of ``benchmarks/conftest.py`` (CUDA
synchronisation and L2 flush on a GPU), forward + backward, median of a few rounds after a
warm-up; the session summary divides each median by the ``math`` backend's (attention) or
the unfused layer's (co-attention) for the same configuration. On a shared CPU absolute
times move from process to process: compare within one run (docs/benchmarks.md quotes ratios).

Peak memory, on CPU: ``tracemalloc`` does not see torch's allocations, and the profiler's
memory events are incomplete, so we measure what the operating system sees. All cases
run in one child process started with ``MALLOC_MMAP_THRESHOLD_=65536`` (glibc serves
every allocation above 64 KB with its own ``mmap`` and returns it on free, so the
resident set follows the live tensors instead of a malloc cache). For each case the child
runs forward+backward once to warm up, frees it, calls ``malloc_trim``, reads ``VmRSS``,
resets the kernel's peak counter (``echo 5 > /proc/self/clear_refs``), runs forward+backward
again and reads ``VmHWM``: the reported figure is ``VmHWM - VmRSS``, the extra resident
memory at the peak of one training step of that op (activations saved for backward,
temporaries, gradients). On CUDA, ``torch.cuda.max_memory_allocated`` in-process.
"""

from __future__ import annotations

import ctypes
import gc
import json
import os
import re
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from bridgetower.kernels import attention
from bridgetower.layers.co_attention import CoAttentionLayer
from bridgetower.layers.norm import AddLayerNorm

from .conftest import bench_device_type, interleaved_ratio, run_benchmark

DEVICE = bench_device_type()
LENGTHS = (325, 577, 1297)
BATCH, HEADS, HEAD_DIM = 1, 12, 64
DROPOUT = 0.1
INTERLEAVED_MAX_LENGTH = 577  # on CPU, interleaved pairs at 1297 tokens would take minutes
BACKENDS = ["math", "sdpa", "chunked"] + (["xformers"] if DEVICE == "cuda" else [])


def _attention_inputs(length: int, device: str = DEVICE):
    g = torch.Generator().manual_seed(length)
    q, k, v = (torch.randn(BATCH, HEADS, length, HEAD_DIM, generator=g).to(device)
               .requires_grad_() for _ in range(3))
    mask = torch.ones(BATCH, length, dtype=torch.bool, device=device)
    mask[:, length - length // 8:] = False  # some padding
    return q, k, v, mask


def _attention_step(backend: str, dropout_p: float, q, k, v, mask) -> None:
    out = attention(q, k, v, key_padding_mask=mask, dropout_p=dropout_p, backend=backend)
    out.backward(torch.ones_like(out))
    q.grad = k.grad = v.grad = None


class _UnfusedAddLayerNorm(AddLayerNorm):
    """The baseline: ``F.layer_norm(x + residual)`` as two ops (same parameters)."""

    def forward(self, x, residual):
        return F.layer_norm(x + residual, (self.dim,), self.weight, self.bias, self.eps)


def _co_attention_layer(fused: bool, device: str = DEVICE) -> CoAttentionLayer:
    torch.manual_seed(0)
    layer = CoAttentionLayer(768, 12, eps=1e-12, attn_backend="sdpa", device=device).train()
    if not fused:
        for name in ("self_norm", "cross_norm", "mlp_norm"):
            unfused = _UnfusedAddLayerNorm(768, eps=1e-12, device=device)
            unfused.load_state_dict(getattr(layer, name).state_dict())
            setattr(layer, name, unfused)
    return layer


def _co_attention_inputs(device: str = DEVICE):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(BATCH, 577, 768, generator=g).to(device).requires_grad_()  # image stream
    other = torch.randn(BATCH, 40, 768, generator=g).to(device)  # text stream
    other_mask = torch.ones(BATCH, 40, dtype=torch.bool, device=device)
    other_mask[:, 30:] = False
    return x, other, other_mask


def _co_attention_step(layer, x, other, other_mask) -> None:
    layer(x, other, None, other_mask).sum().backward()
    x.grad = None
    layer.zero_grad(set_to_none=True)


# ---------------------------------------------------------------- time


# the backend varies fastest, so the implementations of one configuration run adjacently
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dropout_p", [0.0, DROPOUT])
@pytest.mark.parametrize("length", LENGTHS)
def test_attention_fwd_bwd_time(benchmark, bench_device, length, dropout_p, backend):
    q, k, v, mask = _attention_inputs(length, bench_device.type)
    benchmark.group = f"attention L={length} dropout={dropout_p}"
    step = lambda: _attention_step(backend, dropout_p, q, k, v, mask)
    if backend != "math" and (DEVICE != "cpu" or length <= INTERLEAVED_MAX_LENGTH):
        # also time against math back to back (resists the load drifts of a shared CPU)
        benchmark.extra_info["interleaved_ratio"] = interleaved_ratio(
            step, lambda: _attention_step("math", dropout_p, q, k, v, mask),
            device=bench_device, pairs=7 if DEVICE == "cpu" else 31)
    run_benchmark(
        benchmark, step,
        device=bench_device, config=f"attention-L{length}-p{dropout_p}-fwd+bwd",
        impl=backend, baseline="math", rounds=3 if DEVICE == "cpu" else None,
        warmup_rounds=1,
    )


@pytest.mark.parametrize("fused", [True, False], ids=["fused_add_ln", "unfused_add_ln"])
def test_co_attention_layer_time(benchmark, bench_device, fused):
    layer = _co_attention_layer(fused, bench_device.type)
    x, other, other_mask = _co_attention_inputs(bench_device.type)
    benchmark.group = "co-attention layer (768, 12 heads, 577 x 40 tokens) fwd+bwd"
    step = lambda: _co_attention_step(layer, x, other, other_mask)
    if fused:  # a short interleaved comparison with the unfused layer (shared-CPU drifts)
        base = _co_attention_layer(False, bench_device.type)
        benchmark.extra_info["interleaved_ratio"] = interleaved_ratio(
            step, lambda: _co_attention_step(base, x, other, other_mask),
            device=bench_device, pairs=5 if DEVICE == "cpu" else 31)
    run_benchmark(
        benchmark, step, device=bench_device, config="co-attention-577x40-fwd+bwd",
        impl="fused" if fused else "unfused", baseline="unfused",
        rounds=5 if DEVICE == "cpu" else None, warmup_rounds=1,
    )


def test_co_attention_fused_and_unfused_agree():
    x, other, other_mask = _co_attention_inputs()
    a = _co_attention_layer(True).eval()(x, other, None, other_mask)
    b = _co_attention_layer(False).eval()(x, other, None, other_mask)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- memory

MEMORY_CASES = [
    {"kind": "attention", "backend": b, "dropout_p": p, "length": n}
    for b, p in (("math", DROPOUT), ("sdpa", 0.0), ("sdpa", DROPOUT), ("chunked", 0.0),
                 ("chunked", DROPOUT))
    + ((("xformers", 0.0), ("xformers", DROPOUT)) if DEVICE == "cuda" else ())
    for n in LENGTHS
] + [{"kind": "co_attention", "fused": f} for f in (True, False)]


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as fh:
        return int(re.search(rf"^{field}:\s+(\d+) kB", fh.read(), re.M).group(1))


def _case_step(case: dict, device: str):
    if case["kind"] == "attention":
        q, k, v, mask = _attention_inputs(case["length"], device)
        return lambda: _attention_step(case["backend"], case["dropout_p"], q, k, v, mask)
    layer = _co_attention_layer(case["fused"], device)
    x, other, other_mask = _co_attention_inputs(device)
    return lambda: _co_attention_step(layer, x, other, other_mask)


def _peak_bytes_cpu(case: dict) -> int:
    """Extra resident memory at the peak of one fwd+bwd (see the module docstring)."""
    libc = ctypes.CDLL("libc.so.6")
    torch.manual_seed(0)
    step = _case_step(case, "cpu")
    step()  # warm-up: lazy initialisation, thread pools
    gc.collect()
    libc.malloc_trim(0)
    before = _status_kb("VmRSS")
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")  # reset VmHWM to the current resident set
    step()
    peak = _status_kb("VmHWM")
    return (peak - before) * 1024


def _peak_bytes_cuda(case: dict) -> int:
    step = _case_step(case, "cuda")
    step()
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    step()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - before


def measure_peak_memory(cases: list[dict]) -> list[int]:
    """Peak extra memory (bytes) of one fwd+bwd per case; on CPU in a fresh child process."""
    if DEVICE == "cuda":
        return [_peak_bytes_cuda(c) for c in cases]
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", OMP_NUM_THREADS="1")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.test_bench_attention", "--memory-child",
         json.dumps(cases)],
        env=env, cwd=root, capture_output=True, text=True, timeout=600, check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"memory child failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _memory_table(cases, peaks) -> str:
    rows = ["| case | peak MB | vs L=325 |", "|---|---|---|"]
    base = {}
    for c, p in zip(cases, peaks, strict=True):
        if c["kind"] == "attention":
            key = (c["backend"], c["dropout_p"])
            base.setdefault(key, p)
            rows.append(f"| {c['backend']} p={c['dropout_p']} L={c['length']} | "
                        f"{p / 2**20:.1f} | {p / base[key]:.2f}x |")
        else:
            rows.append(f"| co-attention {'fused' if c['fused'] else 'unfused'} | "
                        f"{p / 2**20:.1f} | |")
    return "\n".join(rows)


@pytest.mark.skipif(DEVICE == "cpu" and not os.path.exists("/proc/self/clear_refs"),
                    reason="CPU peak memory needs Linux /proc/self/clear_refs")
def test_attention_peak_memory_scaling(benchmark):
    """Memory of one fwd+bwd: the chunked path grows ~linearly, math ~quadratically."""
    benchmark.group = "attention peak memory (one child process, all cases)"
    peaks = benchmark.pedantic(measure_peak_memory, args=(MEMORY_CASES,), rounds=1,
                               iterations=1)
    table = _memory_table(MEMORY_CASES, peaks)
    benchmark.extra_info["peak_memory_table"] = table
    print("\n" + table)
    by = {(c.get("backend"), c.get("dropout_p"), c.get("length")): p
          for c, p in zip(MEMORY_CASES, peaks, strict=True) if c["kind"] == "attention"}
    lo, hi = LENGTHS[0], LENGTHS[-1]
    linear, quadratic = hi / lo, (hi / lo) ** 2  # 4.0 and 15.9
    growth = {key: by[key + (hi,)] / by[key + (lo,)]
              for key in (("math", DROPOUT), ("chunked", DROPOUT), ("chunked", 0.0))}
    benchmark.extra_info["growth_325_to_1297"] = {f"{b} p={p}": g for (b, p), g in growth.items()}
    # chunked: at most linear (working memory is capped, the rest is O(N));
    # math: the (B, H, L, L) probabilities dominate, far above linear.
    assert growth[("chunked", DROPOUT)] < 1.25 * linear, growth
    assert growth[("chunked", 0.0)] < 1.25 * linear, growth
    assert growth[("math", DROPOUT)] > 0.6 * quadratic, growth
    assert by[("chunked", DROPOUT, hi)] < by[("math", DROPOUT, hi)] / 4


def _child(cases_json: str) -> None:
    torch.set_num_threads(1)
    peaks = [_peak_bytes_cpu(c) for c in json.loads(cases_json)]
    sys.stdout.write(json.dumps(peaks) + "\n")


if __name__ == "__main__" and len(sys.argv) == 3 and sys.argv[1] == "--memory-child":
    _child(sys.argv[2])
