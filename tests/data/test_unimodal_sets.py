"""The uni-modal synthetic sets (image shape/colour classes, caption mention, caption pairs)."""

from __future__ import annotations

import re
from collections import Counter

import numpy as np
import pytest
import torch

from bridgetower.data import ImageTransform
from bridgetower.data.downstream import build_downstream_tokenizer, downstream_vocabulary
from bridgetower.data.scenes import COLOURS, SHAPES, SceneConfig
from bridgetower.data.unimodal import (
    CaptionMentionDataset,
    CaptionPairDataset,
    ImageClassificationCollator,
    SceneImageClassification,
    TextClassificationCollator,
    unimodal_text_vocabulary,
)

_WHERE = {"on the left": "left", "on the right": "right", "at the top": "top", "at the bottom": "bottom"}
_W = "|".join(_WHERE)
_PATTERNS = [
    re.compile(rf"^a (?P<c>\w+) (?P<s>\w+) (?P<w>{_W})$"),
    re.compile(rf"^the (?P<c>\w+) (?P<s>\w+) is (?P<w>{_W})$"),
    re.compile(rf"^(?P<w>{_W}) there is a (?P<c>\w+) (?P<s>\w+)$"),
]


def _parse(text: str) -> frozenset[tuple[str, str, str]]:
    """The (colour, shape, position) objects a description states (an independent parser)."""
    objs = []
    for phrase in text.split(" and "):
        for pat in _PATTERNS:
            m = pat.match(phrase)
            if m:
                objs.append((m["c"], m["s"], _WHERE[m["w"]]))
                break
        else:
            raise AssertionError(f"unparsable phrase {phrase!r}")
    return frozenset(objs)


@pytest.fixture(scope="module")
def tok():
    return build_downstream_tokenizer()


# ------------------------------------------------------------------------------ images


@pytest.mark.parametrize("attribute", ["shape", "colour"])
def test_image_labels_balanced_and_match_scene(attribute):
    ds = SceneImageClassification(60, seed=3, attribute=attribute)
    classes = SHAPES if attribute == "shape" else tuple(COLOURS)
    assert ds.classes == classes and ds.num_classes == len(classes)
    labels = []
    for i in range(len(ds)):
        item = ds[i]
        (obj,) = item["scene"].objects
        assert classes[item["label"]] == getattr(obj, attribute)
        labels.append(item["label"])
    assert Counter(labels) == {k: 60 // len(classes) for k in range(len(classes))}


def test_image_pixels_show_the_labelled_colour():
    # the label is checked against the rendered pixels, not against the description
    ds = SceneImageClassification(12, seed=5, attribute="colour")
    for i in range(len(ds)):
        item = ds[i]
        (obj,) = item["scene"].objects
        cx, cy = obj.center
        if obj.shape == "triangle":
            cy += 0.3 * obj.radius  # well inside the triangle
        rgb = item["image"].getpixel((int(round(cx)), int(round(cy))))
        assert rgb == COLOURS[tuple(COLOURS)[item["label"]]]


def test_image_set_deterministic_seeded_and_transformed():
    a = SceneImageClassification(8, seed=1, transform=ImageTransform(64))
    b = SceneImageClassification(8, seed=1, transform=ImageTransform(64))
    c = SceneImageClassification(8, seed=2, transform=ImageTransform(64))
    assert torch.equal(a[3]["pixel_values"], b[3]["pixel_values"])
    assert not torch.equal(a[3]["pixel_values"], c[3]["pixel_values"])
    assert a[3]["pixel_values"].shape == (3, 64, 64)
    assert a[-1]["image_id"] == 7
    with pytest.raises(IndexError):
        a[8]


def test_image_set_bad_input():
    with pytest.raises(ValueError, match="attribute"):
        SceneImageClassification(4, attribute="position")
    with pytest.raises(ValueError, match="size"):
        SceneImageClassification(0)
    with pytest.raises(TypeError, match="transform"):
        SceneImageClassification(4, transform="resize")


# ------------------------------------------------------------------------------ texts


def test_text_vocabulary_is_covered_by_the_downstream_tokenizer(tok):
    assert set(unimodal_text_vocabulary()) <= set(downstream_vocabulary())
    ds = CaptionPairDataset(40, seed=0, tokenizer=tok)
    for i in range(len(ds)):
        assert tok.unk_token_id not in ds[i]["input_ids"].tolist()


@pytest.mark.parametrize("target", ["red", "circle"])
def test_mention_labels(target, tok):
    ds = CaptionMentionDataset(120, seed=4, target=target, tokenizer=tok)
    labels = []
    for i in range(len(ds)):
        item = ds[i]
        words = item["text"].split()
        assert item["label"] == int(target in words)
        objs = item["scene"].objects
        assert len(objs) == 1 or not objs[0].same_look(objs[1])
        assert tok.decode(item["input_ids"], skip_special_tokens=True) == item["text"]
        labels.append(item["label"])
    assert Counter(labels) == {0: 60, 1: 60}


def test_mention_bad_target():
    with pytest.raises(ValueError, match="target"):
        CaptionMentionDataset(4, target="heavy")
    with pytest.raises(ValueError, match="no other colour"):
        CaptionMentionDataset(4, target="red", config=SceneConfig(colours=("red",), max_objects=1))


def test_pairs_same_scene_vs_one_attribute_change(tok):
    ds = CaptionPairDataset(200, seed=7, tokenizer=tok)
    kinds = Counter()
    reordered_or_rephrased = 0
    for i in range(len(ds)):
        item = ds[i]
        a, b = _parse(item["text"]), _parse(item["text_pair"])
        assert a == {(o.colour, o.shape, o.position) for o in item["scene"].objects}
        if item["label"] == 1:
            assert a == b and item["alteration"] is None
            reordered_or_rephrased += item["text"] != item["text_pair"]
        else:
            assert a != b and len(a) == len(b)
            kinds[item["alteration"]] += 1
            # exactly one attribute differs: colour / shape of one object, or the positions
            changed = {k for k, idx in (("colour", 0), ("shape", 1), ("position", 2))
                       if sorted(o[idx] for o in a) != sorted(o[idx] for o in b)}
            if item["alteration"] == "position":
                assert changed <= {"position"}
                assert {o[:2] for o in a} == {o[:2] for o in b}
            else:
                assert changed == {item["alteration"]}
                assert sorted(o[2] for o in a) == sorted(o[2] for o in b)
        ids = item["input_ids"].tolist()
        sep = tok.convert_tokens_to_ids("</s>")
        assert ids[0] == tok.convert_tokens_to_ids("<s>") and ids.count(sep) == 3  # <s> A </s></s> B </s>
    assert set(kinds) == {"colour", "shape", "position"}
    assert sum(kinds.values()) == 100
    assert reordered_or_rephrased > 60  # the positives are not copies of each other


def test_pairs_restricted_alterations():
    ds = CaptionPairDataset(40, seed=1, alterations=("colour",))
    assert {ds[i]["alteration"] for i in range(1, 40, 2)} == {"colour"}
    with pytest.raises(ValueError, match="alterations"):
        CaptionPairDataset(4, alterations=("size",))


# ------------------------------------------------------------------------------ collators


def test_text_collator_pads_and_masks():
    samples = [{"input_ids": torch.tensor([0, 7, 8, 2]), "label": 1}, {"input_ids": torch.tensor([0, 9, 2]), "label": 0}]
    batch = TextClassificationCollator(pad_token_id=1)(samples)
    assert batch["input_ids"].tolist() == [[0, 7, 8, 2], [0, 9, 2, 1]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 1, 0]]
    assert batch["labels"].dtype == torch.long and batch["labels"].tolist() == [1, 0]
    reg = TextClassificationCollator(1)([{"input_ids": torch.tensor([0, 2]), "label": 0.25}])
    assert reg["labels"].dtype == torch.float32 and reg["labels"].tolist() == [0.25]
    with pytest.raises(ValueError, match="input_ids"):
        TextClassificationCollator(1)([{"text": "a", "label": 0}])
    with pytest.raises(ValueError, match="pad_token_id"):
        TextClassificationCollator(-1)


def test_image_collator():
    ds = SceneImageClassification(4, transform=ImageTransform(64))
    batch = ImageClassificationCollator()([ds[i] for i in range(4)])
    assert batch["pixel_values"].shape == (4, 3, 64, 64)
    assert batch["labels"].tolist() == [0, 1, 2, 0]
    with pytest.raises(ValueError, match="transform"):
        ImageClassificationCollator()([SceneImageClassification(2)[0]])
    with pytest.raises(ValueError, match="different sizes"):
        ImageClassificationCollator()([{"pixel_values": torch.zeros(3, 4, 4), "label": 0},
                                       {"pixel_values": torch.zeros(3, 8, 8), "label": 0}])


def test_sets_are_independent_of_global_rng():
    ds = CaptionPairDataset(10, seed=2)
    np.random.seed(0)
    first = ds[5]["text_pair"]
    np.random.seed(123)
    assert ds[5]["text_pair"] == first


def test_one_synthetic_base_for_every_scene_set(tok):
    from bridgetower.data import SceneITMEvalDataset, SceneNLVR2Dataset, SyntheticSceneDataset
    from bridgetower.data.datasets import SeededSceneSet

    sets = [
        SceneImageClassification(3, seed=2),
        CaptionMentionDataset(3, seed=2, tokenizer=tok),
        CaptionPairDataset(3, seed=2, tokenizer=tok),
        SyntheticSceneDataset(3, seed=2),
        SceneITMEvalDataset(3, seed=2),
        SceneNLVR2Dataset(3, seed=2),
    ]
    for ds in sets:
        assert isinstance(ds, SeededSceneSet) and len(ds) == 3 and ds.stats.total == 0
        with pytest.raises(IndexError):
            ds[3]
    assert repr(sets[0]) == "SceneImageClassification(size=3, seed=2)"
    assert sets[1].tokenizer is tok and sets[1].max_length == 50 and sets[0].transform is None
    for cls in (SceneImageClassification, CaptionPairDataset, SyntheticSceneDataset):
        with pytest.raises(TypeError, match="config must be a SceneConfig"):
            cls(3, config={"max_objects": 1})
        with pytest.raises(ValueError, match="seed must be"):
            cls(3, seed=-1)
    with pytest.raises(ValueError, match="max_length must be an int >= 4"):
        CaptionPairDataset(3, tokenizer=tok, max_length=3)
