"""Training throughput on a busy machine: what sharing the cores with another process costs
under each OpenMP thread count / wait policy (issue 16).

    python -m pytest -q benchmarks/test_bench_busy.py --benchmark-only -s

The workload is the demo's kind of step (``bridgetower-tiny`` ITM model, batch 32, 64 px,
AdamW), in a fresh process per setting (OpenMP reads its environment once, at start).  Each
setting runs alone, then next to a competing process: another torch process multiplying
matrices on ``BT_BUSY_COMPETITOR_THREADS`` (default 2) threads with OpenMP's default (spinning)
wait policy, the neighbour that made the demo fall from ~170 to ~8-30 samples/s.  The cost
of sharing is ``alone / busy`` samples per second.

Settings: ``default`` (``OMP_NUM_THREADS=2``, spinning waits), ``passive``
(``OMP_NUM_THREADS=2``, ``OMP_WAIT_POLICY=PASSIVE``: idle threads sleep instead of spinning;
about 2x slower than spinning on an idle machine, so not a default), ``1-thread``
(``OMP_NUM_THREADS=1``, passive).  Target: sharing costs at most ~2x; on the 2-core machines
here only ``1-thread`` came near it (docs/benchmarks.md, 2026-12-03).  Asserted for
``1-thread`` only when ``BT_BUSY_ASSERT=1`` (the cost depends on the machine's core count and
its other load).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

STEPS = int(os.environ.get("BT_BUSY_STEPS", "20"))
COMPETITOR_THREADS = os.environ.get("BT_BUSY_COMPETITOR_THREADS", "2")
SETTINGS = {
    "default": {"OMP_NUM_THREADS": "2"},
    "passive": {"OMP_NUM_THREADS": "2", "OMP_WAIT_POLICY": "PASSIVE"},
    "1-thread": {"OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"},
}
RESULTS: dict[str, dict] = {}


def _worker(steps: int) -> dict:
    import torch

    from bridgetower.models import create_model

    torch.manual_seed(0)
    model = create_model("bridgetower-tiny", task="itm").train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 60, (32, 12), generator=g)
    px = torch.randn(32, 3, 64, 64, generator=g)
    labels = torch.randint(0, 2, (32,), generator=g)

    def step():
        opt.zero_grad(set_to_none=True)
        model(ids, None, px, labels=labels).loss.backward()
        opt.step()

    for _ in range(3):
        step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return {"samples_per_s": 32 * steps / (time.perf_counter() - t0), "threads": torch.get_num_threads()}


def _competitor() -> None:  # runs until killed
    import torch

    a = torch.randn(1024, 1024)
    while True:
        a @ a


def _run_worker(env_extra: dict[str, str]) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")}
    env.update(env_extra, PYTHONWARNINGS="ignore")
    out = subprocess.run([sys.executable, __file__, "worker", str(STEPS)], capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"busy benchmark worker failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _measure(setting: str) -> dict:
    alone = _run_worker(SETTINGS[setting])
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    env["OMP_NUM_THREADS"] = COMPETITOR_THREADS
    competitor = subprocess.Popen([sys.executable, __file__, "competitor"], env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(2)  # the competitor is up and multiplying
        busy = _run_worker(SETTINGS[setting])
    finally:
        competitor.kill()
        competitor.wait()
    return {"alone": alone["samples_per_s"], "busy": busy["samples_per_s"],
            "cost": alone["samples_per_s"] / busy["samples_per_s"], "env": SETTINGS[setting]}


@pytest.mark.parametrize("setting", list(SETTINGS))
def test_bench_busy_machine(benchmark, setting):
    r = benchmark.pedantic(_measure, args=(setting,), rounds=1, iterations=1)
    RESULTS[setting] = r
    benchmark.extra_info.update(case="busy-train-tiny-b32", setting=setting, **r)
    print(f"\n{setting}: alone {r['alone']:.0f} samples/s, busy {r['busy']:.0f} samples/s, cost {r['cost']:.2f}x")
    if os.environ.get("BT_BUSY_ASSERT") == "1" and setting == "1-thread":
        assert r["cost"] <= 2.2, r


if __name__ == "__main__":
    if sys.argv[1] == "worker":
        print(json.dumps(_worker(int(sys.argv[2]))))
    else:
        _competitor()
