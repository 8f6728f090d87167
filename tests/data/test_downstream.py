"""Synthetic downstream sets: every label re-derived independently from the scene description."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from bridgetower.data import (
    ImageTransform,
    PretrainingCollator,
    TaskCollator,
    build_scene_tokenizer,
    make_scene,
)
from bridgetower.data.downstream import (
    NEUTRAL_PROPERTIES,
    VQA_ANSWERS,
    VQA_QUESTION_TYPES,
    InStreamFalseTexts,
    IRTRCollator,
    SceneIRTRDataset,
    SceneNLVR2Dataset,
    SceneSNLIVEDataset,
    SceneVQADataset,
    build_downstream_tokenizer,
    downstream_vocabulary,
    scene_retrieval_set,
)
from bridgetower.data.scenes import render_scene

_WHERE = {"on the left": "left", "on the right": "right", "at the top": "top", "at the bottom": "bottom"}
_NUM = {"zero": 0, "one": 1, "two": 2, "three": 3, "four": 4}


@pytest.fixture(scope="module")
def tok():
    return build_downstream_tokenizer()


def _objects(scene):
    return [(o.colour, o.shape, o.position) for o in scene.objects]


def _answer(question: str, objs) -> str:
    """Answer a VQA question from the object list, independently of the generator."""
    m = re.fullmatch(r"what colour is the object (.+)", question)
    if m:
        return next(c for c, s, p in objs if p == _WHERE[m.group(1)])
    m = re.fullmatch(r"what colour is the (\w+)", question)
    if m:
        (c,) = [c for c, s, p in objs if s == m.group(1)]
        return c
    m = re.fullmatch(r"what shape is the object (.+)", question)
    if m:
        return next(s for c, s, p in objs if p == _WHERE[m.group(1)])
    m = re.fullmatch(r"what shape is the (\w+) object", question)
    if m:
        (s,) = [s for c, s, p in objs if c == m.group(1)]
        return s
    if question == "how many objects are there":
        return ["zero", "one", "two"][len(objs)]
    m = re.fullmatch(r"how many (\w+)s are there", question)
    if m:
        return ["zero", "one", "two"][sum(s == m.group(1) for c, s, p in objs)]
    m = re.fullmatch(r"where is the (\w+) (\w+)", question)
    if m:
        (p,) = [p for c, s, p in objs if c == m.group(1) and s == m.group(2)]
        return p
    raise AssertionError(f"unexpected question {question!r}")


def test_vqa_answers_match_the_scene(tok):
    ds = SceneVQADataset(96, seed=3, tokenizer=tok)
    kinds = set()
    for i in range(len(ds)):
        s = ds[i]
        assert s["answer"] == _answer(s["caption"], _objects(s["scene"])), s["caption"]
        label = VQA_ANSWERS.index(s["answer"])
        expect = torch.zeros(len(VQA_ANSWERS))
        expect[label] = 1.0
        torch.testing.assert_close(s["targets"], expect)
        assert s["answer_labels"] == [label] and s["answer_scores"] == [1.0]
        assert tok.unk_token_id not in s["input_ids"].tolist()
        kinds.add(s["question_type"])
    assert kinds == set(VQA_QUESTION_TYPES) and len(VQA_ANSWERS) == 16


def test_vqa_is_deterministic_and_its_image_is_the_scene(tok):
    ds = SceneVQADataset(4, seed=5, tokenizer=tok)
    a, b = ds[2], ds[2]
    assert a["caption"] == b["caption"] and torch.equal(a["targets"], b["targets"])
    assert np.array_equal(np.asarray(a["image"]), np.asarray(render_scene(a["scene"])))
    with pytest.raises(ValueError, match="question_types"):
        SceneVQADataset(4, question_types=("colour", "size"))
    with pytest.raises(IndexError):
        ds[4]


def _has(objs, colour=None, shape=None):
    return any((colour is None or c == colour) and (shape is None or s == shape) for c, s, p in objs)


def _truth(statement: str, left, right) -> bool:
    """The truth of an NLVR2-style statement, re-derived from the object lists."""
    side = {"left": left, "right": right}
    m = re.fullmatch(r"the (left|right) image contains a (\w+) object", statement)
    if m:
        return _has(side[m.group(1)], colour=m.group(2))
    m = re.fullmatch(r"the (left|right) image contains a (circle|square|triangle)", statement)
    if m:
        return _has(side[m.group(1)], shape=m.group(2))
    m = re.fullmatch(r"the (left|right) image contains a (\w+) (\w+)", statement)
    if m:
        return _has(side[m.group(1)], m.group(2), m.group(3))
    m = re.fullmatch(r"the (left|right) image has a (\w+) object (on the left|on the right|at the top|at the bottom)", statement)
    if m:
        return any(c == m.group(2) and p == _WHERE[m.group(3)] for c, s, p in side[m.group(1)])
    m = re.fullmatch(r"(both images|exactly one image) contains? a (\w+) object", statement)
    if m:
        a, b = _has(left, colour=m.group(2)), _has(right, colour=m.group(2))
        return (a and b) if m.group(1) == "both images" else a != b
    m = re.fullmatch(r"(both images|exactly one image) contains? a (circle|square|triangle)", statement)
    if m:
        a, b = _has(left, shape=m.group(2)), _has(right, shape=m.group(2))
        return (a and b) if m.group(1) == "both images" else a != b
    raise AssertionError(f"unexpected statement {statement!r}")


def test_nlvr2_labels_are_true_and_balanced(tok):
    ds = SceneNLVR2Dataset(60, seed=2, tokenizer=tok)
    labels = []
    for i in range(len(ds)):
        s = ds[i]
        left, right = s["scenes"]
        assert s["label"] == int(_truth(s["caption"], _objects(left), _objects(right))), s["caption"]
        assert np.array_equal(np.asarray(s["image"]), np.asarray(render_scene(left)))
        assert np.array_equal(np.asarray(s["image_2"]), np.asarray(render_scene(right)))
        assert tok.unk_token_id not in s["input_ids"].tolist()
        labels.append(s["label"])
    assert labels == [1, 0] * 30
    again = SceneNLVR2Dataset(60, seed=2, tokenizer=tok)[7]  # deterministic in (seed, index)
    assert again["caption"] == ds[7]["caption"] and again["scenes"] == ds[7]["scenes"]


def test_nlvr2_statements_carry_no_label_information():
    """The statement is drawn before (and independently of) the wanted label, so each
    template -- and each exact statement -- is as frequent among true items as among false
    ones; the images alone decide.  Checked on 600 items: per template, the true share is
    near 1/2, and every template occurs."""
    ds = SceneNLVR2Dataset(600, seed=5)
    kinds = {}
    for i in range(len(ds)):
        s = ds[i]
        words = s["caption"].split()
        if words[0] in ("both", "exactly"):
            kind = words[0] + ("-colour" if words[-1] == "object" else "-shape")
        elif "has" in words:
            kind = "side-position"
        else:
            kind = "side-" + {6: "shape", 7: "colour" if words[-1] == "object" else "colour-shape"}[len(words)]
        kinds.setdefault(kind, []).append(s["label"])
    assert set(kinds) == {"side-colour", "side-shape", "side-colour-shape", "side-position", "both-colour",
                          "both-shape", "exactly-colour", "exactly-shape"}
    for kind, labels in kinds.items():
        n = len(labels)
        # a binomial(n, 1/2) stays within 3.5 standard deviations of n/2
        assert abs(sum(labels) - n / 2) <= 3.5 * (n / 4) ** 0.5, (kind, sum(labels), n)
    # (the earlier generator drew the statement given the label: its "both images contain a
    # COLOUR object" was false in 3 items out of 4, and the text alone scored 62%)


def test_nlvr2_batches_through_the_task_collator(tok):
    ds = SceneNLVR2Dataset(4, seed=0, tokenizer=tok, transform=ImageTransform(64))
    batch = TaskCollator(PretrainingCollator.from_tokenizer(tok))([ds[i] for i in range(4)])
    assert batch["pixel_values"].shape == batch["pixel_values_2"].shape == (4, 3, 64, 64)
    assert batch["labels"].tolist() == [1, 0, 1, 0]
    torch.testing.assert_close(batch["pixel_values_2"][1], ds[1]["pixel_values_2"])
    assert batch["pixel_mask_2"].shape == (4, 64, 64) and batch["pixel_mask_2"].dtype == torch.int64
    assert bool(batch["pixel_mask_2"].all())


def test_task_collator_builds_the_second_mask_from_the_second_images():
    # first images 8x8; second images 6x10 (a tensor) and 8x4 (a PIL image, via the transform):
    # both are padded to 8x10, and each mask marks its own image's pixels
    first = [torch.full((3, 8, 8), 1.0), torch.full((3, 8, 8), 2.0)]
    second = torch.full((3, 6, 10), 3.0)
    pil = render_scene(make_scene(0, 0)[1]).resize((4, 8))  # (W, H)

    def to_tensor(image):
        return torch.from_numpy(np.asarray(image, dtype=np.float32).copy()).permute(2, 0, 1)  # (3, H, W)

    col = PretrainingCollator.from_tokenizer(build_scene_tokenizer(), transform=to_tensor)
    pil_px = to_tensor(pil)
    samples = [
        {"input_ids": torch.tensor([0, 5, 2]), "pixel_values": first[0], "pixel_values_2": second, "label": 1},
        {"input_ids": torch.tensor([0, 2]), "pixel_values": first[1], "image_2": pil, "label": 0},
    ]
    batch = TaskCollator(col)(samples)
    assert batch["pixel_values"].shape == batch["pixel_values_2"].shape == (2, 3, 8, 10)
    assert batch["pixel_mask"].shape == batch["pixel_mask_2"].shape == (2, 8, 10)
    mask_2 = torch.zeros(2, 8, 10, dtype=torch.int64)
    mask_2[0, :6, :10] = 1
    mask_2[1, :8, :4] = 1
    assert torch.equal(batch["pixel_mask_2"], mask_2)
    mask = torch.zeros(2, 8, 10, dtype=torch.int64)
    mask[:, :8, :8] = 1
    assert torch.equal(batch["pixel_mask"], mask)
    expect_2 = torch.zeros(2, 3, 8, 10)
    expect_2[0, :, :6, :10] = second
    expect_2[1, :, :8, :4] = pil_px
    assert torch.equal(batch["pixel_values_2"], expect_2)
    for i in range(2):
        assert torch.equal(batch["pixel_values"][i, :, :8, :8], first[i])
        assert batch["pixel_values"][i, :, :, 8:].abs().sum() == 0
    assert batch["labels"].tolist() == [1, 0]


def _phrases(text: str):
    """``a COLOUR SHAPE WHERE (and ...)`` -> [(colour, shape, position)]."""
    out = []
    for part in text.split(" and "):
        m = re.fullmatch(r"a (\w+) (\w+) (on the left|on the right|at the top|at the bottom)", part)
        assert m, text
        out.append((m.group(1), m.group(2), _WHERE[m.group(3)]))
    return out


def test_snli_ve_labels_follow_the_scene(tok):
    ds = SceneSNLIVEDataset(90, seed=4, tokenizer=tok)
    for i in range(len(ds)):
        s = ds[i]
        objs = set(_objects(s["scene"]))
        text = s["caption"]
        clause = re.search(r" which is (\w+)$", text)
        base = text[: clause.start()] if clause else text
        if clause:
            assert clause.group(1) in NEUTRAL_PROPERTIES
        phrases = _phrases(base)
        true = all(p in objs for p in phrases)
        assert s["label"] == 2 - i % 3
        if s["label"] == 2:  # entailment: a true description, no clause
            assert true and not clause
        elif s["label"] == 1:  # neutral: a true description with a property no image shows
            assert true and clause
        else:  # contradiction: at least one phrase is false
            assert not true
        assert s["premise"] == s["scene"].caption


def test_irtr_false_texts_and_collator(tok):
    ds = SceneIRTRDataset(6, seed=1, num_false_texts=5, tokenizer=tok, transform=ImageTransform(64))
    for i in range(len(ds)):
        s = ds[i]
        assert len(s["false_captions"]) == 5 == len(set(s["false_captions"]))
        assert s["caption"] not in s["false_captions"] and s["caption"] == s["scene"].caption
        assert len(s["input_ids"]) == 6
    batch = IRTRCollator(tok.pad_token_id)([ds[0], ds[1], ds[2]])
    assert batch["input_ids"].shape[:2] == (3, 6) and batch["attention_mask"].shape == batch["input_ids"].shape
    first = ds[0]["input_ids"][0]
    assert batch["input_ids"][0, 0, : first.numel()].tolist() == first.tolist()
    assert int(batch["attention_mask"][0, 0].sum()) == first.numel()
    assert (batch["input_ids"][batch["attention_mask"] == 0] == tok.pad_token_id).all()
    with pytest.raises(ValueError, match="same number"):
        IRTRCollator(1)([ds[0], {**ds[1], "input_ids": ds[1]["input_ids"][:3]}])
    with pytest.raises(ValueError, match="num_false_texts"):
        SceneIRTRDataset(2, num_false_texts=0)


def test_retrieval_set_has_distinct_captions(tok):
    r = scene_retrieval_set(30, seed=9, transform=ImageTransform(64), tokenizer=tok)
    assert len(set(r["captions"])) == 30 and r["pixel_values"].shape == (30, 3, 64, 64)
    assert r["input_ids"].shape[0] == 30 and r["text_image"].tolist() == list(range(30))
    for cap, idx in zip(r["captions"][:5], r["indices"][:5], strict=True):
        assert make_scene(9, idx)[1].caption == cap


def test_tokenizer_extends_a_pretrained_vocabulary():
    base = build_scene_tokenizer()
    ext = build_downstream_tokenizer(base)
    vb = base.get_vocab()
    ve = ext.get_vocab()
    assert all(ve[w] == i for w, i in vb.items())  # every base id keeps its meaning
    assert len(ext) == len(downstream_vocabulary()) + 5 > len(base)
    assert ext.get_vocab() == build_downstream_tokenizer().get_vocab()


class _OtherLayout:
    """A tokenizer whose specials are not ids 0..4 (e.g. a BERT-style vocabulary)."""

    def get_vocab(self):
        return {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "[MASK]": 4, "red": 5}


def test_tokenizer_extension_rejects_another_layout():
    with pytest.raises(ValueError, match="word-level"):
        build_downstream_tokenizer(_OtherLayout())


def test_in_stream_false_texts_come_from_other_images():
    rows = [
        {"pixel_values": torch.zeros(3, 4, 4), "captions": [f"c{i}a", f"c{i}b"], "image_id": i,
         "input_ids": [torch.tensor([0, 10 * i + 1, 2]), torch.tensor([0, 10 * i + 2, 2])]}
        for i in range(6)
    ]
    ds = InStreamFalseTexts(rows, num_false_texts=3, buffer_size=8)
    out = list(ds)
    assert sum(isinstance(s, dict) for s in out) == 4  # images 0 and 1 have too few predecessors
    for s in out:
        if not isinstance(s, dict):
            continue
        i = s["image_id"]
        assert s["input_ids"][0].tolist() == [0, 10 * i + 1, 2]
        others = [int(t[1]) // 10 for t in s["input_ids"][1:]]
        assert len(others) == 3 and all(o != i and o < i for o in others)
    assert ds.stats.as_dict()["bad_record"] == 2
