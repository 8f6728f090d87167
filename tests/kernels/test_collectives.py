"""all_gather_with_grad: two gloo processes against the single-process formula in float64."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from bridgetower.kernels.collectives import AllGatherWithGrad, all_gather_with_grad

WORLD = 2
ROWS = 3  # per rank: an odd size
DIM = 5


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(WORLD * ROWS, DIM, generator=g, dtype=torch.float64)
    w = torch.randn(WORLD * ROWS, DIM, generator=g, dtype=torch.float64)  # per-rank loss weights
    return x, w


def _rank_loss(gathered: torch.Tensor, w: torch.Tensor, rank: int) -> torch.Tensor:
    """A loss that differs per rank and is not linear in the gathered tensor."""
    return ((gathered * w).sum(1) ** 2).sum() * (rank + 1)


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        x, w = _data()
        mine = x[rank * ROWS : (rank + 1) * ROWS].clone().requires_grad_(True)
        gathered = all_gather_with_grad(mine)
        _rank_loss(gathered, w, rank).backward()
        bad = None
        try:
            all_gather_with_grad(torch.zeros(rank + 1, DIM))
        except ValueError as e:
            bad = str(e)
        torch.save({"gathered": gathered.detach(), "grad": mine.grad, "bad": bad}, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_processes_match_the_single_process_gradient(tmp_path):
    mp.spawn(_worker, args=(str(tmp_path / "pg"), str(tmp_path)), nprocs=WORLD, join=True)
    x, w = _data()
    ref = x.clone().requires_grad_(True)
    sum(_rank_loss(ref, w, r) for r in range(WORLD)).backward()  # the loss of every rank, in one process
    for rank in range(WORLD):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        torch.testing.assert_close(got["gathered"], x, rtol=0, atol=0)
        torch.testing.assert_close(got["grad"], ref.grad[rank * ROWS : (rank + 1) * ROWS], rtol=1e-12, atol=1e-12)
        assert "same shape on every rank" in got["bad"] and "(1, 5)" in got["bad"] and "(2, 5)" in got["bad"]


def test_without_a_process_group_returns_the_input():
    assert not dist.is_initialized()
    x = torch.randn(3, 4, requires_grad=True)
    assert all_gather_with_grad(x) is x
    with pytest.raises(TypeError, match="expects a tensor"):
        all_gather_with_grad([1.0])
    with pytest.raises(ValueError, match="leading batch dimension"):
        all_gather_with_grad(torch.tensor(1.0))
    assert issubclass(AllGatherWithGrad, torch.autograd.Function)
