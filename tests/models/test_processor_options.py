"""The processor as ``transformers`` users call it (issue 13) and its input checks (issue 19):
every keyword routed to the component that owns it and compared with ``transformers``'
processor on the same inputs, the nested ``*_kwargs`` forms, ``BatchFeature`` outputs,
truncation to the model's text length, the unknown-token warning, 16-bit and float images."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers
from PIL import Image

from bridgetower.models import (
    BridgeTowerProcessor,
    ImageProcessor,
    build_wordlevel_tokenizer,
    check_unknown_tokens,
)

WORDS = "a red blue cube sphere on the left right of .".split()
TEXTS = ["a red cube", "the blue sphere on the left of a cube"]


@pytest.fixture(scope="module")
def tokenizer():
    return build_wordlevel_tokenizer(WORDS)


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in ((640, 480), (300, 500))]


def _hf_processor(tokenizer):
    from transformers.models.bridgetower.image_processing_pil_bridgetower import (
        BridgeTowerImageProcessorPil,
    )

    return transformers.BridgeTowerProcessor(image_processor=BridgeTowerImageProcessorPil(), tokenizer=tokenizer)


@pytest.mark.parametrize(
    "options",
    [
        {"crop_size": {"shortest_edge": 224}},
        {"size": {"shortest_edge": 180}},
        {"size": {"shortest_edge": 256}, "crop_size": {"shortest_edge": 256}},
        {"do_center_crop": False},
        {"do_resize": False, "crop_size": {"shortest_edge": 200}},
        {"do_normalize": False, "do_rescale": False},
        {"size_divisor": 16, "do_center_crop": False, "pad_to_multiple_of": 8},
    ],
)
def test_per_call_options_reach_the_component_that_owns_them(options, tokenizer, images):
    hf = _hf_processor(tokenizer)(images=images, text=TEXTS, return_tensors="pt", padding=True, **options)
    ours = BridgeTowerProcessor(tokenizer=tokenizer)(images, TEXTS, padding=True, **options)
    assert set(ours) == set(hf)
    for key in hf:
        assert torch.equal(ours[key], hf[key]), key


def test_nested_kwargs_forms_and_unknown_keywords(tokenizer, images):
    proc = BridgeTowerProcessor(tokenizer=tokenizer)
    flat = proc(images, TEXTS, crop_size=224, padding="max_length", max_length=12, return_tensors="np")
    nested = proc(images, TEXTS, images_kwargs={"crop_size": {"shortest_edge": 224}},
                  text_kwargs={"padding": "max_length", "max_length": 12}, common_kwargs={"return_tensors": "np"})
    assert isinstance(nested["pixel_values"], np.ndarray) and nested["input_ids"].shape == (2, 12)
    for key in flat:
        assert np.array_equal(flat[key], nested[key]), key
    with pytest.raises(TypeError, match=r"unknown keyword\(s\) \['crop_sise', \"text_kwargs\['paddin'\]\"\]"):
        proc(images, TEXTS, crop_sise=224, text_kwargs={"paddin": True})
    with pytest.raises(ValueError, match="'crop_size' was passed twice"):
        proc(images, TEXTS, crop_size=224, images_kwargs={"crop_size": 200})
    with pytest.raises(ValueError, match="size must be an int"):
        proc(images, TEXTS, size={"longest_edge": 300})


def test_outputs_are_a_batch_feature_that_moves(tokenizer, images):
    out = BridgeTowerProcessor(tokenizer=tokenizer)(images, TEXTS, padding=True)
    assert isinstance(out, transformers.BatchFeature)
    as_double = out.to(torch.float64)
    assert as_double["pixel_values"].dtype == torch.float64 and as_double["input_ids"].dtype == torch.int64
    assert out.to("cpu")["pixel_mask"].device.type == "cpu"
    assert isinstance(ImageProcessor()(images), transformers.BatchFeature)


def test_texts_are_truncated_to_the_model_length_by_default(tokenizer):
    long = " ".join(["red cube"] * 40)
    proc = BridgeTowerProcessor(tokenizer=tokenizer, max_text_length=16)
    assert proc(text=long)["input_ids"].shape == (1, 16)
    assert proc(text=long, truncation=False)["input_ids"].shape == (1, 82)
    assert proc(text=long, max_length=10)["input_ids"].shape == (1, 10)
    # without a model limit, the tokenizer's own model_max_length (512 here) bounds it
    assert BridgeTowerProcessor(tokenizer=tokenizer)(text=" ".join(["red"] * 600))["input_ids"].shape == (1, 512)


def test_mostly_unknown_texts_warn(tokenizer):
    proc = BridgeTowerProcessor(tokenizer=tokenizer)
    with pytest.warns(UserWarning, match=r"1 text\(s\) are mostly tokens unknown.*'zebras eating grass'"):
        proc(text=["a red cube", "zebras eating grass"], padding=True)
    ids = tokenizer(["a red cube", "a zebra"], padding=True)["input_ids"]
    assert check_unknown_tokens(tokenizer, ids, threshold=0.5) == []  # "a zebra": half unknown, not most
    with pytest.warns(UserWarning):
        assert check_unknown_tokens(tokenizer, ids, threshold=0.4) == [1]


def test_sixteen_bit_images_are_scaled_and_unknown_ranges_refused():
    rng = np.random.default_rng(1)
    eight = rng.integers(0, 256, (40, 50), dtype=np.uint8)
    sixteen = Image.fromarray(eight.astype(np.uint16) * 257)
    assert sixteen.mode == "I;16"
    proc = ImageProcessor(32)
    assert torch.equal(proc(sixteen)["pixel_values"], proc(Image.fromarray(eight, mode="L"))["pixel_values"])
    for image, mode in ((Image.fromarray(eight.astype(np.int32) * 100), "I"),
                        (Image.fromarray(eight.astype(np.float32) / 255), "F")):
        assert image.mode == mode
        with pytest.raises(ValueError, match=f"image 0 has PIL mode '{mode}'.*value range is not known"):
            proc(image)
    with pytest.raises(TypeError, match="must be uint8"):
        proc(eight.astype(np.float32))
