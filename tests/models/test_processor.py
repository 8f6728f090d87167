"""Image processor and processor against transformers' BridgeTower ones; the offline tokenizer."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bridgetower.models.processor import BridgeTowerProcessor, ImageProcessor, resize_output_size
from bridgetower.models.tokenizer import SPECIAL_TOKENS, build_test_tokenizer

PIL = pytest.importorskip("PIL")
from PIL import Image  # noqa: E402

transformers = pytest.importorskip("transformers")

WORDS = "a red blue cube sphere on the left right of .".split()
# (width, height): square, landscape, portrait, small, tiny, very elongated (long side capped,
# then smaller than the crop), odd sizes
SIZES = [(288, 288), (640, 480), (300, 500), (100, 37), (31, 29), (1000, 300), (333, 777)]


def _noise(w, h, seed):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def _smooth(w, h, seed):
    y, x = np.mgrid[0:h, 0:w]
    a = np.stack(
        [127 + 120 * np.sin(x / 17 + seed), 127 + 120 * np.cos(y / 23 + seed), 127 + 120 * np.sin((x + y) / 31)], -1
    )
    return Image.fromarray(a.astype(np.uint8))


@pytest.fixture(scope="module")
def images():
    return [_noise(w, h, i) for i, (w, h) in enumerate(SIZES)]


@pytest.fixture(scope="module")
def tokenizer():
    return build_test_tokenizer(WORDS)


def _hf_pil(**kw):
    from transformers.models.bridgetower.image_processing_pil_bridgetower import (
        BridgeTowerImageProcessorPil,
    )

    return BridgeTowerImageProcessorPil(**kw)


# ------------------------------------------------------------------ resize arithmetic


def test_resize_output_size_matches_hf():
    from transformers.models.bridgetower.image_processing_pil_bridgetower import (
        get_resize_output_image_size,
    )

    for h in (1, 29, 287, 288, 289, 479, 481, 4000):
        for w in (13, 288, 500, 999, 3000):
            for size in (288, 576):
                fake = np.broadcast_to(np.zeros((), np.uint8), (3, h, w))  # no memory touched
                ref = get_resize_output_image_size(fake, shorter=size, longer=int(1333 / 800 * size), size_divisor=32)
                assert resize_output_size(h, w, size, 32) == tuple(ref), (h, w, size)


# ------------------------------------------------------------------ image processor parity


@pytest.mark.parametrize("do_center_crop", [True, False])
def test_image_processor_equals_hf_pil_backend(images, do_center_crop):
    ours = ImageProcessor()(images, do_center_crop=do_center_crop)
    ref = _hf_pil()(images, return_tensors="pt", do_center_crop=do_center_crop)
    assert ours["pixel_values"].dtype == torch.float32 and ours["pixel_mask"].dtype == torch.int64
    assert ours["pixel_values"].shape == ref["pixel_values"].shape
    assert torch.equal(ours["pixel_values"], ref["pixel_values"])
    assert torch.equal(ours["pixel_mask"], ref["pixel_mask"])
    if do_center_crop:
        assert ours["pixel_values"].shape[-2:] == (288, 288) and bool(ours["pixel_mask"].all())
    else:  # different sizes: padded to the batch maximum with a partial mask
        assert not bool(ours["pixel_mask"].all())


def test_image_processor_other_sizes_equal_hf(images):
    sub = images[1:4]
    ours = ImageProcessor(384, crop_size=384)(sub)
    ref = _hf_pil(size={"shortest_edge": 384}, crop_size={"shortest_edge": 384})(sub, return_tensors="pt")
    assert torch.equal(ours["pixel_values"], ref["pixel_values"])
    assert torch.equal(ours["pixel_mask"], ref["pixel_mask"])


def test_image_processor_close_to_hf_torchvision_backend():
    """The default HF class resamples with torchvision's bicubic: equal up to resampling rounding."""
    pytest.importorskip("torchvision")
    from transformers.models.bridgetower.image_processing_bridgetower import (
        BridgeTowerImageProcessor,
    )

    imgs = [_smooth(w, h, i) for i, (w, h) in enumerate(SIZES[:5])]
    for crop in (True, False):
        ours = ImageProcessor()(imgs, do_center_crop=crop)
        ref = BridgeTowerImageProcessor()(imgs, return_tensors="pt", do_center_crop=crop)
        assert torch.equal(ours["pixel_mask"], ref["pixel_mask"])
        diff = (ours["pixel_values"] - ref["pixel_values"]).abs()
        assert diff.max().item() <= 3 / 255 / min(ImageProcessor().image_std)  # <= 3 uint8 levels
        assert diff.mean().item() < 1e-3


def test_array_tensor_and_mode_inputs(images):
    proc = ImageProcessor()
    img = images[1]
    base = proc(img)["pixel_values"]
    arr = np.array(img)  # writable copy
    torch.testing.assert_close(proc(arr)["pixel_values"], base, rtol=0, atol=0)
    torch.testing.assert_close(proc(torch.from_numpy(arr).permute(2, 0, 1))["pixel_values"], base, rtol=0, atol=0)
    # RGBA: transparency onto white, as HF's convert_to_rgb
    rgba = img.convert("RGBA")
    rgba.putalpha(Image.fromarray(np.tile(np.arange(img.width, dtype=np.uint8), (img.height, 1))))
    onto_white = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    ref = _hf_pil()(onto_white, return_tensors="pt")  # (older transformers dropped the alpha instead)
    assert torch.equal(proc(rgba)["pixel_values"], ref["pixel_values"])
    gray = img.convert("L")
    assert torch.equal(proc(gray)["pixel_values"], proc(gray.convert("RGB"))["pixel_values"])


def test_numpy_output_and_single_image(images):
    out = ImageProcessor()(images[0], return_tensors="np")
    assert isinstance(out["pixel_values"], np.ndarray) and out["pixel_values"].shape == (1, 3, 288, 288)


# ------------------------------------------------------------------ processor parity


def test_processor_equals_hf_processor(images, tokenizer):
    from transformers import BridgeTowerProcessor as HFProcessor

    texts = ["a red cube", "the blue sphere on the left of a cube", "a cube", "right", "a", "left .", "red red"]
    hf = HFProcessor(image_processor=_hf_pil(), tokenizer=tokenizer)
    ours = BridgeTowerProcessor(tokenizer=tokenizer)
    for kw in ({"padding": True}, {"padding": "max_length", "truncation": True, "max_length": 6}):
        ref = hf(images=images, text=texts, return_tensors="pt", **kw)
        got = ours(images, texts, return_tensors="pt", **kw)
        assert set(got) == set(ref) == {"input_ids", "attention_mask", "pixel_values", "pixel_mask"}
        for k in ref:
            assert torch.equal(got[k], ref[k]), k
    assert ours.batch_decode(got["input_ids"], skip_special_tokens=True)[0] == "a red cube"


def test_processor_save_and_from_pretrained(tmp_path, images, tokenizer):
    proc = BridgeTowerProcessor(ImageProcessor(384, crop_size=384), tokenizer)
    proc.save_pretrained(tmp_path)
    loaded = BridgeTowerProcessor.from_pretrained(tmp_path)
    a = proc(images[:2], ["a cube", "a red sphere"], padding=True)
    b = loaded(images[:2], ["a cube", "a red sphere"], padding=True)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # the written preprocessor_config.json is also readable by transformers
    hf = type(_hf_pil()).from_pretrained(str(tmp_path))
    assert torch.equal(hf(images[:2], return_tensors="pt")["pixel_values"], a["pixel_values"])
    assert BridgeTowerProcessor.from_pretrained(tmp_path, size=288).image_processor.size == 288


# ------------------------------------------------------------------ offline tokenizer


def test_tokenizer_roberta_layout_and_round_trip(tmp_path):
    tok = build_test_tokenizer(WORDS, save_dir=tmp_path)
    assert [tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS] == [0, 1, 2, 3, 4]
    assert (tok.bos_token_id, tok.pad_token_id, tok.eos_token_id, tok.unk_token_id, tok.mask_token_id) == (0, 1, 2, 3, 4)
    ids = tok("A red cube on the left.")["input_ids"]
    assert ids[0] == 0 and ids[-1] == 2 and 3 not in ids
    assert tok.decode(ids, skip_special_tokens=True) == "a red cube on the left ."
    assert tok("a zebra")["input_ids"] == [0, tok.convert_tokens_to_ids("a"), 3, 2]
    pair = tok("a cube", "the sphere")["input_ids"]
    assert pair[:4] == [0, tok.convert_tokens_to_ids("a"), tok.convert_tokens_to_ids("cube"), 2] and pair[4] == 2
    batch = tok(["a", "a red cube"], padding=True, return_tensors="pt")
    assert batch["input_ids"][0].tolist() == [0, 5, 2, 1, 1] and batch["attention_mask"][0].tolist() == [1, 1, 1, 0, 0]
    from transformers import AutoTokenizer

    again = AutoTokenizer.from_pretrained(str(tmp_path))
    assert again("a red cube on the left.")["input_ids"] == ids and again.mask_token_id == 4


# ------------------------------------------------------------------ errors


def test_bad_inputs(images, tokenizer):
    proc = ImageProcessor()
    with pytest.raises(ValueError, match="empty list"):
        proc([])
    with pytest.raises(TypeError, match="uint8"):
        proc(np.zeros((10, 10, 3), dtype=np.float32))
    with pytest.raises(TypeError, match="PIL.Image"):
        proc("cat.jpg")
    with pytest.raises(ValueError, match="shape"):
        proc(np.zeros((10, 10, 5), dtype=np.uint8))
    with pytest.raises(ValueError, match="too elongated"):
        proc(Image.new("RGB", (2000, 5)))
    with pytest.raises(ValueError, match="return_tensors"):
        proc(images[0], return_tensors="tf")
    with pytest.raises(ValueError, match="size must be a positive int"):
        ImageProcessor(0)
    with pytest.raises(ValueError, match="resample"):
        ImageProcessor(resample="cubic")
    with pytest.raises(ValueError, match="unknown options"):
        ImageProcessor.from_dict({"size": {"shortest_edge": 288}, "do_magic": True})
    with pytest.raises(ValueError, match="different sizes"):
        proc(images[:3], do_center_crop=False, do_pad=False)
    bt = BridgeTowerProcessor(tokenizer=tokenizer)
    with pytest.raises(ValueError, match="2 image"):
        bt(images[:2], ["a cube"])
    with pytest.raises(ValueError, match="images, text, or both"):
        bt()
    with pytest.raises(ValueError, match="no tokenizer"):
        BridgeTowerProcessor()(text="a cube")
    with pytest.raises(TypeError, match="list of str"):
        bt(text=[1, 2])
    with pytest.raises(ValueError, match="no whitespace"):
        build_test_tokenizer(["two words"])
