"""``BatchStream(num_workers=N)``: DataLoader worker processes produce the same batches, in the
same order, as loading in the training process; a stream restored from a state continues
exactly; a training run resumed with 2 workers ends with the parameters of the
uninterrupted 0-worker run."""

from __future__ import annotations

import io
import json
import multiprocessing
import os
import signal
import tarfile
import time

import pytest
import torch
from PIL import Image
from torch import nn

from bridgetower.data import ImageTextDataset, PretrainingCollator, WebDatasetPairs
from bridgetower.data.transforms import ImageTransform
from bridgetower.models.tokenizer import build_wordlevel_tokenizer
from bridgetower.training.stream import BatchStream
from bridgetower.training.trainer import Trainer, TrainerConfig, seed_everything

WORDS = ["a", "red", "green", "blue", "square", "circle", "on", "left", "right"]


def _jpeg(i: int) -> bytes:
    g = torch.Generator().manual_seed(i)
    arr = (torch.rand(24, 32, 3, generator=g) * 255).to(torch.uint8).numpy()
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG")
    return buf.getvalue()


def _caption(i: int) -> str:
    return f"a {WORDS[1 + i % 3]} {WORDS[4 + i % 2]} on the {WORDS[7 + i % 2]}"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("loader")
    lines = []
    for i in range(11):
        (root / f"{i}.jpg").write_bytes(_jpeg(i))
        lines.append(json.dumps({"image": f"{i}.jpg", "caption": _caption(i)}))
    lines.append(json.dumps({"image": "missing.jpg", "caption": "a lost image"}))  # a skipped sample
    (root / "index.jsonl").write_text("\n".join(lines) + "\n")
    shard = root / "pairs-000.tar"
    with tarfile.open(shard, "w") as tar:
        for i in range(9):
            for name, payload in ((f"{i:04d}.jpg", _jpeg(i)), (f"{i:04d}.txt", _caption(i).encode())):
                info = tarfile.TarInfo(name)
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
    tok = build_wordlevel_tokenizer(WORDS + ["the", "lost", "image"])
    return root, shard, tok


def _stream(data, kind: str, workers: int) -> BatchStream:
    root, shard, tok = data
    if kind == "folder":
        ds = ImageTextDataset(root / "index.jsonl", transform=ImageTransform(32), tokenizer=tok, max_length=12)
    else:
        ds = WebDatasetPairs(str(shard), transform=ImageTransform(32), tokenizer=tok, max_length=12)
    collate = PretrainingCollator.from_tokenizer(tok, mlm_probability=0.3, itm_negative_fraction=0.5)
    return BatchStream(ds, collate, 4, seed=7, num_workers=workers)


def _assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], torch.Tensor):
            assert torch.equal(a[k], b[k]), k
        else:
            assert a[k] == b[k], k


@pytest.mark.parametrize("kind", ["folder", "shards"])
def test_workers_give_the_batches_of_in_process_loading(data, kind):
    serial = _stream(data, kind, 0)
    want = [next(serial) for _ in range(7)]  # three epochs of the folder, more of the shard
    parallel = _stream(data, kind, 2)
    assert parallel.num_workers == (2 if kind == "folder" else 1)  # a stream is one sequence
    for w in want:
        _assert_same(w, next(parallel))
    assert parallel.state_dict() == serial.state_dict()
    if kind == "folder":  # the missing image is counted in the batch that would hold it
        assert sum(int(b["skipped"].sum()) for b in want) >= 1

    # restored from a state: continues with the same batches (workers start there)
    resumed = _stream(data, kind, 2)
    resumed.load_state_dict(_stream_state_after(data, kind, 3))
    for w in want[3:]:
        _assert_same(w, next(resumed))
    parallel.close()
    resumed.close()
    assert parallel._workers is None and resumed._workers is None


def _stream_state_after(data, kind, n):
    s = _stream(data, kind, 0)
    for _ in range(n):
        next(s)
    return s.state_dict()


def test_bad_num_workers():
    with pytest.raises(ValueError, match="num_workers must be an int >= 0"):
        BatchStream(list(range(8)), lambda s: s, 2, num_workers=-1)


# --------------------------------------------------------------- a run resumed with workers
class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 1)
        self.drop = nn.Dropout(0.3)  # global RNG of the training process

    def forward(self, x):
        return self.fc(self.drop(x))[:, 0]


class _Data:
    def __len__(self):
        return 10

    def __getitem__(self, i):
        x = torch.randn(6, generator=torch.Generator().manual_seed(i))
        return x, x.sum().tanh()


def _collate(samples, generator=None):
    x = torch.stack([s[0] for s in samples])
    return {"x": x + 0.1 * torch.randn(x.shape, generator=generator), "y": torch.stack([s[1] for s in samples])}


def _objective(model, batch):
    return ((model(batch["x"]) - batch["y"]) ** 2).mean(), {}


def _trainer(out, workers):
    seed_everything(0)
    model = _Net()
    cfg = TrainerConfig(output_dir=out, max_steps=6, grad_accum_steps=2, checkpoint_every=2, log_every=1,
                        progress=False, plot=False)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    return Trainer(model, _objective, opt, BatchStream(_Data(), _collate, 4, seed=3, num_workers=workers), cfg)


def test_run_resumed_with_two_workers_equals_the_uninterrupted_run(tmp_path):
    _trainer(tmp_path / "straight", 0).train()
    _trainer(tmp_path / "resumed", 2).train(stop_after=3)  # "killed" after the step-2 checkpoint
    t = _trainer(tmp_path / "resumed", 2)
    assert t.resume() == 2
    records = t.train()
    assert all(0 <= r["data_wait_share"] <= 1 for r in records if "data_wait_share" in r)
    from safetensors.torch import load_file

    want = load_file(str(tmp_path / "straight" / "model" / "model.safetensors"))
    got = load_file(str(tmp_path / "resumed" / "model" / "model.safetensors"))
    assert want.keys() == got.keys()
    for k in want:
        assert torch.equal(want[k], got[k]), k


# ------------------------------------------------------------------------- augmentation
def test_augmentation_is_per_batch_seeded_and_the_same_with_workers(data):
    pytest.importorskip("torchvision")
    from bridgetower.data.transforms import OFFICIAL_AUGMENTATION, AugmentedImageTransform

    root, _, tok = data

    def stream(workers, kind="randaug"):
        ds = ImageTextDataset(root / "index.jsonl", transform=AugmentedImageTransform(32, kind), tokenizer=tok,
                              max_length=12)
        collate = PretrainingCollator.from_tokenizer(tok, mlm_probability=0.3, itm_negative_fraction=0.5)
        return BatchStream(ds, collate, 4, seed=7, shuffle=False, num_workers=workers)

    serial = stream(0)
    rng = torch.get_rng_state()
    want = [next(serial) for _ in range(6)]
    assert torch.equal(torch.get_rng_state(), rng)  # the training process's RNG is untouched
    # the same image (in order: epoch 1 repeats epoch 0's images) is augmented differently
    assert not torch.equal(want[0]["pixel_values"], want[3]["pixel_values"])
    plain = ImageTransform(32)(Image.open(root / "0.jpg"))
    assert not torch.allclose(want[0]["pixel_values"][0], plain)
    parallel = stream(2)
    for w in want:
        _assert_same(w, next(parallel))
    parallel.close()
    assert OFFICIAL_AUGMENTATION == {"vqa": "randaug-geometric", "nlvr2": "randaug", "snli-ve": "randaug",
                                     "irtr": "randaug"}
    geo = AugmentedImageTransform(32, "randaug-geometric").pipeline.transforms
    assert not any(type(t).__name__ == "RandomHorizontalFlip" for t in geo)  # VQA: no flip ...
    assert not {"Color", "Contrast", "Posterize", "Solarize"} & set(geo[1]._AUGMENTATION_SPACE)  # ... no colour
    with pytest.raises(ValueError, match="kind must be one of"):
        AugmentedImageTransform(32, "autoaugment")


def test_resumed_shard_stream_does_not_decode_the_consumed_samples(data, monkeypatch):
    want = _stream(data, "shards", 0)
    next(want)
    state = want.state_dict()
    resumed = _stream(data, "shards", 0)
    resumed.load_state_dict(state)
    decoded = []
    decode = WebDatasetPairs._decode
    monkeypatch.setattr(WebDatasetPairs, "_decode", lambda self, raw: decoded.append(raw["__key__"]) or decode(self, raw))
    _assert_same(next(want), next(resumed))
    assert len(decoded) == 2 * 4  # the batch, once in each stream; not the 4 samples consumed before


def _attempt(out, ready, kill_at):
    torch.set_num_threads(1)
    trainer = _trainer(out, 2)
    try:
        trainer.resume()
    except FileNotFoundError:
        pass
    step = trainer.train_step

    def step_and_tell():
        result = step()
        if trainer.step == kill_at:
            ready.set()
            time.sleep(60)  # killed here, its loader workers mid-prefetch
        return result

    trainer.train_step = step_and_tell
    trainer.train()
    ready.set()
    os._exit(0)


def test_sigkill_with_workers_then_resume_equals_the_uninterrupted_run(tmp_path):
    fork = multiprocessing.get_context("fork")
    _trainer(tmp_path / "straight", 0).train()
    ready = fork.Event()
    child = fork.Process(target=_attempt, args=(tmp_path / "run", ready, 3))
    child.start()
    assert ready.wait(60)
    os.kill(child.pid, signal.SIGKILL)
    child.join(30)
    assert child.exitcode == -signal.SIGKILL
    child = fork.Process(target=_attempt, args=(tmp_path / "run", fork.Event(), -1))
    child.start()
    child.join(60)
    assert child.exitcode == 0
    from safetensors.torch import load_file

    want = load_file(str(tmp_path / "straight" / "model" / "model.safetensors"))
    got = load_file(str(tmp_path / "run" / "model" / "model.safetensors"))
    assert all(torch.equal(want[k], got[k]) for k in want)
