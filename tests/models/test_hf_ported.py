"""The expectations of ``transformers``' own BridgeTower tests, ported (issue 13).

From the ``transformers`` repository's ``tests/models/bridgetower/``:

* ``test_modeling_bridgetower.py``: its model tester's configuration (text, vision and
  cross-modal width 64, two layers each, vocabulary 99, four tokens, 64-px images = 17 image
  tokens, contrastive width 512), the output shapes of every head, hidden states (asked for in
  ``forward`` or set on the config), a gradient reaching the first hidden state, the parameters
  a training step leaves without a gradient, save/load round trips;
* ``test_image_processing_bridgetower.py``: batches of 7 images of 30..400 px as PIL images,
  NumPy arrays and torch tensors, with and without the centre crop, and the image processor's
  dict / JSON / save-load API;
* ``test_processing_bridgetower.py``: the processor keywords (image-processor defaults kept,
  per-call overrides, the nested and flat forms, batched padding).

Each runs both libraries on the same inputs (and the same random-weight checkpoint) and
compares, besides checking the shapes the original tests assert.  The integration tests of
those files need the published checkpoints (network) and are not ported.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import transformers
from hf_reference import perturbed  # tests/models/hf_reference.py
from PIL import Image

from bridgetower.models import (
    BridgeTowerForContrastiveLearning,
    BridgeTowerForImageAndTextRetrieval,
    BridgeTowerForMaskedLM,
    BridgeTowerModel,
    BridgeTowerProcessor,
    ImageProcessor,
    build_wordlevel_tokenizer,
)
from bridgetower.models.convert import convert_hf_state_dict

# ------------------------------------------------------------------ the model tester


def model_tester_config() -> transformers.BridgeTowerConfig:
    """``BridgeTowerModelTester.get_config()`` of ``transformers``' tests."""
    return transformers.BridgeTowerConfig(
        text_config=dict(hidden_act="gelu", hidden_size=64, initializer_factor=1, layer_norm_eps=1e-5,
                         num_attention_heads=4, num_hidden_layers=2, intermediate_size=128, vocab_size=99),
        vision_config=dict(hidden_size=64, initializer_factor=1, layer_norm_eps=1e-5, num_hidden_layers=2,
                           num_channels=3, image_size=64),
        share_cross_modal_transformer_layers=True, share_link_tower_layers=False, link_tower_type="add",
        init_layernorm_from_vision_encoder=False, contrastive_hidden_size=512, logit_scale_init_value=2.6592,
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
    )


def model_tester_inputs(seed: int = 0) -> dict[str, torch.Tensor]:
    """The tester's inputs: batch 1, 4 tokens of a 99-id vocabulary, a random attention mask and
    pixel mask whose last position is real, 64-px images of uniform [0, 1) values."""
    g = torch.Generator().manual_seed(seed)

    def random_mask(*shape):
        mask = torch.randint(0, 2, shape, generator=g)
        mask[..., -1] = 1
        return mask

    return {
        "input_ids": torch.randint(0, 99, (1, 4), generator=g),
        "attention_mask": random_mask(1, 4),
        "pixel_values": torch.rand(1, 3, 64, 64, generator=g),
        "pixel_mask": random_mask(1, 64, 64),
    }


CLASSES = {
    "BridgeTowerModel": (transformers.BridgeTowerModel, BridgeTowerModel, "pooler_output", (1, 128)),
    "ImageAndTextRetrieval": (transformers.BridgeTowerForImageAndTextRetrieval, BridgeTowerForImageAndTextRetrieval,
                              "logits", (1, 2)),
    "MaskedLM": (transformers.BridgeTowerForMaskedLM, BridgeTowerForMaskedLM, "logits", (1, 4, 99)),
    "ContrastiveLearning": (transformers.BridgeTowerForContrastiveLearning, BridgeTowerForContrastiveLearning,
                            "logits", (1, 3, 512)),
}


@pytest.fixture(scope="module", params=list(CLASSES))
def pair(request):
    hf_cls, our_cls, key, shape = CLASSES[request.param]
    hf = perturbed(hf_cls, model_tester_config())
    return hf, our_cls.from_pretrained(hf), key, shape


def _close(a, b, atol=1e-5):
    assert a.shape == b.shape, (a.shape, b.shape)
    assert (a - b).abs().max() < atol, (a - b).abs().max()


def test_model_tester_shapes_and_values(pair, tmp_path):
    # create_and_check_model / _for_image_and_text_retrieval / _for_masked_language_modeling,
    # test_save_load (max difference 1e-5 after a round trip)
    hf, ours, key, shape = pair
    inputs = model_tester_inputs()
    without_mask = {k: v for k, v in inputs.items() if k != "pixel_mask"}
    with torch.no_grad():
        for given in (inputs, without_mask):
            got, ref = ours(**given), hf(**given)
            assert got[key].shape == shape
            _close(got[key], ref[key])
        if isinstance(ours, BridgeTowerModel):
            assert got["text_features"].shape == (1, 4, 64) and got["image_features"].shape == (1, 17, 64)
            _close(got["text_features"], ref["text_features"])
            _close(got["image_features"], ref["image_features"])
        ours.save_pretrained(tmp_path)
        again = type(ours).from_pretrained(tmp_path)
        assert (again(**inputs)[key] - got[key]).abs().max() <= 1e-5


def test_hidden_states_output(pair):
    # text layers + 1, vision layers + 1, cross layers: 3 + 3 + 2 = expected_num_hidden_layers 8;
    # asked for in forward, then through config.output_hidden_states
    hf, ours, _, _ = pair
    inputs = model_tester_inputs()
    with torch.no_grad():
        ref = hf(**inputs, output_hidden_states=True).hidden_states
        asked = ours(**inputs, output_hidden_states=True).hidden_states
        ours.config.output_hidden_states = True
        try:
            configured = ours(**inputs).hidden_states
        finally:
            del ours.config.output_hidden_states
    for text, vision, cross in (asked, configured):
        assert len(text) + len(vision) + len(cross) == 8
        assert text[0].shape[-2:] == (4, 64) and vision[0].shape == (17, 1, 64)
        assert cross[0][0].shape[-2:] == (4, 64) and cross[0][1].shape[-2:] == (17, 64)
        for mine, theirs in zip((*text, *vision), (*ref[0], *ref[1]), strict=True):
            _close(mine, theirs, 1e-4)
        for mine, theirs in zip(cross, ref[2], strict=True):
            _close(mine[0], theirs[0], 1e-4)
            _close(mine[1], theirs[1], 1e-4)


def test_config_output_hidden_states_of_a_transformers_config_is_kept():
    # transformers' tester passes output_hidden_states through the config; from_pretrained's
    # keyword does the same
    config = model_tester_config()
    config.output_hidden_states = True
    ours = BridgeTowerModel.from_pretrained(perturbed(transformers.BridgeTowerModel, config))
    with torch.no_grad():
        assert ours(**model_tester_inputs()).hidden_states is not None
    hf = perturbed(transformers.BridgeTowerModel, model_tester_config())
    ours = BridgeTowerModel.from_pretrained(hf, output_hidden_states=True, output_attentions=True, return_dict=False)
    with torch.no_grad():
        out = ours(**model_tester_inputs())
    assert isinstance(out, tuple) and len(out) == 6  # features (2), pooler, hidden states, attentions, cross


def test_retain_grad_hidden_states():
    # test_retain_grad_hidden_states_attentions: the first text hidden state is part of the graph
    hf = perturbed(transformers.BridgeTowerModel, model_tester_config())
    ours = BridgeTowerModel.from_pretrained(hf)
    ours.config.output_hidden_states = True
    out = ours(**model_tester_inputs())
    hidden = out.hidden_states[0][0]
    hidden.retain_grad()
    out[0].flatten()[0].backward(retain_graph=True)
    assert hidden.grad is not None


@pytest.mark.parametrize("task", ["ImageAndTextRetrieval", "MaskedLM", "ContrastiveLearning"])
def test_training_reaches_the_parameters_transformers_reaches(task):
    # test_training: after loss.backward(), every parameter transformers' test calls used has a
    # gradient; the unused ones (MLM: the last image cross layer and the poolers) have none
    hf_cls, our_cls, _, _ = CLASSES[task]
    hf = perturbed(hf_cls, model_tester_config()).train()
    ours = our_cls.from_pretrained(hf).train()
    inputs = model_tester_inputs()
    labels = {"MaskedLM": {"labels": inputs["input_ids"]},
              "ImageAndTextRetrieval": {"labels": torch.tensor([1])},
              "ContrastiveLearning": {"return_loss": True}}[task]
    for model in (hf, ours):
        model(**inputs, **labels).loss.backward()
    hf_unused = {n: p for n, p in hf.named_parameters() if p.grad is None}
    converted = convert_hf_state_dict(hf_unused, encoder_prefix="bridgetower.")
    assert all(".text_model.pooler." in k for k in converted.dropped)  # HF's text pooler, which ours lacks
    ours_unused = {n for n, p in ours.named_parameters() if p.grad is None}
    assert ours_unused == set(converted.state_dict)
    assert bool(ours_unused) == (task == "MaskedLM")


# ------------------------------------------------------------------ image processing


def random_size_images(kind: str, seed: int = 0, batch: int = 7) -> list:
    """``prepare_image_inputs`` of ``transformers``' image-processing tests: 7 images of random
    sizes in [30, 400), as PIL images, (H, W, 3) arrays or (3, H, W) tensors."""
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(batch):
        h, w = rng.integers(30, 400, 2)
        chw = rng.integers(0, 255, (3, h, w), dtype=np.uint8)
        hwc = np.ascontiguousarray(np.moveaxis(chw, 0, -1))
        images.append({"pil": Image.fromarray(hwc), "numpy": hwc, "torch": torch.from_numpy(chw)}[kind])
    return images


def _expected_size(images, size=288, divisor=32):
    """The older test's ``get_expected_values`` (no crop): the batch's largest resized height and width."""
    sizes = []
    for image in images:
        h, w = (image.height, image.width) if isinstance(image, Image.Image) else (
            image.shape[:2] if isinstance(image, np.ndarray) else image.shape[1:])
        scale = size / min(h, w)
        new_h, new_w = (size, scale * w) if h < w else (scale * h, size)
        longer = int(1333 / 800 * size)
        if max(new_h, new_w) > longer:
            scale = longer / max(new_h, new_w)
            new_h, new_w = new_h * scale, new_w * scale
        sizes.append((int(new_h + 0.5) // divisor * divisor, int(new_w + 0.5) // divisor * divisor))
    return max(s[0] for s in sizes), max(s[1] for s in sizes)


def _hf_image_processor(**kw):
    from transformers.models.bridgetower.image_processing_pil_bridgetower import (
        BridgeTowerImageProcessorPil,
    )

    return BridgeTowerImageProcessorPil(**kw)


IMAGE_PROCESSOR_DICT = {  # the tester's prepare_image_processor_dict()
    "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711],
    "do_normalize": True, "do_resize": True, "size": {"shortest_edge": 288}, "size_divisor": 32,
}


@pytest.mark.parametrize("kind", ["pil", "numpy", "torch"])
@pytest.mark.parametrize("crop", [True, False])
def test_call_pil_numpy_pytorch(kind, crop):
    images = random_size_images(kind)
    ours = ImageProcessor.from_dict(IMAGE_PROCESSOR_DICT, do_center_crop=crop)
    ref = _hf_image_processor(**IMAGE_PROCESSOR_DICT, do_center_crop=crop)
    size = (288, 288) if crop else _expected_size(images)
    one = ours(images[0])["pixel_values"]
    assert one.shape == (1, 3, *(size if crop else _expected_size(images[:1])))
    assert torch.equal(one, ref(images[0], return_tensors="pt")["pixel_values"])
    got, want = ours(images), ref(images, return_tensors="pt")
    assert got["pixel_values"].shape == (7, 3, *size)
    assert torch.equal(got["pixel_values"], want["pixel_values"])
    assert torch.equal(got["pixel_mask"], want["pixel_mask"])


def test_image_processor_properties_dict_json_and_save_load(tmp_path):
    ours = ImageProcessor.from_dict(IMAGE_PROCESSOR_DICT)
    for name in ("image_mean", "image_std", "do_normalize", "do_resize", "size", "size_divisor"):
        assert hasattr(ours, name)
    # from_dict with keyword overrides (test_image_processor_from_dict_with_kwargs)
    assert ImageProcessor.from_dict(IMAGE_PROCESSOR_DICT, size=42).size == 42
    assert ImageProcessor.from_dict({**IMAGE_PROCESSOR_DICT, "crop_size": {"shortest_edge": 84}}).crop_size == 84
    # to_json_string, save/load (test_image_processor_to_json_string, _from_and_save_pretrained)
    as_json = json.loads(ours.to_json_string())
    assert as_json["size"] == {"shortest_edge": 288} and as_json["image_mean"] == IMAGE_PROCESSOR_DICT["image_mean"]
    ours.save_pretrained(tmp_path)
    assert ImageProcessor.from_pretrained(tmp_path).to_dict() == ours.to_dict()
    assert ImageProcessor.from_pretrained(tmp_path, size=42).size == 42
    with pytest.raises(TypeError, match=r"unknown option\(s\) \['sise'\]"):
        ImageProcessor.from_pretrained(tmp_path, sise=42)
    hf = type(_hf_image_processor()).from_pretrained(tmp_path)  # transformers reads what we write
    images = random_size_images("pil", seed=1, batch=3)
    assert torch.equal(hf(images, return_tensors="pt")["pixel_values"], ours(images)["pixel_values"])
    # and we read what transformers writes
    _hf_image_processor(size={"shortest_edge": 224}, crop_size={"shortest_edge": 200}).save_pretrained(tmp_path / "hf")
    back = ImageProcessor.from_pretrained(tmp_path / "hf")
    assert (back.size, back.crop_size) == (224, 200)


# ------------------------------------------------------------------ the processor


@pytest.fixture(scope="module")
def tokenizer():
    return build_wordlevel_tokenizer("lower newer upper older longer string".split())


def _both(tokenizer, **image_options):
    from transformers import BridgeTowerProcessor as HFProcessor

    return (BridgeTowerProcessor(ImageProcessor(**image_options), tokenizer),
            HFProcessor(image_processor=_hf_image_processor(**image_options), tokenizer=tokenizer))


def _image():
    """The processor tests' ``prepare_image_inputs``: one 400 x 30 image."""
    rng = np.random.default_rng(2)
    return [Image.fromarray(rng.integers(0, 255, (30, 400, 3), dtype=np.uint8))]


def _equal(got, want):
    assert set(got) == set(want)
    for key in want:
        assert torch.equal(torch.as_tensor(got[key]), torch.as_tensor(want[key])), key


def test_image_processor_defaults_preserved_by_image_kwargs(tokenizer):
    ours, hf = _both(tokenizer, crop_size={"shortest_edge": 234, "longest_edge": 234})
    got = ours(text="lower newer", images=_image())
    assert len(got["pixel_values"][0][0]) == 234
    _equal(got, hf(text="lower newer", images=_image(), return_tensors="pt"))


def test_kwargs_override_default_image_processor_kwargs(tokenizer):
    ours, hf = _both(tokenizer, crop_size={"shortest_edge": 234})
    got = ours(text="lower newer", images=_image(), crop_size={"shortest_edge": 224})
    assert len(got["pixel_values"][0][0]) == 224
    _equal(got, hf(text="lower newer", images=_image(), crop_size={"shortest_edge": 224}, return_tensors="pt"))


@pytest.mark.parametrize("form", ["nested", "flat"])
def test_structured_and_unstructured_kwargs(tokenizer, form):
    ours, hf = _both(tokenizer)
    nested = {"common_kwargs": {"return_tensors": "pt"}, "images_kwargs": {"crop_size": {"shortest_edge": 214}},
              "text_kwargs": {"padding": "max_length", "max_length": 76}}
    flat = {"return_tensors": "pt", "crop_size": {"shortest_edge": 214}, "padding": "max_length", "max_length": 76}
    kwargs = nested if form == "nested" else flat
    got = ours(text="lower newer", images=_image(), **kwargs)
    assert got["pixel_values"].shape[2] == 214 and len(got["input_ids"][0]) == 76
    _equal(got, hf(text="lower newer", images=_image(), **kwargs))


def test_unstructured_kwargs_batched(tokenizer):
    ours, hf = _both(tokenizer)
    texts = ["lower newer", "upper older longer string"]
    kwargs = {"return_tensors": "pt", "crop_size": {"shortest_edge": 214}, "padding": "longest", "max_length": 76}
    got = ours(text=texts, images=_image() * 2, **kwargs)
    assert got["pixel_values"].shape[2] == 214 and len(got["input_ids"][0]) == 6
    _equal(got, hf(text=texts, images=_image() * 2, **kwargs))
