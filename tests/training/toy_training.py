"""A small stand-in training set-up shared by the trainer tests: a module with dropout (global
RNG), a cross-modal-named part and a head; a map-style data set; a collate function with
per-batch randomness; and :func:`make_trainer`."""

from __future__ import annotations

import torch
from torch import nn

from bridgetower.data import SKIP_REASONS, Skipped
from bridgetower.training.optim import build_optimizer, build_scheduler
from bridgetower.training.stream import BatchStream
from bridgetower.training.trainer import Trainer, TrainerConfig, seed_everything


class Toy(nn.Module):
    """Dropout (global RNG) + a cross-modal-named part + a head."""

    def __init__(self):
        super().__init__()
        self.text_model = nn.Sequential(nn.Linear(6, 8), nn.GELU(), nn.Dropout(0.2))
        self.cross_modal_text_transform = nn.Linear(8, 8)
        self.norm = nn.LayerNorm(8)
        self.itm_score = nn.Linear(8, 1)

    def forward(self, x):
        return self.itm_score(self.norm(self.cross_modal_text_transform(self.text_model(x))))[:, 0]


class ToyData:
    """``size`` samples (10: 10 // 4 = 2 full batches per epoch, several epochs in a short
    run); the indices in ``bad`` are :class:`Skipped` markers with their reason."""

    def __init__(self, size: int = 10, bad: dict[int, str] | None = None):
        self.size = size
        self.bad = dict(bad or {})

    def __len__(self):
        return self.size

    def __getitem__(self, i):
        if i in self.bad:
            return Skipped(self.bad[i], f"sample {i}")
        g = torch.Generator().manual_seed(i)
        x = torch.randn(6, generator=g)
        return x, x.sum().tanh()


def toy_collate(samples, generator=None):
    """Stacks the samples; drops and counts the Skipped ones in ``skipped`` (only the counts
    when every sample was skipped, as the package's collators do)."""
    skipped = torch.zeros(len(SKIP_REASONS), dtype=torch.long)
    kept = []
    for s in samples:
        if isinstance(s, Skipped):
            skipped[SKIP_REASONS.index(s.reason)] += 1
        else:
            kept.append(s)
    if not kept:
        return {"skipped": skipped}
    x = torch.stack([s[0] for s in kept])
    y = torch.stack([s[1] for s in kept])
    noise = torch.randn(x.shape, generator=generator) * 0.1  # per-batch randomness
    return {"x": x + noise, "y": y, "flip": torch.rand(len(kept)) < 0.5, "skipped": skipped}  # + global RNG


def toy_objective(model, batch):
    pred = model(batch["x"])
    target = torch.where(batch["flip"], -batch["y"], batch["y"])
    loss = ((pred - target) ** 2).mean()
    return loss, {"acc_sign": ((pred > 0) == (target > 0)).float().mean()}


def toy_eval(model):
    torch.rand(3)  # evaluation that consumes RNG must not change the training run
    return {"acc_eval": 0.5}


def make_trainer(tmp_path, name, *, max_steps=6, precision="fp32", accum=2, eval_fn=None, data=None, **kw):
    """A Trainer of :class:`Toy` writing to ``tmp_path / name`` (seeded: every call builds the
    same run)."""
    seed_everything(123)
    model = Toy()
    opt = build_optimizer(model, lr=1e-2)
    sched = build_scheduler(opt, total_steps=max_steps, warmup=2)
    stream = BatchStream(data if data is not None else ToyData(), toy_collate, 4, seed=7)
    settings = {"log_every": 1, "progress": False, "plot": False, **kw}
    cfg = TrainerConfig(output_dir=tmp_path / name, max_steps=max_steps, grad_accum_steps=accum, max_grad_norm=0.5,
                        precision=precision, **settings)
    return Trainer(model, toy_objective, opt, stream, cfg, scheduler=sched, eval_fn=eval_fn)
