"""Co-attention layer and fusion against transformers' BridgeTower layers (copied weights)."""

from __future__ import annotations

import pytest
import torch

from bridgetower.layers.co_attention import CoAttentionFusion, CoAttentionLayer

# the HF rename table lives with the converters; here it only loads HF weights for parity
from bridgetower.models.layer_keys import (
    convert_hf_cross_layer_state_dict,
    rename_hf_cross_layer_key,
)

hf_bt = pytest.importorskip(
    "transformers.models.bridgetower.modeling_bridgetower",
    reason="transformers' BridgeTower is the reference for these tests",
)
from transformers import BridgeTowerConfig, BridgeTowerTextConfig  # noqa: E402

DIM, HEADS, EPS = 32, 4, 1e-12
F64 = torch.float64


def _text_config(eps=EPS):
    cfg = BridgeTowerTextConfig(
        hidden_size=DIM, num_attention_heads=HEADS, intermediate_size=4 * DIM,
        hidden_act="gelu", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
        layer_norm_eps=eps, num_hidden_layers=1, vocab_size=10,
    )
    cfg._attn_implementation = "eager"
    return cfg


def _hf_cross_layer(seed):
    torch.manual_seed(seed)
    layer = hf_bt.BridgeTowerBertCrossLayer(_text_config()).to(F64).eval()
    with torch.no_grad():  # non-trivial LayerNorm affine and biases
        for p in layer.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return layer


def _extended(mask, dtype=F64):
    """HF's extended additive mask (B, 1, 1, L): 0 for real tokens, dtype-min for padding."""
    return (1.0 - mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min


def _masks(B, L, lengths):
    m = torch.zeros(B, L, dtype=torch.long)
    for b, n in enumerate(lengths):
        m[b, :n] = 1
    return m


def _ours_from_hf(hf_layer, **kw):
    ours = CoAttentionLayer(DIM, HEADS, eps=EPS, dtype=F64, **kw).eval()
    ours.load_state_dict(convert_hf_cross_layer_state_dict(hf_layer.state_dict()), strict=True)
    return ours


@pytest.mark.parametrize("backend", [None, "math", "sdpa", "chunked"])
def test_cross_layer_matches_hf(backend):
    hf = _hf_cross_layer(0)
    ours = _ours_from_hf(hf, attn_backend=backend)
    B, Lx, Lo = 3, 7, 5
    x_mask, o_mask = _masks(B, Lx, [7, 4, 1]), _masks(B, Lo, [2, 5, 3])
    x = torch.randn(B, Lx, DIM, dtype=F64, requires_grad=True)
    other = torch.randn(B, Lo, DIM, dtype=F64, requires_grad=True)

    ref = hf(x, other, attention_mask=_extended(x_mask), encoder_attention_mask=_extended(o_mask))[0]
    out = ours(x, other, x_mask, o_mask)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)

    g = torch.randn_like(ref)
    hf_params = dict(hf.named_parameters())
    our_params = dict(ours.named_parameters())
    names = list(hf_params)
    ref_grads = torch.autograd.grad(ref, [x, other] + [hf_params[n] for n in names], g)
    our_grads = torch.autograd.grad(
        out, [x, other] + [our_params[rename_hf_cross_layer_key(n)] for n in names], g)
    for n, a, b in zip(["x", "other"] + names, our_grads, ref_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10, msg=f"grad of {n}")


def test_cross_layer_bool_and_int_masks_agree_and_none_means_all_real():
    hf = _hf_cross_layer(1)
    ours = _ours_from_hf(hf)
    x, o = torch.randn(2, 6, DIM, dtype=F64), torch.randn(2, 4, DIM, dtype=F64)
    xm, om = _masks(2, 6, [6, 3]), _masks(2, 4, [4, 2])
    torch.testing.assert_close(ours(x, o, xm, om), ours(x, o, xm.bool(), om.bool()))
    ones = torch.ones(2, 6, dtype=torch.bool), torch.ones(2, 4, dtype=torch.bool)
    torch.testing.assert_close(ours(x, o), ours(x, o, *ones))


def _hf_link_tower():
    cfg = BridgeTowerConfig(hidden_size=DIM, link_tower_type="add", layer_norm_eps=1e-5)
    tower = hf_bt.BridgeTowerLinkTower(cfg).to(F64)
    with torch.no_grad():
        tower.LayerNorm.weight.add_(torch.randn(DIM, dtype=F64) * 0.2)
        tower.LayerNorm.bias.add_(torch.randn(DIM, dtype=F64) * 0.2)
    return tower


def _load_fusion_from_hf(fusion, text_layers, image_layers, text_links, image_links):
    sd = {}
    for stack, layers in (("text_layers", text_layers), ("image_layers", image_layers)):
        for i, layer in enumerate(layers):
            for k, v in convert_hf_cross_layer_state_dict(layer.state_dict()).items():
                sd[f"{stack}.{i}.{k}"] = v
    for stack, links in (("text_bridges", text_links), ("image_bridges", image_links)):
        for i, link in enumerate(links):
            sd[f"{stack}.{i}.weight"] = link.LayerNorm.weight.detach().clone()
            sd[f"{stack}.{i}.bias"] = link.LayerNorm.bias.detach().clone()
    fusion.load_state_dict(sd, strict=True)


@pytest.mark.parametrize("num_layers", [2, 3])
def test_fusion_matches_hf_composition(num_layers):
    """Our fusion against HF cross layers + HF add link towers, composed as in BridgeTower."""
    N = num_layers
    text_layers = [_hf_cross_layer(10 + i) for i in range(N)]
    image_layers = [_hf_cross_layer(20 + i) for i in range(N)]
    text_links = [_hf_link_tower() for _ in range(N - 1)]
    image_links = [_hf_link_tower() for _ in range(N - 1)]
    fusion = CoAttentionFusion(DIM, N, HEADS, eps=EPS, bridge_eps=1e-5, dtype=F64).eval()
    _load_fusion_from_hf(fusion, text_layers, image_layers, text_links, image_links)

    B, Lt, Li = 2, 6, 5
    t_mask = _masks(B, Lt, [6, 3])
    i_mask = torch.ones(B, Li, dtype=torch.long)
    i_mask[1, -1] = 0  # a padded image
    ts = [torch.randn(B, Lt, DIM, dtype=F64, requires_grad=True) for _ in range(N)]
    vs = [torch.randn(B, Li, DIM, dtype=F64, requires_grad=True) for _ in range(N)]

    # Reference, written out: layer 1 reads the inputs, layer l the two *bridged* inputs.
    et, ei = _extended(t_mask), _extended(i_mask)
    x_in, y_in = ts[0], vs[0]
    x = y = None  # outputs of the previous layer
    for i in range(N):
        if i > 0:
            x_in = text_links[i - 1](ts[i], x, None)
            y_in = image_links[i - 1](vs[i], y, None)
        x = text_layers[i](x_in, y_in, attention_mask=et, encoder_attention_mask=ei)[0]
        y = image_layers[i](y_in, x_in, attention_mask=ei, encoder_attention_mask=et)[0]

    out_t, out_i = fusion(ts, vs, t_mask, i_mask)
    torch.testing.assert_close(out_t, x, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(out_i, y, rtol=1e-10, atol=1e-10)
    gt, gi = torch.randn_like(x), torch.randn_like(y)
    ref_g = torch.autograd.grad((x, y), ts + vs, (gt, gi))
    our_g = torch.autograd.grad((out_t, out_i), ts + vs, (gt, gi))
    for a, b in zip(our_g, ref_g, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)

    all_t, all_i = fusion(ts, vs, t_mask, i_mask, return_all_layers=True)
    assert len(all_t) == len(all_i) == N
    torch.testing.assert_close(all_t[-1], out_t)


def test_fusion_uses_bridge_module_and_names():
    from bridgetower.layers.bridge import AddBridge, ScaledAddBridge

    f = CoAttentionFusion(16, 3, 2)
    assert all(isinstance(b, AddBridge) for b in (*f.text_bridges, *f.image_bridges))
    assert len(f.text_bridges) == len(f.image_bridges) == 2
    names = set(f.state_dict())
    assert {"text_layers.2.mlp_norm.weight", "image_layers.0.cross_attn.key.weight",
            "text_bridges.1.weight", "image_bridges.0.bias"} <= names
    g = CoAttentionFusion(16, 2, 2, bridge="scaled_add")
    assert isinstance(g.text_bridges[0], ScaledAddBridge)
    assert "text_bridges.0.scale" in g.state_dict()


def test_gradient_checkpointing_gives_identical_gradients():
    """Training mode with hidden and attention dropout (the chunked path): same RNG, same grads."""
    torch.manual_seed(0)
    fusion = CoAttentionFusion(16, 2, 2, dropout=0.1, attn_dropout=0.1, dtype=F64).train()
    B, Lt, Li = 2, 5, 4
    ts = [torch.randn(B, Lt, 16, dtype=F64, requires_grad=True) for _ in range(2)]
    vs = [torch.randn(B, Li, 16, dtype=F64, requires_grad=True) for _ in range(2)]
    tm = _masks(B, Lt, [5, 2])

    def run(ckpt):
        fusion.gradient_checkpointing = ckpt
        torch.manual_seed(123)
        t, i = fusion(ts, vs, tm)
        loss = t.square().sum() + i.sum()
        return [t, i, *torch.autograd.grad(loss, [*ts, *vs, *fusion.parameters()])]

    plain, ckpt = run(False), run(True)
    for a, b in zip(plain, ckpt, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    # Dropout is active: another seed gives another result.
    fusion.gradient_checkpointing = False
    torch.manual_seed(7)
    assert not torch.allclose(fusion(ts, vs, tm)[0], plain[0])


def test_layer_dropout_only_in_training():
    layer = CoAttentionLayer(16, 2, dropout=0.5, attn_dropout=0.5)
    x, o = torch.randn(2, 5, 16), torch.randn(2, 3, 16)
    layer.eval()
    torch.testing.assert_close(layer(x, o), layer(x, o))
    layer.train()
    assert not torch.allclose(layer(x, o), layer(x, o))


def test_layer_kv_dim_other_width():
    layer = CoAttentionLayer(16, 2, kv_dim=24)
    out = layer(torch.randn(2, 5, 16), torch.randn(2, 3, 24))
    assert out.shape == (2, 5, 16)
    assert layer.cross_attn.key.weight.shape == (16, 24)
    assert "kv_dim=24" in repr(layer)


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="num_heads .* dividing dim"):
        CoAttentionLayer(30, 4)
    with pytest.raises(ValueError, match="unknown attention backend"):
        CoAttentionLayer(16, 2, attn_backend="flash9")
    # validated once, where the tensors are used: the attentions and the bridges
    layer = CoAttentionLayer(16, 2)
    x, o = torch.randn(2, 5, 16), torch.randn(2, 3, 16)
    with pytest.raises(ValueError, match=r"x must be \(B, Lq, 16\), got \(2, 5, 12\)"):
        layer(torch.randn(2, 5, 12), o)
    with pytest.raises(ValueError, match=r"context must be \(B=2, Lk, 16\), got \(2, 3, 8\)"):
        layer(x, torch.randn(2, 3, 8))
    with pytest.raises(ValueError, match=r"context must be \(B=2, Lk, 16\), got \(3, 3, 16\)"):
        layer(x, torch.randn(3, 3, 16))
    with pytest.raises(ValueError, match=r"key_padding_mask must have shape \(B, Lk\) = \(2, 5\)"):
        layer(x, o, torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"key_padding_mask must have shape \(B, Lk\) = \(2, 3\)"):
        layer(x, o, None, torch.ones(3, 2, dtype=torch.bool))
    with pytest.raises(TypeError, match="bool or integer"):
        layer(x, o, torch.ones(2, 5))
    fusion = CoAttentionFusion(16, 2, 2)
    with pytest.raises(ValueError, match="list of 2 tensors"):
        fusion([x], [o, o])
    with pytest.raises(ValueError, match="list of 2 tensors"):
        fusion(x, [o, o])
    with pytest.raises(ValueError, match=r"same shape, got x \(2, 3, 8\) and z \(2, 3, 16\)"):
        fusion([x, x], [o, torch.randn(2, 3, 8)])
    with pytest.raises(ValueError, match=r"key_padding_mask must have shape \(B, Lk\) = \(2, 5\)"):
        fusion([x, x], [o, o], torch.ones(2, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="unknown bridge"):
        CoAttentionFusion(16, 2, 2, bridge="nope")


@pytest.mark.interpret
def test_cross_layer_matches_hf_on_the_triton_norm_under_interpreter():
    """float32, the residual LayerNorms on the Triton kernel (interpreted)."""
    hf = _hf_cross_layer(3).float()
    ours = CoAttentionLayer(DIM, HEADS, eps=EPS).eval()
    ours.load_state_dict(convert_hf_cross_layer_state_dict(hf.state_dict()), strict=True)
    from bridgetower.kernels import select_bridge_norm_backend

    x = torch.randn(2, 5, DIM, requires_grad=True)
    other = torch.randn(2, 4, DIM)
    assert select_bridge_norm_backend(x) == "triton"
    xm, om = _masks(2, 5, [5, 3]), _masks(2, 4, [2, 4])
    ref = hf(x, other, attention_mask=_extended(xm, torch.float32),
             encoder_attention_mask=_extended(om, torch.float32))[0]
    out = ours(x, other, xm, om)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(torch.autograd.grad(out.sum(), x)[0],
                               torch.autograd.grad(ref.sum(), x)[0], rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------- the CLS-only last layer


def _fusion_inputs(N, B=3, Lt=6, Li=5, dim=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    ts = [torch.randn(B, Lt, dim, generator=g, dtype=F64).requires_grad_() for _ in range(N)]
    vs = [torch.randn(B, Li, dim, generator=g, dtype=F64).requires_grad_() for _ in range(N)]
    t_mask = _masks(B, Lt, [6, 3, 1])
    i_mask = _masks(B, Li, [5, 5, 2])
    return ts, vs, t_mask, i_mask


@pytest.mark.parametrize("kv_dim", [None, 24])
def test_cls_only_layer_equals_first_row_of_the_full_layer(kv_dim):
    """Outputs and every gradient (inputs and parameters) of forward(cls_only=True) equal
    those of forward(...)[:, :1], float64."""
    torch.manual_seed(0)
    layer = CoAttentionLayer(16, 4, kv_dim=kv_dim, dtype=F64).eval()
    x = torch.randn(3, 6, 16, dtype=F64, requires_grad=True)
    o = torch.randn(3, 5, kv_dim or 16, dtype=F64, requires_grad=True)
    xm, om = _masks(3, 6, [6, 3, 1]), _masks(3, 5, [5, 2, 4])
    full = layer(x, o, xm, om)[:, :1]
    cls = layer(x, o, xm, om, cls_only=True)
    assert cls.shape == (3, 1, 16)
    torch.testing.assert_close(cls, full, rtol=1e-12, atol=1e-12)
    g = torch.randn_like(cls)
    ins = [x, o, *layer.parameters()]
    for a, b in zip(torch.autograd.grad(cls, ins, g), torch.autograd.grad(full, ins, g), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("checkpointing", [False, True])
@pytest.mark.parametrize("num_layers", [1, 3])
def test_cls_only_last_fusion_equals_the_full_fusion_cls_rows(num_layers, checkpointing):
    torch.manual_seed(1)
    fusion = CoAttentionFusion(16, num_layers, 4, dtype=F64,
                               gradient_checkpointing=checkpointing).eval()
    ts, vs, tm, im = _fusion_inputs(num_layers)
    full_t, full_i = fusion(ts, vs, tm, im, return_all_layers=True)
    cls_t, cls_i = fusion(ts, vs, tm, im, return_all_layers=True, cls_only_last=True)
    assert cls_t[-1].shape == (3, 1, 16) and cls_i[-1].shape == (3, 1, 16)
    for a, b in zip(cls_t[:-1] + cls_i[:-1], full_t[:-1] + full_i[:-1], strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)  # the layers before run in full
    want = (full_t[-1][:, :1], full_i[-1][:, :1])
    got = fusion(ts, vs, tm, im, cls_only_last=True)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    gt, gi = torch.randn_like(want[0]), torch.randn_like(want[1])
    ins = [*ts, *vs, *fusion.parameters()]
    g_cls = torch.autograd.grad(got, ins, (gt, gi), allow_unused=True)
    g_full = torch.autograd.grad(want, ins, (gt, gi), allow_unused=True)
    for a, b in zip(g_cls, g_full, strict=True):
        if b is None:
            assert a is None or not a.any()
        else:
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_cls_only_last_with_checkpointing_in_training_recomputes_the_same_dropout():
    """Training mode (hidden and attention dropout): checkpointing the CLS-only last layer
    gives the same output and gradients as running it plainly, for one RNG state."""
    fusion = CoAttentionFusion(16, 2, 2, dropout=0.1, attn_dropout=0.1, dtype=F64).train()
    ts, vs, tm, im = _fusion_inputs(2)

    def run(ckpt):
        fusion.gradient_checkpointing = ckpt
        torch.manual_seed(5)
        t, i = fusion(ts, vs, tm, im, cls_only_last=True)
        return [t, i, *torch.autograd.grad(t.square().sum() + i.sum(), [*ts, *vs])]

    for a, b in zip(run(False), run(True), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


# ---------------------------------------------------------------- hidden_act


def _act_ref(name, h):
    """Reference formulas in float64, written out."""
    if name == "gelu":
        return 0.5 * h * (1 + torch.erf(h / 2**0.5))
    if name in ("gelu_new", "gelu_pytorch_tanh", "gelu_fast"):
        return 0.5 * h * (1 + torch.tanh((2 / torch.pi) ** 0.5 * (h + 0.044715 * h**3)))
    if name in ("quick_gelu", "quick"):
        return h * torch.sigmoid(1.702 * h)
    if name == "relu":
        return h.clamp_min(0)
    return h * torch.sigmoid(h)  # silu / swish


@pytest.mark.parametrize("act", ["gelu", "gelu_new", "gelu_pytorch_tanh", "quick_gelu", "relu", "silu"])
def test_layer_hidden_act_matches_the_formula(act):
    """The FFN of a layer (and of every layer of a fusion built with ``act``) computes
    fc2(act(fc1(h))) with the named activation: output and gradients, float64."""
    fusion = CoAttentionFusion(16, 1, 2, act=act, dtype=F64)
    assert all(m.mlp.act == act for m in (*fusion.text_layers, *fusion.image_layers))
    mlp = fusion.text_layers[0].mlp
    with torch.no_grad():
        mlp.fc1.weight.mul_(40)  # pre-activations of order 1: the variants differ
    h = torch.randn(2, 5, 16, dtype=F64, requires_grad=True)
    out = mlp(h)
    ref = torch.nn.functional.linear(_act_ref(act, mlp.fc1(h)), mlp.fc2.weight, mlp.fc2.bias)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-12)
    ins = [h, *mlp.parameters()]
    g = torch.randn_like(ref)
    for a, b in zip(torch.autograd.grad(out, ins, g), torch.autograd.grad(ref, ins, g), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    if act != "gelu":  # and the choice changes the result
        exact = torch.nn.functional.linear(_act_ref("gelu", mlp.fc1(h)), mlp.fc2.weight, mlp.fc2.bias)
        assert not torch.allclose(out, exact, rtol=1e-6, atol=1e-9)


def test_unknown_hidden_act_lists_the_valid_names():
    with pytest.raises(ValueError, match=r"unknown activation 'gelu2'; valid: gelu, gelu_new.*relu"):
        CoAttentionLayer(16, 2, act="gelu2")
    with pytest.raises(ValueError, match="unknown activation 'tanh'"):
        CoAttentionFusion(16, 2, 2, act="tanh")


def test_fusion_takes_one_bridge_per_layer():
    fusion = CoAttentionFusion(16, 4, 2, bridge=["scaled_add", "interpolate_tensor", "gated_interpolate"])
    assert [b.name for b in fusion.text_bridges] == ["scaled_add", "interpolate_tensor", "gated_interpolate"]
    assert [b.name for b in fusion.image_bridges] == [b.name for b in fusion.text_bridges]
    text = [torch.randn(2, 5, 16) for _ in range(4)]
    image = [torch.randn(2, 7, 16) for _ in range(4)]
    t, i = fusion(text, image)
    assert t.shape == (2, 5, 16) and i.shape == (2, 7, 16)
    with pytest.raises(ValueError, match="3 names"):
        CoAttentionFusion(16, 4, 2, bridge=["add", "add"])
