"""One script a CUDA user runs to check and measure the library on their GPU (a few minutes).

    python benchmarks/gpu_check.py                 # or: make gpu-check
    python benchmarks/gpu_check.py --quick         # smaller shapes, fewer repetitions
    python benchmarks/gpu_check.py --device cpu --quick   # a dry run of the code paths on CPU

It prints, and writes to ``--out`` (default ``runs/gpu-check``) as ``gpu_check.json`` and
``gpu_check.md``:

1. **Environment**: torch / CUDA / Triton / xformers versions, the device, its peak memory
   bandwidth (the data-sheet figure for known devices, and a measured device-to-device copy).
2. **Correctness**: every ``bridge_norm`` mode in float32, float16 and bfloat16 on the Triton
   backend, output and every gradient against a float64 reference with the rule of
   KERNELS.md (``|ours - ref64| <= 2 |torch_same_dtype - ref64| + atol``), on awkward
   shapes; every attention backend that fits (sdpa, chunked, xformers, math) against the
   float64 math reference, with padding, forward and backward.
3. **bridge_norm bandwidth**: forward and forward + backward at BridgeTower shapes (batch 32
   x 325 / 577 tokens, D = 768 / 1024, bfloat16), ours against eager PyTorch and
   ``torch.compile``: time (CUDA events, L2 flushed before each call), GB/s of the minimal
   traffic, and percent of the device's peak.
4. **Training step**: the ITM training step of the base model at 384 px under bfloat16
   autocast, ours against ``transformers`` with the same weights: median time and peak
   memory.

Every section runs on its own: a failure is recorded with its message and the script goes
on; the exit status is 1 when a correctness check failed or a section crashed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import traceback
import zlib
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

# Data-sheet peak memory bandwidth, GB/s (substring of the device name -> figure).
PEAK_GBPS = {
    "H200": 4800.0,
    "H100 SXM": 3350.0,
    "H100 NVL": 3900.0,
    "H100 PCIe": 2000.0,
    "H100": 3350.0,
    "GH200": 4000.0,
    "B200": 8000.0,
    "A100-SXM4-80GB": 2039.0,
    "A100 80GB PCIe": 1935.0,
    "A100": 1555.0,
    "L40S": 864.0,
    "L4": 300.0,
    "A10G": 600.0,
    "RTX 4090": 1008.0,
    "RTX 3090": 936.0,
    "V100": 900.0,
    "T4": 320.0,
}
TOLERANCE = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 5e-2}


# ------------------------------------------------------------------ timing


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_ms(fn, device: torch.device, *, warmup: int, reps: int) -> float:
    """Median ms per call: CUDA events with an L2 flush before every call on CUDA, wall time
    elsewhere."""
    if device.type == "cuda":
        from benchmarks.conftest import cuda_time_ms

        return statistics.median(cuda_time_ms(fn, warmup=warmup, rep=reps))
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


# ------------------------------------------------------------------ sections


def environment(device: torch.device) -> dict:
    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "device": str(device),
    }
    for name in ("triton", "xformers", "transformers"):
        try:
            info[name] = __import__(name).__version__
        except Exception as exc:  # not installed, or broken
            info[name] = f"unavailable ({type(exc).__name__})"
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(
            name=props.name,
            sms=props.multi_processor_count,
            memory_gib=round(props.total_memory / 2**30, 1),
            capability=f"{props.major}.{props.minor}",
        )
        info["peak_gbps_datasheet"] = next((v for k, v in PEAK_GBPS.items() if k in props.name), None)
        n = 1 << 28  # 1 GiB of float32 copied: read + write
        src = torch.empty(n, device=device)
        dst = torch.empty_like(src)
        ms = time_ms(lambda: dst.copy_(src), device, warmup=3, reps=10)
        info["copy_gbps_measured"] = round(2 * n * 4 / (ms * 1e-3) / 1e9, 1)
        del src, dst
        torch.cuda.empty_cache()
    return info


def _bridge_norm_case(mode: str, shape: tuple, dtype: torch.dtype, device: torch.device, backend: str) -> dict:
    from bridgetower.kernels import BRIDGE_MODES, bridge_norm, bridge_norm_ref

    spec = BRIDGE_MODES[mode]
    d = shape[-1]
    g = torch.Generator(device="cpu").manual_seed(zlib.crc32(f"{mode}{shape}".encode()))

    def rand(*s):
        return torch.randn(s, generator=g, dtype=torch.float64)

    x64, z64, dout64 = rand(*shape), rand(*shape), rand(*shape)
    w64, b64 = 1 + 0.1 * rand(d), 0.1 * rand(d)
    coef64 = None if not spec.has_coef else (0.5 + 0.1 * rand(*spec.coef_shape(d)))

    def run(dt: torch.dtype, impl: str):
        leaves = [t.detach().to(device=device, dtype=dt).requires_grad_(True) if t is not None else None
                  for t in (x64, z64, w64, b64, coef64)]
        x, z, w, b, c = leaves
        if impl == "ref":
            out = bridge_norm_ref(x, z, w, b, c, mode=mode)
        else:
            out = bridge_norm(x, z, w, b, c, mode=mode, backend=impl)
        out.backward(dout64.to(device=device, dtype=dt))
        return [out.detach()] + [t.grad for t in leaves if t is not None]

    ref = run(torch.float64, "ref")
    same = run(dtype, "torch")
    ours = run(dtype, backend)
    names = ["out", "dx", "dz", "dweight", "dbias"] + (["dcoef"] if coef64 is not None else [])
    worst = 0.0
    for name, r, s, o in zip(names, ref, same, ours, strict=True):
        err = (o.double() - r).abs()
        bound = 2 * (s.double() - r).abs() + TOLERANCE[dtype]
        worst = max(worst, float((err / bound).max()))
        if not bool((err <= bound).all()):
            return {"ok": False, "worst": worst, "failed": name}
    return {"ok": True, "worst": worst}


def correctness(device: torch.device, quick: bool) -> dict:
    from bridgetower.kernels import (
        BRIDGE_NORM_MODES,
        attention,
        attention_math,
        available_attention_backends,
    )

    results: dict = {"bridge_norm": [], "attention": []}
    # the Triton kernels on CUDA, or on the CPU under the Triton interpreter (a dry run)
    backend = "triton" if device.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1" else "torch"
    shapes = [(1, 1023), (3, 7, 257), (5, 123, 768)] + ([] if quick else [(2, 577, 1024)])
    for mode in BRIDGE_NORM_MODES:
        for dtype in (torch.float32, torch.float16, torch.bfloat16):
            for shape in shapes:
                try:
                    r = _bridge_norm_case(mode, shape, dtype, device, backend)
                except Exception as exc:
                    r = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
                results["bridge_norm"].append({"mode": mode, "dtype": str(dtype), "shape": list(shape), **r})
    # attention: every backend that fits, with key padding, forward and backward
    dtypes = (torch.float16, torch.bfloat16) if device.type == "cuda" else (torch.float32,)
    B, H, Lq, Lk, Dh = 2, 4, 33, 45, 64
    g = torch.Generator(device="cpu").manual_seed(0)
    q64, k64, v64 = (torch.randn(B, H, n, Dh, generator=g, dtype=torch.float64) for n in (Lq, Lk, Lk))
    do64 = torch.randn(B, H, Lq, Dh, generator=g, dtype=torch.float64)
    pad = torch.ones(B, Lk, dtype=torch.bool)
    pad[1, 30:] = False

    def grads(dt, backend_name):
        leaves = [t.detach().to(device=device, dtype=dt).requires_grad_(True) for t in (q64, k64, v64)]
        fn = attention_math if backend_name == "reference" else attention
        kw = {} if backend_name == "reference" else {"backend": backend_name}
        out = fn(*leaves, key_padding_mask=pad.to(device), **kw)
        out.backward(do64.to(device=device, dtype=dt))
        return [out.detach()] + [t.grad for t in leaves]

    ref = grads(torch.float64, "reference")
    for dtype in dtypes:
        probe = attention_call_for(q64.to(device=device, dtype=dtype), k64.to(device=device, dtype=dtype), pad)
        for name, reasons in available_attention_backends(probe).items():
            if reasons:
                results["attention"].append({"backend": name, "dtype": str(dtype), "skipped": "; ".join(reasons)})
                continue
            try:
                same = grads(dtype, "math")
                ours = grads(dtype, name)
                ok = all(bool(((o.double() - r).abs() <= 2 * (s.double() - r).abs() + TOLERANCE[dtype]).all())
                         for r, s, o in zip(ref, same, ours, strict=True))
                results["attention"].append({"backend": name, "dtype": str(dtype), "ok": ok})
            except Exception as exc:
                results["attention"].append({"backend": name, "dtype": str(dtype), "ok": False,
                                             "error": f"{type(exc).__name__}: {exc}"})
    return results


def attention_call_for(q: torch.Tensor, k: torch.Tensor, pad: torch.Tensor):
    """The :class:`AttentionCall` of a training call on ``q``/``k`` with a padding mask."""
    from bridgetower.kernels import AttentionCall

    B, H, Lq, Dh = q.shape
    return AttentionCall(device_type=q.device.type, dtype=q.dtype, head_dim=Dh, value_dim=Dh, batch=B,
                         num_heads=H, len_q=Lq, len_k=k.shape[2], has_key_padding_mask=True,
                         has_attn_bias=False, bias_requires_grad=False, dropout_p=0.0,
                         seeded_dropout=False, needs_grad=True)


def bandwidth(device: torch.device, quick: bool, peak_gbps: float | None) -> list[dict]:
    from bridgetower.kernels import bridge_norm, bridge_norm_eager

    rows_list = (32 * 325, 32 * 577) if device.type == "cuda" else (2 * 325,)
    dims = (768, 1024) if not quick else (768,)
    modes = ("add", "scaled_add", "interpolate") if not quick else ("add", "interpolate")
    reps = 10 if quick else 50
    out = []
    for rows in rows_list:
        for d in dims:
            for mode in modes:
                dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
                x = torch.randn(rows, d, device=device, dtype=dtype, requires_grad=True)
                z = torch.randn_like(x, requires_grad=True)
                w = torch.ones(d, device=device, dtype=dtype, requires_grad=True)
                b = torch.zeros(d, device=device, dtype=dtype, requires_grad=True)
                c = None if mode == "add" else torch.tensor(0.5, device=device, dtype=dtype, requires_grad=True)
                dout = torch.randn_like(x)
                args = (x, z, w, b, c)

                def eager(x, z, w, b, c, mode=mode):
                    return bridge_norm_eager(x, z, w, b, c, mode=mode)

                def ours(x, z, w, b, c, mode=mode):
                    return bridge_norm(x, z, w, b, c, mode=mode)

                impls = {"ours": ours, "eager": eager, "compiled": torch.compile(eager)}
                e = x.element_size()
                for direction, traffic in (("fwd", 3 * rows * d * e), ("fwd+bwd", 8 * rows * d * e)):
                    row = {"rows": rows, "D": d, "mode": mode, "dtype": str(dtype), "direction": direction}
                    for name, fn in impls.items():
                        if direction == "fwd":
                            def call(fn=fn, args=args):
                                with torch.no_grad():
                                    fn(*args)
                        else:
                            def call(fn=fn, args=args, dout=dout):
                                fn(*args).backward(dout)
                        try:
                            ms = time_ms(call, device, warmup=3, reps=reps)
                            gbps = traffic / (ms * 1e-3) / 1e9
                            row[name] = {"ms": round(ms, 4), "gbps": round(gbps, 1),
                                         "pct_peak": round(100 * gbps / peak_gbps, 1) if peak_gbps else None}
                        except Exception as exc:
                            row[name] = {"error": f"{type(exc).__name__}: {exc}"}
                    out.append(row)
    return out


def training_step(device: torch.device, quick: bool) -> dict:
    """ITM training step, ours vs transformers, same weights, bf16 autocast (CUDA)."""
    import transformers

    from bridgetower.models import BridgeTowerForImageAndTextRetrieval, get_config
    from bridgetower.models.convert import config_to_hf

    size = 384 if not quick else 288
    over = {"vision.image_size": size}
    if quick or device.type != "cuda":  # a dry run: a small model
        over.update({"vision.layers": 2, "text.num_layers": 2, "fusion.num_layers": 2})
    config = get_config("bridgetower-base", **over)
    batch = 8 if device.type == "cuda" and not quick else 2
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        hf = transformers.BridgeTowerForImageAndTextRetrieval(config_to_hf(config))
        hf.save_pretrained(tmp)
        ours = BridgeTowerForImageAndTextRetrieval.from_pretrained(tmp)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 50000, (batch, 40), generator=g).to(device)
    mask = torch.ones_like(ids)
    px = torch.randn(batch, 3, size, size, generator=g).to(device)
    labels = (torch.arange(batch) % 2).to(device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16)
    result = {"image_size": size, "batch": batch, "layers": [config.vision.layers, config.text.num_layers,
                                                             config.fusion.num_layers]}
    for name, model, fwd in (
        ("transformers", hf, lambda m: m(input_ids=ids, attention_mask=mask, pixel_values=px, labels=labels)),
        ("ours", ours, lambda m: m(ids, mask, px, labels=labels)),
    ):
        model.to(device).train()

        def step(model=model, fwd=fwd):
            model.zero_grad(set_to_none=True)
            with autocast:
                loss = fwd(model).loss
            loss.backward()

        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        ms = time_ms(step, device, warmup=2, reps=3 if quick else 10)
        peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
        result[name] = {"ms": round(ms, 2), "peak_gib": None if peak is None else round(peak, 3)}
        model.to("cpu")
    t, o = result["transformers"], result["ours"]
    result["speedup"] = round(t["ms"] / o["ms"], 3)
    if t["peak_gib"]:
        result["memory_ratio"] = round(o["peak_gib"] / t["peak_gib"], 3)
    return result


# ------------------------------------------------------------------ report


def markdown(report: dict) -> str:
    env = report.get("environment", {})
    lines = ["# GPU check", "", f"{env.get('name', env.get('device'))}, torch {env.get('torch')}, "
             f"CUDA {env.get('cuda')}, triton {env.get('triton')}", ""]
    if "peak_gbps_datasheet" in env:
        lines += [f"Peak bandwidth: {env['peak_gbps_datasheet']} GB/s (data sheet), "
                  f"{env.get('copy_gbps_measured')} GB/s measured copy.", ""]
    corr = report.get("correctness", {})
    if isinstance(corr, dict) and "bridge_norm" in corr:
        bn = corr["bridge_norm"]
        fails = [r for r in bn if not r.get("ok")]
        lines += ["## Correctness", "", f"bridge_norm: {len(bn) - len(fails)}/{len(bn)} cases pass "
                  f"(worst error / bound {max((r.get('worst', 0) for r in bn), default=0):.2f})."]
        lines += [f"- FAIL {r}" for r in fails]
        lines += ["", "| attention backend | dtype | result |", "|---|---|---|"]
        for r in corr["attention"]:
            res = "skipped: " + r["skipped"] if "skipped" in r else ("ok" if r.get("ok") else f"FAIL {r.get('error', '')}")
            lines.append(f"| {r['backend']} | {r['dtype']} | {res} |")
        lines.append("")
    bw = report.get("bandwidth")
    if isinstance(bw, list) and bw:
        lines += ["## bridge_norm", "", "| rows x D | mode | direction | ours GB/s (% peak) | eager GB/s | "
                  "compiled GB/s | ours vs eager | ours vs compiled |", "|---|---|---|---|---|---|---|---|"]
        for r in bw:
            def g(k, r=r):
                return r.get(k, {}).get("gbps", float("nan"))
            pct = r.get("ours", {}).get("pct_peak")
            lines.append(
                f"| {r['rows']} x {r['D']} | {r['mode']} | {r['direction']} | {g('ours')} "
                f"({pct if pct is not None else '-'}) | {g('eager')} | {g('compiled')} | "
                f"{g('ours') / g('eager'):.2f}x | {g('ours') / g('compiled'):.2f}x |")
        lines.append("")
    ts = report.get("training_step")
    if isinstance(ts, dict) and "ours" in ts:
        lines += ["## Training step (ITM, bf16 autocast)", "",
                  f"{ts['image_size']} px, batch {ts['batch']}, layers {ts['layers']}: transformers "
                  f"{ts['transformers']['ms']} ms / {ts['transformers']['peak_gib']} GiB, ours "
                  f"{ts['ours']['ms']} ms / {ts['ours']['peak_gib']} GiB: {ts['speedup']}x faster"
                  + (f", memory {ts['memory_ratio']}x" if "memory_ratio" in ts else "") + ".", ""]
    errors = {k: v["error"] for k, v in report.items() if isinstance(v, dict) and "error" in v}
    lines += [f"- section {k} crashed: {v.splitlines()[-1]}" for k, v in errors.items()]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu for a dry run")
    parser.add_argument("--quick", action="store_true", help="smaller shapes and fewer repetitions")
    parser.add_argument("--out", default="runs/gpu-check", help="folder for gpu_check.json and .md")
    parser.add_argument("--skip", nargs="*", default=[], choices=["correctness", "bandwidth", "training_step"],
                        help="sections to leave out")
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu_check: no CUDA device is visible to torch (torch.cuda.is_available() is False); "
              "use --device cpu for a dry run", file=sys.stderr)
        return 2
    device = torch.device(args.device)
    report: dict = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "quick": args.quick}
    t0 = time.time()
    sections = [("environment", lambda: environment(device))]
    if "correctness" not in args.skip:
        sections.append(("correctness", lambda: correctness(device, args.quick)))
    if "bandwidth" not in args.skip:
        sections.append(("bandwidth", lambda: bandwidth(device, args.quick,
                                                        report["environment"].get("peak_gbps_datasheet"))))
    if "training_step" not in args.skip:
        sections.append(("training_step", lambda: training_step(device, args.quick)))
    failed = False
    for name, fn in sections:
        start = time.time()
        print(f"gpu_check: {name} ...", flush=True)
        try:
            report[name] = fn()
        except Exception:
            report[name] = {"error": traceback.format_exc()}
            failed = True
            print(report[name]["error"], file=sys.stderr)
        print(f"gpu_check: {name} done in {time.time() - start:.1f} s", flush=True)
    corr = report.get("correctness", {})
    if isinstance(corr, dict) and any(not r.get("ok", True) for r in corr.get("bridge_norm", []) + corr.get("attention", [])):
        failed = True
    report["seconds"] = round(time.time() - t0, 1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    text = markdown(report)
    (out / "gpu_check.md").write_text(text)
    print(text)
    print(f"gpu_check: wrote {out / 'gpu_check.json'} and {out / 'gpu_check.md'} in {report['seconds']} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
