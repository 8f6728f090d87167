"""Multi-process training on CPU with gloo, against 1-process runs of the same global batch.

One ``torchrun --nproc_per_node=2`` launch (loopback only) runs this file as a script: a DDP
run of ``STEPS`` steps; for DDP and for FSDP the same run stopped after the step-``CKPT``
checkpoint (``train(stop_after=...)``: no final checkpoint, as a killed job) and then resumed
by trainer, model, optimizer and data stream built anew and restored from the files only; a
2-process run resumed from a 1-process checkpoint; the ITC all-gather gradient check.
(Processes are started once because starting them costs more than the training here.)

Around it this process runs the 1-process reference (plain :class:`Trainer`), the 1-process
checkpoint, and a 1-process resume from the 2-process checkpoint.  Final parameters must
agree to float32 rounding.  Both ranks record every file write under the run directories
(``sys.addaudithook``: Python-level opens for writing, renames, removals, mkdirs) to show
that only rank 0 writes.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from bridgetower.data import PretrainingCollator, SyntheticSceneDataset, build_scene_tokenizer
from bridgetower.data.scenes import SceneConfig
from bridgetower.data.transforms import ImageTransform
from bridgetower.layers.heads import itc_loss
from bridgetower.models import BatchSpec, BridgeTowerForPretraining, create_model
from bridgetower.training.distributed import (
    DistributedContext,
    DistributedTrainer,
    ShardedBatchStream,
    all_gather_with_grad,
    canonical_optimizer_state_dict,
    fsdp_units,
    init_distributed,
    parallelize,
    shard_batch,
    shard_range,
)
from bridgetower.training.objectives import PretrainingObjective
from bridgetower.training.optim import build_optimizer, build_scheduler
from bridgetower.training.stream import BatchStream
from bridgetower.training.trainer import Trainer, TrainerConfig, seed_everything

STEPS = 3
CKPT = 1
GLOBAL_BATCH = 4
IMAGE = 32
STRATEGIES = ("ddp", "fsdp")
SPEC = BridgeTowerForPretraining.batch_spec  # the keys the pretraining step declares


def _objective_accepts_shards() -> bool:
    """Whether PretrainingObjective takes a rank's shard: pixel_values with extra ITM images
    after the pair images (and, with the same change, the ``mlm_normalizer`` key)."""
    from bridgetower.training.objectives import check_pretraining_batch

    b = {"input_ids": torch.zeros(2, 3, dtype=torch.long), "attention_mask": torch.ones(2, 3, dtype=torch.long),
         "pixel_values": torch.zeros(3, 3, 4, 4), "itm_image_index": torch.tensor([0, 2]),
         "itm_labels": torch.tensor([1, 0])}
    try:
        check_pretraining_batch(b, mlm=False, itm=True, itc=False)
    except ValueError:
        return False
    return True


needs_sharded_objective = pytest.mark.skipif(
    not _objective_accepts_shards(),
    reason="bridgetower/training/objectives.py does not yet accept rank shards (extra ITM images after "
    "the pair images, mlm_normalizer); the edit is listed in the distributed section's report",
)


# ------------------------------------------------------------------------------ shared setup
def _tokenizer():
    return build_scene_tokenizer()


def _model(tok):
    seed_everything(11)
    return create_model(
        "bridgetower-tiny",
        task="pretraining",
        **{
            "text.vocab_size": len(tok), "vision.width": 32, "vision.layers": 2, "vision.heads": 2,
            "vision.image_size": IMAGE, "text.hidden_size": 32, "text.num_layers": 2, "text.num_heads": 2,
            "text.intermediate_size": 64, "fusion.hidden_size": 32, "fusion.num_layers": 2,
            "fusion.num_heads": 2, "fusion.intermediate_size": 64, "itc_dim": 16,
        },
    )


def _stream(tok):
    ds = SyntheticSceneDataset(64, seed=5, config=SceneConfig(image_size=IMAGE), transform=ImageTransform(IMAGE),
                               tokenizer=tok)
    collator = PretrainingCollator.from_tokenizer(tok, mlm_probability=0.3, itm_negative_fraction=0.5)
    return BatchStream(ds, collator, GLOBAL_BATCH, seed=3)


def _config(out: Path) -> TrainerConfig:
    every = CKPT if out.name.endswith("_part") else 0  # the other runs: a final checkpoint only
    return TrainerConfig(output_dir=out, max_steps=STEPS, grad_accum_steps=2, max_grad_norm=1.0,
                         checkpoint_every=every, keep_checkpoints=0, log_every=1, progress=False, plot=False)


def _optim(model):
    # eps 1e-4: parameters whose true gradient is 0 (attention key biases) get float32 noise as
    # gradient; Adam's default eps would turn that noise into lr-sized steps of arbitrary sign
    opt = build_optimizer(model, lr=2e-3, eps=1e-4, cross_modal_multiplier=2.0, head_multiplier=3.0)
    return opt, build_scheduler(opt, total_steps=STEPS, warmup=1)


def _trainer(out: Path, ctx: DistributedContext | None = None, strategy: str = "ddp"):
    tok = _tokenizer()
    model = _model(tok)
    if ctx is None:
        objective = PretrainingObjective(mlm_weight=1.0, itm_weight=1.0, itc_weight=1.0)
        opt, sched = _optim(model)
        return Trainer(model, objective, opt, _stream(tok), _config(out), scheduler=sched)
    objective = PretrainingObjective(mlm_weight=1.0, itm_weight=1.0, itc_weight=1.0, itc_gather=all_gather_with_grad,
                                     rank=ctx.rank)
    par = parallelize(model, objective, ctx, strategy=strategy)
    opt, sched = _optim(model)  # after parallelize: FSDP replaces the parameters
    return DistributedTrainer(par, opt, _stream(tok), _config(out), scheduler=sched)


# ------------------------------------------------------------------------------- the workers
def _record_writes(runs: Path, events: list) -> None:
    prefix = str(runs)

    def hook(event, args):
        if event == "open" and args and isinstance(args[0], (str, bytes, os.PathLike)):
            path, mode, flags = str(os.fsdecode(args[0])), args[1], args[2] or 0
            writing = (mode is not None and any(c in str(mode) for c in "wax+")) or (
                flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)
            )
            if writing and path.startswith(prefix):
                events.append([event, path])
        elif event in ("os.rename", "os.remove", "os.rmdir", "os.mkdir", "shutil.rmtree", "os.truncate"):
            paths = [str(os.fsdecode(a)) for a in args if isinstance(a, (str, bytes, os.PathLike))]
            if any(p.startswith(prefix) for p in paths):
                events.append([event, *paths])

    sys.addaudithook(hook)


def _gather_check(root: Path, ctx: DistributedContext) -> None:
    g = torch.Generator().manual_seed(0)
    text = torch.nn.functional.normalize(torch.randn(2 * ctx.world_size, 8, generator=g), dim=-1)
    image = torch.nn.functional.normalize(torch.randn(2 * ctx.world_size, 8, generator=g), dim=-1)
    lo, hi = shard_range(text.shape[0], ctx.rank, ctx.world_size)
    t = text[lo:hi].clone().requires_grad_(True)
    i = image[lo:hi].clone().requires_grad_(True)
    temp = torch.tensor(0.3, requires_grad=True)
    loss = itc_loss(t, i, temp, gather=all_gather_with_grad, rank=ctx.rank)
    loss.backward()
    torch.save({"loss": loss.detach(), "t": t.grad, "i": i.grad, "temp": temp.grad},
               root / f"gather_rank{ctx.rank}.pt")


def _worker(root: Path) -> None:
    runs = root / "runs"
    ctx = init_distributed()
    events: list = []
    _record_writes(runs, events)
    t0 = time.perf_counter()
    for strategy in STRATEGIES:
        if strategy == "ddp":  # (FSDP: only the killed-and-resumed run, to save time)
            _trainer(runs / f"{strategy}_full", ctx, strategy).train()
        # "killed": stops after the step-CKPT checkpoint without a final one; everything is then
        # rebuilt from scratch and restored from the files only
        _trainer(runs / f"{strategy}_part", ctx, strategy).train(stop_after=CKPT)
        t = _trainer(runs / f"{strategy}_part", ctx, strategy)
        assert t.resume() == CKPT
        t.train()
        print(f"rank {ctx.rank}: {strategy} {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    t = _trainer(runs / "ddp_from_single", ctx, "ddp")
    t.resume(runs / "single_part" / "checkpoints" / f"step-{CKPT:08d}")
    t.train()
    _gather_check(root, ctx)
    (root / f"events_rank{ctx.rank}.json").write_text(json.dumps(events))
    ctx.shutdown()


# --------------------------------------------------------------------------------- launching
def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(root: Path) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo", MASTER_ADDR="127.0.0.1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
           "--master_addr=127.0.0.1", f"--master_port={_free_port()}", __file__, str(root)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    print(f"torchrun: {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    print("\n".join(line for line in proc.stderr.splitlines() if line.startswith("rank ")), file=sys.stderr)
    if proc.returncode != 0:
        raise AssertionError(f"torchrun failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("distributed")
    t0 = time.perf_counter()
    _trainer(root / "runs" / "single_full").train()
    _trainer(root / "runs" / "single_part").train(stop_after=CKPT)
    _launch(root)
    t = _trainer(root / "runs" / "single_from_ddp")
    t.resume(root / "runs" / "ddp_part" / "checkpoints" / f"step-{CKPT:08d}")
    t.train()
    print(f"distributed runs: {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return root


def _weights(root: Path, name: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(root / "runs" / name / "model" / "model.safetensors"))


def _assert_same_params(root: Path, name: str, ref: str = "single_full") -> None:
    got, want = _weights(root, name), _weights(root, ref)
    assert sorted(got) == sorted(want)
    start = _model(_tokenizer()).state_dict()
    moved = [k for k in want if not torch.equal(want[k], start[k].cpu())]
    assert len(moved) > len(want) // 2, "the reference run barely trained"
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-4, atol=2e-6, msg=lambda m, k=k: f"{name} {k}: {m}")


# ------------------------------------------------------------------------ multi-process tests
@needs_sharded_objective
def test_two_processes_ddp_match_one_process(runs):
    _assert_same_params(runs, "ddp_full")


@needs_sharded_objective
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_two_processes_killed_and_resumed_match_uninterrupted(runs, strategy):
    """For FSDP this is also the 2-process vs 1-process comparison (no separate FSDP run)."""
    part = runs / "runs" / f"{strategy}_part"
    ckpts = sorted(p.name for p in (part / "checkpoints").glob("step-*"))
    assert ckpts == [f"step-{s:08d}" for s in sorted({*range(CKPT, STEPS, CKPT), STEPS})]
    _assert_same_params(runs, f"{strategy}_part")
    if strategy == "ddp":
        _assert_same_params(runs, "ddp_part", ref="ddp_full")


@needs_sharded_objective
def test_checkpoints_do_not_depend_on_ranks_or_strategy(runs):
    """The step-CKPT checkpoints of the 1-process, DDP and FSDP runs hold the same model and
    the same index-keyed optimizer state."""
    from safetensors.torch import load_file

    def load(name):
        d = runs / "runs" / name / "checkpoints" / f"step-{CKPT:08d}"
        blob = torch.load(d / "training_state.pt", weights_only=True)
        state = json.loads((d / "trainer_state.json").read_text())
        return load_file(str(d / "model.safetensors")), blob["optimizer"], state

    want_w, want_o, want_t = load("single_part")
    for name in ("ddp_part", "fsdp_part"):
        w, o, t = load(name)
        assert t["stream"] == want_t["stream"] and t["step"] == want_t["step"] == CKPT
        assert sorted(w) == sorted(want_w)
        for k in want_w:
            torch.testing.assert_close(w[k], want_w[k], rtol=1e-4, atol=2e-6)
        assert [g["params"] for g in o["param_groups"]] == [g["params"] for g in want_o["param_groups"]]
        assert [g["lr"] for g in o["param_groups"]] == [g["lr"] for g in want_o["param_groups"]]
        assert sorted(o["state"]) == sorted(want_o["state"])
        for i, st in want_o["state"].items():
            for key, v in st.items():
                # fp32 summation-order noise scales with the tensor's values, not with each
                # element: an element near zero may differ in relative terms.
                atol = max(1e-9, 1e-5 * v.abs().max().item()) if v.numel() > 1 else 1e-9
                torch.testing.assert_close(o["state"][i][key], v, rtol=1e-4, atol=atol,
                                           msg=lambda m, n=name, i=i, key=key: f"{n} {i} {key}: {m}")


@needs_sharded_objective
def test_resume_with_a_different_number_of_processes(runs):
    _assert_same_params(runs, "single_from_ddp")  # 2-process checkpoint, resumed on 1
    _assert_same_params(runs, "ddp_from_single")  # 1-process checkpoint, resumed on 2


@needs_sharded_objective
def test_logged_losses_are_the_global_batch_losses(runs):
    from bridgetower.training.metrics import read_jsonl

    def losses(name):
        recs = [r for r in read_jsonl(runs / "runs" / name / "metrics.jsonl") if r["split"] == "train"]
        return [(r["step"], r["loss_mlm"], r["loss_itm"], r["loss_itc"], r["grad_norm"]) for r in recs]

    want = losses("single_full")
    assert [w[0] for w in want] == list(range(1, STEPS + 1))
    for name in ("ddp_full", "ddp_part", "fsdp_part"):
        got = losses(name)
        assert len(got) == len(want)
        for g, w in zip(got, want, strict=True):
            assert g == pytest.approx(w, rel=1e-5, abs=1e-6), name


@needs_sharded_objective
def test_itc_gather_gradients_equal_single_process(runs):
    parts = [torch.load(runs / f"gather_rank{r}.pt", weights_only=True) for r in range(2)]
    g = torch.Generator().manual_seed(0)
    text = torch.nn.functional.normalize(torch.randn(4, 8, generator=g), dim=-1).double().requires_grad_(True)
    image = torch.nn.functional.normalize(torch.randn(4, 8, generator=g), dim=-1).double().requires_grad_(True)
    temp = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    # the 1-process loss by the formula, in float64
    logits = image @ text.t() / temp
    labels = torch.arange(4)
    ce = torch.nn.functional.cross_entropy
    loss = (ce(logits, labels) + ce(logits.t(), labels)) / 2
    loss.backward()
    # each rank's loss is the mean over its rows; the job's loss is their average (as DDP does)
    assert float((parts[0]["loss"] + parts[1]["loss"]) / 2) == pytest.approx(loss.item(), rel=1e-6)
    for r, p in enumerate(parts):
        rows = slice(2 * r, 2 * r + 2)
        torch.testing.assert_close(p["t"].double() / 2, text.grad[rows], rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(p["i"].double() / 2, image.grad[rows], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close((parts[0]["temp"] + parts[1]["temp"]).double() / 2, temp.grad, rtol=1e-5, atol=1e-7)


@needs_sharded_objective
def test_only_rank_zero_writes_files(runs):
    events = json.loads((runs / "events_rank1.json").read_text())
    out_dirs = {str(runs / "runs" / n) for n in ("ddp_full", "ddp_part", "fsdp_part", "ddp_from_single")}
    # creating the (shared) output directory itself is the only file-system change allowed
    bad = [e for e in events if not (e[0] == "os.mkdir" and e[1] in out_dirs)]
    assert bad == [], bad
    # control: the same hook on rank 0 sees its metrics and checkpoint writes
    events0 = json.loads((runs / "events_rank0.json").read_text())
    assert any(e[0] == "open" and e[1].endswith("metrics.jsonl") for e in events0)
    assert any(e[0] == "open" and e[1].endswith("trainer_state.json") for e in events0)
    assert any(e[0] == "os.rename" and "step-" in e[-1] for e in events0)
    files = {p.name for p in (runs / "runs" / "ddp_full").iterdir()}
    assert {"checkpoints", "model", "metrics.jsonl", "metrics.csv"} <= files
    assert not any(n.startswith(".") for n in files)


# --------------------------------------------------------------------------- in-process tests
@pytest.fixture(scope="module")
def batch():
    tok = _tokenizer()
    return tok, next(_stream(tok))


def test_shard_batch_splits_rows_and_keeps_itm_pairs(batch):
    _, b = batch
    n = b["input_ids"].shape[0]
    assert SPEC is not None and "itm_image_index" in SPEC.image_index_keys and "pixel_values" in SPEC.image_keys
    shards = [shard_batch(b, r, 2, SPEC) for r in range(2)]
    torch.testing.assert_close(torch.cat([s["input_ids"] for s in shards]), b["input_ids"])
    torch.testing.assert_close(torch.cat([s["mlm_labels"] for s in shards]), b["mlm_labels"])
    for r, s in enumerate(shards):
        lo, hi = shard_range(n, r, 2)
        assert s["attention_mask"].shape[0] == hi - lo
        assert s["pixel_values"].shape[0] >= hi - lo
        torch.testing.assert_close(s["pixel_values"][: hi - lo], b["pixel_values"][lo:hi])
        # every ITM pair sees the image the global batch pairs it with
        want = b["pixel_values"][b["itm_image_index"][lo:hi]]
        torch.testing.assert_close(s["pixel_values"][s["itm_image_index"]], want)
        n_masked = int((b["mlm_labels"] != -100).sum())
        assert float(s["mlm_normalizer"]) == pytest.approx(n_masked / 2)


def test_shard_batch_rejects_bad_input(batch):
    _, b = batch
    with pytest.raises(ValueError, match="not divisible by the world size 3"):
        shard_batch(b, 0, 3, SPEC)
    with pytest.raises(ValueError, match="rank"):
        shard_batch(b, 2, 2, SPEC)
    with pytest.raises(TypeError, match="dict batch"):
        shard_batch([b], 0, 2, SPEC)
    bad = dict(b, itm_image_index=b["itm_image_index"] + 10)
    with pytest.raises(ValueError, match="itm_image_index values"):
        shard_batch(bad, 0, 2, SPEC)


def test_shard_batch_follows_the_declared_spec():
    """Image keys and image-index keys come from the spec, not from the collator's names:
    two index keys share the extra images they point to; without a spec rows are split."""
    spec = BatchSpec(keys=("ids", "img", "img_mask", "idx_a", "idx_b", "names"), image_keys=("img", "img_mask", "names"),
                     image_index_keys=("idx_a", "idx_b"))
    b = {"ids": torch.arange(4).unsqueeze(1), "img": torch.arange(4.0).view(4, 1, 1) * 10,
         "img_mask": torch.ones(4, 2, dtype=torch.long), "idx_a": torch.tensor([3, 0, 1, 2]),
         "idx_b": torch.tensor([2, 3, 1, 0]), "names": ["a", "b", "c", "d"], "scale": torch.tensor(2.0)}
    s = shard_batch(b, 0, 2, spec)
    assert s["ids"].tolist() == [[0], [1]] and s["scale"] is b["scale"]
    assert s["img"].flatten().tolist() == [0.0, 10.0, 20.0, 30.0]  # own rows 0, 1, then rows 2 and 3
    assert s["names"] == ["a", "b", "c", "d"] and s["img_mask"].shape == (4, 2)
    for key in ("idx_a", "idx_b"):  # each pair still sees the image the global batch gave it
        torch.testing.assert_close(s["img"][s[key]], b["img"][b[key][:2]])
    s1 = shard_batch(b, 1, 2, spec)
    assert s1["img"].flatten().tolist() == [20.0, 30.0, 0.0, 10.0]
    torch.testing.assert_close(s1["img"][s1["idx_b"]], b["img"][b["idx_b"][2:]])
    plain = shard_batch(b, 1, 2)
    assert plain["img"].flatten().tolist() == [20.0, 30.0] and plain["idx_a"].tolist() == [1, 2]
    with pytest.raises(ValueError, match="idx_b must be a"):
        shard_batch(dict(b, idx_b=torch.zeros(3, dtype=torch.long)), 0, 2, spec)


@needs_sharded_objective
def test_sharded_objective_averages_to_the_global_objective(batch):
    """Simulate 2 ranks in one process: the ranks' mean losses equal the 1-process losses
    (MLM normalised by the global token count, ITM negatives from the other shard, ITC
    against the other shard's embeddings)."""
    tok, b = batch
    model = _model(tok).eval()
    glob = PretrainingObjective(mlm_weight=1.0, itm_weight=1.0, itc_weight=1.0)
    shards = [shard_batch(b, r, 2, SPEC) for r in range(2)]
    with torch.no_grad():
        want_total, want = glob(model, b)
        embeds = []
        for s in shards:
            k = s["attention_mask"].shape[0]
            ts, vs = model.encode_text(s["input_ids"], s["attention_mask"]), model.encode_image(s["pixel_values"][:k])
            embeds.append(model.itc_embeds(ts, vs))
        totals, parts = [], []
        for r, s in enumerate(shards):
            calls = []

            def gather(x, r=r, calls=calls):  # own block first: a column permutation of the global logits
                other = embeds[1 - r][len(calls) % 2]
                calls.append(1)
                return torch.cat([x, other])

            total, m = PretrainingObjective(mlm_weight=1.0, itm_weight=1.0, itc_weight=1.0, itc_gather=gather)(model, s)
            totals.append(total)
            parts.append(m)
    for key in ("loss_mlm", "loss_itm", "loss_itc"):
        assert float((parts[0][key] + parts[1][key]) / 2) == pytest.approx(float(want[key]), rel=1e-5), key
    assert float(sum(totals) / 2) == pytest.approx(float(want_total), rel=1e-5)


def test_sharded_stream_state_is_the_global_position(batch):
    tok, _ = batch
    plain, sharded = _stream(tok), ShardedBatchStream(_stream(tok), rank=1, world_size=2, spec=SPEC)
    assert sharded.batch_size == GLOBAL_BATCH // 2 and sharded.global_batch_size == GLOBAL_BATCH
    next(plain), next(sharded)
    assert sharded.state_dict() == plain.state_dict()
    want = shard_batch(next(plain), 1, 2, SPEC)
    got = next(sharded)
    torch.testing.assert_close(got["mlm_input_ids"], want["mlm_input_ids"])
    with pytest.raises(ValueError, match="not divisible"):
        ShardedBatchStream(_stream(tok), rank=0, world_size=3)


def test_single_process_context_and_fallbacks(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    ctx = init_distributed(device="cpu")
    assert (ctx.rank, ctx.world_size, ctx.backend, ctx.is_distributed) == (0, 1, None, False)
    x = torch.randn(3, 4, requires_grad=True)
    assert all_gather_with_grad(x) is x
    with pytest.raises(ValueError, match="backend"):
        init_distributed(backend="mpi")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    with pytest.raises(ValueError, match="MASTER_ADDR"):
        init_distributed(device="cpu")
    monkeypatch.setenv("RANK", "5")
    with pytest.raises(ValueError, match="RANK"):
        init_distributed(device="cpu")
    with pytest.raises(ValueError, match="strategy"):
        parallelize(torch.nn.Linear(2, 2), lambda m, b: m(b), ctx, strategy="zero3")


def test_fsdp_units_are_called_through_forward(batch):
    """The units are the modules of the types the model declares, none inside another, and
    every one runs its own forward in a training step (FSDP2 gathers a unit's parameters
    only then)."""
    tok, b = batch
    model = _model(tok)
    types = model.fsdp_unit_types()
    assert types and all(isinstance(t, type) for t in types)
    units = fsdp_units(model)
    assert units and all(isinstance(u, types) for u in units)
    for u in units:  # no unit inside another
        assert not any(v is not u and any(m is v for m in u.modules()) for v in units)
    covered = {id(m) for u in units for m in u.modules()}
    assert all(id(m) in covered for m in model.modules() if isinstance(m, types) and any(True for _ in m.parameters()))
    called = set()
    hooks = [u.register_forward_pre_hook(lambda m, args, i=i: called.add(i)) for i, u in enumerate(units)]
    try:
        PretrainingObjective(mlm_weight=1.0, itm_weight=1.0, itc_weight=1.0)(model, shard_batch(b, 0, 1, SPEC))
    finally:
        for h in hooks:
            h.remove()
    assert called == set(range(len(units))), [type(units[i]).__name__ for i in set(range(len(units))) - called]
    assert fsdp_units(model, types=(torch.nn.Embedding,)) == [m for m in model.modules() if isinstance(m, torch.nn.Embedding)]
    opt, _ = _optim(model)
    assert canonical_optimizer_state_dict(model, opt) == opt.state_dict()


def test_distributed_trainer_shards_by_the_model_spec(tmp_path, monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    tok = _tokenizer()
    ctx = init_distributed(device="cpu")
    model = _model(tok)
    par = parallelize(model, PretrainingObjective(), ctx, strategy="ddp")
    opt, sched = _optim(model)
    trainer = DistributedTrainer(par, opt, _stream(tok), _config(tmp_path / "one"), scheduler=sched)
    assert isinstance(trainer.stream, ShardedBatchStream) and trainer.stream.spec is SPEC


if __name__ == "__main__":  # run by torchrun from the `runs` fixture
    _worker(Path(sys.argv[1]))
