"""End to end with the small trained checkpoint (tests/data/search_model, written by
benchmarks/make_search_test_model.py from a demo run): index 300 held-out scenes, query with
their captions, recall far above chance, ITM re-ranking does not lower recall@1; the
``bridgetower index`` / ``search`` commands."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("faiss", reason="the search extra (faiss-cpu) is not installed")

from bridgetower.cli import main  # noqa: E402
from bridgetower.search import SearchIndex, build_index, search  # noqa: E402
from bridgetower.search.demo import caption_key, recall_at_k, write_scenes  # noqa: E402

SEARCH_MODEL = Path(__file__).parents[1] / "data" / "search_model"
pytestmark = pytest.mark.skipif(not (SEARCH_MODEL / "config.json").is_file(), reason="tests/data/search_model is missing")
N_SCENES, N_QUERIES = 300, 100


@pytest.fixture(scope="module")
def trained():
    from bridgetower.training.run import load_saved_model, saved_tokenizer

    return load_saved_model(SEARCH_MODEL).float().eval(), saved_tokenizer(SEARCH_MODEL)


@pytest.fixture(scope="module")
def scenes(tmp_path_factory, trained):
    root = tmp_path_factory.mktemp("search")
    rows = write_scenes(root / "scenes", N_SCENES)
    build_index(root / "scenes", root / "index", trained[0], model_name=str(SEARCH_MODEL))
    return root, rows


def test_recall_far_above_chance_and_rerank_keeps_recall_at_1(trained, scenes):
    model, tok = trained
    root, rows = scenes
    queries = sorted({r["caption"] for r in rows})[:N_QUERIES]
    relevant = [{r["image"] for r in rows if caption_key(r["caption"]) == caption_key(q)} for q in queries]
    chance10 = np.mean([10 * len(rel) / N_SCENES for rel in relevant])
    plain = recall_at_k(search(root / "index", queries, model, tok, k=10), relevant)
    reranked = recall_at_k(search(root / "index", queries, model, tok, k=10, rerank=20), relevant)
    assert plain["R@10"] >= max(0.5, 8 * chance10), (plain, chance10)
    assert plain["R@1"] >= 0.2, plain
    assert reranked["R@1"] >= plain["R@1"], (plain, reranked)


def test_cli_index_and_search(scenes, tmp_path, capsys):
    root, rows = scenes
    out = tmp_path / "idx"
    assert main(["index", str(root / "scenes"), "--out", str(out), "--checkpoint", str(SEARCH_MODEL),
                 "--chunk-size", "128", "--export", str(tmp_path / "a.npz")]) == 0
    assert f"indexed {N_SCENES} images (flat index, 64 dims)" in capsys.readouterr().out
    assert np.allclose(SearchIndex.load(out).embeddings, SearchIndex.load(root / "index").embeddings, atol=1e-6)
    assert np.load(tmp_path / "a.npz")["embeddings"].shape == (N_SCENES, 64)
    assert main(["search", str(out), "a red circle on the left", "-k", "5", "--rerank", "10", "--json",
                 "--sheet", str(tmp_path / "sheet.png")]) == 0
    result = json.loads(capsys.readouterr().out)
    assert [h["rank"] for h in result["hits"]] == [1, 2, 3, 4, 5]
    assert sum("red" in h["caption"] for h in result["hits"]) >= 4  # the demo model knows colours best
    assert (tmp_path / "sheet.png").read_bytes()[:4] == b"\x89PNG"
    assert main(["search", str(out), str(root / "scenes" / rows[0]["image"]), "-k", "3"]) == 0  # image query
    text = capsys.readouterr().out
    assert rows[0]["image"] in text.splitlines()[2] and "contact sheet:" in text
    assert main(["search", str(tmp_path / "nope"), "a red circle"]) == 2
    assert "is not an index directory" in capsys.readouterr().err
    # bfloat16 weights: the same neighbourhoods (stored as float32 unit vectors)
    assert main(["index", str(root / "scenes"), "--out", str(tmp_path / "bf16"), "--checkpoint", str(SEARCH_MODEL),
                 "--dtype", "bfloat16"]) == 0
    capsys.readouterr()
    e16, e32 = SearchIndex.load(tmp_path / "bf16").embeddings, SearchIndex.load(out).embeddings
    assert e16.dtype == np.float32 and np.min(np.sum(e16 * e32, axis=1)) > 0.98
    with pytest.raises(SystemExit):  # argparse: "-k: expected a positive integer"
        main(["search", str(out), "a red circle", "-k", "0"])
