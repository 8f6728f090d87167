"""Retrieval evaluation: recall@k on hand-built matrices; ITC top-k + ITM re-ranking."""

from __future__ import annotations

import math

import pytest
import torch

from bridgetower.models import BridgeTowerForIRTR, BridgeTowerForPretraining, get_config
from bridgetower.training.retrieval import evaluate_retrieval, recall_at_k, retrieval_scores


def _ranked_matrix(ranks: list[int]) -> torch.Tensor:
    """12 x 12 scores, text t <-> image t, where the true pair of image i sits at place
    ``ranks[i]`` of its row AND of its column.

    Off the diagonal ``S[i, t] = -((i - t) mod 12)``: each row and each column holds the values
    -1 ... -11 once.  The diagonal ``S[i, i] = 0.5 - (ranks[i] + 1)`` is beaten by exactly the
    ``ranks[i]`` off-diagonal values -1 ... -ranks[i] of its row and of its column.
    """
    n = len(ranks)
    i = torch.arange(n).unsqueeze(1)
    t = torch.arange(n).unsqueeze(0)
    s = -((i - t) % n).double()
    s[range(n), range(n)] = torch.tensor([0.5 - (r + 1) for r in ranks], dtype=torch.float64)
    return s


def test_recall_at_1_5_10_on_a_hand_built_matrix():
    ranks = [0, 0, 1, 2, 4, 5, 7, 9, 10, 11, 3, 6]
    s = _ranked_matrix(ranks)
    out = recall_at_k(s, torch.arange(12))
    # R@1: ranks 0, 0 -> 2/12; R@5: 0, 0, 1, 2, 4, 3 -> 6/12; R@10: all but 10 and 11 -> 10/12
    expect = {"r1": 2 / 12, "r5": 6 / 12, "r10": 10 / 12}
    for d in ("i2t", "t2i"):
        for k, v in expect.items():
            assert out[f"{d}_{k}"] == pytest.approx(v, abs=1e-12), (d, k)
    assert out["r_mean"] == pytest.approx((2 + 6 + 10) / 36)


def test_recall_with_several_texts_per_image():
    s = torch.tensor(
        [
            [0.9, 0.1, 0.8, 0.3, 0.2],  # image 0 owns texts 0, 1: text 0 is first -> place 0
            [0.7, 0.6, 0.5, 0.9, 0.1],  # image 1 owns text 2 (0.5): 0.9, 0.7, 0.6 above -> place 3
            [0.2, 0.4, 0.3, 0.1, 0.35],  # image 2 owns texts 3, 4: 0.35 below 0.4 only -> place 1
        ]
    )
    text_image = [0, 0, 1, 2, 2]
    out = recall_at_k(s, text_image, ks=(1, 2, 3, 4))
    # i2t places [0, 3, 1]; t2i (columns): text0 -> 0, text1 -> 2, text2 -> 1, text3 -> 2, text4 -> 0
    assert [out[f"i2t_r{k}"] for k in (1, 2, 3, 4)] == pytest.approx([1 / 3, 2 / 3, 2 / 3, 1.0])
    assert [out[f"t2i_r{k}"] for k in (1, 2, 3, 4)] == pytest.approx([2 / 5, 3 / 5, 1.0, 1.0])


def test_recall_ties_and_non_candidates():
    # ties go to the lower index: image 1's text 1 ties with text 0 and is second
    out = recall_at_k(torch.zeros(2, 2), [0, 1], ks=(1, 2))
    assert out["i2t_r1"] == 0.5 and out["i2t_r2"] == 1.0 and out["t2i_r1"] == 0.5
    # a true pair scored -inf (not a candidate) is never found, whatever k
    s = torch.tensor([[1.0, 0.0], [-math.inf, -math.inf]])
    out = recall_at_k(s, [0, 1], ks=(1, 5), t2i_scores=torch.tensor([[1.0, -math.inf], [0.0, -math.inf]]))
    assert out["i2t_r5"] == 0.5 and out["t2i_r5"] == 0.5


def test_recall_rejects_bad_input():
    with pytest.raises(ValueError, match="text_image must have shape"):
        recall_at_k(torch.zeros(2, 3), [0, 1])
    with pytest.raises(ValueError, match="have no text"):
        recall_at_k(torch.zeros(3, 2), [0, 1])
    with pytest.raises(ValueError, match="image indices"):
        recall_at_k(torch.zeros(2, 2), [0, 5])
    with pytest.raises(ValueError, match="ks"):
        recall_at_k(torch.zeros(2, 2), [0, 1], ks=(0,))


# ------------------------------------------------------------------------- with a model


@pytest.fixture(scope="module")
def tiny_config():
    return get_config("bridgetower-tiny").replace(
        **{"text.vocab_size": 30, "vision.layers": 2, "text.num_layers": 2, "itc_dim": 16}
    )


@pytest.fixture(scope="module")
def pairs():
    g = torch.Generator().manual_seed(0)
    px = torch.randn(5, 3, 64, 64, generator=g)
    ids = torch.randint(5, 30, (7, 6), generator=g)
    ids[:, 0], ids[:, -1] = 0, 2
    mask = torch.ones_like(ids)
    mask[3, 4:] = 0
    ids[3, 4:] = 1
    return px, ids, mask


def _count_rows(monkeypatch, model):
    counts = {"image": 0, "text": 0}
    vis, txt = model.bridgetower.vision_model, model.bridgetower.text_model
    vis_fwd, txt_fwd = vis.forward, txt.forward

    def v(x, *a, **kw):
        counts["image"] += x.shape[0]
        return vis_fwd(x, *a, **kw)

    def t(x, *a, **kw):
        counts["text"] += x.shape[0]
        return txt_fwd(x, *a, **kw)

    monkeypatch.setattr(vis, "forward", v)
    monkeypatch.setattr(txt, "forward", t)
    return counts


def test_full_candidates_equal_brute_force_itm(tiny_config, pairs, monkeypatch):
    torch.manual_seed(1)
    model = BridgeTowerForPretraining(tiny_config).eval()
    px, ids, mask = pairs
    brute = model.score(px, ids, mask)  # (5, 7) ITM match logits, pair by pair
    counts = _count_rows(monkeypatch, model)
    rs = retrieval_scores(model, px, ids, mask, k=7, batch_size=2, fusion_batch_size=4)
    assert counts == {"image": 5, "text": 7}  # each image and each text encoded exactly once
    assert rs.num_fused == 35 and rs.k_i2t == 7 and rs.k_t2i == 5
    torch.testing.assert_close(rs.i2t, brute, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(rs.t2i, brute, rtol=1e-5, atol=1e-5)
    text_image = [0, 1, 2, 3, 4, 0, 2]
    assert recall_at_k(rs.i2t, text_image, t2i_scores=rs.t2i) == recall_at_k(brute, text_image)


def test_itc_top_k_candidates_are_reranked_by_itm(tiny_config, pairs, monkeypatch):
    torch.manual_seed(2)
    model = BridgeTowerForPretraining(tiny_config).eval()
    px, ids, mask = pairs
    brute = model.score(px, ids, mask)
    with torch.no_grad():
        bt = model.bridgetower
        t_emb, _ = model.itc(bt.encode_text(ids, mask)[-1][:, 0], bt.encode_image(px[:1])[-1][:, 0].expand(7, -1))
        _, i_emb = model.itc(bt.encode_text(ids[:5], mask[:5])[-1][:, 0], bt.encode_image(px)[-1][:, 0])
    itc = i_emb @ t_emb.t()  # (5, 7), through the head's own forward
    counts = _count_rows(monkeypatch, model)
    rs = retrieval_scores(model, px, ids, mask, k=2)
    assert counts == {"image": 5, "text": 7}
    torch.testing.assert_close(rs.itc, itc, rtol=1e-5, atol=1e-6)
    i2t_cand = torch.zeros(5, 7, dtype=torch.bool)
    i2t_cand.scatter_(1, itc.topk(2, dim=1).indices, True)
    t2i_cand = torch.zeros(5, 7, dtype=torch.bool)
    t2i_cand.scatter_(0, itc.topk(2, dim=0).indices, True)
    assert torch.equal(torch.isfinite(rs.i2t), i2t_cand) and torch.equal(torch.isfinite(rs.t2i), t2i_cand)
    torch.testing.assert_close(rs.i2t[i2t_cand], brute[i2t_cand], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(rs.t2i[t2i_cand], brute[t2i_cand], rtol=1e-5, atol=1e-5)
    assert rs.num_fused == int((i2t_cand | t2i_cand).sum())  # a pair in both sets is fused once
    out = evaluate_retrieval(model, px, ids, mask, [0, 1, 2, 3, 4, 0, 2], k=2)
    assert {"i2t_r1", "t2i_r10", "itc_i2t_r1", "num_fused"} <= set(out)


def test_irtr_model_ranks_every_pair_with_its_head(tiny_config, pairs):
    torch.manual_seed(3)
    model = BridgeTowerForIRTR(tiny_config).eval()
    px, ids, mask = pairs
    rs = retrieval_scores(model, px, ids, mask, k=2)  # no ITC head: all pairs
    assert rs.itc is None and rs.num_fused == 35
    with torch.no_grad():  # the model's own forward: every image against the 7 texts as one group
        ref = model(ids.unsqueeze(0).expand(5, -1, -1), mask.unsqueeze(0).expand(5, -1, -1), px).logits
    torch.testing.assert_close(rs.i2t, ref, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="ITC head"):
        retrieval_scores(model, px, ids, mask, candidates="itc")
    with pytest.raises(ValueError, match="candidates"):
        retrieval_scores(model, px, ids, mask, candidates="some")
    with pytest.raises(ValueError, match="attention_mask"):
        retrieval_scores(model, px, ids, mask[:, :3])
