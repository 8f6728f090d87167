"""The scripts under examples/ run as a user runs them, on a tiny size."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_custom_model_trains(tmp_path: Path) -> None:
    """examples/custom_model.py: the model composed from bridgetower.layers trains and its loss falls."""
    result_file = tmp_path / "result.json"
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "custom_model.py"), "--size", "tiny", "--steps", "40",
         "--eval-size", "16", "--json", str(result_file)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(result_file.read_text())
    losses = result["losses"]
    assert len(losses) == 40 and all(loss == loss for loss in losses)  # no NaN
    first, last = sum(losses[:8]) / 8, sum(losses[-8:]) / 8
    assert last < first - 0.1, f"the loss did not fall: {first:.3f} -> {last:.3f}"
    assert set(result["itm_accuracy"]) == {"random", "colour", "shape", "position"}
    assert result["bridges"] == ["scaled_add", "interpolate_tensor", "gated_interpolate"]
    assert "held-out ITM accuracy" in proc.stdout
