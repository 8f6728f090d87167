"""The index: FAISS flat vs IVF/PQ against exact numpy search, sources, resumable builds,
export, bad inputs (a randomly initialised tiny model is enough here)."""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pytest
import torch

pytest.importorskip("faiss", reason="the search extra (faiss-cpu) is not installed")

from bridgetower.data.scenes import build_scene_tokenizer, make_scene  # noqa: E402
from bridgetower.models import create_model  # noqa: E402
from bridgetower.search import (  # noqa: E402
    SearchIndex,
    build_faiss_index,
    build_index,
    contact_sheet,
    export_arrays,
    iter_records,
    search,
)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    tok = build_scene_tokenizer()
    m = create_model("bridgetower-tiny", task="pretraining", text={"vocab_size": len(tok)}).eval()
    return m, tok


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("scenes")
    rows = []
    for i in range(10):
        image, scene = make_scene(3, i)
        image.save(root / f"s{i:02d}.png")
        rows.append({"image": f"s{i:02d}.png", "caption": scene.caption})
    return root, rows


def _unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_flat_index_is_exact():
    rng = np.random.default_rng(0)
    x = _unit(rng.standard_normal((500, 32)).astype(np.float32))
    q = _unit(rng.standard_normal((20, 32)).astype(np.float32))
    index = build_faiss_index(x)
    assert type(index).__name__ == "IndexFlatIP"
    scores, rows = index.search(q, 5)
    want = np.argsort(-(q.astype(np.float64) @ x.T.astype(np.float64)), axis=1)[:, :5]
    assert (rows == want).all()
    assert np.allclose(scores, np.take_along_axis(q @ x.T, want, 1), atol=1e-5)


def test_ivfpq_above_the_threshold_finds_the_neighbours():
    rng = np.random.default_rng(1)
    centres = rng.standard_normal((40, 64))
    x = _unit((centres[rng.integers(0, 40, 4000)] + 0.3 * rng.standard_normal((4000, 64))).astype(np.float32))
    index = build_faiss_index(x, flat_threshold=1000)
    assert type(index).__name__ == "IndexIVFPQ" and index.nprobe >= 8
    q = _unit(x[:200] + 0.05 * rng.standard_normal((200, 64)).astype(np.float32))
    _, rows = index.search(q, 10)
    exact = np.argsort(-(q @ x.T), axis=1)[:, :10]
    overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(rows, exact, strict=True)])
    assert overlap >= 0.6, overlap  # approximate, but mostly the true neighbours
    assert np.mean(rows[:, :10] == np.arange(200)[:, None], axis=0).sum() >= 0.9  # the source point is found


def test_sources_folder_jsonl_csv_and_shards(folder, tmp_path):
    root, rows = folder
    recs = list(iter_records(root))
    assert [r.id for r in recs] == [r["image"] for r in rows] and all(r.caption is None for r in recs)
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps({"image": str(root / r["image"]), "caption": r["caption"]})
                                                  + "\n" for r in rows))
    assert [r.caption for r in iter_records(tmp_path / "pairs.jsonl")] == [r["caption"] for r in rows]
    (tmp_path / "pairs.csv").write_text("image,caption\n" + "".join(f"{root / r['image']},{r['caption']}\n" for r in rows[:3]))
    assert [r.caption for r in iter_records(tmp_path / "pairs.csv")] == [r["caption"] for r in rows[:3]]
    shard = tmp_path / "shard-000.tar"
    with tarfile.open(shard, "w") as tar:
        for i, r in enumerate(rows[:4]):
            for ext, data in (("png", (root / r["image"]).read_bytes()), ("txt", r["caption"].encode())):
                info = tarfile.TarInfo(f"k{i}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    recs = list(iter_records(shard))
    assert [r.caption for r in recs] == [r["caption"] for r in rows[:4]]
    assert recs[2].path.endswith("#k2.png")


def test_build_search_export_and_resume_after_interruption(model, folder, tmp_path):
    m, tok = model
    root, rows = folder
    src = tmp_path / "src"
    src.mkdir()
    for r in rows:
        (src / r["image"]).write_bytes((root / r["image"]).read_bytes())
    (src / "broken.png").write_bytes(b"not a png")  # counted, not silently dropped
    (src / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + json.dumps(
        {"image": "broken.png", "caption": "a red circle"}) + "\n")
    want = m.embed_images([root / r["image"] for r in rows]).numpy()  # the independent reference

    full = build_index(src, tmp_path / "full", m, chunk_size=3)
    assert full["complete"] and full["count"] == 10 and full["skipped"] == {"unreadable_image": 1}
    assert full["kind"] == "flat"

    class Killed(Exception):
        pass

    def kill_after_two(done, total):
        if done >= 6:
            raise Killed

    out = tmp_path / "resumed"
    with pytest.raises(Killed):
        build_index(src, out, m, chunk_size=3, on_chunk=kill_after_two)
    manifest = json.loads((out / "manifest.json").read_text())
    assert not manifest["complete"] and manifest["next_position"] == 6 and len(manifest["chunks"]) == 2
    with pytest.raises(ValueError, match="did not finish"):
        SearchIndex.load(out)
    (out / "chunks" / "00002.npy.tmp").write_bytes(b"half-written")  # a write the kill cut short
    seen = []
    again = build_index(src, out, m, chunk_size=3, on_chunk=lambda d, t: seen.append(d))
    assert seen == [9, 11] and again["count"] == 10  # only the remaining chunks were embedded
    index = SearchIndex.load(out)
    assert np.allclose(index.embeddings, want, atol=1e-5)
    assert np.array_equal(index.embeddings, SearchIndex.load(tmp_path / "full").embeddings)
    assert [x["caption"] for x in index.metadata] == [r["caption"] for r in rows]
    with pytest.raises(ValueError, match="already holds a complete index"):
        build_index(src, out, m, chunk_size=3)
    with pytest.raises(ValueError, match="another source, model or chunk size"):
        (out / "manifest.json").write_text(json.dumps({**manifest, "chunk_size": 5}))
        build_index(src, out, m, chunk_size=3)

    # an image query finds itself first; text queries return k hits, best first
    hits = search(tmp_path / "full", root / rows[4]["image"], m, tok, k=3)
    assert hits[0].id == rows[4]["image"] and hits[0].score == pytest.approx(1.0, abs=1e-4)
    many = search(tmp_path / "full", ["a red circle", "a blue square"], m, tok, k=4, rerank=6)
    assert [len(h) for h in many] == [4, 4]
    tau = float(m.itc.effective_temperature().detach())
    fused = [h.score / tau + h.itm_score for h in many[0]]
    assert fused == sorted(fused, reverse=True)
    by_itm = search(tmp_path / "full", "a red circle", m, tok, k=6, rerank=6, rerank_by="itm")
    assert [h.itm_score for h in by_itm] == sorted((h.itm_score for h in by_itm), reverse=True)
    assert {h.id for h in by_itm} == {h.id for h in search(tmp_path / "full", "a red circle", m, tok, k=6)}
    sheet = contact_sheet(many[0], tmp_path / "sheet.png", title="a red circle")
    assert sheet.read_bytes()[:4] == b"\x89PNG"

    arrays = export_arrays(tmp_path / "full", tmp_path / "arrays.npz")
    loaded = np.load(tmp_path / "arrays.npz")
    assert np.array_equal(loaded["embeddings"], arrays["embeddings"]) and arrays["embeddings"].shape == (10, 64)
    assert list(loaded["captions"]) == [r["caption"] for r in rows]


def test_bad_inputs(model, folder, tmp_path):
    m, tok = model
    root, _ = folder
    build_index(root, tmp_path / "idx", m)
    with pytest.raises(ValueError, match="k must be a positive int"):
        search(tmp_path / "idx", "a red circle", m, tok, k=0)
    with pytest.raises(ValueError, match="rerank_by must be 'fused' or 'itm'"):
        search(tmp_path / "idx", "a red circle", m, tok, rerank=2, rerank_by="best")
    with pytest.raises(ValueError, match="rerank must be an int >= 0"):
        search(tmp_path / "idx", "a red circle", m, tok, rerank=-1)
    with pytest.raises(ValueError, match="index: .* is not an index directory"):
        search(tmp_path / "missing", "a red circle", m, tok)
    with pytest.raises(ValueError, match="text query must not be empty"):
        search(tmp_path / "idx", " ", m, tok)
    with pytest.raises(ValueError, match="non-empty list"):
        search(tmp_path / "idx", [], m, tok)
    with pytest.raises(TypeError, match="query must be a str"):
        search(tmp_path / "idx", [3], m, tok)
    other = create_model("bridgetower-tiny", task="pretraining", itc_dim=32, text={"vocab_size": len(tok)}).eval()
    with pytest.raises(ValueError, match="embeds to 32 dims but the index holds 64"):
        search(tmp_path / "idx", "a red circle", other, tok)
    with pytest.raises(ValueError, match=r"queries must be \(Q, 64\)"):
        SearchIndex.load(tmp_path / "idx").search_vectors(np.zeros((1, 8), np.float32), 3)
    (tmp_path / "idx" / "index.faiss").unlink()
    with pytest.raises(ValueError, match=r"lacks \['index.faiss'\]"):
        SearchIndex.load(tmp_path / "idx")
    with pytest.raises(ValueError, match="source .* does not exist"):
        build_index(tmp_path / "nothing", tmp_path / "x", m)
    with pytest.raises(ValueError, match="chunk_size must be a positive int"):
        build_index(root, tmp_path / "y", m, chunk_size=0)
    with pytest.raises(TypeError, match="model must have embed_images"):
        build_index(root, tmp_path / "z", torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="embeddings must be a non-empty"):
        build_faiss_index(np.zeros((0, 4), np.float32))
    with pytest.raises(ValueError, match="hits is empty"):
        contact_sheet([], tmp_path / "s.png")
