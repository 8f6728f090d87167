"""Shared helpers of the pytest-benchmark suites.

Timing rules (KERNELS.md):

* CUDA kernels run asynchronously: a wall-clock timer only measures the launch.  On CUDA
  every timed call is followed by ``torch.cuda.synchronize()`` and the L2 cache is flushed
  before each call (a 256 MB write), so a kernel cannot read its inputs from the cache of
  the previous repetition.  :func:`cuda_time_ms` also times with CUDA events, the way
  ``triton.testing.do_bench`` does, and the median goes to ``extra_info`` with the achieved
  bandwidth.
* On the CPU eager timings are bimodal from process to process: compare inside one process,
  keep the implementations of one configuration adjacent (the ``impl`` parameter last), take
  medians and read ratios.  Given the baseline function, :func:`run_benchmark` also times the
  two interleaved (alternating calls, median of per-pair ratios), which resists the load
  drifts of a shared machine.  At the end of the session a table of both ratios against the
  baseline implementation of each configuration is printed.

Use from a benchmark file::

    def test_bench_op(benchmark, bench_device):
        x = torch.randn(..., device=bench_device)
        run_benchmark(benchmark, lambda: op(x), device=bench_device,
                      config="op-shape-dtype-fwd", impl="ours", baseline="eager",
                      bytes_moved=3 * x.numel() * x.element_size())

``BENCH_DEVICE=cpu`` forces the CPU on a machine with a GPU.
"""

from __future__ import annotations

import functools
import os
import statistics
import time
from collections.abc import Callable

import pytest
import torch

L2_FLUSH_BYTES = 256 * 1024 * 1024  # larger than the L2 of any current GPU


def bench_device_type() -> str:
    """``cuda`` if available (unless ``BENCH_DEVICE`` says otherwise), else ``cpu``."""
    wanted = os.environ.get("BENCH_DEVICE")
    if wanted:
        return wanted
    return "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture(scope="session")
def bench_device() -> torch.device:
    return torch.device(bench_device_type())


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class L2Flusher:
    """Overwrites a buffer larger than the L2 cache (CUDA only; a no-op elsewhere).
    Get one with :func:`l2_flusher` (one buffer per device)."""

    def __init__(self, device: torch.device):
        self.buffer = (
            torch.empty(L2_FLUSH_BYTES // 4, dtype=torch.int32, device=device)
            if device.type == "cuda"
            else None
        )

    def __call__(self) -> None:
        if self.buffer is not None:
            self.buffer.zero_()


@functools.cache
def l2_flusher(device: torch.device) -> L2Flusher:
    return L2Flusher(device)


def cuda_time_ms(fn: Callable[[], object], *, warmup: int = 10, rep: int = 50) -> list[float]:
    """Per-call times in ms of ``fn`` on the current CUDA stream, with CUDA events and an
    L2 flush before every call (the scheme of ``triton.testing.do_bench``)."""
    device = torch.device("cuda", torch.cuda.current_device())
    flush = l2_flusher(device)
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(rep)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(rep)]
    for start, end in zip(starts, ends, strict=True):
        flush()
        start.record()
        fn()
        end.record()
    torch.cuda.synchronize()
    return [s.elapsed_time(e) for s, e in zip(starts, ends, strict=True)]


def interleaved_ratio(
    fn: Callable[[], object],
    baseline_fn: Callable[[], object],
    *,
    device: torch.device,
    pairs: int = 31,
) -> float:
    """Median over ``pairs`` of time(fn) / time(baseline_fn), the two run back to back in
    alternating order: robust to the slow drifts of a shared machine's load."""
    flush = l2_flusher(device)

    def timed(f) -> float:
        flush()
        synchronize(device)
        start = time.perf_counter()
        f()
        synchronize(device)
        return time.perf_counter() - start

    ratios = []
    for i in range(pairs):
        if i % 2:
            base, mine = timed(baseline_fn), timed(fn)
        else:
            mine, base = timed(fn), timed(baseline_fn)
        ratios.append(mine / base)
    return statistics.median(ratios)


def run_benchmark(
    benchmark,
    fn: Callable[[], object],
    *,
    device: torch.device,
    config: str,
    impl: str,
    baseline: str,
    bytes_moved: int | None = None,
    baseline_fn: Callable[[], object] | None = None,
    rounds: int | None = None,
    warmup_rounds: int = 2,
) -> None:
    """Time ``fn`` with pytest-benchmark, correctly for the device.

    ``config`` names the case (shape, dtype, direction) and ``impl`` the implementation;
    the session summary divides each median by that of ``baseline`` for the same config.
    ``bytes_moved`` (the minimal memory traffic of the op) gives ``extra_info['gbps']``.
    With ``baseline_fn`` the ratio is also measured interleaved (see
    :func:`interleaved_ratio`) into ``extra_info['interleaved_ratio']``.
    """
    if baseline_fn is not None:
        benchmark.extra_info["interleaved_ratio"] = interleaved_ratio(
            fn, baseline_fn, device=device
        )
    benchmark.extra_info.update(config=config, impl=impl, baseline=baseline, device=device.type)
    if bytes_moved is not None:
        benchmark.extra_info["bytes_moved"] = int(bytes_moved)
    if device.type == "cuda":
        times = cuda_time_ms(fn)
        median_ms = statistics.median(times)
        benchmark.extra_info["cuda_event_median_ms"] = median_ms
        if bytes_moved is not None:
            benchmark.extra_info["gbps"] = bytes_moved / (median_ms * 1e-3) / 1e9
        flush = l2_flusher(device)

        def setup():
            flush()
            torch.cuda.synchronize(device)

        def target():
            fn()
            torch.cuda.synchronize(device)

        benchmark.pedantic(
            target, setup=setup, rounds=rounds or 50, iterations=1, warmup_rounds=warmup_rounds
        )
    else:
        benchmark.pedantic(fn, rounds=rounds or 20, iterations=1, warmup_rounds=warmup_rounds)
        stats = getattr(benchmark, "stats", None)  # None under --benchmark-disable
        if bytes_moved is not None and stats is not None:
            benchmark.extra_info["gbps"] = bytes_moved / stats.stats.median / 1e9


def _ratio_rows(benchmarks) -> list[tuple[str, str, float, float, float]]:
    medians: dict[tuple[str, str], tuple[float, float]] = {}
    baselines: dict[str, str] = {}
    for bench in benchmarks:
        info = getattr(bench, "extra_info", {}) or {}
        stats = getattr(bench, "stats", None)
        if "config" not in info or stats is None:
            continue
        medians[(info["config"], info["impl"])] = (
            stats.median,
            info.get("interleaved_ratio", float("nan")),
        )
        baselines[info["config"]] = info["baseline"]
    rows = []
    for (config, impl), (median, inter) in medians.items():
        base = medians.get((config, baselines[config]))
        if base:
            inter = 1.0 if impl == baselines[config] else inter
            rows.append((config, impl, median * 1e3, median / base[0], inter))
    return sorted(rows)


def pytest_terminal_summary(terminalreporter, config):
    session = getattr(config, "_benchmarksession", None)
    rows = _ratio_rows(getattr(session, "benchmarks", []) or [])
    if not rows:
        return
    terminalreporter.section("time relative to the baseline of each config")
    width = max(len(r[0]) for r in rows)
    terminalreporter.write_line(
        f"{'config':<{width}}  {'impl':<10} {'median':>13}  {'ratio':>7}  {'interleaved':>11}"
    )
    for cfg, impl, ms, ratio, inter in rows:
        terminalreporter.write_line(
            f"{cfg:<{width}}  {impl:<10} {ms:10.3f} ms  {ratio:6.2f}x  {inter:10.2f}x"
        )
