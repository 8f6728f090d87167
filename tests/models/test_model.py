"""BridgeTowerModel: the three-step API, scoring, switches, encoders, input checks."""

from __future__ import annotations

import pytest
import torch

from bridgetower.models import (
    BridgeTowerForImageAndTextRetrieval,
    BridgeTowerModel,
    create_model,
    get_config,
    patch_mask_from_pixel_mask,
)
from bridgetower.models.towers.vision import QuickGELU


def _small_config(**kw):
    base = dict(
        vision={"width": 64, "layers": 3, "heads": 2, "image_size": 32},
        text={"vocab_size": 50, "hidden_size": 32, "num_layers": 3, "num_heads": 2,
              "intermediate_size": 64, "max_position_embeddings": 20},
        fusion={"hidden_size": 32, "num_layers": 2, "num_heads": 4, "intermediate_size": 64},
    )
    base.update(kw)
    return get_config("bridgetower-tiny", **base)


def _inputs(b=3, length=9, size=32, pad=True):
    ids = torch.randint(3, 50, (b, length))
    mask = torch.ones(b, length, dtype=torch.long)
    if pad:
        mask[1, 5:] = 0
        mask[-1, 3:] = 0
        ids[mask == 0] = 1
    return ids, mask, torch.randn(b, 3, size, size)


def test_forward_equals_encode_then_fuse():
    model = BridgeTowerModel(_small_config()).eval()
    ids, mask, px = _inputs()
    out = model(ids, mask, px, output_hidden_states=True)
    assert out.text_features.shape == (3, 9, 32)
    assert out.image_features.shape == (3, 5, 32)
    assert out.pooler_output.shape == (3, 64)
    assert len(out.cross_hidden_states) == 2
    torch.testing.assert_close(out.cross_hidden_states[-1][0], out.text_features)
    t = model.encode_text(ids, mask)
    v = model.encode_image(px)
    assert [x.shape[-1] for x in t] == [32, 32] and [x.shape[-1] for x in v] == [64, 64]
    fused = model.fuse(t, v, mask)
    torch.testing.assert_close(fused.pooler_output, out.pooler_output, rtol=0, atol=0)
    # pooler = [tanh(P_t X[:, 0]); tanh(P_v Y[:, 0])]
    p_t = model.cross_modal_text_pooler.dense
    ref = torch.tanh(out.text_features[:, 0] @ p_t.weight.T + p_t.bias)
    torch.testing.assert_close(out.pooler_output[:, :32], ref)


def test_score_encodes_each_input_once_and_matches_the_per_text_loop():
    model = BridgeTowerForImageAndTextRetrieval(_small_config()).eval()
    ids, mask, px = _inputs(b=5)
    calls = {"vision": 0, "text": 0}
    hooks = [
        model.bridgetower.vision_model.register_forward_hook(lambda *a: calls.__setitem__("vision", calls["vision"] + 1)),
        model.bridgetower.text_model.register_forward_hook(lambda *a: calls.__setitem__("text", calls["text"] + 1)),
    ]
    scores = model.score(px[:1], ids, mask)
    assert scores.shape == (1, 5)
    assert calls == {"vision": 1, "text": 1}
    for h in hooks:
        h.remove()
    # the model card's loop: one full forward per text
    with torch.no_grad():
        loop = torch.stack([model(ids[i : i + 1], mask[i : i + 1], px[:1]).logits[0, 1] for i in range(5)])
    torch.testing.assert_close(scores[0], loop, rtol=1e-5, atol=1e-5)
    # 2 images x 5 texts, in chunks
    s2 = model.score(px[:2], ids, mask, batch_size=3)
    torch.testing.assert_close(s2[0], scores[0], rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        ref = model(ids[2:3], mask[2:3], px[1:2]).logits[0, 1]
    torch.testing.assert_close(s2[1, 2], ref, rtol=1e-5, atol=1e-5)


def test_gradient_checkpointing_same_grads():
    torch.manual_seed(0)
    ids, mask, px = _inputs()
    model = BridgeTowerModel(_small_config()).train()
    config_gc = _small_config(gradient_checkpointing=True)
    model_gc = BridgeTowerModel(config_gc).train()
    model_gc.load_state_dict(model.state_dict())
    grads = []
    for m in (model, model_gc):
        out = m(ids, mask, px)
        (out.pooler_output.square().sum() + out.text_features.mean()).backward()
        grads.append({n: p.grad.clone() for n, p in m.named_parameters()})
    assert model_gc.fusion.gradient_checkpointing and model_gc.vision_model.gradient_checkpointing
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-4, atol=1e-6, msg=name)


def test_attention_backend_switch_whole_model():
    model = BridgeTowerModel(_small_config()).eval()
    ids, mask, px = _inputs()
    ref = model(ids, mask, px).pooler_output
    model.set_attention_backend("math")
    # one setting reaches every attention: text tower, vision tower, fusion
    assert model.text_model.attention_modules()
    assert all(m.attn_backend == "math" for m in model.text_model.attention_modules())
    assert all(m.self_attn.backend == "math" for m in model.fusion.text_layers)
    assert all(b.attn.backend == "math" for b in model.vision_model.visual.transformer.resblocks)
    torch.testing.assert_close(model(ids, mask, px).pooler_output, ref, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="unknown attention backend"):
        model.set_attention_backend("flash9")
    with pytest.raises(ValueError, match="unknown attention backend"):
        model.vision_model.set_attention_backend("flash9")
    m2 = BridgeTowerModel(_small_config(attn_backend="math"))
    assert m2.fusion.image_layers[0].cross_attn.backend == "math"


def test_torch_compile_matches_eager():
    # one layer everywhere: tracing time (not the model) dominates this test
    config = _small_config(
        vision={"width": 64, "layers": 1, "heads": 2, "image_size": 32},
        text={"vocab_size": 50, "hidden_size": 32, "num_layers": 1, "num_heads": 2,
              "intermediate_size": 64, "max_position_embeddings": 20},
        fusion={"hidden_size": 32, "num_layers": 1, "num_heads": 4, "intermediate_size": 64},
    )
    model = BridgeTowerModel(config).eval()
    ids, mask, px = _inputs()
    ref = model(ids, mask, px).pooler_output
    compiled = torch.compile(model, backend="aot_eager")
    with torch.no_grad():
        out = compiled(ids, mask, px).pooler_output
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_vision_attention_equals_nn_multiheadattention_with_the_same_weights(monkeypatch):
    """The vision blocks' packed attention path against ``nn.MultiheadAttention``'s own
    forward (same parameters), outputs and all gradients, float64; and it really runs
    through the chosen backend of our dispatcher."""
    from bridgetower.layers import attention as attn_mod
    from bridgetower.models.towers.vision import _VisionSelfAttention

    torch.manual_seed(0)
    attn = _VisionSelfAttention(32, 4, batch_first=True, dtype=torch.float64)
    ref_attn = torch.nn.MultiheadAttention(32, 4, batch_first=True, dtype=torch.float64)
    ref_attn.load_state_dict(attn.state_dict())
    x = torch.randn(2, 7, 32, dtype=torch.float64, requires_grad=True)
    calls = []
    run = attn_mod.MathBackend.run
    monkeypatch.setattr(attn_mod.MathBackend, "run",
                        lambda self, *a: calls.append(1) or run(self, *a))
    for backend in (None, "math", "chunked"):
        attn.backend = backend
        out, weights = attn(x, x, x, need_weights=False)
        ref, _ = ref_attn(x, x, x, need_weights=False)
        assert weights is None
        torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-12)
        g = torch.randn_like(out)
        got = torch.autograd.grad(out, [x, *attn.parameters()], g)
        want = torch.autograd.grad(ref, [x, *ref_attn.parameters()], g)
        for a, b in zip(got, want, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    assert len(calls) == 1  # the "math" round
    # anything else (here: attention weights requested) is nn.MultiheadAttention's own path
    out, weights = attn(x, x, x, need_weights=True)
    assert weights.shape == (2, 7, 7)
    torch.testing.assert_close(out, ref_attn(x, x, x)[0], rtol=1e-10, atol=1e-12)


def test_layer_norm_linear_gradcheck():
    """The LayerNorm+Linear node that recomputes the normalised tensor in the backward."""
    from bridgetower.kernels.fused_mlp import _LayerNormLinearFn

    f64 = torch.float64
    x = torch.randn(2, 3, 6, dtype=f64, requires_grad=True)
    lw, lb = torch.randn(6, dtype=f64, requires_grad=True), torch.randn(6, dtype=f64, requires_grad=True)
    w, b = torch.randn(5, 6, dtype=f64, requires_grad=True), torch.randn(5, dtype=f64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda x, lw, lb, w, b: _LayerNormLinearFn.apply(x, lw, lb, 1e-5, w, b), (x, lw, lb, w, b))
    # frozen parameters: only dL/dx
    assert torch.autograd.gradcheck(
        lambda x: _LayerNormLinearFn.apply(x, lw.detach(), lb.detach(), 1e-5, w.detach(), None), (x,))


@pytest.mark.parametrize("quick_gelu", [True, False])
def test_vision_block_training_path_equals_open_clip_block(quick_gelu):
    """The fused training path of our ViT block (LayerNorms fused with the next Linear,
    packed attention, activation+Linear) against an untouched open_clip block with the same
    weights, float64, output and every gradient; and the plain path (no grad) too."""
    config = _small_config(vision={"width": 64, "layers": 2, "heads": 4, "image_size": 32,
                                   "quick_gelu": quick_gelu})
    from open_clip.transformer import QuickGELU as ClipQuickGELU
    from open_clip.transformer import ResidualAttentionBlock

    block = BridgeTowerModel(config).vision_model.visual.transformer.resblocks[0].double()
    # an untouched open_clip block (nn.MultiheadAttention, plain MLP) with the same weights
    plain = ResidualAttentionBlock(64, 4, act_layer=ClipQuickGELU if quick_gelu else torch.nn.GELU,
                                   batch_first=True).double()
    plain.load_state_dict(block.state_dict())
    x = torch.randn(2, 5, 64, dtype=torch.float64, requires_grad=True)
    ref = plain(x)
    out = block(x)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-12)
    g = torch.randn_like(out)
    for a, b in zip(torch.autograd.grad(out, [x, *block.parameters()], g),
                    torch.autograd.grad(ref, [x, *plain.parameters()], g), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    with torch.no_grad():
        torch.testing.assert_close(block(x), plain(x), rtol=1e-10, atol=1e-12)
        mask = torch.zeros(5, 5, dtype=torch.float64)
        mask[:, -1] = float("-inf")  # an attention mask takes nn.MultiheadAttention's path
        torch.testing.assert_close(block(x, attn_mask=mask), plain(x, attn_mask=mask),
                                   rtol=1e-10, atol=1e-12)


def test_vision_tower_is_open_clip_with_ln_post():
    model = BridgeTowerModel(_small_config()).eval()
    visual = model.vision_model.visual
    px = torch.randn(2, 3, 32, 32)
    top = model.encode_image(px)[-1]
    with torch.no_grad():
        ref = visual.ln_post(visual.transformer(visual._embeds(px)))  # open_clip's own path
    torch.testing.assert_close(top, ref)
    # other image sizes: bicubic position resize (64 px = 4x4 patches from a 2x2 table)
    assert model.encode_image(torch.randn(1, 3, 64, 48))[0].shape == (1, 1 + 4 * 3, 64)


def test_ln_separate_normalises_each_tapped_layer_with_its_own_layernorm():
    model = BridgeTowerModel(_small_config(vision={"width": 64, "layers": 3, "heads": 2, "image_size": 32,
                                                   "ln_separate": True})).eval()
    enc = model.vision_model
    with torch.no_grad():
        for ln in enc.ln_separate:
            ln.weight.normal_()
            ln.bias.normal_()
    px = torch.randn(2, 3, 32, 32)
    outs = model.encode_image(px)
    with torch.no_grad():
        x = enc.visual._embeds(px)
        blocks = [x := b(x) for b in enc.visual.transformer.resblocks]
    for i, out in enumerate(outs):  # tapped layers 1 and 2 of 0..2
        torch.testing.assert_close(out, enc.ln_separate[i + 1](blocks[i + 1]))


@pytest.mark.parametrize("backend", [None, "math", "chunked", "sdpa"])
def test_text_tower_equals_eager_transformers_model(backend):
    """The text tower runs our attention dispatcher (the registered "bridgetower"
    implementation) and equals transformers' own eager attention with the same weights."""
    from bridgetower.kernels.attention_backends import api

    model = BridgeTowerModel(_small_config(attn_backend=backend)).eval()
    ids, mask, _ = _inputs()
    calls = []
    orig = api.select_attention_backend

    def spy(call, forced=None):
        calls.append(forced)
        return orig(call, forced)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(api, "select_attention_backend", spy)
        ours = model.encode_text(ids, mask)
    assert len(calls) == model.config.text.num_layers and set(calls) == {backend}
    model.text_model.model.set_attn_implementation("eager")
    with torch.no_grad():
        ref = model.text_model.model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
    for a, b in zip(ours, ref[-2:], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_quick_gelu_gradient_float64():
    x = torch.randn(40, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(QuickGELU(), (x,))
    y = QuickGELU()(x)
    torch.testing.assert_close(y, x * torch.sigmoid(1.702 * x))


def test_patch_mask_from_pixel_mask():
    assert patch_mask_from_pixel_mask(torch.ones(2, 32, 32, dtype=torch.long), 16) is None
    pm = torch.zeros(2, 32, 48, dtype=torch.long)
    pm[0] = 1
    pm[1, :32, :20] = 1  # columns 0..19: patches in grid columns 0 and 1 are (partly) real
    mask = patch_mask_from_pixel_mask(pm, 16)
    expected = torch.tensor([[1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 1, 1, 0]], dtype=torch.bool)
    assert torch.equal(mask, expected)
    model = BridgeTowerModel(_small_config()).eval()
    ids, mask_t, _ = _inputs(b=2)
    px = torch.randn(2, 3, 32, 48)
    ref = model.fuse(model.encode_text(ids, mask_t), model.encode_image(px), mask_t, expected)
    unmasked = model.fuse(model.encode_text(ids, mask_t), model.encode_image(px), mask_t)
    # the option per call, and as the model's setting
    torch.testing.assert_close(model(ids, mask_t, px, pm, mask_image_padding=True).pooler_output, ref.pooler_output)
    torch.testing.assert_close(model(ids, mask_t, px, pm).pooler_output, unmasked.pooler_output)  # default: off
    model.set_image_padding_mask(True)
    torch.testing.assert_close(model(ids, mask_t, px, pm).pooler_output, ref.pooler_output)
    torch.testing.assert_close(model(ids, mask_t, px, pm, mask_image_padding=False).pooler_output,
                               unmasked.pooler_output)
    # sizes that are not a multiple of the patch: the pixels past the last whole patch are ignored
    ragged = torch.zeros(2, 40, 50, dtype=torch.long)
    ragged[:, :32, :48] = pm
    assert torch.equal(patch_mask_from_pixel_mask(ragged, 16), expected)


def test_bad_inputs_raise_clear_errors():
    model = BridgeTowerModel(_small_config())
    ids, mask, px = _inputs()
    with pytest.raises(ValueError, match="batch sizes differ"):
        model(ids, mask, px[:2])
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        model(ids, mask, px[:, :2])
    with pytest.raises(ValueError, match="integer"):
        model(ids.float(), mask, px)
    with pytest.raises(ValueError, match="attention_mask"):
        model(ids, mask[:, :4], px)
    with pytest.raises(ValueError, match="smaller than one patch"):
        model(ids, mask, torch.randn(3, 3, 12, 32))
    with pytest.raises(ValueError, match="needs pixel_values"):
        model(ids, mask)
    with pytest.raises(ValueError, match="one per cross layer"):
        model.fuse(model.encode_text(ids, mask)[:1], model.encode_image(px), mask)
    with pytest.raises(TypeError, match="BridgeTowerConfig"):
        BridgeTowerModel({"fusion": {}})


@pytest.mark.parametrize("checkpointing", [False, True])
def test_pooled_only_is_exact_for_the_pooler_and_its_gradients(checkpointing):
    config = _small_config(gradient_checkpointing=checkpointing)
    assert config.fusion.dropout == config.fusion.attn_dropout == 0.0  # the tiny config: no dropout
    model = BridgeTowerModel(config).train()
    ids, mask, px = _inputs()
    grads = []
    for pooled_only in (False, True):
        model.zero_grad()
        out = model(ids, mask, px, pooled_only=pooled_only, output_hidden_states=True)
        out.pooler_output.square().sum().backward()
        grads.append((out, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    (full, g_full), (cls, g_cls) = grads
    assert cls.text_features.shape == (3, 1, 32) and cls.image_features.shape == (3, 1, 32)
    torch.testing.assert_close(cls.pooler_output, full.pooler_output, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(cls.cross_hidden_states[0][1], full.cross_hidden_states[0][1])
    assert g_full.keys() == g_cls.keys()
    for name in g_full:
        torch.testing.assert_close(g_cls[name], g_full[name], rtol=1e-4, atol=1e-6, msg=name)


def test_pretraining_model_runs_under_bf16_autocast():
    # bf16 Linear outputs meet float32 residual streams in the fused add+LayerNorm
    model = create_model("bridgetower-tiny", task="pretraining")
    ids = torch.randint(5, 20, (2, 8))
    pixels = torch.randn(2, 3, 64, 64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(ids, torch.ones_like(ids), pixels)
    reference = model(ids, torch.ones_like(ids), pixels)
    assert torch.isfinite(out.itm_logits).all()
    torch.testing.assert_close(out.itm_logits.float(), reference.itm_logits, atol=0.1, rtol=0.1)
    out.itm_logits.float().sum().backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
