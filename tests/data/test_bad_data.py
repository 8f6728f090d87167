"""Bad data never stops a run and is always counted: captions that are not UTF-8 in JSONL and
CSV indexes, truncated WebDataset shards (every lost sample, wherever the cut falls), remote
shard URLs only on request, batches in which every sample was skipped."""

from __future__ import annotations

import gzip
import io
import logging
import tarfile

import pytest
import torch
from PIL import Image

from bridgetower.data import SKIP_REASONS, ImageTextDataset, Skipped, WebDatasetPairs, read_index
from bridgetower.data.downstream import IRTRCollator
from bridgetower.data.shards import iter_shard, sample_key


def _png(colour=(200, 10, 10)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_captions_that_are_not_utf8_are_skipped_counted_and_located(tmp_path, fmt, caplog):
    (tmp_path / "a.png").write_bytes(_png())
    good, bad = b"a red square", b"caf\xe9 au lait"  # latin-1, not UTF-8
    if fmt == "jsonl":
        rows = [b'{"image": "a.png", "caption": "%s"}' % c for c in (good, bad, good, bad)]
        rows.insert(3, b'{"image": "a.png", "caption": ["%s", "%s"]}' % (good, bad))
    else:
        rows = [b"image,caption"] + [b"a.png,%s" % c for c in (good, bad, good)]
    index = tmp_path / f"index.{fmt}"
    index.write_bytes(b"\n".join(rows) + b"\n")
    with caplog.at_level(logging.WARNING):
        records = read_index(index)
    bad_lines = [2, 4, 5] if fmt == "jsonl" else [3]
    assert [isinstance(c, Skipped) for _, c in records] == (
        [False, True, False, False, True, True] if fmt == "jsonl" else [False, True, False])
    assert f"{index}: {len(bad_lines)} record(s) are not valid UTF-8" in caplog.text
    assert f"line {', '.join(map(str, bad_lines))}" in caplog.text
    ds = ImageTextDataset(index)
    out = [ds[i] for i in range(len(ds))]
    assert sum(isinstance(s, dict) for s in out) == len(records) - len(bad_lines)
    assert ds.stats.as_dict()["bad_record"] == len(bad_lines)
    assert f"{index}:{bad_lines[0]} (not valid UTF-8)" in ds.stats.examples["bad_record"][0]


def _members(n=5):
    out = []
    for i in range(n):
        out += [(f"{i:06d}.png", _png((40 * i, 10, 10))), (f"{i:06d}.txt", f"caption {i}".encode())]
    return out


def _tar_bytes(members) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _layout(data: bytes):
    """Per sample key: (offset of its first header, end of its last member's data)."""
    spans: dict[str, list[int]] = {}
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        for m in tf:
            key = sample_key(m.name)[0]
            span = spans.setdefault(key, [m.offset, 0])
            span[1] = m.offset_data + m.size
    return spans


def _cuts(spans):
    """Cut points of every kind: inside a header before / after its name field, inside data,
    inside the padding, at a member boundary, and only the closing zero blocks missing."""
    (s1, e1), (s2, _) = spans["000001"], spans["000002"]
    end = max(e for _, e in spans.values())
    return {"header start": s2 + 40, "header after name": s2 + 300, "first data": s1 + 512 + 7,
            "caption header": e1 - 70, "padding": e1 + 5, "member boundary": s2, "end blocks": end + 600,
            "second sample data": spans["000002"][1] - 3}


def test_a_truncated_shard_counts_exactly_the_samples_it_lost(tmp_path):
    data = _tar_bytes(_members())
    spans = _layout(data)
    for what, cut in _cuts(spans).items():
        path = tmp_path / "cut.tar"
        path.write_bytes(data[:cut])
        lost: list[str] = []
        out = list(iter_shard(str(path), lambda r, s, lost=lost: lost.append(s) or Skipped(r, s)))
        kept = [o["__key__"] for o in out if isinstance(o, dict) and not isinstance(o, Skipped)]
        assert kept == [k for k, (_, e) in spans.items() if e <= cut], what
        assert len(lost) == sum(s < cut < e for s, e in spans.values()), (what, lost)
        assert all(isinstance(o, Skipped) for o in out if not isinstance(o, dict)), what
    # the same through the dataset, in a DataLoader with two workers: one count per lost sample
    path.write_bytes(data[: _cuts(spans)["first data"]])
    whole = tmp_path / "whole.tar"
    whole.write_bytes(data)
    ds = WebDatasetPairs([str(path), str(whole)])
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2)
    items = list(loader)
    assert sum(isinstance(s, Skipped) and s.reason == "bad_record" for s in items) == 1
    assert sum(isinstance(s, dict) for s in items) == 1 + 5


def test_a_truncated_compressed_shard_counts_one_lost_sample(tmp_path):
    packed = gzip.compress(_tar_bytes(_members()))
    path = tmp_path / "cut.tar"
    path.write_bytes(packed[: len(packed) * 7 // 10])
    out = list(WebDatasetPairs(str(path)))
    assert sum(isinstance(s, Skipped) for s in out) == 1 and any(isinstance(s, dict) for s in out)


def test_remote_shard_urls_only_when_allowed(tmp_path):
    shard = tmp_path / "s.tar"
    shard.write_bytes(_tar_bytes(_members(2)))
    for url in (f"pipe:cat {shard}", "https://example.com/s-{000..002}.tar", "s3://bucket/s.tar"):
        with pytest.raises(ValueError, match="allow_remote=True"):
            WebDatasetPairs(url)
    assert len(list(WebDatasetPairs(f"pipe:cat {shard}", allow_remote=True))) == 2
    assert len(list(WebDatasetPairs(f"file:{shard}"))) == 2  # a local file: URL needs nothing


def test_a_batch_of_only_skipped_samples_holds_only_the_counts():
    batch = IRTRCollator(1)([Skipped("missing_file"), None, Skipped("unreadable_image")])
    assert set(batch) == {"skipped"}
    assert dict(zip(SKIP_REASONS, batch["skipped"].tolist(), strict=True)) == {
        "missing_file": 1, "unreadable_image": 1, "empty_caption": 0, "bad_record": 1}
