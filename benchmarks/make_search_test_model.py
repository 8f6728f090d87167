"""Write the small trained checkpoint the search and explanation tests read
(tests/data/search_model/): the demo's model, stored in float16 (about 5.8 MB), with its
scene tokenizer.

It was made with:
    flock /tmp/bt-heavy.lock env OMP_NUM_THREADS=2 .venv/bin/bridgetower pretrain --output-dir /tmp/h15-demo
    .venv/bin/python benchmarks/make_search_test_model.py /tmp/h15-demo

(the demo defaults: bridgetower-tiny, 1400 steps of MLM + ITM + ITC on generated scenes,
seed 0).  The tests load it back in float32.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import torch

DEST = Path(__file__).resolve().parents[1] / "tests" / "data" / "search_model"


def main(argv=None) -> int:
    from bridgetower.training.run import load_saved_model, resolve_model_dir

    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: make_search_test_model.py RUN_DIR", file=sys.stderr)
        return 2
    model_dir = resolve_model_dir(argv[0])
    model = load_saved_model(model_dir).to(torch.float16)
    if DEST.exists():
        shutil.rmtree(DEST)
    model.save_pretrained(DEST)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (model_dir / name).is_file():
            shutil.copy(model_dir / name, DEST / name)
    size = sum(f.stat().st_size for f in DEST.iterdir())
    print(f"wrote {DEST} ({size / 1e6:.1f} MB) from {model_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
