"""Input pipeline throughput: loading in the training process vs 2 ``DataLoader`` workers.

Real JPEG files of 640x480 (generated noise + gradients, quality 90) in a folder with a JSONL
index, read by :class:`~bridgetower.data.ImageTextDataset` (decode, bicubic resize, centre
crop, normalise, tokenise) and collated by the :class:`~bridgetower.data.PretrainingCollator`
through :class:`~bridgetower.training.stream.BatchStream`.  Two measurements, each for 0 and
2 workers in one process: the input pipeline alone (batches drawn as fast as possible) and a
short training run of ``bridgetower-tiny`` (64-px images) with the :class:`Trainer`, whose
log gives samples/s and the share of time spent waiting for data.  ``extra_info`` holds
samples/s; the ratio 2 workers / 0 workers is the figure of interest.

    flock /tmp/bt-heavy.lock .venv/bin/python -m pytest -q -p no:cacheprovider \\
        benchmarks/test_bench_input.py --benchmark-only -s
"""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch
from PIL import Image

from bridgetower.data import ImageTextDataset, ImageTransform, PretrainingCollator
from bridgetower.models import create_model
from bridgetower.models.tokenizer import build_wordlevel_tokenizer
from bridgetower.training import BatchStream, PretrainingObjective, TrainerConfig, build_optimizer
from bridgetower.training.trainer import Trainer

N_IMAGES, BATCH, BATCHES = 64, 8, 8
WORDS = ["a", "photo", "of", "red", "green", "blue", "dog", "cat", "car", "tree", "on", "the", "street"]
_RESULTS: dict[str, float] = {}


@pytest.fixture(scope="module")
def jpeg_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("jpegs")
    rng = np.random.default_rng(0)
    lines = []
    yy, xx = np.mgrid[0:480, 0:640]
    for i in range(N_IMAGES):
        base = np.stack([(xx * (i + 1)) % 256, (yy * 2 + i) % 256, (xx + yy) % 256], axis=-1)
        img = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(root / f"{i:03d}.jpg", quality=90)
        caption = " ".join(rng.choice(WORDS, size=8))
        lines.append(json.dumps({"image": f"{i:03d}.jpg", "caption": caption}))
    (root / "index.jsonl").write_text("\n".join(lines) + "\n")
    return root


def _stream(root, workers, size):
    tok = build_wordlevel_tokenizer(WORDS)
    ds = ImageTextDataset(root / "index.jsonl", transform=ImageTransform(size), tokenizer=tok, max_length=16)
    return BatchStream(ds, PretrainingCollator.from_tokenizer(tok), BATCH, seed=0, num_workers=workers), tok


@pytest.mark.parametrize("workers", [0, 2])
def test_bench_input_pipeline(benchmark, jpeg_folder, workers):
    """Batches of 8 decoded 640x480 JPEGs at 288 px (the base model's size)."""
    stream, _ = _stream(jpeg_folder, workers, 288)

    def run():
        for _ in range(BATCHES):
            next(stream)

    benchmark.pedantic(run, rounds=3, iterations=1, warmup_rounds=1)
    stream.close()
    rate = BATCHES * BATCH / benchmark.stats.stats.median
    benchmark.extra_info["samples_per_s"] = rate
    _RESULTS[f"pipeline_{workers}"] = rate
    if workers:
        print(f"\ninput pipeline: {_RESULTS['pipeline_0']:.1f} vs {rate:.1f} samples/s (0 vs 2 workers), "
              f"ratio {rate / _RESULTS['pipeline_0']:.2f}")


@pytest.mark.parametrize("workers", [0, 2])
def test_bench_tiny_training(benchmark, jpeg_folder, tmp_path, workers):
    """``bridgetower-tiny`` (64-px images) trained on the JPEG folder: samples/s and data wait."""
    stream, tok = _stream(jpeg_folder, workers, 64)
    torch.manual_seed(0)
    model = create_model("bridgetower-tiny", task="pretraining", **{"text.vocab_size": len(tok)})
    opt = build_optimizer(model, lr=1e-4)
    steps = {"n": 0}
    records: list[dict] = []

    def run():
        steps["n"] += BATCHES
        cfg = TrainerConfig(output_dir=tmp_path / f"run{steps['n']}", max_steps=BATCHES, log_every=BATCHES,
                            progress=False, plot=False)
        trainer = Trainer(model, PretrainingObjective(), opt, stream, cfg)
        t0 = time.perf_counter()
        for _ in range(BATCHES):
            trainer.train_step()
        records.append({"s": time.perf_counter() - t0})  # the workers keep running across rounds

    benchmark.pedantic(run, rounds=3, iterations=1, warmup_rounds=1)
    rate = BATCHES * BATCH / benchmark.stats.stats.median
    benchmark.extra_info["samples_per_s"] = rate
    # the data-wait share of one logged run
    cfg = TrainerConfig(output_dir=tmp_path / "logged", max_steps=BATCHES, log_every=BATCHES, progress=False, plot=False)
    logged = Trainer(model, PretrainingObjective(), opt, stream, cfg).train()
    stream.close()
    wait = logged[-1]["data_wait_share"]
    benchmark.extra_info["data_wait_share"] = wait
    _RESULTS[f"train_{workers}"] = rate
    _RESULTS[f"wait_{workers}"] = wait
    if workers:
        print(f"\ntiny training: {_RESULTS['train_0']:.1f} vs {rate:.1f} samples/s (0 vs 2 workers), ratio "
              f"{rate / _RESULTS['train_0']:.2f}; data wait share {_RESULTS['wait_0']:.2f} vs {wait:.2f}")
