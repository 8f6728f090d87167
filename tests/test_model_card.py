"""The Hugging Face model card of BridgeTower runs on ``bridgetower`` with only its import changed.

The two snippets of the ``BridgeTower/bridgetower-large-itm-mlm`` card (ITM scores over a list
of texts; masked-word filling decoded with ``processor.decode``) are kept verbatim in
``docs/model_card_snippets.py``; each is executed once with ``from transformers import ...``
and once with ``from bridgetower import ...`` on the same checkpoint directory (the image is
read from a local file instead of being downloaded, and the Hub name is replaced by the
directory).  The reference is ``transformers`` itself:

* a random-weight ``transformers`` checkpoint (small widths, an offline word-level tokenizer,
  HF's own image-processor config) -> same ``scores`` dict and the same decoded string;
* the other direction: a ``bridgetower`` model trained for one step, saved with
  ``save_pretrained(dir, format="hf")`` -> the snippets run with ``transformers`` on it and
  give what ``bridgetower`` gives on the model in its own format;
* a Hub id with ``HF_HUB_OFFLINE=1`` gives a clear ``OSError``, not a crash deep inside.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from PIL import Image
from safetensors.torch import load_file, save_file

import bridgetower
from bridgetower.models import (
    BridgeTowerProcessor,
    ImageProcessor,
    build_test_tokenizer,
    create_model,
)

ROOT = Path(__file__).resolve().parents[1]
SEED_CARD = ROOT / "tests" / "data" / "model_card" / "bridgetower-large-itm-mlm-model-card.txt"


def _load_snippets():
    spec = importlib.util.spec_from_file_location(
        "model_card_snippets", ROOT / "docs" / "model_card_snippets.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


cards = _load_snippets()

# every word of both snippets' texts (the masked sentence included), and a few more
WORDS = (
    "an image of two cats chilling on a couch football player scoring goal looking out the window "
    "cat dog sitting red blue"
).split()
IMAGE_SIZE = 64


def _perturb(model: torch.nn.Module, seed: int) -> None:
    """Random weights far from init (no identity LayerNorm, no zero bias): clear argmaxes."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * (0.05 if p.ndim > 1 else 0.2))


@pytest.fixture(scope="module")
def image_file(tmp_path_factory) -> Path:
    # 96x64 (W x H): the resize keeps it (shorter side already 64, longer <= 106, multiple of
    # 32), the centre crop cuts it to 64x64.  No resampling: HF's default torchvision backend
    # and our Pillow-exact processor give identical pixels (with resampling they differ by a
    # few uint8 levels, see docs/models.md).
    rng = np.random.RandomState(0)
    yy, xx = np.mgrid[0:64, 0:96]
    arr = np.stack([(xx * 2) % 256, (yy * 4) % 256, (xx + yy) % 256], -1) + rng.randint(
        0, 40, (64, 96, 3)
    )
    path = tmp_path_factory.mktemp("card_image") / "image.png"
    Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def tokenizer():
    return build_test_tokenizer(WORDS, model_max_length=32)


@pytest.fixture(scope="module")
def hf_checkpoint(tmp_path_factory, tokenizer) -> Path:
    """A random ``transformers`` checkpoint with MLM and ITM heads (as the card's), saved by HF."""
    d = tmp_path_factory.mktemp("hf_checkpoint")
    config = transformers.BridgeTowerConfig(
        hidden_size=64,  # HF: text width == cross-modal width
        num_hidden_layers=2,
        num_attention_heads=2,
        contrastive_hidden_size=32,
        logit_scale_init_value=2.6592,
        text_config=dict(
            vocab_size=len(tokenizer),
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=128,
            max_position_embeddings=34,
        ),
        vision_config=dict(
            hidden_size=64, num_hidden_layers=2, patch_size=16, image_size=IMAGE_SIZE
        ),
    )
    torch.manual_seed(0)
    mlm = transformers.BridgeTowerForMaskedLM(config)
    _perturb(mlm, 1)
    itm = transformers.BridgeTowerForImageAndTextRetrieval(config)
    _perturb(itm, 2)
    mlm.save_pretrained(d)
    # one checkpoint holding both heads on the same encoder, like bridgetower-large-itm-mlm
    weights = load_file(d / "model.safetensors")
    weights.update(
        {k: v.contiguous() for k, v in itm.state_dict().items() if k.startswith("itm_score.")}
    )
    save_file(weights, d / "model.safetensors", metadata={"format": "pt"})
    cfg = json.loads((d / "config.json").read_text())
    cfg["architectures"] = ["BridgeTowerForMaskedLM", "BridgeTowerForImageAndTextRetrieval"]
    (d / "config.json").write_text(json.dumps(cfg))
    image_processor = transformers.BridgeTowerImageProcessor(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"shortest_edge": IMAGE_SIZE}
    )
    transformers.BridgeTowerProcessor(image_processor, tokenizer).save_pretrained(d)
    return d


def _itm(library, image_file, checkpoint):
    ns, _ = cards.run(
        cards.ITM_SNIPPET, library=library, image_file=image_file, checkpoint=checkpoint
    )
    assert type(ns["model"]).__module__.startswith(library)  # the import line decided the library
    return ns["scores"]


def _mlm(library, image_file, checkpoint):
    ns, printed = cards.run(
        cards.MLM_SNIPPET, library=library, image_file=image_file, checkpoint=checkpoint
    )
    assert type(ns["model"]).__module__.startswith(library)
    assert printed == ns["results"] + "\n"
    return ns


def _assert_same_scores(a: dict, b: dict) -> None:
    assert (
        list(a)
        == list(b)
        == ["An image of two cats chilling on a couch", "A football player scoring a goal"]
    )
    for text in a:
        assert abs(a[text] - b[text]) < 1e-4, (text, a[text], b[text])
    assert abs(a[list(a)[0]] - a[list(a)[1]]) > 1e-3  # the scores depend on the text


def _assert_clear_argmax(logits: torch.Tensor) -> None:
    """Every position's top-2 gap is far above the float error: the decoded string is stable."""
    top2 = logits.detach().topk(2, dim=-1).values
    assert (top2[..., 0] - top2[..., 1]).min() > 1e-3


# ------------------------------------------------------------------ transformers checkpoint


def test_itm_snippet_same_scores(hf_checkpoint, image_file):
    ref = _itm("transformers", image_file, hf_checkpoint)
    got = _itm("bridgetower", image_file, hf_checkpoint)
    _assert_same_scores(ref, got)


def test_mlm_snippet_same_decoded_string(
    hf_checkpoint, image_file, tokenizer
):
    ref = _mlm("transformers", image_file, hf_checkpoint)
    got = _mlm("bridgetower", image_file, hf_checkpoint)
    for k in ("input_ids", "attention_mask", "pixel_mask"):
        assert torch.equal(ref["encoding"][k], got["encoding"][k]), k
    # HF's torchvision backend fuses rescale and normalise: float rounding only
    assert (ref["encoding"]["pixel_values"] - got["encoding"]["pixel_values"]).abs().max() < 1e-6
    assert tokenizer.mask_token_id in got["encoding"]["input_ids"][0].tolist()
    assert tokenizer.unk_token_id not in got["encoding"]["input_ids"][0].tolist()
    _assert_clear_argmax(ref["outputs"].logits)
    assert (ref["outputs"].logits - got["outputs"].logits).abs().max() < 1e-4
    assert got["results"] == ref["results"]
    assert len(set(ref["results"].split())) > 2  # not one token repeated


# ------------------------------------------------------------------ the other direction


@pytest.fixture(scope="module")
def our_checkpoints(tmp_path_factory, tokenizer, image_file):
    """A bridgetower model trained one step, saved in the HF format and in ours (+ processor)."""
    torch.manual_seed(0)
    width = {
        "hidden_size": 64,
        "num_heads": 2,
        "intermediate_size": 128,
        "dropout": 0.1,
        "attn_dropout": 0.1,
    }
    model = create_model(
        "bridgetower-tiny",
        task="pretraining",
        vision={"width": 64, "layers": 2, "heads": 1, "image_size": IMAGE_SIZE},
        text={"vocab_size": len(tokenizer), "num_layers": 2, **width},
        fusion={
            **width,
            "layer_norm_eps": 1e-5,
        },  # HF has one eps for the text tower and cross layers
        head_layer_norm_eps=1e-5,  # ... and one for the bridges and the MLM head
    )
    _perturb(model, 3)
    processor = BridgeTowerProcessor(ImageProcessor(IMAGE_SIZE), tokenizer)
    texts = ["a cat looking out of the window", "a football player scoring a goal"]
    batch = processor([Image.open(image_file)] * 2, texts, padding=True)
    labels = batch["input_ids"].clone()
    labels[:, [0, -1]] = -100
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    out = model(
        batch["input_ids"],
        batch["attention_mask"],
        batch["pixel_values"],
        batch["pixel_mask"],
        mlm_labels=labels,
        itm_labels=torch.tensor([1, 0]),
    )
    out.loss.backward()
    opt.step()
    hf_dir, our_dir = tmp_path_factory.mktemp("ours_hf"), tmp_path_factory.mktemp("ours_native")
    model.save_pretrained(hf_dir, format="hf")
    model.save_pretrained(our_dir)
    for d in (hf_dir, our_dir):
        processor.save_pretrained(d)
    return hf_dir, our_dir


def test_our_model_in_hf_format_runs_card_with_transformers(
    our_checkpoints, image_file
):
    hf_dir, our_dir = our_checkpoints
    assert (
        json.loads((our_dir / "config.json").read_text()).get("model_type") != "bridgetower"
    )  # really ours
    ours = _itm("bridgetower", image_file, our_dir)
    _assert_same_scores(_itm("transformers", image_file, hf_dir), ours)
    _assert_same_scores(
        _itm("bridgetower", image_file, hf_dir), ours
    )  # round trip through the HF format

    ref = _mlm("transformers", image_file, hf_dir)
    got = _mlm("bridgetower", image_file, our_dir)
    _assert_clear_argmax(got["outputs"].logits)
    assert (ref["outputs"].logits - got["outputs"].logits).abs().max() < 1e-4
    assert ref["results"] == got["results"]
    assert _mlm("bridgetower", image_file, hf_dir)["results"] == got["results"]


def test_from_pretrained_returns_eval_mode(hf_checkpoint):
    # transformers' from_pretrained returns eval mode and the card has no model.eval() line
    assert not bridgetower.BridgeTowerForMaskedLM.from_pretrained(hf_checkpoint).training


# ------------------------------------------------------------------ Hub ids


@pytest.fixture
def offline_hub(monkeypatch, tmp_path):
    """HF_HUB_OFFLINE=1 with an empty Hub cache (huggingface_hub reads both at call time)."""
    import huggingface_hub.constants as hub_constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))


def test_hub_id_from_the_local_hub_cache(
    offline_hub, hf_checkpoint, image_file
):
    # the card's own Hub id, resolved through huggingface_hub's cache (as after a download)
    import huggingface_hub.constants as hub_constants

    repo = Path(hub_constants.HF_HUB_CACHE) / ("models--" + cards.HUB_NAME.replace("/", "--"))
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    shutil.copytree(hf_checkpoint, repo / "snapshots" / commit)
    ref = _itm("transformers", image_file, cards.HUB_NAME)
    _assert_same_scores(ref, _itm("bridgetower", image_file, cards.HUB_NAME))
    _assert_same_scores(ref, _itm("bridgetower", image_file, hf_checkpoint))
    assert (
        _mlm("bridgetower", image_file, cards.HUB_NAME)["results"]
        == _mlm("transformers", image_file, cards.HUB_NAME)["results"]
    )


def test_hub_id_offline_processor_clear_error(offline_hub):
    with pytest.raises(OSError, match=r"'BridgeTower/bridgetower-large-itm-mlm'.*HF_HUB_OFFLINE"):
        bridgetower.BridgeTowerProcessor.from_pretrained(cards.HUB_NAME)


def test_hub_id_offline_model_is_os_error(offline_hub):
    # passed on to huggingface_hub / transformers; fails there with their offline OSError
    with pytest.raises(OSError, match="(?i)offline|couldn't connect|cache"):
        bridgetower.BridgeTowerForImageAndTextRetrieval.from_pretrained(cards.HUB_NAME)


def test_hub_id_offline_model_error_names_the_id(offline_hub):
    with pytest.raises(OSError, match="BridgeTower/bridgetower-large-itm-mlm"):
        bridgetower.BridgeTowerForMaskedLM.from_pretrained(cards.HUB_NAME)


def test_processor_reads_and_updates_the_transformers5_processor_config(
    tmp_path, tokenizer, image_file
):
    # transformers 5 writes the image options nested in processor_config.json only
    hf_ip = transformers.BridgeTowerImageProcessor(
        size={"shortest_edge": 96}, crop_size={"shortest_edge": 96}
    )
    transformers.BridgeTowerProcessor(hf_ip, tokenizer).save_pretrained(tmp_path)
    assert not (tmp_path / "preprocessor_config.json").exists()
    assert BridgeTowerProcessor.from_pretrained(tmp_path).image_processor.crop_size == 96
    # saving ours over it keeps both files in step, for both libraries
    BridgeTowerProcessor(ImageProcessor(IMAGE_SIZE), tokenizer).save_pretrained(tmp_path)
    image = Image.open(image_file)
    ours = BridgeTowerProcessor.from_pretrained(tmp_path)(image, "a cat")
    ref = transformers.BridgeTowerProcessor.from_pretrained(tmp_path)(
        image, "a cat", return_tensors="pt"
    )
    assert ours["pixel_values"].shape == ref["pixel_values"].shape == (1, 3, IMAGE_SIZE, IMAGE_SIZE)
    assert (ours["pixel_values"] - ref["pixel_values"]).abs().max() < 1e-6


def test_processor_bad_names():
    with pytest.raises(ValueError, match="neither a local directory nor a Hugging Face Hub id"):
        BridgeTowerProcessor.from_pretrained("./no/such/checkpoint")
    with pytest.raises(TypeError, match="directory or a Hub id"):
        BridgeTowerProcessor.from_pretrained(3)


# ------------------------------------------------------------------ the snippets and the package


def test_snippets_are_the_model_card_code():
    card = [ln.strip() for ln in SEED_CARD.read_text().splitlines() if ln.strip()]
    for snippet in (cards.ITM_SNIPPET, cards.MLM_SNIPPET):
        lines = [ln.strip() for ln in snippet.splitlines() if ln.strip()]
        starts = [i for i in range(len(card)) if card[i : i + len(lines)] == lines]
        assert starts, snippet  # (the card copy lost its indentation; compared line by line)


def test_adapt_changes_only_import_image_and_checkpoint():
    for snippet in (cards.ITM_SNIPPET, cards.MLM_SNIPPET):
        hf, ours = cards.adapt(snippet, "transformers"), cards.adapt(snippet, "bridgetower")
        diff = [(a, b) for a, b in zip(hf.splitlines(), ours.splitlines(), strict=True) if a != b]
        assert diff == [
            (hf.splitlines()[0], hf.splitlines()[0].replace("transformers", "bridgetower"))
        ]
        kept = [
            ln
            for ln in snippet.splitlines()
            if ln != "import requests" and not ln.startswith("url = ")
        ]
        assert len(kept) == len(hf.splitlines())
        changed = [(a, b) for a, b in zip(kept, hf.splitlines(), strict=True) if a != b]
        assert [b for _, b in changed] == [
            a.replace(
                "Image.open(requests.get(url, stream=True).raw)", "Image.open(image_file)"
            ).replace(f'"{cards.HUB_NAME}"', "checkpoint")
            for a, _ in changed
        ]
        assert len(changed) == 3 and "image_file" in changed[0][1]
        assert changed[1][1].endswith(".from_pretrained(checkpoint)") and changed[2][1].endswith(
            "(checkpoint)"
        )
        assert "requests" not in hf
    with pytest.raises(ValueError, match="library"):
        cards.adapt(cards.ITM_SNIPPET, "torch")
    with pytest.raises(ValueError, match="from transformers import"):
        cards.adapt("import torch\n")


def test_top_level_exports_are_lazy():
    code = (
        "import sys, bridgetower; "
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, 'heavy import'; "
        "assert {'BridgeTowerProcessor', 'create_model', 'BridgeTowerModel'} <= set(dir(bridgetower))"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    import bridgetower.models as models

    for name in (
        "BridgeTowerProcessor",
        "BridgeTowerForImageAndTextRetrieval",
        "BridgeTowerForMaskedLM",
        "BridgeTowerModel",
        "BridgeTowerForContrastiveLearning",
        "BridgeTowerForPretraining",
        "create_model",
    ):
        assert getattr(bridgetower, name) is getattr(models, name)
    assert set(bridgetower.__all__) - {"__version__"} <= set(models.__all__)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        bridgetower.nope  # noqa: B018
