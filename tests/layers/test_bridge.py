"""Bridge layers: each variant against its formula in float64, HF link-tower parity, errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bridgetower.kernels.modes import BRIDGE_MODES
from bridgetower.layers.bridge import BRIDGES, bridge_names, create_bridge

DIM = 24


def _ln(s, w, b, eps):
    mu = s.mean(-1, keepdim=True)
    var = ((s - mu) ** 2).mean(-1, keepdim=True)
    return (s - mu) / torch.sqrt(var + eps) * w + b


def _randomise(module):
    """Non-trivial values in every parameter (so LN affine, scale, beta all matter)."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.5 + (1.0 if p.ndim <= 1 else 0.0))


def _lin(p, prefix, u):
    return u @ p[prefix + ".weight"].T + p[prefix + ".bias"]


def _mlp(p, u, eps):
    h = _lin(p, "proj.0", u)
    h = _ln(h, p["proj.1.weight"], p["proj.1.bias"], eps)
    h = 0.5 * h * (1 + torch.erf(h / 2**0.5))  # exact GELU
    return _lin(p, "proj.3", h)


def _formula(name, p, x, z, eps):
    """Independent float64 reference of every non-attention bridge; p = float64 state dict."""
    w, b = p["weight"], p["bias"]
    if name == "add":
        s = x + z
    elif name in ("scaled_add", "scaled_add_tensor"):
        s = p["scale"] * x + z
    elif name in ("interpolate", "interpolate_tensor"):
        s = (1 - p["beta"]) * x + p["beta"] * z
    elif name == "gated_interpolate":
        g = torch.sigmoid(_lin(p, "gate", torch.cat([x, z], -1)))
        s = (1 - g) * x + g * z
    elif name == "elementwise_product":
        s = x * z
    elif name == "elementwise_product_residual":
        s = z + x * z
    else:
        u = torch.cat([x, z], -1) if "concat" in name else x + z
        d = _mlp(p, u, eps) if name.startswith("mlp") else _lin(p, "proj", u)
        s = d + z if name.endswith("_residual") else d
    return _ln(s, w, b, eps)


NON_ATTENTION = [n for n in BRIDGES if not n.startswith("cross_attention")]


@pytest.mark.parametrize("name", NON_ATTENTION)
@pytest.mark.parametrize("shape", [(2, 5), (2, 3, 7)])
def test_bridge_matches_formula(name, shape):
    eps = 1e-6
    bridge = create_bridge(name, DIM, eps=eps)
    _randomise(bridge)
    x = torch.randn(*shape, DIM, requires_grad=True)
    z = torch.randn(*shape, DIM, requires_grad=True)
    out = bridge(x, z)
    assert out.shape == (*shape, DIM) and out.dtype == torch.float32

    p64 = {k: v.detach().double().requires_grad_() for k, v in bridge.state_dict().items()}
    x64 = x.detach().double().requires_grad_()
    z64 = z.detach().double().requires_grad_()
    ref = _formula(name, p64, x64, z64, eps)
    torch.testing.assert_close(out.double(), ref, rtol=1e-4, atol=1e-4)

    go = torch.randn_like(ref)
    (out.double() * go).sum().backward()
    (ref * go).sum().backward()
    torch.testing.assert_close(x.grad.double(), x64.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(z.grad.double(), z64.grad, rtol=1e-4, atol=1e-4)
    for k, prm in bridge.named_parameters():
        torch.testing.assert_close(prm.grad.double(), p64[k].grad, rtol=1e-4, atol=2e-4, msg=k)


def test_float64_inputs_stay_float64():
    bridge = create_bridge("interpolate_tensor", DIM, dtype=torch.float64)
    x, z = torch.randn(3, DIM, dtype=torch.float64), torch.randn(3, DIM, dtype=torch.float64)
    assert bridge(x, z).dtype == torch.float64


@pytest.mark.parametrize(
    "name,coef,init,shape",
    [("scaled_add", "scale", 1.0, ()), ("interpolate", "beta", 0.5, ()),
     ("scaled_add_tensor", "scale", 1.0, (DIM,)), ("interpolate_tensor", "beta", 0.5, (DIM,))],
)
def test_elementwise_parameters_and_reset(name, coef, init, shape):
    spec = BRIDGE_MODES[name]  # the bridges read the kernel's mode table
    assert (spec.coef_name, spec.coef_init, spec.coef_shape(DIM)) == (coef, init, shape)
    bridge = create_bridge(name, DIM)
    assert sorted(n for n, _ in bridge.named_parameters()) == sorted(["weight", "bias", coef])
    _randomise(bridge)
    bridge.reset_parameters()
    assert getattr(bridge, coef).shape == shape
    assert torch.all(getattr(bridge, coef) == init)
    assert torch.all(bridge.weight == 1) and torch.all(bridge.bias == 0)


def test_concat_alias_and_repr():
    assert type(create_bridge("concat", DIM)) is BRIDGES["linear_concat"]
    assert "concat" in bridge_names()
    r = repr(create_bridge("mlp_add", DIM, hidden_dim=10, eps=1e-12))
    assert "eps=1e-12" in r and "hidden_dim=10" in r


def test_device_dtype_forwarded():
    bridge = create_bridge("mlp_concat_residual", DIM, dtype=torch.float64, device="cpu")
    assert {p.dtype for p in bridge.parameters()} == {torch.float64}


# ------------------------------------------------------------------ cross-attention

def _mha64(p, prefix, q_in, kv_in, heads, mask=None):
    B, Lq, D = q_in.shape
    dh = D // heads
    q = _lin(p, prefix + ".query", q_in).view(B, Lq, heads, dh).transpose(1, 2)
    k = _lin(p, prefix + ".key", kv_in).view(B, -1, heads, dh).transpose(1, 2)
    v = _lin(p, prefix + ".value", kv_in).view(B, -1, heads, dh).transpose(1, 2)
    logits = q @ k.transpose(-1, -2) / dh**0.5
    if mask is not None:
        logits = logits.masked_fill(~mask.bool()[:, None, None, :], float("-inf"))
    o = (logits.softmax(-1) @ v).transpose(1, 2).reshape(B, Lq, D)
    return _lin(p, prefix + ".proj", o)


@pytest.mark.parametrize("name", ["cross_attention", "cross_attention_ffn"])
def test_cross_attention_bridge_matches_formula(name):
    eps = 1e-5
    bridge = create_bridge(name, DIM, num_heads=3, eps=eps).eval()
    _randomise(bridge)
    x = torch.randn(2, 7, DIM)  # keys/values: uni-modal feature
    z = torch.randn(2, 4, DIM)  # queries: cross-modal stream
    mask = torch.tensor([[1, 1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1, 1]])
    out = bridge(x, z, key_padding_mask=mask)
    assert out.shape == z.shape

    p = {k: v.double() for k, v in bridge.state_dict().items()}
    x64, z64 = x.double(), z.double()
    h = _ln(z64 + _mha64(p, "attn", z64, x64, 3, mask), p["weight"], p["bias"], eps)
    if name == "cross_attention_ffn":
        f = _lin(p, "fc2", F.gelu(_lin(p, "fc1", h)))
        h = _ln(h + f, p["ffn_norm.weight"], p["ffn_norm.bias"], eps)
    torch.testing.assert_close(out.double(), h, rtol=1e-4, atol=1e-4)


def test_cross_attention_bad_heads_and_shapes():
    with pytest.raises(ValueError, match="divisible"):
        create_bridge("cross_attention", DIM, num_heads=5)
    bridge = create_bridge("cross_attention", DIM, num_heads=2)
    # checked once, by the attention: z are its queries, x its context
    with pytest.raises(ValueError, match=r"context must be \(B=3, Lk, 24\), got \(2, 3, 24\)"):
        bridge(torch.randn(2, 3, DIM), torch.randn(3, 3, DIM))


# ------------------------------------------------------------------ errors


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError) as info:
        create_bridge("addd", DIM)
    msg = str(info.value)
    assert "'addd'" in msg and all(n in msg for n in bridge_names())


@pytest.mark.parametrize("name", ["add", "interpolate_tensor", "gated_interpolate", "linear_concat"])
def test_bad_inputs(name):
    """Elementwise bridges are validated by bridge_norm, the others by their own check."""
    bridge = create_bridge(name, DIM)
    with pytest.raises(ValueError, match=r"same shape.*\(2, 24\).*\(3, 24\)"):
        bridge(torch.randn(2, DIM), torch.randn(3, DIM))
    with pytest.raises(ValueError, match=r"\(2, 25\)"):
        bridge(torch.randn(2, DIM + 1), torch.randn(2, DIM + 1))
    with pytest.raises(TypeError, match="dtype"):
        bridge(torch.randn(2, DIM), torch.randn(2, DIM, dtype=torch.float64))


def test_bad_construction():
    with pytest.raises(ValueError, match="positive int"):
        create_bridge("add", 0)
    with pytest.raises(ValueError, match="hidden_dim"):
        create_bridge("linear_add", DIM, hidden_dim=8)
    with pytest.raises(TypeError):
        create_bridge("add", DIM, num_heads=2)  # option of another variant: not silently dropped
    with pytest.raises(ValueError, match="unknown bridge_norm backend 'nope'"):
        create_bridge("scaled_add", DIM, backend="nope")  # at construction, not per call
