"""bfloat16 as a first-class dtype (issue 16): weights converted once by ``from_pretrained``,
logits and embeddings close to float32, LayerNorm statistics in float32, and the pair fusion
that shares the first cross layer's self-attention between the pairs of one image or text."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import transformers
from hf_reference import batch, hf_config, perturbed  # tests/models/hf_reference.py
from torch.utils._python_dispatch import TorchDispatchMode

from bridgetower.kernels import bridge_norm
from bridgetower.models import (
    BridgeTowerForContrastiveLearning,
    BridgeTowerForImageAndTextRetrieval,
    create_model,
)


@pytest.fixture(scope="module")
def hf_itm():
    return perturbed(transformers.BridgeTowerForImageAndTextRetrieval, hf_config())


def _floating(model):
    return {p.dtype for p in model.parameters() if p.is_floating_point()}


def test_from_pretrained_converts_the_weights_once(hf_itm):
    ours = BridgeTowerForImageAndTextRetrieval.from_pretrained(hf_itm, dtype=torch.bfloat16).eval()
    assert _floating(ours) == {torch.bfloat16}
    assert ours.dtype == torch.bfloat16
    # the name works too, and so does create_model's pretrained path
    by_name = create_model("bridgetower-tiny", hf_itm, task="itm", dtype="bfloat16")
    assert _floating(by_name) == {torch.bfloat16}
    # no autocast and no weight casts per call: no operator of a forward copies a weight
    # matrix (the LayerNorms read their affine vectors in float32: a copy of D values each)
    params = {p.data_ptr() for p in ours.parameters() if p.dim() > 1}
    seen = []

    class Spy(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func in (torch.ops.aten._to_copy.default, torch.ops.aten.copy_.default):
                seen.extend(str(func) for a in args if isinstance(a, torch.Tensor) and a.data_ptr() in params)
            return func(*args, **(kwargs or {}))

    ids, mask, px = batch(b=3)
    with torch.no_grad(), Spy():
        logits = ours(ids, mask, px).logits
    assert logits.dtype == torch.bfloat16 and not seen, seen


def test_bf16_logits_within_0_1_of_float32(hf_itm):
    f32 = BridgeTowerForImageAndTextRetrieval.from_pretrained(hf_itm).eval()
    bf16 = BridgeTowerForImageAndTextRetrieval.from_pretrained(hf_itm, dtype=torch.bfloat16).eval()
    ids, mask, px = batch(b=4)
    with torch.no_grad():
        ref = hf_itm(input_ids=ids, attention_mask=mask, pixel_values=px).logits
        a, b = f32(ids, mask, px).logits, bf16(ids, mask, px).logits.float()
        scores = bf16.score(px[:2], ids, mask).float()
        score_ref = f32.score(px[:2], ids, mask)
    assert torch.allclose(a, ref, atol=1e-4)  # float32: the transformers model
    assert ref.abs().max() > 0.3  # logits that a 0.1 bound can tell apart
    assert (b - ref).abs().max() < 0.1
    assert (scores - score_ref).abs().max() < 0.1


def test_bf16_embeddings_cosine_to_float32():
    hf = perturbed(transformers.BridgeTowerForContrastiveLearning, hf_config())
    f32 = BridgeTowerForContrastiveLearning.from_pretrained(hf).eval()
    bf16 = BridgeTowerForContrastiveLearning.from_pretrained(hf, dtype=torch.bfloat16).eval()
    ids, mask, px = batch(b=4)
    with torch.no_grad():
        for name, args in (("embed_text", (ids, mask)), ("embed_image", (px,)), ("embed_pair", (ids, mask, px))):
            want, got = getattr(f32, name)(*args), getattr(bf16, name)(*args)
            assert got.dtype == torch.bfloat16, name
            cos = F.cosine_similarity(got.double(), want.double(), dim=-1).min().item()
            assert cos >= 0.999, (name, cos)


def test_bf16_layer_norm_statistics_in_float32():
    """A bfloat16 LayerNorm(x + r) equals the float64 result rounded once to bfloat16 (up to
    one rounding of the affine step): the mean and variance are not accumulated in bfloat16."""
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(64, 768, generator=g) * 3 + 40).bfloat16()  # a large mean: bf16 sums would lose it
    r = torch.randn(64, 768, generator=g).bfloat16()
    w = (1 + 0.1 * torch.randn(768, generator=g)).bfloat16()
    b = (0.1 * torch.randn(768, generator=g)).bfloat16()
    got = bridge_norm(x, r, w, b, mode="add", eps=1e-5)
    s = x.double() + r.double()
    want = F.layer_norm(s, (768,), w.double(), b.double(), 1e-5)
    assert got.dtype == torch.bfloat16
    assert (got.double() - want).abs().max() < 2 * 2**-8 * want.abs().max()


@pytest.mark.parametrize("task", ["itm", "base"])
def test_fuse_pairs_shares_the_first_self_attention_exactly(task):
    """fuse_pairs (first-layer self-attention per distinct image/text, then gathered) equals
    fusing every pair from gathered states, in float64, with padded texts."""
    torch.manual_seed(0)
    model = create_model("bridgetower-tiny", task=task, dtype=torch.float64).eval()
    bt = model.bridgetower if task != "base" else model
    n_img, n_txt = 2, 3
    px = torch.randn(n_img, 3, 64, 64, dtype=torch.float64)
    ids = torch.randint(5, 60, (n_txt, 7))
    mask = torch.ones(n_txt, 7, dtype=torch.long)
    mask[1, 4:] = 0
    ti = torch.tensor([0, 1, 2, 0, 1, 2, 2])
    ii = torch.tensor([0, 0, 0, 1, 1, 1, 0])
    with torch.no_grad():
        ts, vs = bt.encode_text(ids, mask), bt.encode_image(px)
        for pooled in (False, True):
            got = bt.fuse_pairs(ts, vs, mask, ti, ii, pooled_only=pooled)
            want = bt.fuse([t[ti] for t in ts], [v[ii] for v in vs], mask[ti], pooled_only=pooled)
            for name in ("pooler_output", "text_features", "image_features"):
                assert torch.allclose(getattr(got, name), getattr(want, name), atol=1e-12, rtol=0), name
            assert all(torch.equal(a, b[ti]) for a, b in zip(got.text_hidden_states, ts, strict=True))


def test_fuse_pairs_gradients_and_dropout_fall_back_to_gathering():
    """In training with dropout the pairs draw their own masks (the inputs are gathered first);
    without dropout the shared path's gradients equal the gathered path's."""
    torch.manual_seed(0)
    bt = create_model("bridgetower-tiny", dtype=torch.float64)
    px = torch.randn(1, 3, 64, 64, dtype=torch.float64)
    ids = torch.randint(5, 60, (3, 6))
    ti, ii = torch.arange(3), torch.zeros(3, dtype=torch.long)
    bt.train()
    grads = []
    for shared in (True, False):
        bt.zero_grad()
        ts, vs = bt.encode_text(ids), bt.encode_image(px)
        out = (bt.fuse_pairs(ts, vs, None, ti, ii) if shared
               else bt.fuse(ts, [v[ii] for v in vs], None))
        out.pooler_output.square().sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in bt.fusion.parameters() if p.grad is not None]))
    assert torch.allclose(grads[0], grads[1], atol=1e-10)
    layer = bt.fusion.image_layers[0]
    layer.dropout = 0.5
    assert layer.stochastic
    calls = []
    layer.register_forward_hook(lambda *a: calls.append(1))
    ts, vs = bt.encode_text(ids), bt.encode_image(px)
    bt.fuse_pairs(ts, vs, None, ti, ii)
    assert calls  # the whole layer ran per pair (forward), not self_block + cross_block


@pytest.mark.parametrize("grad", [False, True])
def test_bf16_sdpa_attention_against_float64(grad):
    """The sdpa backend in bfloat16 (SDPA's softmax is float32 inside), with a padding mask
    and a fully masked row, against float64."""
    from bridgetower.kernels import attention

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(3, 4, 9, 16, generator=g, dtype=torch.float64) for _ in range(3))
    keep = torch.ones(3, 9, dtype=torch.bool)
    keep[1, 5:] = False
    keep[2] = False  # no key at all: a zero output row
    want = attention(q, k, v, key_padding_mask=keep, backend="math")
    qb, kb, vb = (t.bfloat16().requires_grad_(grad) for t in (q, k, v))
    with torch.set_grad_enabled(grad):
        got = attention(qb, kb, vb, key_padding_mask=keep, backend="sdpa")
    assert got.dtype == torch.bfloat16
    assert (got.double() - want).abs().max() < 0.03
    assert torch.equal(got[2].float(), torch.zeros_like(got[2].float()))
