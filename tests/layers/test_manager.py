"""Managers (ManagerTower): each variant against its literal formula in float64, gradients,
the training-only noise, the fusion stack, errors."""

from __future__ import annotations

import pytest
import torch

from bridgetower.layers.manager import (
    MANAGERS,
    AdaptiveManager,
    ManagerFusion,
    StaticManager,
    create_manager,
    manager_names,
    manager_ref,
    standardize_layers,
)

D, N = 16, 3

# (name, weights, previous): every form a manager takes
VARIANTS = [
    ("static", "vector", False),
    ("static", "scalar", False),
    ("static", "vector", True),
    ("static", "scalar", True),
    ("adaptive", "vector", True),
    ("adaptive", "scalar", True),
]


def _randomise(module, scale=0.3):
    """Perturb every parameter (LayerNorm affines, scores, temperature all matter)."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * scale)
    return module


def _manager(name, weights, previous, dim=D, n=N, **kw):
    extra = {} if name == "adaptive" else {"previous": previous}
    return _randomise(create_manager(name, dim, n, weights=weights, **extra, **kw))


def _inputs(name, previous, b=2, length=5, other=7, dim=D, n=N, dtype=torch.float32):
    g = torch.Generator().manual_seed(2)
    layers = torch.randn(b, n, length, dim, generator=g).to(dtype)
    args = []
    if previous:
        args.append(torch.randn(b, length, dim, generator=g).to(dtype))
    if name == "adaptive":
        args.append(torch.randn(b, other, dim, generator=g).to(dtype))
    return layers, args


@pytest.mark.parametrize("name,weights,previous", VARIANTS)
def test_matches_the_formula_in_float64(name, weights, previous):
    m = _manager(name, weights, previous).eval()
    layers, args = _inputs(name, previous)
    out = m(layers, *args)
    assert out.shape == (2, 5, D) and out.dtype == torch.float32
    ref = manager_ref(m.double(), layers.double(), *[a.double() for a in args])
    torch.testing.assert_close(out.double(), ref, rtol=0, atol=2e-6)
    # in float64 the module is the formula to rounding
    torch.testing.assert_close(m(layers.double(), *[a.double() for a in args]), ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize("name,weights,previous", [("static", "vector", True), ("adaptive", "vector", True)])
def test_single_sample_single_token(name, weights, previous):
    # B = L = 1: the adaptive weights are one per layer, the folded static path serves both
    m = _manager(name, weights, previous).eval()
    layers, args = _inputs(name, previous, b=1, length=1, other=1)
    ref = manager_ref(m.double(), layers.double(), *[a.double() for a in args])
    torch.testing.assert_close(m(layers.double(), *[a.double() for a in args]), ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize("name,weights,previous", VARIANTS)
def test_gradients_match_the_formula(name, weights, previous):
    m = _manager(name, weights, previous).double().eval()
    layers, args = _inputs(name, previous, dtype=torch.float64)
    leaves = [t.requires_grad_() for t in (layers, *args)]
    grad_out = torch.randn(2, 5, D, dtype=torch.float64)
    got = torch.autograd.grad((m(*leaves) * grad_out).sum(), [*leaves, *m.parameters()])
    want = torch.autograd.grad((manager_ref(m, *leaves) * grad_out).sum(), [*leaves, *m.parameters()])
    for name_, g, w in zip(["layers", "prev", "prev_other"][: len(leaves)] + [n for n, _ in m.named_parameters()],
                           got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-12, msg=name_)


@pytest.mark.parametrize("name", ["static", "adaptive"])
def test_gradcheck(name):
    m = _manager(name, "vector", True, dim=6, n=2).double().eval()
    layers, args = _inputs(name, True, b=2, length=3, other=2, dim=6, n=2, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda *t: m(*t), [t.requires_grad_() for t in (layers, *args)])


def test_list_input_and_standardized_input_agree():
    m = _manager("adaptive", "vector", True).eval()
    layers, args = _inputs("adaptive", True)
    out = m(layers, *args)
    torch.testing.assert_close(m(list(layers.unbind(1)), *args), out, rtol=0, atol=0)
    torch.testing.assert_close(m(standardize_layers(layers, m.eps), *args, standardized=True), out, rtol=0, atol=0)


@pytest.mark.parametrize("name,weights,previous", [("static", "vector", False), ("static", "scalar", True),
                                                   ("adaptive", "vector", True), ("adaptive", "scalar", True)])
def test_training_noise_is_the_official_draw(name, weights, previous):
    """In training, N(0, 1/N) per element of (B, N, L, D) is added to the routed scores before
    the softmax (one torch.randn of that shape); evaluation and noise=False add none."""
    m = _manager(name, weights, previous).train()
    layers, args = _inputs(name, previous)
    torch.manual_seed(7)
    out = m(layers, *args)
    torch.manual_seed(7)
    noise = torch.randn(layers.shape) / N
    ref = manager_ref(m.double(), layers.double(), *[a.double() for a in args], noise=noise.double())
    m.float()
    torch.testing.assert_close(out.double(), ref, rtol=0, atol=2e-6)
    clean = m.eval()(layers, *args)
    assert (out - clean).abs().max() > 1e-3  # the noise matters
    m.train()
    m.noise = False
    torch.testing.assert_close(m(layers, *args), clean, rtol=0, atol=0)


@pytest.mark.parametrize("name", ["static", "adaptive"])
def test_training_keeps_no_stack_sized_tensor(name):
    """The routing is recomputed in the backward: autograd keeps the managed stack itself
    (shared by the stream's managers), not the noisy scores, the weights or the normalised
    layers, each (B, N, L, D)."""
    m = _manager(name, "vector", True).train()
    layers, args = _inputs(name, True)
    hat = standardize_layers(layers, m.eps).requires_grad_()
    big = []

    def pack(t):
        if t.numel() >= hat.numel() and t.untyped_storage().data_ptr() != hat.untyped_storage().data_ptr():
            big.append(tuple(t.shape))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = m(hat, *args, standardized=True)
    assert big == []
    out.sum().backward()
    assert hat.grad is not None and m.norms[0].weight.grad is not None


def test_routing_matches_the_forward():
    m = _manager("adaptive", "vector", True).eval()
    layers, (prev, other) = _inputs("adaptive", True)
    r = m.routing(prev, other)
    assert r["attention_scores"].shape == (2, 5, 7) and r["controller_logits"].shape == (2, 5, N)
    w = r["weights"]
    torch.testing.assert_close(w.sum(1), torch.ones(2, 5))
    gamma, beta = m._affines()
    reps = standardize_layers(layers, m.eps) * gamma[:, None] + beta[:, None]  # (B, N, L, D)
    want = (w[..., None] * reps).sum(1) + m.prev_scale * m.prev_norm(prev)
    torch.testing.assert_close(m(layers, prev, other), want, rtol=0, atol=1e-5)
    s = _manager("static", "scalar", False)
    torch.testing.assert_close(s.routing()["weights"], torch.softmax(s.scores / s.temperature, 0))


def test_parameters_initial_values_and_factory():
    m = create_manager("SAUE", D, 4, previous=True)
    assert isinstance(m, StaticManager) and m.scores.shape == (4, D)
    assert torch.all(m.scores == 0.25) and torch.all(m.prev_scale == 1) and m.temperature.item() == 1
    s = create_manager("static", D, 4, weights="scalar", previous=False, learnable=False, temperature_learnable=False)
    assert s.scores.shape == (4, 1) and s.prev_scale is None and s.prev_norm is None
    assert not s.scores.requires_grad and not s.temperature.requires_grad
    a = create_manager("AAUE", D, 4, weights="scalar", attn_backend="math")
    assert isinstance(a, AdaptiveManager) and a.prev_scale.shape == (1,) and a.attn_backend == "math"
    assert sorted(n for n, _ in a.named_parameters()) == sorted(
        [f"norms.{j}.{p}" for j in range(4) for p in ("weight", "bias")]
        + ["temperature", "prev_norm.weight", "prev_norm.bias", "prev_scale", "other_norm.weight", "other_norm.bias",
           "query.weight", "query.bias", "key.weight", "key.bias", "controller.weight", "controller.bias"])
    assert a.controller.weight.shape == (4, 2 * D) and torch.all(a.controller.bias == 0)
    assert set(MANAGERS) == {"static", "adaptive"} and manager_names()[-2:] == ["SAUE", "AAUE"]
    assert "num_layers=4" in repr(a)


@pytest.mark.parametrize(
    "build,exc,match",
    [
        (lambda: create_manager("dynamic", D, N), ValueError, "valid names: static, adaptive"),
        (lambda: create_manager(3, D, N), TypeError, "must be a str"),
        (lambda: create_manager("static", D, 0), ValueError, "num_layers must be a positive int"),
        (lambda: create_manager("static", D, N, weights="matrix"), ValueError, "weights must be one of vector, scalar"),
        (lambda: create_manager("static", D, N, temperature=0), ValueError, "temperature must be"),
        (lambda: create_manager("static", D, N, noise=1), TypeError, "noise must be True or False"),
        (lambda: create_manager("adaptive", D, N, previous=False), ValueError, "first layer's manager is a Static"),
        (lambda: create_manager("adaptive", D, N, attn_backend="fast"), ValueError, "attention"),
    ],
)
def test_construction_errors(build, exc, match):
    with pytest.raises(exc, match=match):
        build()


def test_forward_errors_name_the_argument():
    a = create_manager("adaptive", D, N)
    s0 = create_manager("static", D, N, previous=False)
    layers, (prev, other) = _inputs("adaptive", True)
    with pytest.raises(ValueError, match=r"layers must be \(B, N=3, L, D=16\).*got shape \(2, 2, 5, 16\)"):
        a(layers[:, :2], prev, other)
    with pytest.raises(ValueError, match="share one shape"):
        a([layers[:, 0], layers[:, 1], layers[:, 2, :4]], prev, other)
    with pytest.raises(TypeError, match="layers must be a"):
        a("layers", prev, other)
    with pytest.raises(TypeError, match="prev must be a"):
        a(layers, None, other)
    with pytest.raises(ValueError, match=r"prev must be \(B=2, L=5, D=16\)"):
        a(layers, prev[:, :4], other)
    with pytest.raises(ValueError, match=r"prev_other must be \(B=2"):
        a(layers, prev, other[:1])
    with pytest.raises(TypeError, match="prev_other has dtype torch.float64"):
        a(layers, prev, other.double())
    with pytest.raises(ValueError, match="takes no prev"):
        s0(layers, prev)
    with pytest.raises(TypeError, match="standardized must be"):
        s0(layers, standardized=1)


# ---------------------------------------------------------------- fusion


def _fusion(**kw):
    kw = {"managed_text": 3, "managed_image": 2, **kw}
    f = ManagerFusion(D, 3, 2, **kw)
    return _randomise(f, 0.1)


def _fusion_inputs(b=2, lt=6, li=5):
    g = torch.Generator().manual_seed(3)
    ht, hv = torch.randn(b, 3, lt, D, generator=g), torch.randn(b, 2, li, D, generator=g)
    mask = torch.ones(b, lt, dtype=torch.bool)
    mask[1, 4:] = False
    return ht, hv, mask


@pytest.mark.parametrize("manager", ["adaptive", "static", ("static", "adaptive", "static")])
def test_fusion_is_the_loop_of_managers_and_layers(manager):
    f = _fusion(manager=manager).double().eval()
    ht, hv, mask = (t.double() if t.is_floating_point() else t for t in _fusion_inputs())
    texts, images, tm, im = f(ht, hv, mask, return_all_layers=True, return_manager_outputs=True)
    assert [type(m).__name__ for m in f.text_managers] == [
        "StaticManager", *("AdaptiveManager" if n == "adaptive" else "StaticManager" for n in f.names[1:])]
    x = y = None
    for i in range(3):
        tman, iman = f.text_managers[i], f.image_managers[i]
        targs = [] if i == 0 else [x] + ([y] if isinstance(tman, AdaptiveManager) else [])
        iargs = [] if i == 0 else [y] + ([x] if isinstance(iman, AdaptiveManager) else [])
        x_in, y_in = manager_ref(tman, ht, *targs), manager_ref(iman, hv, *iargs)
        torch.testing.assert_close(tm[i], x_in, rtol=0, atol=1e-12)
        torch.testing.assert_close(im[i], y_in, rtol=0, atol=1e-12)
        x = f.text_layers[i](x_in, y_in, mask, None)
        y = f.image_layers[i](y_in, x_in, None, mask)
        torch.testing.assert_close(texts[i], x, rtol=0, atol=1e-12)
        torch.testing.assert_close(images[i], y, rtol=0, atol=1e-12)
    last = f(list(ht.unbind(1)), list(hv.unbind(1)), mask)
    torch.testing.assert_close(last[0], texts[-1], rtol=0, atol=0)


def test_fusion_cls_only_last_and_checkpointing():
    f = _fusion().eval()
    ht, hv, mask = _fusion_inputs()
    text, image = f(ht, hv, mask)
    t1, i1 = f(ht, hv, mask, cls_only_last=True)
    assert t1.shape == (2, 1, D)
    torch.testing.assert_close(t1, text[:, :1], rtol=0, atol=1e-6)
    torch.testing.assert_close(i1, image[:, :1], rtol=0, atol=1e-6)
    # training with noise and dropout: checkpointing recomputes the same draws, the same gradients
    f = _fusion(dropout=0.1).train()

    def grads(checkpointing):
        f.gradient_checkpointing = checkpointing
        f.zero_grad()
        torch.manual_seed(11)
        t, v = f(ht, hv, mask)
        (t.square().sum() + v.sum()).backward()
        return [p.grad.clone() for p in f.parameters()]

    for a, b in zip(grads(False), grads(True), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_fusion_errors():
    with pytest.raises(ValueError, match="first layer's manager must be static"):
        ManagerFusion(D, 2, 2, managed_text=2, managed_image=2, manager=("adaptive", "adaptive"))
    with pytest.raises(ValueError, match="2 names"):
        ManagerFusion(D, 2, 2, managed_text=2, managed_image=2, manager=("static",))
    with pytest.raises(ValueError, match="unknown manager 'bridge'"):
        ManagerFusion(D, 2, 2, managed_text=2, managed_image=2, manager="bridge")
    with pytest.raises(ValueError, match="managed_image must be a positive int"):
        ManagerFusion(D, 2, 2, managed_text=2, managed_image=0)
    f = _fusion()
    ht, hv, mask = _fusion_inputs()
    with pytest.raises(ValueError, match=r"text_inputs: layers must be \(B, N=3"):
        f(ht[:, :2], hv, mask)
    with pytest.raises(ValueError, match="batch sizes differ"):
        f(ht, hv[:1], mask)
