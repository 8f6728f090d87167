"""bfloat16 on the CPU: scoring and a training step, ours against ``transformers``, and the
scoring time against the hardware's own limit (issue 16).

Run with ``make bench`` or::

    OMP_NUM_THREADS=1 python -m pytest -q benchmarks/test_bench_bf16.py --benchmark-only -s

* **score**: 1 image x 16 texts (40 tokens) at 288 px, base widths (12 text + 12 vision + 6
  cross layers, ``BT_BENCH_BF16_LAYERS=t,v,c`` to change), one worker process with
  ``torch.set_num_threads(BT_BENCH_THREADS or 1)``.  Ours: weights converted to bfloat16 once
  (``from_pretrained(dtype=torch.bfloat16)``), ``model.score``.  transformers: its model-card
  loop (one forward per text) under ``torch.autocast("cpu", torch.bfloat16)`` and in float32.
  The three run interleaved (round-robin, medians).  **Roofline**: the matrix-product FLOPs of
  our call (``torch.utils.flop_counter.FlopCounterMode``) divided by the bfloat16 matmul rate
  measured in the same process (2048^3 products), over our median time.
* **train**: one training step (ITM loss + backward) at 384 px, batch 2, base widths (4 + 4 + 2
  layers; ``BT_BENCH_FULL=1``: 12 + 12 + 6), ours vs transformers both under bf16 autocast, in
  one process with steps alternating (process CPU time, median of pair ratios); peak memory
  (``VmHWM``) of one process per implementation.

Targets (issue 16): score >= 8x transformers' bf16 loop and >= 60 % of the roofline; training
step >= 2x at <= 0.6x peak memory.  They are asserted only on a CPU with AMX (``amx_bf16`` in
``/proc/cpuinfo``), the hardware they were set for: without AMX a bfloat16 product runs at
about the float32 rate, both implementations are bound by the same products and the 8x cannot
be reached (the FLOPs differ about 2x).  The figures are printed and stored either way.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

FULL = os.environ.get("BT_BENCH_FULL", "0") == "1"
SCORE_LAYERS = tuple(int(x) for x in os.environ.get("BT_BENCH_BF16_LAYERS", "12,12,6").split(","))
TRAIN_LAYERS = (12, 12, 6) if FULL else (4, 4, 2)
THREADS = int(os.environ.get("BT_BENCH_THREADS", "1"))
ROUNDS = int(os.environ.get("BT_BENCH_BF16_ROUNDS", "3"))
TEXTS, TEXT_LEN, SCORE_SIZE, TRAIN_SIZE, TRAIN_BATCH = 16, 40, 288, 384, 2
TARGETS = {"score_speedup_vs_hf_bf16": 8.0, "roofline": 0.60, "train_speedup": 2.0, "train_memory_ratio": 0.6}
RESULTS: dict[str, dict] = {}


def has_amx() -> bool:
    try:
        return "amx_bf16" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


# ---------------------------------------------------------------- worker (subprocess side)


def _checkpoint(path: str, layers: tuple[int, int, int]) -> None:
    import torch
    import transformers

    from bridgetower.models import get_config
    from bridgetower.models.convert import config_to_hf

    t, v, c = layers
    config = get_config("bridgetower-base", text={"num_layers": t}, vision={"layers": v},
                        fusion={"num_layers": c, "layer_norm_eps": 1e-5}, head_layer_norm_eps=1e-5)
    torch.manual_seed(0)
    transformers.BridgeTowerForImageAndTextRetrieval(config_to_hf(config)).save_pretrained(path)


def _inputs(n_text: int, n_image: int, size: int):
    import torch

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 50000, (n_text, TEXT_LEN), generator=g)
    ids[:, 0], ids[:, -1] = 0, 2
    return ids, torch.ones(n_text, TEXT_LEN, dtype=torch.long), torch.randn(n_image, 3, size, size, generator=g)


def bf16_matmul_rate(n: int = 2048, reps: int = 10) -> float:
    """FLOP/s of an ``n x n`` bfloat16 matrix product on this thread count (median of reps)."""
    import torch

    a, b = torch.randn(n, n, dtype=torch.bfloat16), torch.randn(n, n, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / statistics.median(times)


def _score_worker(spec: dict) -> dict:
    import torch
    import transformers
    from torch.utils.flop_counter import FlopCounterMode

    from bridgetower.models import BridgeTowerForImageAndTextRetrieval

    torch.set_num_threads(spec["threads"])
    ours = BridgeTowerForImageAndTextRetrieval.from_pretrained(spec["weights"], dtype=torch.bfloat16).eval()
    hf = transformers.BridgeTowerForImageAndTextRetrieval.from_pretrained(spec["weights"]).eval()
    ids, mask, px = _inputs(TEXTS, 1, SCORE_SIZE)
    interp = SCORE_SIZE != hf.config.vision_config.image_size

    def hf_loop():  # the model card: one forward per text
        return torch.stack([hf(input_ids=ids[i : i + 1], attention_mask=mask[i : i + 1], pixel_values=px,
                               interpolate_pos_encoding=interp).logits[0, 1] for i in range(TEXTS)])

    def hf_bf16():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return hf_loop()

    calls = {"ours_bf16": lambda: ours.score(px, ids, mask)[0], "hf_bf16_autocast": hf_bf16, "hf_fp32": hf_loop}
    times: dict[str, list[float]] = {k: [] for k in calls}
    logits = {}
    with torch.no_grad():
        for k, f in calls.items():
            logits[k] = f().float()  # warm-up
        with FlopCounterMode(display=False) as counter:
            calls["ours_bf16"]()
        flops = counter.get_total_flops()
        rate = bf16_matmul_rate()
        for _ in range(spec["rounds"]):
            for k, f in calls.items():
                t0 = time.perf_counter()
                f()
                times[k].append(time.perf_counter() - t0)
        rate = (rate + bf16_matmul_rate()) / 2  # before and after: the machine's load drifts
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "median_s": med, "times_s": times, "flops": flops, "bf16_matmul_flops_per_s": rate,
        "roofline": flops / rate / med["ours_bf16"],
        "speedup_vs_hf_bf16": med["hf_bf16_autocast"] / med["ours_bf16"],
        "speedup_vs_hf_fp32": med["hf_fp32"] / med["ours_bf16"],
        "max_abs_logit_diff_vs_hf_fp32": float((logits["ours_bf16"] - logits["hf_fp32"]).abs().max()),
    }


def _train_models(weights: str, impls=("hf", "ours")):
    """``{impl: (model, forward)}``, only the implementations asked for (peak memory)."""
    import transformers

    from bridgetower.models import BridgeTowerForImageAndTextRetrieval

    out = {}
    if "ours" in impls:
        ours = BridgeTowerForImageAndTextRetrieval.from_pretrained(weights).train()
        out["ours"] = (ours, lambda i, m, p, y: ours(i, m, p, labels=y).loss)
    if "hf" in impls:
        hf = transformers.BridgeTowerForImageAndTextRetrieval.from_pretrained(weights).train()
        interp = TRAIN_SIZE != hf.config.vision_config.image_size
        out["hf"] = (hf, lambda i, m, p, y: hf(input_ids=i, attention_mask=m, pixel_values=p, labels=y,
                                               interpolate_pos_encoding=interp).loss)
    return out


def _step(model, forward, batch) -> None:
    import torch

    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = forward(*batch)
    loss.backward()


def _peak_rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def _train_worker(spec: dict) -> dict:
    import torch

    torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    ids, mask, px = _inputs(TRAIN_BATCH, TRAIN_BATCH, TRAIN_SIZE)
    batch = (ids, mask, px, torch.tensor([1, 0]))
    if spec["impl"] != "pair":  # peak memory of one implementation, alone in its process
        model, forward = _train_models(spec["weights"], (spec["impl"],))[spec["impl"]]
        loaded = _peak_rss_mb()
        for _ in range(2):
            _step(model, forward, batch)
        return {"peak_mb": _peak_rss_mb(), "loaded_mb": loaded}
    models = _train_models(spec["weights"])
    cpu: dict[str, list[float]] = {"hf": [], "ours": []}
    for i in range(1 + spec["pairs"]):
        for impl in (("hf", "ours") if i % 2 == 0 else ("ours", "hf")):
            c0 = time.process_time()
            _step(*models[impl], batch)
            if i:  # pair 0 is the warm-up
                cpu[impl].append(time.process_time() - c0)
    ratios = [h / o for o, h in zip(cpu["ours"], cpu["hf"], strict=True)]
    return {"pair_speedups": ratios, "speedup": statistics.median(ratios),
            "cpu_median_s": {k: statistics.median(v) for k, v in cpu.items()}}


# ---------------------------------------------------------------- session side


def _run(spec: dict) -> dict:
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": str(spec.get("threads", THREADS))}
    out = subprocess.run([sys.executable, __file__, json.dumps(spec)], capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"benchmark worker {spec} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("bench_bf16")
    paths = {"score": str(root / "score"), "train": str(root / "train")}
    _run({"kind": "checkpoint", "path": paths["score"], "layers": SCORE_LAYERS})
    if TRAIN_LAYERS != SCORE_LAYERS:
        _run({"kind": "checkpoint", "path": paths["train"], "layers": TRAIN_LAYERS})
    else:
        paths["train"] = paths["score"]
    return paths


def test_bench_bf16_score(benchmark, weights):
    spec = {"kind": "score", "weights": weights["score"], "threads": THREADS, "rounds": ROUNDS}
    r = benchmark.pedantic(_run, args=(spec,), rounds=1, iterations=1)
    RESULTS["score"] = r
    assert r["max_abs_logit_diff_vs_hf_fp32"] < 0.1, r["max_abs_logit_diff_vs_hf_fp32"]
    benchmark.extra_info.update(
        case=f"bf16-score-1x{TEXTS}-{SCORE_SIZE}px-L{'/'.join(map(str, SCORE_LAYERS))}-{THREADS}thr",
        **{k: v for k, v in r.items() if k != "times_s"})
    print(f"\nbf16 score: {json.dumps({k: v for k, v in r.items() if k != 'times_s'}, indent=1)}")


def test_bench_bf16_train_step(benchmark, weights):
    def run():
        pair = _run({"kind": "train", "impl": "pair", "weights": weights["train"], "threads": THREADS,
                     "pairs": int(os.environ.get("BT_BENCH_PAIRS", "4"))})
        mem = {impl: _run({"kind": "train", "impl": impl, "weights": weights["train"], "threads": THREADS})
               for impl in ("hf", "ours")}
        return {**pair, "peak_mb": {k: v["peak_mb"] for k, v in mem.items()},
                "memory_ratio": mem["ours"]["peak_mb"] / mem["hf"]["peak_mb"]}

    r = benchmark.pedantic(run, rounds=1, iterations=1)
    RESULTS["train"] = r
    benchmark.extra_info.update(
        case=f"bf16-train-{TRAIN_SIZE}px-b{TRAIN_BATCH}-L{'/'.join(map(str, TRAIN_LAYERS))}-{THREADS}thr", **r)
    print(f"\nbf16 train step: {json.dumps(r, indent=1)}")


def test_bf16_targets(benchmark):
    """The issue's targets; asserted on AMX CPUs only (see the module docstring).  (Takes the
    ``benchmark`` fixture so that ``--benchmark-only`` runs it; it times nothing itself.)"""
    benchmark.extra_info["case"] = "bf16-targets"
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    if not {"score", "train"} <= RESULTS.keys():
        pytest.skip("needs both bf16 benchmarks of this session (run the whole file)")
    got = {"score_speedup_vs_hf_bf16": RESULTS["score"]["speedup_vs_hf_bf16"],
           "roofline": RESULTS["score"]["roofline"], "train_speedup": RESULTS["train"]["speedup"],
           "train_memory_ratio": RESULTS["train"]["memory_ratio"]}
    print(f"\nbf16 targets {TARGETS}\nmeasured {got}")
    if not has_amx():
        pytest.skip(f"no AMX on this CPU: targets not asserted (measured {got})")
    failed = {k: v for k, v in got.items()
              if (v > TARGETS[k] if k == "train_memory_ratio" else v < TARGETS[k])}
    assert not failed, f"targets missed: {failed} (targets {TARGETS})"


if __name__ == "__main__":
    _spec = json.loads(sys.argv[1])
    if _spec["kind"] == "checkpoint":
        _checkpoint(_spec["path"], tuple(_spec["layers"]))
        print(json.dumps({}))
    else:
        print(json.dumps(_score_worker(_spec) if _spec["kind"] == "score" else _train_worker(_spec)))
