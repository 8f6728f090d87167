"""What ``import`` costs: time and memory of importing the package against bare ``import torch``.

    python benchmarks/import_cost.py                     # 7 runs of each, medians
    python benchmarks/import_cost.py --runs 11 bridgetower.training

Each run is a fresh interpreter that imports one module and reports the time of the import
statement (``time.perf_counter`` around it), the peak resident memory of the process
(``ru_maxrss``) and whether Triton or ``torch._inductor`` were loaded. The modules are taken
in turn within each round (round-robin), so a load on the machine affects all alike; the
medians over the rounds are printed as a markdown table, memory also as the growth over a
bare interpreter. docs/install.md quotes the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ["torch", "bridgetower", "bridgetower.models", "bridgetower.data"]
WATCH = ["torch", "transformers", "open_clip", "triton", "torch._inductor"]

_CHILD = """
import json, resource, sys, time
t0 = time.perf_counter()
if {module!r}:
    __import__({module!r})
t = time.perf_counter() - t0
print(json.dumps({{"seconds": t, "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "loaded": [m for m in {watch!r} if m in sys.modules]}}))
"""


def measure(module: str) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", _CHILD.format(module=module, watch=WATCH)],
                         capture_output=True, text=True, check=True, env=env, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("modules", nargs="*", default=DEFAULT)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error(f"--runs must be >= 1, got {args.runs}")
    modules = ["", *args.modules]  # "" = the bare interpreter
    results: dict[str, list[dict]] = {m: [] for m in modules}
    for _ in range(args.runs):
        for m in modules:
            results[m].append(measure(m))
    base = statistics.median(r["max_rss_mb"] for r in results[""])
    print(f"python {sys.version.split()[0]}, {args.runs} runs each, medians "
          f"(bare interpreter: {base:.0f} MB)\n")
    print("| import | time (s) | min-max (s) | peak RSS (MB) | over bare Python (MB) | also loaded |")
    print("|---|---|---|---|---|---|")
    for m in args.modules:
        rs = results[m]
        ts = [r["seconds"] for r in rs]
        rss = statistics.median(r["max_rss_mb"] for r in rs)
        loaded = sorted({x for r in rs for x in r["loaded"]} - {m})
        print(f"| `{m}` | {statistics.median(ts):.2f} | {min(ts):.2f}-{max(ts):.2f} | {rss:.0f} | "
              f"{rss - base:.0f} | {', '.join(loaded) or '-'} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
