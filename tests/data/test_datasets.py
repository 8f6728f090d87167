"""Pair datasets: synthetic scenes, folder + JSONL/CSV index, WebDataset shards, bad data."""

from __future__ import annotations

import csv
import io
import json
import logging
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from bridgetower.data import (
    SKIP_REASONS,
    ImageTextDataset,
    ImageTransform,
    PretrainingCollator,
    SceneITMEvalDataset,
    SkipStats,
    SyntheticSceneDataset,
    WebDatasetPairs,
    alter_scene,
    build_scene_tokenizer,
    make_scene,
    read_index,
)


@pytest.fixture(scope="module")
def tok():
    return build_scene_tokenizer()


def _png(colour=(200, 10, 10), size=(20, 12)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG")
    return buf.getvalue()


def _jpeg(size=(24, 24)) -> bytes:
    buf = io.BytesIO()
    noise = np.random.default_rng(0).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(noise).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _bad_files() -> dict[str, bytes]:
    """Names -> bytes of the broken entries; the reasons they must be counted under."""
    return {
        "trunc.jpg": _jpeg()[:300],  # truncated JPEG
        "trunc.png": _png(size=(40, 40))[:60],  # truncated PNG
        "notes.jpg": b"this is not an image at all",  # non-image with an image suffix
    }


GOOD = [
    ("red.png", "a red square"),
    ("big.jpg", "a noisy picture"),
    ("red.png", "the same red picture"),
]
BAD = [
    ("trunc.jpg", "a truncated jpeg", "unreadable_image"),
    ("trunc.png", "a truncated png", "unreadable_image"),
    ("notes.jpg", "a text file", "unreadable_image"),
    ("missing.png", "no such file", "missing_file"),
    ("red.png", "   ", "empty_caption"),
]


def _write_folder(root, fmt: str):
    (root / "red.png").write_bytes(_png())
    (root / "big.jpg").write_bytes(_jpeg())
    for name, data in _bad_files().items():
        (root / name).write_bytes(data)
    rows = [(img, cap) for img, cap in GOOD] + [(img, cap) for img, cap, _ in BAD]
    if fmt == "jsonl":
        path = root / "index.jsonl"
        lines = [json.dumps({"image": img, "caption": cap}) for img, cap in rows]
        lines.insert(2, "")  # blank lines are ignored
        lines.append(json.dumps({"image": "red.png"}))  # no caption at all
        path.write_text("\n".join(lines) + "\n")
    else:
        path = root / "index.csv"
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["caption", "image"])
            for img, cap in rows:
                w.writerow([cap, img])
            w.writerow(["", "red.png"])
    return path


def _expected_skips() -> dict[str, int]:
    out = dict.fromkeys(SKIP_REASONS, 0)
    for _, _, reason in BAD:
        out[reason] += 1
    out["empty_caption"] += 1  # the record without a caption
    return out


def test_synthetic_dataset_is_deterministic_and_encoded(tok):
    ds = SyntheticSceneDataset(
        10, seed=4, transform=ImageTransform(64), tokenizer=tok, max_length=6
    )
    a, b = ds[3], ds[3]
    assert torch.equal(a["pixel_values"], b["pixel_values"]) and a["caption"] == b["caption"]
    image, scene = make_scene(4, 3)
    assert a["scene"] == scene and a["caption"] == scene.caption and a["image_id"] == 3
    assert a["pixel_values"].shape == (3, 64, 64) and a["pixel_values"].dtype == torch.float32
    assert torch.equal(a["pixel_values"], ImageTransform(64)(image))
    assert a["input_ids"].tolist() == tok(scene.caption, truncation=True, max_length=6)["input_ids"]
    assert len(a["input_ids"]) <= 6 and a["input_ids"][-1] == tok.eos_token_id
    raw = SyntheticSceneDataset(10, seed=4)[3]
    assert isinstance(raw["image"], Image.Image) and "input_ids" not in raw
    assert SyntheticSceneDataset(10, seed=5)[3]["caption"] != a["caption"] or not torch.equal(
        SyntheticSceneDataset(10, seed=5, transform=ImageTransform(64))[3]["pixel_values"],
        a["pixel_values"],
    )
    assert ds[-1]["image_id"] == 9
    with pytest.raises(IndexError):
        ds[10]


def test_image_transform_matches_the_processor():
    from bridgetower.models import ImageProcessor

    image = Image.fromarray(np.random.default_rng(1).integers(0, 255, (50, 70, 3), dtype=np.uint8))
    proc = ImageProcessor(32)
    assert torch.equal(ImageTransform(proc)(image), proc(image)["pixel_values"][0])
    assert ImageTransform(32)(image).shape == (3, 32, 32)
    with pytest.raises(TypeError, match="int size or"):
        ImageTransform("64")


@pytest.mark.parametrize("kind", ["random", "colour", "shape", "position"])
def test_scene_itm_eval_dataset(tok, kind):
    ds = SceneITMEvalDataset(12, negatives=kind, seed=9, tokenizer=tok)
    rng_check = np.random.default_rng(0)
    for i in range(12):
        item = ds[i]
        assert item["true_caption"] == make_scene(9, i)[1].caption
        assert item["label"] == (1 if i % 2 == 0 else 0)
        if item["label"]:
            assert item["caption"] == item["true_caption"]
            continue
        assert item["caption"] != item["true_caption"]
        true_words, neg_words = item["true_caption"].split(), item["caption"].split()
        if kind in ("colour", "shape"):
            # exactly one word differs, and it is a colour / shape word
            diff = [(a, b) for a, b in zip(true_words, neg_words, strict=True) if a != b]
            assert len(true_words) == len(neg_words) and len(diff) == 1
            vocab = alter_scene(item["scene"], kind, rng_check).config
            pool = vocab.colours if kind == "colour" else vocab.shapes
            assert diff[0][0] in pool and diff[0][1] in pool
        elif kind == "position":
            # only position words change: swapped between two objects, or flipped for one
            diff = [(a, b) for a, b in zip(true_words, neg_words, strict=True) if a != b]
            assert len(true_words) == len(neg_words) and diff
            places = {"left", "right", "top", "bottom"}
            assert all(a in places and b in places for a, b in diff)
            if len(item["scene"].objects) == 2:
                assert sorted(true_words) == sorted(neg_words)
    again = SceneITMEvalDataset(12, negatives=kind, seed=9, tokenizer=tok)
    assert [again[i]["caption"] for i in range(12)] == [ds[i]["caption"] for i in range(12)]
    batch = PretrainingCollator.from_tokenizer(tok).collate(
        [
            SceneITMEvalDataset(4, negatives=kind, transform=ImageTransform(64), tokenizer=tok)[i]
            for i in range(4)
        ]
    )
    assert batch["labels"].tolist() == [1, 0, 1, 0]


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_folder_dataset_skips_and_counts_bad_samples(tmp_path, tok, fmt, caplog):
    index = _write_folder(tmp_path, fmt)
    ds = ImageTextDataset(index, transform=ImageTransform(32), tokenizer=tok)
    assert len(ds) == len(GOOD) + len(BAD) + 1
    good = [ds[i] for i in range(len(ds))]
    kept = [s for s in good if isinstance(s, dict)]
    assert [s["caption"] for s in kept] == [cap for _, cap in GOOD]
    assert [s["image_id"] for s in kept] == [img for img, _ in GOOD]
    assert all(s["pixel_values"].shape == (3, 32, 32) for s in kept)
    assert ds.stats.as_dict() == _expected_skips()
    assert "trunc.jpg" in " ".join(ds.stats.examples["unreadable_image"])
    # Through a DataLoader with workers, the counts reach the training process via the batch.
    ds2 = ImageTextDataset(index, transform=ImageTransform(32), tokenizer=tok)
    col = PretrainingCollator.from_tokenizer(tok)
    loader = torch.utils.data.DataLoader(ds2, batch_size=4, num_workers=2, collate_fn=col.collate)
    total, n = SkipStats(), 0
    for batch in loader:
        total.add_counts(batch["skipped"])
        n += batch.get("input_ids", torch.empty(0, 0)).shape[0]
    assert n == len(GOOD) and total.as_dict() == _expected_skips()
    with caplog.at_level(logging.WARNING):
        text = total.report(logging.getLogger("test"), epoch=3)
    assert text.startswith("epoch 3: skipped 6 samples") and "missing_file=1" in text
    assert any(r.levelno == logging.WARNING and r.getMessage() == text for r in caplog.records)
    # the two samples of red.png share an image_id: never a negative for each other
    batch = col([ds[0], ds[1], ds[2]], generator=torch.Generator().manual_seed(0))
    assert batch["image_ids"].tolist() == [0, 1, 0]


def test_index_reading_and_bad_inputs(tmp_path):
    (tmp_path / "a.png").write_bytes(_png())
    multi = tmp_path / "multi.jsonl"
    multi.write_text(json.dumps({"img": "a.png", "text": ["one", "two"]}) + "\n")
    assert read_index(multi, image_key="img", caption_key="text") == [
        ("a.png", "one"),
        ("a.png", "two"),
    ]
    tsv = tmp_path / "pairs.tsv"
    tsv.write_text("image\tcaption\na.png\ta caption, with a comma\n")
    assert read_index(tsv) == [("a.png", "a caption, with a comma")]

    with pytest.raises(ValueError, match="does not exist"):
        ImageTextDataset(tmp_path / "nope.jsonl")
    bad_json = tmp_path / "bad.jsonl"
    bad_json.write_text(json.dumps({"image": "a.png", "caption": "x"}) + "\n{oops\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:2: not valid JSON"):
        read_index(bad_json)
    no_image = tmp_path / "noimg.jsonl"
    no_image.write_text(json.dumps({"caption": "x"}) + "\n")
    with pytest.raises(ValueError, match="no image path under the key 'image'"):
        read_index(no_image)
    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_text("file,text\na.png,x\n")
    with pytest.raises(ValueError, match=r"no column \['image', 'caption'\]"):
        read_index(bad_csv)
    with pytest.raises(ValueError, match="cannot tell the index format"):
        read_index(_touch(tmp_path / "pairs.txt"))
    with pytest.raises(ValueError, match="format must be"):
        read_index(multi, format="parquet")
    with pytest.raises(ValueError, match="no records"):
        read_index(_touch(tmp_path / "empty.jsonl"))
    with pytest.raises(ValueError, match="max_length"):
        ImageTextDataset(multi, image_key="img", caption_key="text", max_length=2)
    with pytest.raises(ValueError, match="not a directory"):
        ImageTextDataset(multi, image_key="img", caption_key="text", root=tmp_path / "nowhere")
    with pytest.raises(ValueError, match="size must be"):
        SyntheticSceneDataset(0)
    with pytest.raises(ValueError, match="negatives must be one of"):
        SceneITMEvalDataset(4, negatives="size")


def _touch(path):
    path.write_text("")
    return path


def _write_shard(path, members: list[tuple[str, bytes]]):
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def _shards(tmp_path, n_shards=4, per_shard=3):
    """n_shards clean shards (per_shard samples each) and one shard with every kind of bad sample."""
    urls = []
    for s in range(n_shards):
        members = []
        for k in range(per_shard):
            key = f"s{s}_{k:03d}"
            members += [
                (f"{key}.png", _png((10 * s, 20 * k, 5))),
                (f"{key}.txt", f"shard {s} sample {k}".encode()),
            ]
        urls.append(str(tmp_path / f"clean-{s}.tar"))
        _write_shard(urls[-1], members)
    bad = _bad_files()
    members = [
        ("b000.jpg", bad["trunc.jpg"]),
        ("b000.txt", b"truncated jpeg"),
        ("b001.png", bad["trunc.png"]),
        ("b001.txt", b"truncated png"),
        ("b002.jpg", bad["notes.jpg"]),
        ("b002.txt", b"not an image"),
        ("b003.txt", b"no image at all"),
        ("b004.png", _png()),
        ("b004.txt", b"  \n"),
        ("b005.png", _png()),
        ("b006.jpg", _jpeg()),
        ("b006.json", json.dumps({"caption": "caption from json"}).encode()),
    ]
    bad_url = str(tmp_path / "bad.tar")
    _write_shard(bad_url, members)
    return urls, bad_url


def test_webdataset_skips_and_counts_bad_samples(tmp_path, tok, caplog):
    urls, bad_url = _shards(tmp_path, n_shards=1)
    ds = WebDatasetPairs([bad_url] + urls, transform=ImageTransform(32), tokenizer=tok)
    with caplog.at_level(logging.WARNING, logger="bridgetower.data.stats"):
        out = list(ds)
    kept = [s for s in out if isinstance(s, dict)]
    assert [s["caption"] for s in kept] == ["caption from json"] + [
        f"shard 0 sample {k}" for k in range(3)
    ]
    assert all(s["pixel_values"].shape == (3, 32, 32) and s["input_ids"][0] == 0 for s in kept)
    expected = dict.fromkeys(SKIP_REASONS, 0) | {
        "unreadable_image": 3,
        "bad_record": 1,
        "empty_caption": 2,
    }
    assert ds.stats.as_dict() == expected
    assert any("skipped 6 samples" in r.getMessage() for r in caplog.records)
    batch = PretrainingCollator.from_tokenizer(tok).collate(out)
    assert batch["input_ids"].shape[0] == 4
    assert dict(zip(SKIP_REASONS, batch["skipped"].tolist(), strict=True)) == expected


def test_webdataset_corrupt_tar_does_not_stop_the_run(tmp_path, tok):
    urls, _ = _shards(tmp_path, n_shards=2)
    broken = tmp_path / "broken.tar"
    broken.write_bytes(open(urls[0], "rb").read()[:700])  # cut inside the first member
    missing = str(tmp_path / "does-not-exist.tar")
    ds = WebDatasetPairs([str(broken), missing, urls[1]], tokenizer=tok)
    kept = [s for s in ds if isinstance(s, dict)]
    assert [s["caption"] for s in kept] == [f"shard 1 sample {k}" for k in range(3)]
    assert ds.stats.counts["bad_record"] >= 1 and ds.stats.counts["missing_file"] == 1


def test_webdataset_splits_shards_across_ranks_and_workers(tmp_path, tok):
    urls, _ = _shards(tmp_path, n_shards=4, per_shard=2)
    seen = []
    for rank in range(2):
        ds = WebDatasetPairs(urls, tokenizer=tok, rank=rank, world_size=2)
        seen.append(sorted(s["caption"] for s in ds))
    assert not set(seen[0]) & set(seen[1])
    assert sorted(seen[0] + seen[1]) == sorted(
        f"shard {s} sample {k}" for s in range(4) for k in range(2)
    )
    # shard shuffling is per epoch and identical on every rank
    ds = WebDatasetPairs(urls, shuffle_shards=True, seed=3)
    orders = []
    for epoch in range(3):
        ds.set_epoch(epoch)
        orders.append(ds.shards_for(0, 1))
        parts = [ds.shards_for(r, 2, w, 2) for r in range(2) for w in range(2)]
        assert sorted(sum(parts, [])) == sorted(urls)
    assert orders[0] != orders[1] or orders[1] != orders[2]
    # the sample shuffle buffer is seeded by (seed, epoch): reproducible, a new order per epoch
    buf = WebDatasetPairs(urls, shuffle_buffer=8, seed=1)
    first = [s["caption"] for s in buf]
    assert [s["caption"] for s in buf] == first
    assert sorted(first) == sorted(seen[0] + seen[1])
    buf.set_epoch(1)
    assert [s["caption"] for s in buf] != first
    # DataLoader workers read disjoint shards
    col = PretrainingCollator.from_tokenizer(tok)
    ds = WebDatasetPairs(urls, transform=ImageTransform(32), tokenizer=tok, rank=0, world_size=1)
    loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=2, collate_fn=col.collate)
    ids = [b["input_ids"].shape[0] for b in loader]
    assert sum(ids) == 8


def test_webdataset_bad_inputs():
    with pytest.raises(ValueError, match="no shard"):
        WebDatasetPairs([])
    with pytest.raises(TypeError, match="urls must be"):
        WebDatasetPairs(3)
    with pytest.raises(ValueError, match="both rank and world_size"):
        WebDatasetPairs("a.tar", rank=0)
    with pytest.raises(ValueError, match="0 <= rank < world_size"):
        WebDatasetPairs("a.tar", rank=2, world_size=2)
    assert len(WebDatasetPairs("x-{000..009}.tar").urls) == 10
