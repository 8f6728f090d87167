"""Readers of the official pyarrow tables: layouts, samples, soft targets, skips, work split,
memory behaviour, and a few training steps from a table."""

from __future__ import annotations

import io
import tracemalloc
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image

pa = pytest.importorskip("pyarrow", reason="pyarrow is needed to read the official tables")

from bridgetower.data import (  # noqa: E402
    ARROW_SCHEMA_KINDS,
    SKIP_REASONS,
    ArrowNLVR2Dataset,
    ArrowPretrainingPairs,
    ArrowRetrievalDataset,
    ArrowSNLIVEDataset,
    ArrowVQADataset,
    ImageTransform,
    PretrainingCollator,
    Skipped,
    TaskCollator,
    arrow_schema,
    build_scene_tokenizer,
    make_scene,
    vqa_soft_targets,
    write_arrow_table,
)


def _png(seed: int, index: int) -> bytes:
    image, _ = make_scene(seed, index)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


@pytest.fixture(scope="module")
def pngs():
    return [_png(3, i) for i in range(8)]


@pytest.fixture(scope="module")
def tok():
    return build_scene_tokenizer()


def _caption_rows(pngs, n=6):
    return [
        {
            "image": pngs[i],
            "caption": [f"a red circle {i}", f"a blue square {i}"]
            + (["a green triangle"] if i % 2 else []),
            "image_id": f"COCO_{i:04d}.jpg",
            "split": "train",
        }
        for i in range(n)
    ]


# ----------------------------------------------------------------------------------------
# layouts


def test_writer_produces_the_official_layouts(tmp_path, pngs):
    rows = {
        "caption": _caption_rows(pngs, 1),
        "vg": [
            {
                "image": pngs[0],
                "caption": ["a dog"],
                "width": [3],
                "height": [4],
                "x": [1],
                "y": [2],
                "image_id": "17",
            }
        ],
        "vqa": [
            {
                "image": pngs[0],
                "questions": ["what?"],
                "answers": [["yes"]],
                "answer_labels": [[2]],
                "answer_scores": [[1.0]],
                "image_id": 9,
                "question_id": [90],
                "split": "train",
            }
        ],
        "nlvr2": [
            {
                "image_0": pngs[0],
                "image_1": pngs[1],
                "questions": ["two dogs"],
                "answers": ["True"],
                "identifier": "train-1-0",
            }
        ],
        "snli_ve": [{"image": pngs[0], "sentences": [["a man", "a person"]], "labels": [2]}],
    }
    assert set(rows) == set(ARROW_SCHEMA_KINDS)
    expected_names = {
        "caption": ["image", "caption", "image_id", "split"],
        "vg": ["image", "caption", "width", "height", "x", "y", "image_id"],
        "vqa": [
            "image",
            "questions",
            "answers",
            "answer_labels",
            "answer_scores",
            "image_id",
            "question_id",
            "split",
        ],
        "nlvr2": ["image_0", "image_1", "questions", "answers", "identifier"],
        "snli_ve": ["image", "sentences", "labels"],
    }
    for kind, r in rows.items():
        path = write_arrow_table(tmp_path / f"{kind}.arrow", r, kind)
        assert path.read_bytes()[:6] == b"ARROW1"  # IPC file format, as RecordBatchFileWriter
        with pa.memory_map(str(path)) as mm:
            table = pa.ipc.open_file(mm).read_all()
        assert table.schema.names == expected_names[kind]
        assert table.schema.equals(arrow_schema(kind))
        assert table.to_pylist() == r
    assert arrow_schema("vqa").field("answer_scores").type == pa.list_(pa.list_(pa.float64()))
    assert arrow_schema("coco").equals(arrow_schema("caption"))  # alias


def test_writer_errors(tmp_path, pngs):
    with pytest.raises(ValueError, match="schema_kind"):
        write_arrow_table(tmp_path / "x.arrow", _caption_rows(pngs, 1), "coco_captions")
    with pytest.raises(ValueError, match=r"missing \['split'\]"):
        write_arrow_table(
            tmp_path / "x.arrow", [{"image": pngs[0], "caption": ["a"], "image_id": "1"}], "caption"
        )
    with pytest.raises(ValueError, match="empty"):
        write_arrow_table(tmp_path / "x.arrow", [], "caption")
    with pytest.raises(ValueError, match=r"rows\[0\]\['caption'\] must be a list"):
        write_arrow_table(
            tmp_path / "x.arrow",
            [{"image": pngs[0], "caption": "not a list", "image_id": "1", "split": "t"}],
            "caption",
        )
    with pytest.raises(ValueError, match=r"\['answer_labels'\]\[0\] must be a list"):
        write_arrow_table(
            tmp_path / "x.arrow",
            [
                {
                    "image": pngs[0],
                    "questions": ["q"],
                    "answers": [["a"]],
                    "answer_labels": [3],
                    "answer_scores": [[1.0]],
                    "image_id": 1,
                    "question_id": [1],
                    "split": "train",
                }
            ],
            "vqa",
        )
    with pytest.raises(ValueError, match="schema"):
        write_arrow_table(
            tmp_path / "x.arrow",
            [{"image": pngs[0], "caption": ["a"], "image_id": 1.5, "split": "t"}],
            "caption",
        )
    with pytest.raises(TypeError, match="bytes or a PIL image"):
        write_arrow_table(
            tmp_path / "x.arrow",
            [{"image": "a.jpg", "caption": ["a"], "image_id": "1", "split": "t"}],
            "caption",
        )


# ----------------------------------------------------------------------------------------
# pretraining pairs and retrieval


def test_pretraining_pairs_expand_every_caption(tmp_path, pngs, tok):
    rows = _caption_rows(pngs)
    path = write_arrow_table(tmp_path / "coco.arrow", rows, "caption", rows_per_batch=4)
    ds = ArrowPretrainingPairs(path, chunk_rows=3)
    assert ds.num_rows == 6
    samples = list(ds)
    expected = [(c, r["image_id"]) for r in rows for c in r["caption"]]
    assert [(s["caption"], s["image_id"]) for s in samples] == expected
    by_id = {r["image_id"]: r["image"] for r in rows}
    for s in samples:
        assert np.array_equal(np.asarray(s["image"]), _pixels(by_id[s["image_id"]]))
    # with the transform and tokenizer of the other datasets
    transform = ImageTransform(64)
    ds = ArrowPretrainingPairs(path, transform=transform, tokenizer=tok, max_length=6)
    s = next(iter(ds))
    assert torch.equal(
        s["pixel_values"], transform(Image.open(io.BytesIO(rows[0]["image"])).convert("RGB"))
    )
    assert (
        s["input_ids"].tolist()
        == tok(rows[0]["caption"][0], truncation=True, max_length=6)["input_ids"]
    )
    assert ds.stats.total == 0


def test_dedupe_captions(tmp_path, pngs):
    rows = [
        {
            "image": pngs[0],
            "caption": ["a cat", "a dog", "a cat"],
            "image_id": "1",
            "split": "train",
        }
    ]
    path = write_arrow_table(tmp_path / "d.arrow", rows, "caption")
    assert [s["caption"] for s in ArrowPretrainingPairs(path)] == ["a cat", "a dog", "a cat"]
    assert [s["caption"] for s in ArrowPretrainingPairs(path, dedupe_captions=True)] == [
        "a cat",
        "a dog",
    ]


def test_visual_genome_tables_read_as_pretraining_pairs(tmp_path, pngs):
    rows = [
        {
            "image": pngs[1],
            "caption": ["a sign", "blue sky"],
            "width": [5, 6],
            "height": [7, 8],
            "x": [0, 1],
            "y": [2, 3],
            "image_id": "42",
        }
    ]
    path = write_arrow_table(tmp_path / "vg.arrow", rows, "vg")
    assert [(s["caption"], s["image_id"]) for s in ArrowPretrainingPairs(path)] == [
        ("a sign", "42"),
        ("blue sky", "42"),
    ]


def test_retrieval_one_sample_per_image(tmp_path, pngs, tok):
    rows = _caption_rows(pngs, 3)
    rows[1]["caption"] = ["  ", "a yellow circle"]
    rows[2]["caption"] = [""]
    path = write_arrow_table(tmp_path / "f30k_test.arrow", rows, "f30k")
    ds = ArrowRetrievalDataset(path, tokenizer=tok)
    out = list(ds)
    assert [s["captions"] for s in out[:2]] == [rows[0]["caption"], ["a yellow circle"]]
    assert [len(s["input_ids"]) for s in out[:2]] == [2, 1]
    assert out[0]["input_ids"][1].tolist() == tok(rows[0]["caption"][1])["input_ids"]
    assert isinstance(out[2], Skipped) and out[2].reason == "empty_caption"
    assert ds.stats.as_dict()["empty_caption"] == 2  # the blank caption of row 1 + row 2


# ----------------------------------------------------------------------------------------
# skipped samples


def test_corrupt_images_and_empty_captions_are_skipped_and_counted(tmp_path, pngs, tok):
    rows = _caption_rows(pngs, 5)
    rows[1]["image"] = b"\x89PNG\r\n\x1a\n this is not a png"  # 3 captions lost
    rows[2]["image"] = pngs[2][: len(pngs[2]) // 2]  # truncated: 2 captions lost
    rows[3]["caption"] = ["", "a red square", "   "]
    rows[4]["image"] = None  # a null cell: 2 captions lost
    path = write_arrow_table(tmp_path / "bad.arrow", rows, "caption")
    ds = ArrowPretrainingPairs(path, transform=ImageTransform(64), tokenizer=tok, chunk_rows=2)
    out = list(ds)
    reasons = Counter(s.reason for s in out if isinstance(s, Skipped))
    assert reasons == {"unreadable_image": 5, "empty_caption": 2, "bad_record": 2}
    assert ds.stats.as_dict() == {
        "missing_file": 0,
        "unreadable_image": 5,
        "empty_caption": 2,
        "bad_record": 2,
    }
    good = [s["caption"] for s in out if not isinstance(s, Skipped)]
    assert good == rows[0]["caption"] + ["a red square"]
    # the collator drops the markers and reports them
    batch = PretrainingCollator.from_tokenizer(tok).collate(out)
    assert batch["input_ids"].shape[0] == 3
    assert batch["skipped"].tolist() == [ds.stats.as_dict()[r] for r in SKIP_REASONS]


# ----------------------------------------------------------------------------------------
# downstream tasks


def test_vqa_soft_targets_against_a_hand_computed_vector(tmp_path, pngs):
    # labels 3, 0, 5 with the official scores 0.3 (1 annotator), 1.0 (4+), 0.6 (2)
    expected = torch.tensor([1.0, 0.0, 0.0, 0.3, 0.0, 0.6, 0.0, 0.0])
    assert torch.equal(vqa_soft_targets([3, 0, 5], [0.3, 1.0, 0.6], 8), expected)
    rows = [
        {
            "image": pngs[0],
            "questions": ["what colour?", "how many?"],
            "answers": [["red", "pink", "orange"], ["2"]],
            "answer_labels": [[3, 0, 5], [7]],
            "answer_scores": [[0.3, 1.0, 0.6], [0.9]],
            "image_id": 11,
            "question_id": [110, 111],
            "split": "train",
        },
        {
            "image": pngs[1],
            "questions": ["", "is it?"],
            "answers": [["no"], ["yes"]],
            "answer_labels": [[1], [2]],
            "answer_scores": [[1.0], [1.0]],
            "image_id": 12,
            "question_id": [120, 121],
            "split": "train",
        },
    ]
    path = write_arrow_table(tmp_path / "vqav2_train.arrow", rows, "vqa")
    ds = ArrowVQADataset(path, num_answers=8)
    out = list(ds)
    assert isinstance(out[2], Skipped) and out[2].reason == "empty_caption"
    q = [s for s in out if not isinstance(s, Skipped)]
    assert [s["caption"] for s in q] == ["what colour?", "how many?", "is it?"]
    assert [s["question_id"] for s in q] == [110, 111, 121]
    assert q[0]["answers"] == ["red", "pink", "orange"] and q[0]["image_id"] == 11
    assert torch.equal(q[0]["targets"], expected)
    assert torch.equal(q[1]["targets"], torch.tensor([0, 0, 0, 0, 0, 0, 0, 0.9]))
    assert torch.equal(q[2]["targets"], torch.tensor([0, 0, 1.0, 0, 0, 0, 0, 0]))
    # the collated batch carries the targets
    tok = build_scene_tokenizer()
    batch = TaskCollator(PretrainingCollator.from_tokenizer(tok, transform=ImageTransform(64)))(out)
    assert torch.equal(batch["targets"], torch.stack([s["targets"] for s in q]))
    assert batch["question_ids"].tolist() == [110, 111, 121]
    assert batch["skipped"][SKIP_REASONS.index("empty_caption")] == 1
    # a vocabulary too small for the labels is a configuration error
    with pytest.raises(ValueError, match="num_answers=4"):
        list(ArrowVQADataset(path, num_answers=4))
    with pytest.raises(ValueError, match="num_answers"):
        ArrowVQADataset(path, num_answers=0)


def test_vqa_test_tables_without_answers(tmp_path, pngs):
    # the official test tables hold empty answer lists (``list(list())``), one question list
    rows = [
        {
            "image": pngs[0],
            "questions": ["why?", "where?"],
            "answers": [],
            "answer_labels": [],
            "answer_scores": [],
            "image_id": 5,
            "question_id": [50, 51],
            "split": "test",
        }
    ]
    path = write_arrow_table(tmp_path / "vqav2_test.arrow", rows, "vqa")
    out = list(ArrowVQADataset(path, num_answers=8))
    assert [s["question_id"] for s in out] == [50, 51]
    assert all(s["answers"] == [] and not s["targets"].any() for s in out)


def test_nlvr2_two_images_statement_and_label(tmp_path, pngs, tok):
    rows = [
        {
            "image_0": pngs[0],
            "image_1": pngs[1],
            "questions": ["left has more", "both red", "odd"],
            "answers": ["True", "False", "maybe"],
            "identifier": "dev-1-0",
        },
        {
            "image_0": pngs[2],
            "image_1": b"broken",
            "questions": ["a circle"],
            "answers": ["True"],
            "identifier": "dev-2-1",
        },
    ]
    path = write_arrow_table(tmp_path / "nlvr2_dev.arrow", rows, "nlvr2")
    ds = ArrowNLVR2Dataset(path)
    out = list(ds)
    good = [s for s in out if not isinstance(s, Skipped)]
    assert [(s["caption"], s["label"], s["identifier"]) for s in good] == [
        ("left has more", 1, "dev-1-0"),
        ("both red", 0, "dev-1-0"),
    ]
    assert np.array_equal(np.asarray(good[0]["image"]), _pixels(pngs[0]))
    assert np.array_equal(np.asarray(good[0]["image_2"]), _pixels(pngs[1]))
    assert ds.stats.as_dict() == {
        "missing_file": 0,
        "unreadable_image": 1,
        "empty_caption": 0,
        "bad_record": 1,
    }
    col = TaskCollator(PretrainingCollator.from_tokenizer(tok, transform=ImageTransform(64)))
    batch = col(out)
    assert batch["labels"].tolist() == [1, 0]
    t = ImageTransform(64)
    assert torch.equal(
        batch["pixel_values_2"][0], t(Image.open(io.BytesIO(pngs[1])).convert("RGB"))
    )
    assert batch["pixel_mask_2"].shape == batch["pixel_mask"].shape


def test_snli_ve_hypothesis_and_label(tmp_path, pngs):
    rows = [
        {
            "image": pngs[0],
            "sentences": [
                ["Two men talk.", "People talk."],
                ["Two men talk.", "A cat sleeps."],
                ["Two men talk.", "bad label"],
            ],
            "labels": [2, 0, 7],
        },
        {"image": pngs[1], "sentences": [["A dog runs.", "An animal moves."]], "labels": [1]},
    ]
    path = write_arrow_table(tmp_path / "snli_dev.arrow", rows, "snli")
    ds = ArrowSNLIVEDataset(path, chunk_rows=1)
    out = list(ds)
    good = [s for s in out if not isinstance(s, Skipped)]
    assert [(s["caption"], s["premise"], s["label"]) for s in good] == [
        ("People talk.", "Two men talk.", 2),
        ("A cat sleeps.", "Two men talk.", 0),
        ("An animal moves.", "A dog runs.", 1),
    ]
    assert ds.stats.as_dict()["bad_record"] == 1
    assert good[0]["image_id"] == good[1]["image_id"] != good[2]["image_id"]


# ----------------------------------------------------------------------------------------
# formats, files, errors


def test_ipc_stream_format_and_official_style_files(tmp_path, pngs):
    rows = _caption_rows(pngs)
    a = write_arrow_table(tmp_path / "file.arrow", rows, "caption", rows_per_batch=2)
    b = write_arrow_table(tmp_path / "stream.arrow", rows, "caption", rows_per_batch=2, stream=True)
    assert b.read_bytes()[:6] != b"ARROW1"
    # written the way the official scripts do it: types inferred from the data, one batch,
    # pa.OSFile + pa.RecordBatchFileWriter (the scripts go through pandas; same Arrow types)
    table = pa.Table.from_pylist(rows)
    with pa.OSFile(str(tmp_path / "official.arrow"), "wb") as sink:
        with pa.RecordBatchFileWriter(sink, table.schema) as writer:
            writer.write_table(table)
    read = [
        [(s["caption"], s["image_id"]) for s in ArrowPretrainingPairs(p)]
        for p in (a, b, tmp_path / "official.arrow")
    ]
    assert read[0] == read[1] == read[2] == [(c, r["image_id"]) for r in rows for c in r["caption"]]
    # several files are read in order
    both = ArrowPretrainingPairs([a, b])
    assert both.num_rows == 12 and len(list(both)) == 2 * len(read[0])


def test_reader_errors(tmp_path, pngs):
    cap = write_arrow_table(tmp_path / "cap.arrow", _caption_rows(pngs, 1), "caption")
    with pytest.raises(ValueError, match=r"lacks the column\(s\) \['questions'"):
        ArrowVQADataset(cap, num_answers=4)
    with pytest.raises(ValueError, match="not found"):
        ArrowPretrainingPairs(tmp_path / "nope.arrow")
    (tmp_path / "junk.arrow").write_bytes(b"not arrow at all")
    with pytest.raises(ValueError, match="not an Arrow IPC"):
        ArrowPretrainingPairs(tmp_path / "junk.arrow")
    with pytest.raises(ValueError, match="both rank and world_size"):
        ArrowPretrainingPairs(cap, rank=0)
    with pytest.raises(ValueError, match="rank"):
        ArrowPretrainingPairs(cap, rank=2, world_size=2)
    with pytest.raises(ValueError, match="chunk_rows"):
        ArrowPretrainingPairs(cap, chunk_rows=0)
    with pytest.raises(TypeError, match="paths"):
        ArrowPretrainingPairs(3)


# ----------------------------------------------------------------------------------------
# the work split and memory


@pytest.mark.parametrize("chunk_rows,shuffle", [(1, False), (3, True)])
def test_rank_and_worker_split_reads_every_row_once(tmp_path, pngs, chunk_rows, shuffle):
    rows_a = _caption_rows(pngs, 7)
    rows_b = [dict(r, image_id=f"B{i}") for i, r in enumerate(_caption_rows(pngs, 4))]
    a = write_arrow_table(tmp_path / "a.arrow", rows_a, "caption", rows_per_batch=3)
    b = write_arrow_table(tmp_path / "b.arrow", rows_b, "caption")
    every = Counter((r["image_id"], c) for r in rows_a + rows_b for c in r["caption"])
    world, workers = 2, 3
    for epoch in (0, 1):
        seen: Counter = Counter()
        rows: Counter = Counter()
        for rank in range(world):
            ds = ArrowPretrainingPairs(
                [a, b], chunk_rows=chunk_rows, shuffle=shuffle, seed=5, rank=rank, world_size=world
            )
            ds.set_epoch(epoch)
            for w in range(workers):
                for fi, bi, start, stop in ds.chunks_for(rank, world, w, workers):
                    rows.update((fi, bi, r) for r in range(start, stop))
            seen.update((s["image_id"], s["caption"]) for s in ds)  # one process per rank
        assert seen == every
        assert sum(rows.values()) == 11 and max(rows.values()) == 1
    # real DataLoader workers share the rows of one rank between them
    ds = ArrowPretrainingPairs([a, b], chunk_rows=chunk_rows, rank=1, world_size=2)
    loader = torch.utils.data.DataLoader(
        ds, batch_size=None, num_workers=2, multiprocessing_context="fork"
    )
    got = Counter((s["image_id"], s["caption"]) for s in loader)
    expect: Counter = Counter()
    for w in range(2):
        for fi, bi, start, stop in ds.chunks_for(1, 2, w, 2):
            first = bi * 3 if fi == 0 else 0  # a.arrow has record batches of 3 rows
            for r in (rows_a, rows_b)[fi][first + start : first + stop]:
                expect.update((r["image_id"], c) for c in r["caption"])
    assert got == expect and sum(got.values()) > 0


def test_reads_chunk_by_chunk_from_the_memory_map(tmp_path):
    # 48 rows of incompressible 96x96 PNGs (~28 KB each, ~1.3 MB in all)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(48):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)).save(buf, format="PNG")
        rows.append(
            {"image": buf.getvalue(), "caption": [f"c{i}"], "image_id": str(i), "split": "train"}
        )
    path = write_arrow_table(tmp_path / "big.arrow", rows, "caption")  # one record batch
    total = sum(len(r["image"]) for r in rows)
    del rows
    ds = ArrowPretrainingPairs(path, chunk_rows=2)
    arrow_before = pa.total_allocated_bytes()
    tracemalloc.start()
    try:
        n = 0
        for _ in ds:
            n += 1
            assert (
                pa.total_allocated_bytes() == arrow_before
            )  # zero-copy: nothing read into Arrow memory
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert n == 48
    assert peak < total / 4, (peak, total)  # a whole-table read would hold every image at once


# ----------------------------------------------------------------------------------------
# training from a table


def test_a_few_training_steps_from_a_pretraining_table(tmp_path, pngs, tok):
    from bridgetower.models import create_model
    from bridgetower.training.objectives import PretrainingObjective
    from bridgetower.training.stream import BatchStream
    from bridgetower.training.trainer import Trainer, TrainerConfig, seed_everything

    rows = _caption_rows(pngs, 6)
    rows[2]["image"] = b"corrupt"
    path = write_arrow_table(tmp_path / "pretrain.arrow", rows, "caption", rows_per_batch=4)
    seed_everything(0)
    model = create_model("bridgetower-tiny", task="pretraining")
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    dataset = ArrowPretrainingPairs(
        path, transform=ImageTransform(64), tokenizer=tok, shuffle=True, seed=1
    )
    collator = PretrainingCollator.from_tokenizer(tok)
    stream = BatchStream(dataset, collator, 5, seed=3)  # 3 steps x 5 = the 15 captions
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    cfg = TrainerConfig(
        output_dir=tmp_path / "run",
        max_steps=3,
        log_every=1,
        progress=False,
        plot=False,
        tensorboard=False,
    )
    history = Trainer(model, PretrainingObjective(), opt, stream, cfg).train()
    losses = [h["loss"] for h in history if "loss" in h]
    assert len(losses) == 3 and all(np.isfinite(losses))
    assert any(not torch.equal(before[k], v) for k, v in model.named_parameters())
    assert stream.epoch == 0 and stream.position == 3
    assert dataset.stats.as_dict()["unreadable_image"] == 2  # the corrupt row, met and skipped


def test_shuffle_is_deterministic_per_epoch(tmp_path, pngs):
    path = write_arrow_table(
        tmp_path / "s.arrow", _caption_rows(pngs, 8), "caption", rows_per_batch=3
    )

    def order(epoch, seed=2):
        ds = ArrowPretrainingPairs(path, chunk_rows=2, shuffle=True, seed=seed)
        ds.set_epoch(epoch)
        return [(s["image_id"], s["caption"]) for s in ds]

    assert order(0) == order(0)  # what a resumed BatchStream relies on
    assert order(1) != order(0) and sorted(order(1)) == sorted(order(0))
    plain = [(s["image_id"], s["caption"]) for s in ArrowPretrainingPairs(path)]
    assert sorted(order(0)) == sorted(plain) and order(0) != plain


@pytest.mark.parametrize("task", ["vqa", "nlvr2", "snli_ve"])
def test_a_few_finetuning_steps_from_task_tables(tmp_path, pngs, tok, task):
    from bridgetower.models import create_model

    if task == "vqa":
        rows = [
            {
                "image": pngs[i],
                "questions": [f"what colour {i}", "how many"],
                "answers": [["red"], ["2"]],
                "answer_labels": [[i], [15]],
                "answer_scores": [[1.0], [0.6]],
                "image_id": i,
                "question_id": [2 * i, 2 * i + 1],
                "split": "train",
            }
            for i in range(2)
        ]
        ds = ArrowVQADataset(
            write_arrow_table(tmp_path / "t.arrow", rows, "vqa"),
            num_answers=16,
            transform=ImageTransform(64),
            tokenizer=tok,
        )
    elif task == "nlvr2":
        rows = [
            {
                "image_0": pngs[i],
                "image_1": pngs[i + 2],
                "questions": ["a red circle", "a blue square"],
                "answers": ["True", "False"],
                "identifier": f"train-{i}-0",
            }
            for i in range(2)
        ]
        ds = ArrowNLVR2Dataset(
            write_arrow_table(tmp_path / "t.arrow", rows, "nlvr2"),
            transform=ImageTransform(64),
            tokenizer=tok,
        )
    else:
        rows = [
            {
                "image": pngs[i],
                "sentences": [["p", "a red circle"], ["p", "a blue square"]],
                "labels": [i, 2],
            }
            for i in range(2)
        ]
        ds = ArrowSNLIVEDataset(
            write_arrow_table(tmp_path / "t.arrow", rows, "snli_ve"),
            transform=ImageTransform(64),
            tokenizer=tok,
        )
    torch.manual_seed(0)
    model = create_model("bridgetower-tiny", task=task)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    batch = TaskCollator(PretrainingCollator.from_tokenizer(tok))(list(ds))
    assert batch["input_ids"].shape[0] == 4
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "pixel_values", "pixel_mask")}
    if task == "nlvr2":
        inputs["pixel_values_2"] = batch["pixel_values_2"]
        inputs["pixel_mask_2"] = batch["pixel_mask_2"]
    labels = batch["targets"] if task == "vqa" else batch["labels"]
    assert labels.shape == ((4, 16) if task == "vqa" else (4,))
    losses = []
    for _ in range(2):
        opt.zero_grad()
        out = model(**inputs, labels=labels)
        out.loss.backward()
        opt.step()
        losses.append(float(out.loss.detach()))
    assert all(np.isfinite(losses)) and losses[0] != losses[1]


def test_missing_pyarrow_is_a_clear_import_error(tmp_path, monkeypatch, pngs):
    monkeypatch.setitem(__import__("sys").modules, "pyarrow", None)
    with pytest.raises(ImportError, match="pip install pyarrow"):
        write_arrow_table(tmp_path / "x.arrow", _caption_rows(pngs, 1), "caption")
    with pytest.raises(ImportError, match="pip install pyarrow"):
        ArrowPretrainingPairs(tmp_path / "x.arrow")


# ----------------------------------------------------------------------------------------
# resuming a stream: consumed samples are passed over without decoding


def _bad_caption_rows(pngs):
    rows = _caption_rows(pngs, 6)
    rows[1]["image"] = b"not an image"  # 3 captions lost as markers
    rows[3]["caption"] = ["", "a red square", "   "]  # two empty-caption markers + one sample
    rows[4]["image"] = None  # a null cell: 2 markers
    return rows


@pytest.mark.parametrize("kind", ["pairs", "nlvr2"])
def test_iter_from_passes_over_consumed_samples_without_decoding(tmp_path, pngs, tok, monkeypatch, kind):
    from bridgetower.data import arrow as arrow_mod

    if kind == "pairs":
        path = write_arrow_table(tmp_path / "t.arrow", _bad_caption_rows(pngs), "caption")
        make = lambda: ArrowPretrainingPairs(path, transform=ImageTransform(32), tokenizer=tok, chunk_rows=2)  # noqa: E731
    else:
        rows = [{"image_0": pngs[i], "image_1": pngs[i + 1] if i != 2 else b"broken",
                 "questions": ["left has more", "odd", "both red"][: 1 + i % 3],
                 "answers": ["True", "maybe", "False"][: 1 + i % 3], "identifier": f"dev-{i}"} for i in range(6)]
        path = write_arrow_table(tmp_path / "n.arrow", rows, "nlvr2")
        make = lambda: ArrowNLVR2Dataset(path, transform=ImageTransform(32), tokenizer=tok, chunk_rows=2)  # noqa: E731
    full = list(make())
    assert len(full) >= 8 and any(isinstance(s, Skipped) for s in full)
    real = arrow_mod.load_image
    for skip in range(len(full) + 1):
        decoded = []
        monkeypatch.setattr(arrow_mod, "load_image", lambda b, decoded=decoded: decoded.append(1) or real(b))
        ds = make()
        got = list(ds.iter_from(skip))
        assert all(g is None for g in got[:skip]) and len(got) == len(full)
        for a, b in zip(got[skip:], full[skip:], strict=True):
            assert type(a) is type(b)
            if isinstance(b, Skipped):
                assert a == b
            else:
                assert a["caption"] == b["caption"]
                assert torch.equal(torch.as_tensor(a["input_ids"]), torch.as_tensor(b["input_ids"]))
                assert torch.equal(a["pixel_values"], b["pixel_values"])
        want = sum(1 for s in full[skip:] if not isinstance(s, Skipped))
        # images decoded: at most those of the samples still to come, plus the row the boundary cuts
        assert len(decoded) <= want * (2 if kind == "nlvr2" else 1) + 2, (skip, len(decoded))
        if skip == len(full):
            assert not decoded
