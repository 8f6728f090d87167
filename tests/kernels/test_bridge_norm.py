"""Tests of the fused bridge + LayerNorm op (``bridgetower.kernels.bridge_norm``).

Tests marked ``interpret`` run the Triton kernels on the CPU under the Triton interpreter
(``TRITON_INTERPRET=1`` set before the import; the second pass of ``make test``).  Every
output and gradient is compared with a float64 reference by the rule of KERNELS.md::

    |kernel - ref64| <= 2 * |eager_same_dtype - ref64| + atol

and every buffer the launchers allocate is filled with NaN first, so an element the kernel
forgets to write fails the comparison (PyTorch's own switch: with deterministic algorithms on,
``torch.utils.deterministic.fill_uninitialized_memory`` fills ``torch.empty`` with NaN).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import subprocess
import sys

import pytest
import torch

from bridgetower.kernels import (
    BRIDGE_NORM_MODES,
    bridge_norm,
    bridge_norm_backend_reasons,
    bridge_norm_eager,
    bridge_norm_ref,
    select_bridge_norm_backend,
)
from bridgetower.kernels.modes import bridge_mode

bn = importlib.import_module("bridgetower.kernels.fused_bridge_norm")
HAS_TRITON = importlib.util.find_spec("triton") is not None
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"

ATOL = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 5e-2}
SCALAR_MODES = ("scaled_add", "interpolate")
TENSOR_MODES = ("scaled_add_tensor", "interpolate_tensor")


# ----------------------------------------------------------------------------- helpers


def make_inputs(shape, dtype, mode, *, weight=True, bias=True, seed=0):
    """x, z, weight, bias, coef in ``dtype`` (leaf tensors, requires_grad)."""
    g = torch.Generator().manual_seed(seed)
    d = shape[-1]
    x = torch.randn(shape, generator=g)
    z = torch.randn(shape, generator=g)
    w = 1.0 + 0.5 * torch.randn(d, generator=g) if weight else None
    b = 0.5 * torch.randn(d, generator=g) if bias else None
    if mode in SCALAR_MODES:
        coef = torch.rand((), generator=g) * 0.8 + 0.1
    elif mode in TENSOR_MODES:
        coef = torch.rand(d, generator=g) * 0.8 + 0.1
    else:
        coef = None
    return [t.to(dtype).requires_grad_() if t is not None else None for t in (x, z, w, b, coef)]


def run(fn, inputs, dy, mode):
    """Output and the gradients of every tensor input, through ``fn``."""
    out = fn(*inputs, mode=mode)
    leaves = [t for t in inputs if t is not None]
    grads = torch.autograd.grad(out, leaves, dy)
    return [out, *grads]


def as64(inputs):
    return [t.detach().double().requires_grad_() if t is not None else None for t in inputs]


def assert_close_to_ref(kernel, eager, ref64, dtype, names):
    atol = ATOL[dtype]
    for name, k, e, r in zip(names, kernel, eager, ref64, strict=True):
        assert k.dtype == e.dtype and k.shape == e.shape, (name, k.dtype, e.dtype, k.shape, e.shape)
        err = (k.double() - r).abs()
        bound = 2 * (e.double() - r).abs() + atol
        bad = ~(err <= bound)  # NaN fails
        assert not bad.any(), (
            f"{name} ({dtype}): {int(bad.sum())} of {bad.numel()} elements off; "
            f"max excess {(err - bound)[bad].max().item():.3g}, nan={bool(k.isnan().any())}"
        )


@pytest.fixture
def poison():
    """Make every launcher buffer (``torch.empty``) start as NaN."""
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    assert torch.utils.deterministic.fill_uninitialized_memory
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before)


def triton_module():
    """``bridgetower.kernels.bridge_norm_triton`` (imported on first use)."""
    module = bn.load_triton_kernels()
    assert module is not None
    return module


def run_fresh_python(code: str) -> None:
    """Run ``code`` in a new interpreter without TRITON_INTERPRET; fail with its stderr."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("TRITON_INTERPRET", None)
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]


def triton_bridge_norm(*args, **kw):
    return bridge_norm(*args, backend="triton", **kw)


# ------------------------------------------------------------ Triton interpreter tests

# (shape, dtype, mode, weight, bias): every mode in every dtype on the small awkward shape,
# and the larger awkward shapes on a spread of modes and dtypes.
KERNEL_CASES = [((3, 7, 257), dt, m, True, True) for dt in ATOL for m in BRIDGE_NORM_MODES] + [
    ((1, 1023), torch.float32, "interpolate", True, True),
    ((1, 1023), torch.bfloat16, "scaled_add_tensor", True, True),
    ((1, 1023), torch.float16, "add", False, False),
    ((5, 123, 768), torch.float32, "scaled_add", True, True),
    ((5, 123, 768), torch.float16, "interpolate_tensor", True, True),
    ((5, 123, 768), torch.bfloat16, "add", True, True),
    ((3, 7, 257), torch.float32, "interpolate_tensor", False, False),
    ((3, 7, 257), torch.bfloat16, "scaled_add", True, False),
    ((3, 7, 257), torch.float16, "interpolate", False, True),
]


@pytest.mark.interpret
@pytest.mark.parametrize(
    "shape,dtype,mode,weight,bias",
    KERNEL_CASES,
    ids=[
        f"{'x'.join(map(str, s))}-{str(dt)[6:]}-{m}-w{int(w)}b{int(b)}"
        for s, dt, m, w, b in KERNEL_CASES
    ],
)
def test_kernel_matches_float64_reference(poison, shape, dtype, mode, weight, bias):
    inputs = make_inputs(shape, dtype, mode, weight=weight, bias=bias)
    dy = torch.randn(shape, generator=torch.Generator().manual_seed(1)).to(dtype)
    names = ["out"] + [
        n
        for n, t in zip(("dx", "dz", "dweight", "dbias", "dcoef"), inputs, strict=True)
        if t is not None
    ]

    kernel = run(triton_bridge_norm, inputs, dy, mode)
    eager = run(bridge_norm_eager, inputs, dy, mode)
    ref64 = run(bridge_norm_ref, as64(inputs), dy.double(), mode)
    assert_close_to_ref(kernel, eager, ref64, dtype, names)


@pytest.mark.interpret
def test_auto_backend_is_triton_under_interpreter():
    x = torch.randn(4, 32)
    assert bridge_norm_backend_reasons(x)["triton"] == []
    assert select_bridge_norm_backend(x) == "triton"


@pytest.mark.interpret
def test_backward_is_deterministic(poison):
    # 300 rows of 257: three programs, so the partial buffers and their reduction matter.
    inputs = make_inputs((300, 257), torch.float32, "interpolate_tensor")
    dy = torch.randn(300, 257)
    cfg = triton_module()._launch_config(300, 257, 4, torch.device("cpu"), backward=True)
    assert cfg.programs > 1
    first = run(triton_bridge_norm, inputs, dy, "interpolate_tensor")
    second = run(triton_bridge_norm, inputs, dy, "interpolate_tensor")
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)


@pytest.mark.interpret
def test_strided_inputs_match_contiguous_copies(poison):
    d = 96
    xb = torch.randn(4, 10, 2 * d, requires_grad=True)
    zb = torch.randn(7, 4, d, requires_grad=True)
    wb = torch.randn(2 * d, requires_grad=True)
    coef = torch.rand(d, requires_grad=True)
    x = xb[:, 1:8, :d]  # row strides of a larger buffer
    z = zb.transpose(0, 1)  # non-contiguous leading dims
    w = wb[::2]  # strided weight
    dy = torch.randn(4, 7, 2 * d)[..., ::2]  # last-dim stride 2
    assert (
        not x.is_contiguous() and not z.is_contiguous() and w.stride(0) == 2 and dy.stride(-1) == 2
    )

    out_s = triton_bridge_norm(x, z, w, None, coef, mode="scaled_add_tensor")
    g_s = torch.autograd.grad(out_s, (x, z, w, coef), dy)
    contig = [t.detach().contiguous().requires_grad_() for t in (x, z, w, coef)]
    out_c = triton_bridge_norm(
        contig[0], contig[1], contig[2], None, contig[3], mode="scaled_add_tensor"
    )
    g_c = torch.autograd.grad(out_c, contig, dy.contiguous())

    assert torch.equal(out_s, out_c)
    for a, b in zip(g_s, g_c, strict=True):
        assert torch.equal(a, b)
    torch.testing.assert_close(
        out_c, bridge_norm_ref(*contig[:3], None, contig[3], mode="scaled_add_tensor")
    )


@pytest.mark.interpret
def test_widest_single_block_row_runs(poison):
    # 16384 float32 features = 64 KB, the largest row one block takes.
    assert bn.bridge_norm_backend_reasons(torch.empty(2, 16384))["triton"] == []
    inputs = make_inputs((2, 16384), torch.float32, "scaled_add")
    dy = torch.randn(2, 16384)
    names = ["out", "dx", "dz", "dweight", "dbias", "dcoef"]
    kernel = run(triton_bridge_norm, inputs, dy, "scaled_add")
    eager = run(bridge_norm_eager, inputs, dy, "scaled_add")
    ref64 = run(bridge_norm_ref, as64(inputs), dy.double(), "scaled_add")
    assert_close_to_ref(kernel, eager, ref64, torch.float32, names)


@pytest.mark.parametrize("dtype,d", [(torch.float32, 16385), (torch.bfloat16, 32769)])
def test_rows_over_64_kb_fall_back_to_torch_or_are_refused(dtype, d):
    """The one-block limit is a declared reason of the triton backend: the automatic choice
    takes the PyTorch path, a forced triton names the limit (with or without interpreter)."""
    x = torch.randn(2, d).to(dtype)
    z = torch.randn(2, d).to(dtype)
    limit = f"row of {d * x.element_size()} bytes ({d} x {dtype}) exceeds the 64 KB one-block limit"
    assert any(limit in r for r in bridge_norm_backend_reasons(x)["triton"])
    assert not any("64 KB" in r for r in bridge_norm_backend_reasons(x[:, : d - 1])["triton"])
    assert select_bridge_norm_backend(x) == "torch"
    torch.testing.assert_close(bridge_norm(x, z), bridge_norm_ref(x, z), rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"'triton' does not fit.*exceeds the 64 KB one-block limit"):
        bridge_norm(x, z, backend="triton")


@pytest.mark.interpret
def test_bridge_norm_fn_refuses_rows_over_64_kb():
    x = torch.randn(2, 16385)
    with pytest.raises(ValueError, match="BridgeNormFn: row of 65540 bytes"):
        bn.BridgeNormFn.apply(x, x, None, None, None, "add", 1e-5)


@pytest.mark.interpret
def test_empty_batch(poison):
    x = torch.randn(0, 5, 64, requires_grad=True)
    z = torch.randn(0, 5, 64)
    w = torch.randn(64, requires_grad=True)
    out = triton_bridge_norm(x, z, w)
    assert out.shape == (0, 5, 64)
    (gx, gw) = torch.autograd.grad(out.sum(), (x, w))
    assert gx.shape == x.shape and torch.equal(gw, torch.zeros(64))


# ------------------------------------------------------------- dispatcher (CPU, no interpreter)


@pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET") == "1", reason="checks the non-interpreter CPU choice"
)
def test_auto_backend_on_cpu_without_interpreter_is_torch():
    x = torch.randn(4, 32)
    reasons = bridge_norm_backend_reasons(x)
    assert reasons["torch"] == []
    assert any("TRITON_INTERPRET" in r for r in reasons["triton"]) or any(
        "not importable" in r for r in reasons["triton"]
    )
    assert select_bridge_norm_backend(x) == "torch"
    z = torch.randn(4, 32)
    torch.testing.assert_close(bridge_norm(x, z), bridge_norm_ref(x, z), rtol=0, atol=0)


@pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET") == "1", reason="checks the non-interpreter CPU choice"
)
def test_forced_triton_refusal_lists_reasons():
    x = torch.randn(4, 17, dtype=torch.float64)
    with pytest.raises(ValueError) as info:
        bridge_norm(x, x.clone(), backend="triton")
    msg = str(info.value)
    assert "bridge_norm backend 'triton' does not fit" in msg and "(4, 17)" in msg
    assert "TRITON_INTERPRET" in msg or "not importable" in msg
    assert "dtype torch.float64 is not supported" in msg


@pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")
@pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET") == "1", reason="checks the non-interpreter CPU choice"
)
def test_interpreter_switched_on_after_the_kernels_loaded_is_explained(monkeypatch):
    assert not triton_module().INTERPRETED  # loaded for CUDA (compiled kernels)
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # read per call: now set, but not at loading
    reasons = bridge_norm_backend_reasons(torch.randn(2, 8))["triton"]
    assert any("was not when the Triton kernels were loaded" in r for r in reasons), reasons


def test_unknown_backend():
    x = torch.randn(2, 8)
    with pytest.raises(ValueError, match=r"unknown bridge_norm backend 'cuda'.*'triton', 'torch'"):
        bridge_norm(x, x, backend="cuda")


def test_forced_torch_backend_matches_reference():
    inputs = [
        t.detach() if t is not None else None
        for t in make_inputs((3, 5, 40), torch.float32, "interpolate")
    ]
    out = bridge_norm(*inputs, mode="interpolate", backend="torch")
    torch.testing.assert_close(out, bridge_norm_ref(*inputs, mode="interpolate"), rtol=0, atol=0)


def test_without_triton_the_torch_path_works():
    code = (
        "import sys; sys.modules['triton'] = None\n"
        "import torch\n"
        "from bridgetower.kernels import bridge_norm, bridge_norm_backend_reasons, bridge_norm_ref\n"
        "x = torch.randn(3, 16); z = torch.randn(3, 16)\n"
        "r = bridge_norm_backend_reasons(x)['triton']\n"
        "assert len(r) == 2 and 'TRITON_INTERPRET' in r[0] and 'not importable' in r[1], r\n"
        "import os; os.environ['TRITON_INTERPRET'] = '1'\n"
        "r = bridge_norm_backend_reasons(x)['triton']\n"
        "assert len(r) == 1 and 'triton is not importable' in r[0], r\n"
        "assert torch.equal(bridge_norm(x, z), bridge_norm_ref(x, z))\n"
        "try:\n"
        "    bridge_norm(x, z, backend='triton')\n"
        "except ValueError as e:\n"
        "    assert 'not importable' in str(e)\n"
        "else:\n"
        "    raise AssertionError('forced triton did not fail')\n"
    )
    run_fresh_python(code)


def test_imports_pull_in_neither_triton_nor_inductor():
    """``import bridgetower.kernels`` / ``.layers`` / ``.models`` (and a CPU bridge_norm call)
    import no Triton and no ``torch._inductor``: the kernels load on the first triton-backend
    use."""
    code = (
        "import sys, torch\n"
        "before = {m for m in ('triton', 'torch._inductor') if m in sys.modules}\n"
        "assert not before, before\n"
        "import bridgetower.kernels, bridgetower.layers, bridgetower.models\n"
        "from bridgetower.layers import AddLayerNorm\n"
        "AddLayerNorm(8)(torch.randn(2, 8), torch.randn(2, 8))\n"
        "bad = [m for m in ('triton', 'torch._inductor') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    run_fresh_python(code)


# ------------------------------------------------------------------------- bad input


def _t(*shape, dtype=torch.float32):
    return torch.randn(shape).to(dtype)


BAD_INPUTS = [
    # (kwargs for bridge_norm, exception type, message pattern)
    (dict(x=_t(2, 8), z=_t(2, 9)), ValueError, r"same shape.*\(2, 8\).*\(2, 9\)"),
    (dict(x=_t(2, 8), z=_t(2, 8, dtype=torch.float16)), TypeError, r"same dtype.*float32.*float16"),
    (
        dict(x=torch.ones(2, 8, dtype=torch.int64), z=torch.ones(2, 8, dtype=torch.int64)),
        TypeError,
        r"floating-point.*int64",
    ),
    (dict(x=[1.0], z=_t(1)), TypeError, r"x must be a torch.Tensor, got list"),
    (
        dict(x=_t(2, 8), z=_t(2, 8), weight=_t(9)),
        ValueError,
        r"weight must be shape \(8,\).*got shape \(9,\)",
    ),
    (
        dict(x=_t(2, 8), z=_t(2, 8), bias=_t(2, 8)),
        ValueError,
        r"bias must be shape \(8,\).*got shape \(2, 8\)",
    ),
    (
        dict(x=_t(2, 8), z=_t(2, 8), weight=_t(8, dtype=torch.float16)),
        TypeError,
        r"weight dtype torch.float16 does not match x dtype torch.float32",
    ),
    (
        dict(x=_t(2, 8), z=_t(2, 8), mode="sum"),
        ValueError,
        r"unknown bridge_norm mode 'sum'; valid modes: add, scaled_add",
    ),
    (dict(x=_t(2, 8), z=_t(2, 8), coef=_t()), ValueError, r"mode 'add' takes no coef"),
    (dict(x=_t(2, 8), z=_t(2, 8), mode="scaled_add"), ValueError, r"mode 'scaled_add' needs coef"),
    (
        dict(x=_t(2, 8), z=_t(2, 8), mode="interpolate", coef=_t(8)),
        ValueError,
        r"coef must be a 0-d tensor.*got shape \(8,\)",
    ),
    (
        dict(x=_t(2, 8), z=_t(2, 8), mode="scaled_add_tensor", coef=_t()),
        ValueError,
        r"coef must be shape \(8,\).*got shape \(\)",
    ),
    (
        dict(x=_t(2, 8), z=_t(2, 8), mode="interpolate", coef=torch.tensor(1)),
        TypeError,
        r"coef dtype torch.int64",
    ),
    (
        dict(x=_t(2, 8), z=_t(2, 8), eps=-1.0),
        ValueError,
        r"eps must be a finite number >= 0, got -1.0",
    ),
    (dict(x=_t(2, 0), z=_t(2, 0)), ValueError, r"non-empty last.*\(2, 0\)"),
    (dict(x=_t(2, 8), z=_t(2, 8, dtype=torch.float16).to("meta")), TypeError, r"same dtype"),
    (dict(x=_t(2, 8), z=_t(2, 8).to("meta")), ValueError, r"z is on meta but x is on cpu"),
]


@pytest.mark.parametrize("kwargs,exc,pattern", BAD_INPUTS, ids=[p[:30] for _, _, p in BAD_INPUTS])
def test_bad_input_is_rejected_with_a_clear_message(kwargs, exc, pattern):
    kwargs = dict(kwargs)
    x, z = kwargs.pop("x"), kwargs.pop("z")
    with pytest.raises(exc, match=pattern):
        bridge_norm(x, z, **kwargs)


def test_float32_parameters_with_bfloat16_activations():
    # Mixed precision: float32 LayerNorm parameters with bf16 activations are accepted.
    x, z = _t(3, 16, dtype=torch.bfloat16), _t(3, 16, dtype=torch.bfloat16)
    w, b, c = _t(16), _t(16), torch.tensor(0.3)
    out = bridge_norm(x, z, w, b, c, mode="interpolate")
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out, bridge_norm_ref(x, z, w, b, c, mode="interpolate"))


# ------------------------------------------------------------------------- torch.compile


@pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET") == "1", reason="compiles the CPU (torch) path"
)
def test_torch_compile_fullgraph_forward_and_backward():
    inputs = make_inputs((2, 5, 48), torch.float32, "scaled_add_tensor")

    def f(x, z, w, b, c):
        return bridge_norm(x, z, w, b, c, mode="scaled_add_tensor")

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    dy = torch.randn(2, 5, 48)
    got = run(lambda *a, mode: compiled(*a), inputs, dy, "scaled_add_tensor")
    want = run(bridge_norm_ref, inputs, dy, "scaled_add_tensor")
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")
@pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET") == "1", reason="needs the compiled (non-interpreter) kernels"
)
def test_torch_compile_traces_the_lazy_triton_path_without_a_graph_break():
    """Dynamo (strict export, which refuses graph breaks) traces bridge_norm on fake CUDA
    tensors in a fresh process: the kernels load during the trace and the graph holds the
    registered op, not a break."""
    code = (
        "import sys, warnings, torch\n"
        "from torch._subclasses.fake_tensor import FakeTensorMode\n"
        "from bridgetower.kernels import bridge_norm\n"
        "assert 'triton' not in sys.modules\n"
        "class M(torch.nn.Module):\n"
        "    def forward(self, x, z, w, c):\n"
        "        return bridge_norm(x, z, w, None, c, mode='interpolate', backend='triton')\n"
        "with FakeTensorMode(allow_non_fake_inputs=True):\n"
        "    x, z = (torch.empty(4, 3, 96, device='cuda', dtype=torch.bfloat16) for _ in 'xz')\n"
        "    w = torch.empty(96, device='cuda', dtype=torch.bfloat16)\n"
        "    c = torch.empty((), device='cuda')\n"
        "    with warnings.catch_warnings():\n"
        "        warnings.simplefilter('error')\n"
        # torch 2.10's own tracer instantiates an autograd Function and warns about it
        "        warnings.filterwarnings('ignore', '.*should not be instantiated', DeprecationWarning)\n"
        "        ep = torch.export.export(M(), (x, z, w, c), strict=True)\n"
        "targets = {str(n.target) for n in ep.graph.nodes if n.op == 'call_function'}\n"
        "assert 'bridgetower.bridge_norm_fwd.default' in targets, targets\n"
    )
    run_fresh_python(code)


@pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")
@pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET") == "1", reason="needs the compiled (non-interpreter) kernels"
)
def test_cuda_ops_trace_with_fake_tensors():
    # The registered ops carry their own fake implementation (torch.library.triton_op), so a
    # CUDA graph can be traced without a GPU: what torch.compile does before lowering.
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.proxy_tensor import make_fx

    triton_module()  # registers the ops

    with FakeTensorMode():
        x = torch.empty(4, 3, 96, device="cuda", dtype=torch.bfloat16)
        w = torch.empty(96, device="cuda", dtype=torch.bfloat16)
        c = torch.empty((), device="cuda", dtype=torch.float32)

    def fwd_bwd(x, w, c):
        out, mean, rstd = torch.ops.bridgetower.bridge_norm_fwd(
            x, x, w, None, c, "interpolate", 1e-5
        )
        return (
            out,
            mean,
            rstd,
            *torch.ops.bridgetower.bridge_norm_bwd(
                out, x, x, w, None, c, mean, rstd, "interpolate"
            ),
        )

    gm = make_fx(fwd_bwd, tracing_mode="fake")(x, w, c)
    targets = {str(n.target) for n in gm.graph.nodes if n.op == "call_function"}
    assert {"bridgetower.bridge_norm_fwd.default", "bridgetower.bridge_norm_bwd.default"} <= targets
    with FakeTensorMode(allow_non_fake_inputs=True):
        out, mean, rstd, dx, dz, dw, db, dc = fwd_bwd(x, w, c)
    assert (out.shape, out.dtype, out.device.type) == ((4, 3, 96), torch.bfloat16, "cuda")
    assert (mean.shape, mean.dtype, rstd.dtype) == ((12,), torch.float32, torch.float32)
    assert dx.shape == dz.shape == x.shape and dw.shape == (96,) and db.shape == (0,)
    assert dc.shape == () and dc.dtype == torch.float32


@pytest.mark.interpret
def test_torch_compile_under_interpreter_traces_the_torch_path():
    # The interpreter cannot run inside torch.compile: the triton backend says so and the
    # automatic choice traces the reference instead, still without a graph break.
    x = torch.randn(2, 5, 48, requires_grad=True)
    z = torch.randn(2, 5, 48)
    c = torch.tensor(0.3, requires_grad=True)
    compiled = torch.compile(
        lambda x, z, c: bridge_norm(x, z, None, None, c, mode="interpolate"),
        fullgraph=True,
        backend="aot_eager",
    )
    out = compiled(x, z, c)
    torch.testing.assert_close(out, bridge_norm_ref(x, z, None, None, c, mode="interpolate"))
    gx, gc = torch.autograd.grad(out.square().sum(), (x, c))
    want = torch.autograd.grad(
        bridge_norm_ref(x, z, None, None, c, mode="interpolate").square().sum(), (x, c)
    )
    torch.testing.assert_close((gx, gc), want)


# Compiling the kernels for a real GPU needs no GPU: Triton ships ptxas.  Variants of each
# kernel with every feature on, or with the optional pointers absent (None).
GPU_VARIANTS = [
    ("fwd", "bf16", "interpolate_tensor", True, True),
    ("fwd", "fp32", "add", False, False),
    ("bwd", "bf16", "interpolate_tensor", True, True),
    ("bwd", "fp16", "scaled_add", False, False),
    ("fwd", "fp32", "scaled_add", True, False),
    ("bwd", "fp32", "interpolate", True, False),
]


@pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")
@pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET") == "1", reason="needs the compiled (non-interpreter) kernels"
)
@pytest.mark.parametrize("which,dtype,mode,weight,bias", GPU_VARIANTS)
def test_kernels_compile_for_cuda_sm80(which, dtype, mode, weight, bias):
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    kernel = getattr(triton_module(), f"_bridge_norm_{which}_kernel")
    spec = bridge_mode(mode)
    mode_code, per_channel = spec.code, spec.per_channel
    flags = {
        "MODE": mode_code,
        "COEF_PER_CHANNEL": per_channel,
        "HAS_WEIGHT": weight,
        "HAS_BIAS": bias,
        "BLOCK_M": 4,
        "BLOCK_D": 1024,
    }
    present = {
        "W": weight,
        "B": bias,
        "DW_PART": weight,
        "DB_PART": bias,
        "COEF": mode_code != 0,
        "DC_PART": mode_code != 0,
    }
    fp32_ptrs = {"COEF", "MEAN", "RSTD", "DW_PART", "DB_PART", "DC_PART"}
    signature, constexprs = {}, {}
    for i, name in enumerate(kernel.arg_names):
        if name in flags:
            signature[name], constexprs[(i,)] = "constexpr", flags[name]
        elif not present.get(name, True):
            signature[name], constexprs[(i,)] = "constexpr", None
        elif name.isupper():  # a pointer
            signature[name] = "*fp32" if name in fp32_ptrs else f"*{dtype}"
        else:
            signature[name] = "fp32" if name == "eps" else "i32"
    compiled = triton.compile(
        ASTSource(kernel, signature, constexprs),
        target=GPUTarget("cuda", 80, 32),
        options={"num_warps": 8},
    )
    assert compiled.asm["cubin"]
    assert ".visible .entry" in compiled.asm["ptx"]


@pytest.mark.interpret
def test_double_backward_raises_instead_of_returning_wrong_values():
    x = torch.randn(3, 32, requires_grad=True)
    out = triton_bridge_norm(x, torch.randn(3, 32))
    (gx,) = torch.autograd.grad(out.square().sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="no autograd formula"):
        gx.sum().backward()
