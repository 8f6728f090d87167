"""ManagerTower's managers against BridgeTower's bridges: the fusion part, time and memory.

Run with ``pytest benchmarks/test_bench_manager.py --benchmark-only`` (about a minute on a
2-core CPU); ``BT_BENCH_FULL=1`` runs the whole base fusion (6 cross layers) instead of 2, and
adds ``test_whole_model_step``: the whole base encoders, ``managertower-base`` against
``bridgetower-base``, interleaved training steps (``BT_BENCH_PAIRS``, default 4) and autograd's
saved bytes (CPU only; a few minutes).

What is compared, at base widths (D = 768, 12 heads, 6 managed layers per stream, 40 text
tokens, 325 image tokens = 288 px, batch 1, training mode without dropout):

* ``bridges``: :class:`~bridgetower.layers.co_attention.CoAttentionFusion` with the published
  ``add`` bridges, fed ``K`` projected layers (the first LayerNorm'd, as the model does);
* ``managers``: :class:`~bridgetower.layers.manager.ManagerFusion` with the official adaptive
  managers (static in the first layer) over the 6 managed layers, with the training noise;
* ``static``: the same with static managers everywhere.

Time: forward and forward+backward, pytest-benchmark through ``run_benchmark`` of
``benchmarks/conftest.py``, with the interleaved ratio against ``bridges`` in the same
process (the session summary prints both).  Memory, in the same process: the bytes autograd
saves for the backward (each storage once) and the parameter count; on CUDA also the peak
allocated during forward+backward; on a Linux CPU the peak resident growth of one
forward+backward in a child process (``MALLOC_MMAP_THRESHOLD_=65536``, the scheme of
``test_bench_attention.py``).  The figures go to ``extra_info`` and a printed table.
"""

from __future__ import annotations

import ctypes
import gc
import json
import os
import statistics
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from bridgetower.layers.co_attention import CoAttentionFusion
from bridgetower.layers.manager import ManagerFusion

from .conftest import bench_device_type, interleaved_ratio, run_benchmark
from .test_bench_attention import _status_kb

DEVICE = bench_device_type()
FULL = os.environ.get("BT_BENCH_FULL") == "1"
DIM, HEADS, MANAGED = 768, 12, 6
LAYERS = 6 if FULL else 2
TEXT_LEN, IMAGE_LEN, BATCH = 40, 325, 1
IMPLS = ("bridges", "managers", "static")


def _fusion(impl: str, device: str = DEVICE) -> torch.nn.Module:
    torch.manual_seed(0)
    common = dict(dropout=0.0, attn_dropout=0.0, attn_backend="sdpa", device=device)
    if impl == "bridges":
        return CoAttentionFusion(DIM, LAYERS, HEADS, bridge="add", **common).train()
    kind = "adaptive" if impl == "managers" else "static"
    return ManagerFusion(DIM, LAYERS, HEADS, managed_text=MANAGED, managed_image=MANAGED, manager=kind,
                         **common).train()


def _inputs(impl: str, device: str = DEVICE):
    """The fusion's inputs: ``K`` projected layers per stream (bridges) or the ``N`` managed ones."""
    g = torch.Generator().manual_seed(1)
    n = LAYERS if impl == "bridges" else MANAGED
    text = torch.randn(BATCH, n, TEXT_LEN, DIM, generator=g).to(device).requires_grad_()
    image = torch.randn(BATCH, n, IMAGE_LEN, DIM, generator=g).to(device).requires_grad_()
    mask = torch.ones(BATCH, TEXT_LEN, dtype=torch.bool, device=device)
    mask[:, 30:] = False
    return text, image, mask


def _forward(impl, fusion, text, image, mask):
    if impl == "bridges":  # the model normalises the first layer's input (cross_modal_*_layernorm)
        ts = [F.layer_norm(text[:, 0], (DIM,)), *text[:, 1:].unbind(1)]
        vs = [F.layer_norm(image[:, 0], (DIM,)), *image[:, 1:].unbind(1)]
        return fusion(ts, vs, mask)
    return fusion(text, image, mask)


def _step(impl: str, backward: bool, device: str = DEVICE):
    fusion = _fusion(impl, device)
    text, image, mask = _inputs(impl, device)

    def step():
        if not backward:
            with torch.no_grad():
                return _forward(impl, fusion, text, image, mask)
        t, v = _forward(impl, fusion, text, image, mask)
        (t.sum() + v.sum()).backward()
        text.grad = image.grad = None
        fusion.zero_grad(set_to_none=True)
        return None

    return step


# ---------------------------------------------------------------- time


# the implementation varies fastest, so the three of one direction run adjacently
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("backward", [False, True], ids=["fwd", "fwd+bwd"])
def test_fusion_time(benchmark, bench_device, backward, impl):
    step = _step(impl, backward, bench_device.type)
    direction = "fwd+bwd" if backward else "fwd"
    benchmark.group = f"fusion {LAYERS} layers, D={DIM}, {TEXT_LEN}+{IMAGE_LEN} tokens, {direction}"
    if impl != "bridges":  # also back to back with the bridges (resists a shared CPU's drifts)
        base = _step("bridges", backward, bench_device.type)
        benchmark.extra_info["interleaved_ratio"] = interleaved_ratio(
            step, base, device=bench_device, pairs=5 if DEVICE == "cpu" else 31)
    run_benchmark(benchmark, step, device=bench_device, config=f"fusion-K{LAYERS}-N{MANAGED}-{direction}",
                  impl=impl, baseline="bridges", rounds=5 if DEVICE == "cpu" else None, warmup_rounds=1)


def test_fusions_run_the_same_cross_layers():
    """The comparison is fair: both fusions hold the same co-attention layers; the managers
    add a few parameters, the bridges their LayerNorms."""
    sizes = {impl: sum(p.numel() for p in _fusion(impl, "cpu").parameters()) for impl in IMPLS}
    layers = sum(p.numel() for p in _fusion("bridges", "cpu").text_layers.parameters()) * 2
    assert all(layers < s < 1.05 * layers for s in sizes.values()), sizes


# ---------------------------------------------------------------- memory


def _saved_bytes(impl: str, device: str = DEVICE) -> int:
    """Bytes autograd keeps for the backward of one forward of the fusion (each storage once)."""
    fusion = _fusion(impl, device)
    text, image, mask = _inputs(impl, device)
    return _saved_by(lambda: _forward(impl, fusion, text, image, mask), [*fusion.parameters(), text, image])


def _saved_by(forward, exclude) -> int:
    """Bytes autograd keeps for the backward of ``forward()``, each storage once, without
    those of the tensors in ``exclude`` (parameters, inputs)."""
    seen: dict[int, int] = {}

    def pack(t):
        if isinstance(t, torch.Tensor) and t.device.type != "meta":
            s = t.untyped_storage()
            seen[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        forward()
    skip = {t.untyped_storage().data_ptr() for t in exclude}
    return sum(n for ptr, n in seen.items() if ptr not in skip)


def _peak_bytes(impl: str) -> int:
    """Peak growth of one forward+backward: CUDA allocator peak, or the CPU resident peak."""
    step = _step(impl, True, DEVICE)
    step()  # warm-up
    if DEVICE == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    before = _status_kb("VmRSS")
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")  # reset VmHWM to the current resident set
    step()
    return (_status_kb("VmHWM") - before) * 1024


def measure_peaks() -> dict[str, int]:
    """Per implementation, the peak of one forward+backward (on CPU in one child process)."""
    if DEVICE == "cuda":
        return {impl: _peak_bytes(impl) for impl in IMPLS}
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", OMP_NUM_THREADS="1")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run([sys.executable, "-m", "benchmarks.test_bench_manager", "--memory-child"], env=env,
                          cwd=root, capture_output=True, text=True, timeout=600, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"memory child failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(DEVICE == "cpu" and not os.path.exists("/proc/self/clear_refs"),
                    reason="CPU peak memory needs Linux /proc/self/clear_refs")
def test_fusion_memory(benchmark):
    benchmark.group = "fusion memory (saved for backward, peak of one fwd+bwd)"
    saved = {impl: _saved_bytes(impl) for impl in IMPLS}
    peaks = benchmark.pedantic(measure_peaks, rounds=1, iterations=1)
    params = {impl: sum(p.numel() for p in _fusion(impl, "cpu").parameters()) for impl in IMPLS}
    rows = [f"| fusion, {LAYERS} layers | parameters | saved for backward MB | vs bridges | peak MB | vs bridges |",
            "|---|---|---|---|---|---|"]
    for impl in IMPLS:
        rows.append(f"| {impl} | {params[impl] / 1e6:.2f}M | {saved[impl] / 2**20:.1f} | "
                    f"{saved[impl] / saved['bridges']:.2f}x | {peaks[impl] / 2**20:.1f} | "
                    f"{peaks[impl] / peaks['bridges']:.2f}x |")
    table = "\n".join(rows)
    benchmark.extra_info.update(saved_bytes=saved, peak_bytes=peaks, parameters=params, table=table)
    print("\n" + table)
    assert saved["managers"] > saved["bridges"]  # N layers normalised per stream, the routing


# ---------------------------------------------------------------- the whole model

MODELS = {"bridges": "bridgetower-base", "managers": "managertower-base"}


def _model_step(impl: str):
    """One training step (forward + backward) of the whole base encoder: towers, projections,
    fusion, poolers; 288 px, 40 tokens, batch 1, dropout and manager noise on."""
    from bridgetower.models import create_model

    torch.manual_seed(0)
    model = create_model(MODELS[impl], attn_backend="sdpa").train()
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, 1000, (BATCH, TEXT_LEN), generator=g)
    mask = torch.ones_like(ids)
    pixels = torch.randn(BATCH, 3, 288, 288, generator=g)

    def forward():
        out = model(ids, mask, pixels)
        return out.text_features.sum() + out.image_features.sum() + out.pooler_output.sum()

    def step():
        forward().backward()
        model.zero_grad(set_to_none=True)

    return model, forward, step


@pytest.mark.skipif(not FULL or DEVICE != "cpu", reason="the whole base model on CPU: BT_BENCH_FULL=1")
def test_whole_model_step(benchmark):
    """The managers' share of a whole base training step: ``managertower-base`` against
    ``bridgetower-base`` (12 + 12 uni-modal layers, 6 cross layers), interleaved steps timed by
    process CPU time (the first pair a warm-up), autograd's saved bytes, parameters."""
    import time

    benchmark.group = "whole base model, training step, 288 px"
    built = {impl: _model_step(impl) for impl in MODELS}
    times: dict[str, list[float]] = {impl: [] for impl in MODELS}

    def pairs():
        for i in range(int(os.environ.get("BT_BENCH_PAIRS", "4")) + 1):
            order = list(MODELS) if i % 2 == 0 else list(MODELS)[::-1]
            for impl in order:
                c0 = time.process_time()
                built[impl][2]()
                if i:
                    times[impl].append(time.process_time() - c0)

    benchmark.pedantic(pairs, rounds=1, iterations=1)
    ratio = statistics.median(m / b for m, b in zip(times["managers"], times["bridges"], strict=True))
    saved = {impl: _saved_by(built[impl][1], list(built[impl][0].parameters())) for impl in MODELS}
    params = {impl: sum(p.numel() for p in built[impl][0].parameters()) for impl in MODELS}
    rows = ["| whole base model, 288 px | parameters | step s (median) | time vs bridges | saved MB | vs bridges |",
            "|---|---|---|---|---|---|"]
    for impl in MODELS:
        med = statistics.median(times[impl])
        rows.append(f"| {MODELS[impl]} | {params[impl] / 1e6:.1f}M | {med:.2f} | "
                    f"{ratio if impl == 'managers' else 1.0:.2f}x | {saved[impl] / 2**20:.0f} | "
                    f"{saved[impl] / saved['bridges']:.2f}x |")
    table = "\n".join(rows)
    benchmark.extra_info.update(cpu_times=times, median_ratio=ratio, saved_bytes=saved, parameters=params,
                                table=table)
    print("\n" + table)


if __name__ == "__main__" and sys.argv[1:] == ["--memory-child"]:
    print(json.dumps({impl: _peak_bytes(impl) for impl in IMPLS}))
