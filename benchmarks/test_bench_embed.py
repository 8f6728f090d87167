"""Embedding throughput: ``embed_image`` / ``embed_text`` against ``transformers``'
``BridgeTowerForContrastiveLearning``, which runs both towers and the fusion in every call.

Identical weights (ours loaded from the HF model).  Cases: ``modality`` in (image, text),
dtype float32 and bfloat16, ``impl`` in (hf, ours).  For an image embedding HF gets the
images plus the shortest text (2 tokens); for a text embedding the texts plus one image per
text of the configured size -- what a pipeline built on HF's class has to feed it.  Batch
``BT_EMBED_BATCH`` (16), 4+4 uni-modal and 2 cross layers of width 256, 128 px images, 24
tokens (``BT_EMBED_ROUNDS``: timed rounds, 20).  ``extra_info`` holds items/s; the session table the ours/HF ratios (the interleaved
one is measured alternating calls in one process).

Run: ``flock /tmp/bt-heavy.lock env OMP_NUM_THREADS=2 .venv/bin/python -m pytest -q -p no:cacheprovider
benchmarks/test_bench_embed.py --benchmark-only``
"""

from __future__ import annotations

import os

import pytest
import torch

from .conftest import run_benchmark

transformers = pytest.importorskip("transformers")

BATCH = int(os.environ.get("BT_EMBED_BATCH", "16"))
ROUNDS = int(os.environ.get("BT_EMBED_ROUNDS", "20"))  # timed rounds per case
HIDDEN, IMAGE, TEXT_LEN = 256, 128, 24


def _hf_config():
    return transformers.BridgeTowerConfig(
        hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=4, contrastive_hidden_size=128,
        logit_scale_init_value=2.6592,
        text_config=dict(vocab_size=1000, hidden_size=HIDDEN, num_hidden_layers=4, num_attention_heads=4,
                         intermediate_size=4 * HIDDEN, max_position_embeddings=64),
        vision_config=dict(hidden_size=HIDDEN, num_hidden_layers=4, patch_size=16, image_size=IMAGE),
    )


@pytest.fixture(scope="module")
def models():
    from bridgetower.models import BridgeTowerForContrastiveLearning

    torch.manual_seed(0)
    hf = transformers.BridgeTowerForContrastiveLearning(_hf_config()).eval()
    ours = BridgeTowerForContrastiveLearning.from_pretrained(hf).eval()
    return hf, ours


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("modality", ["image", "text"])
@pytest.mark.parametrize("impl", ["hf", "ours"])
def test_bench_embed(benchmark, bench_device, models, modality, dtype, impl):
    hf, ours = (m.to(device=bench_device, dtype=getattr(torch, dtype)) for m in models)
    dt = getattr(torch, dtype)
    ids = torch.randint(5, 1000, (BATCH, TEXT_LEN), device=bench_device)
    ids[:, 0] = 0
    mask = torch.ones_like(ids)
    px = torch.randn(BATCH, 3, IMAGE, IMAGE, device=bench_device, dtype=dt)
    short_ids, short_mask = ids[:, :2].clone(), mask[:, :2].clone()

    if modality == "image":
        def ours_fn():
            return ours.embed_image(px)

        def hf_fn():
            return hf(input_ids=short_ids, attention_mask=short_mask, pixel_values=px).image_embeds
    else:
        def ours_fn():
            return ours.embed_text(ids, mask)

        def hf_fn():
            return hf(input_ids=ids, attention_mask=mask, pixel_values=px).text_embeds

    with torch.no_grad():
        a, b = ours_fn(), hf_fn()
        cos = torch.nn.functional.cosine_similarity(a.float(), b.float()).min().item()
        assert cos > (0.9999 if dtype == "float32" else 0.98), cos  # the same embeddings
        fn = ours_fn if impl == "ours" else hf_fn
        run_benchmark(benchmark, fn, device=bench_device, config=f"embed-{modality}-{dtype}-b{BATCH}", impl=impl,
                      baseline="hf", baseline_fn=hf_fn if impl == "ours" else None, rounds=ROUNDS)
    stats = getattr(benchmark, "stats", None)  # None under --benchmark-disable
    if stats is not None:
        benchmark.extra_info["items_per_s"] = BATCH / stats.stats.median
