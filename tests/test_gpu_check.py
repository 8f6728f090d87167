"""The GPU check script runs end to end: here on the CPU, its correctness section on the
Triton interpreter (the kernels it checks on a GPU), with a JSON and a markdown report."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.interpret
def test_gpu_check_dry_run_on_the_interpreter(tmp_path):
    env = {**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--device", "cpu", "--quick",
         "--out", str(tmp_path), "--skip", "bandwidth", "training_step"],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    cases = report["correctness"]["bridge_norm"]
    assert len(cases) == 45 and all(c["ok"] for c in cases)  # 5 modes x 3 dtypes x 3 shapes
    assert {r["backend"] for r in report["correctness"]["attention"]} >= {"sdpa", "chunked", "math"}
    assert "bridge_norm: 45/45 cases pass" in (tmp_path / "gpu_check.md").read_text()


def test_gpu_check_says_clearly_when_there_is_no_gpu(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is visible: the no-GPU message does not apply")
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "no CUDA device" in proc.stderr
