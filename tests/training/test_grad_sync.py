"""Gradient accumulation under DDP / FSDP2 communicates once per optimizer step.

Two spawned processes (gloo, CPU) train a small model for ``STEPS`` optimizer steps of
``ACCUM`` micro-batches with the :class:`DistributedTrainer`, once as shipped and once with
the gradient sync of every micro-batch forced on (the behaviour before ``no_sync``).  DDP's
all-reduces are counted with a communication hook, FSDP2's gradient reductions by wrapping
its reduce function.  Final parameters are compared with a 1-process run of the same global
batches (the reference: plain :class:`Trainer`).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from bridgetower.training.distributed import DistributedTrainer, init_distributed, parallelize
from bridgetower.training.distributed.parallel import objective_leaves_parameters_unused
from bridgetower.training.objectives import PretrainingObjective
from bridgetower.training.stream import BatchStream
from bridgetower.training.trainer import Trainer, TrainerConfig, seed_everything

STEPS, ACCUM, GLOBAL_BATCH = 3, 4, 8


class Net(nn.Module):
    """Two linear layers and a 0-d scale (a parameter FSDP2 keeps replicated)."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(6, 16)
        self.fc2 = nn.Linear(16, 1)
        self.scale = nn.Parameter(torch.tensor(1.0))

    def forward(self, x):
        return self.scale * self.fc2(torch.tanh(self.fc1(x)))[:, 0]


class Data:
    def __len__(self):
        return 64

    def __getitem__(self, i):
        x = torch.randn(6, generator=torch.Generator().manual_seed(i))
        return x, x.sum().sin()


def collate(samples, generator=None):
    x = torch.stack([s[0] for s in samples])
    return {"x": x + 0.1 * torch.randn(x.shape, generator=generator), "y": torch.stack([s[1] for s in samples])}


class Objective:
    leaves_parameters_unused = False  # every parameter gets a gradient: no unused-parameter search

    def __call__(self, model, batch):
        loss = ((model(batch["x"]) - batch["y"]) ** 2).mean()
        return loss, {}


def _parts(out: Path):
    seed_everything(0)
    model = Net()
    cfg = TrainerConfig(output_dir=out, max_steps=STEPS, grad_accum_steps=ACCUM, max_grad_norm=None,
                        log_every=1, progress=False, plot=False)
    return model, BatchStream(Data(), collate, GLOBAL_BATCH, seed=1), cfg


class _AlwaysSync(DistributedTrainer):
    """The loop before this change: every micro-batch's backward communicates."""

    def gradient_sync(self, enabled):
        return contextlib.nullcontext()


def _worker(rank: int, root: str, port: int) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    from torch.distributed.fsdp._fully_shard import _fsdp_param_group

    ctx = init_distributed(device="cpu")
    counts, results = {"n": 0}, {}

    def counting_allreduce(state, bucket):
        counts["n"] += 1
        fut = torch.distributed.all_reduce(bucket.buffer(), async_op=True).get_future()
        return fut.then(lambda f: f.value()[0] / 2)

    reduce = _fsdp_param_group.foreach_reduce
    all_reduce = torch.distributed.all_reduce

    def counting_reduce(*a, **k):
        counts["n"] += 1
        return reduce(*a, **k)

    def counting_all_reduce(tensor, *a, **k):  # the replicated scalar's gradient (0-d), not the metrics
        counts["n"] += tensor.ndim == 0
        return all_reduce(tensor, *a, **k)

    for strategy in ("ddp", "fsdp"):
        for cls in (DistributedTrainer, _AlwaysSync):
            name = f"{strategy}_{cls.__name__}"
            model, stream, cfg = _parts(Path(root) / name)
            par = parallelize(model, Objective(), ctx, strategy=strategy)
            if strategy == "ddp":
                results["ddp_find_unused"] = par.wrapped.find_unused_parameters
                par.wrapped.register_comm_hook(None, counting_allreduce)
            else:
                _fsdp_param_group.foreach_reduce = counting_reduce
                torch.distributed.all_reduce = counting_all_reduce
            opt = torch.optim.SGD(model.parameters(), lr=0.1)
            counts["n"] = 0
            trainer = cls(par, opt, stream, cfg)
            trainer.train()
            _fsdp_param_group.foreach_reduce, torch.distributed.all_reduce = reduce, all_reduce
            results[name] = counts["n"]
    if rank == 0:
        (Path(root) / "counts.json").write_text(json.dumps(results))
    ctx.shutdown()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("grad_sync")
    model, stream, cfg = _parts(root / "single")
    Trainer(model, Objective(), torch.optim.SGD(model.parameters(), lr=0.1), stream, cfg).train()
    mp.start_processes(_worker, args=(str(root), _free_port()), nprocs=2, start_method="spawn")
    return root


def _weights(root: Path, name: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(root / name / "model" / "model.safetensors"))


def test_one_communication_per_optimizer_step(runs):
    counts = json.loads((runs / "counts.json").read_text())
    # DDP: one bucket (a tiny model), all-reduced once per optimizer step; before: per micro-batch
    assert counts["ddp_DistributedTrainer"] == STEPS
    assert counts["ddp__AlwaysSync"] == STEPS * ACCUM
    # FSDP2: one reduce of the sharded gradients and one average of the replicated scalar
    assert counts["fsdp_DistributedTrainer"] == 2 * STEPS
    assert counts["fsdp__AlwaysSync"] == 2 * STEPS * ACCUM
    assert counts["ddp_find_unused"] is False


@pytest.mark.parametrize("name", ["ddp_DistributedTrainer", "fsdp_DistributedTrainer", "ddp__AlwaysSync",
                                  "fsdp__AlwaysSync"])
def test_parameters_equal_the_one_process_run(runs, name):
    want, got = _weights(runs, "single"), _weights(runs, name)
    seed_everything(0)
    start = Net().state_dict()
    assert all(not torch.equal(want[k], start[k]) for k in want)  # the reference trained
    assert sorted(got) == sorted(want)
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-5, atol=1e-6)


def test_find_unused_parameters_only_when_the_objective_leaves_some():
    net = Net()
    assert objective_leaves_parameters_unused(PretrainingObjective(itc_weight=0.0), net) is True
    assert objective_leaves_parameters_unused(
        PretrainingObjective(mlm_weight=1.0, itm_weight=1.0, itc_weight=1.0), net) is False
    assert objective_leaves_parameters_unused(Objective(), net) is False
    assert objective_leaves_parameters_unused(lambda m, b: None, net) is True  # unknown: the safe choice
