"""Data-parallel training on PyTorch's own distributed engine (``torchrun``).

The pieces, in the order a training script uses them::

    ctx = init_distributed()                       # reads torchrun's env; gloo on CPU, NCCL on GPU
    model = BridgeTowerForPretraining(config)      # same seed on every rank
    objective = PretrainingObjective(itc_weight=1.0, itc_gather=all_gather_with_grad)
    par = parallelize(model, objective, ctx, strategy="ddp")   # or "fsdp" (FSDP2 fully_shard)
    optimizer = build_optimizer(model)             # after parallelize (FSDP swaps the parameters)
    stream = BatchStream(dataset, collate, global_batch_size, seed=seed)
    trainer = DistributedTrainer(par, optimizer, stream, TrainerConfig(...))
    trainer.train()
    ctx.shutdown()

**The global batch is split, not multiplied.**  Every rank draws the *same* global batch from
the same deterministic :class:`~bridgetower.training.stream.BatchStream` (same seed, same
collate randomness) and keeps its rows ``rank*B/W : (rank+1)*B/W`` (:func:`shard_batch`,
:class:`ShardedBatchStream`).  A run on ``W`` ranks therefore consumes exactly the samples of a
1-process run with the same ``batch_size`` and seed, step for step, and the data position in
a checkpoint is the same whatever ``W`` is: a run can be resumed on a different number of
ranks.  The price is that every rank loads and collates the whole global batch (cheap for the
bundled data; for heavy image decoding put it in the dataset's cache).  ``batch_size`` must be
divisible by the world size.

**Losses whose mean is over a variable-size subset.**  DDP/FSDP average the ranks' gradients.
That equals the gradient of the 1-process loss when every rank's loss is a mean over the same
number of rows (ITM, ITC: the shards are equal).  The MLM loss is a mean over the *masked
tokens*, whose number differs between shards, so :func:`shard_batch` adds
``mlm_normalizer`` = (masked tokens in the global batch) / ``W`` and the objective uses
``sum of the local token losses / mlm_normalizer``; averaged over the ranks this is the
global mean over all masked tokens.  (Without it each rank would weight its tokens by its own
count -- a different, if similar, loss.)

**ITM negatives pointing into another rank's shard.**  The collator pairs text ``i`` with image
``itm_image_index[i]`` anywhere in the global batch.  The model declares such keys in its
:class:`~bridgetower.models.BatchSpec` (``model.batch_spec``: image keys, image-index keys);
:func:`shard_batch` appends the images a shard needs but does not own after its own ``B/W``
images (``pixel_values`` then has more rows than the texts) and renumbers the index keys;
those extra images go through the vision tower again on this rank, and their gradient
contributions add up exactly as in one process.

**ITC across ranks.**  :func:`all_gather_with_grad` (:mod:`bridgetower.kernels.collectives`) concatenates a ``(b, E)`` tensor from all
ranks (rank order) and, in the backward pass, sums the gradients of the gathered copies back
to their owner, so the contrastive loss sees all ``B`` pairs and the gradient is the
1-process one.

**DDP / FSDP.**  The objective calls model methods other than ``forward`` (``encode_image``,
``fuse_pairs``...), so :func:`parallelize` wraps a small :class:`ObjectiveModule` whose
``forward(batch)`` runs ``objective(model, batch)``: DDP's gradient hooks and FSDP's
all-gathers are driven by that forward.  With ``strategy="fsdp"`` every module of the types
the model declares (``model.fsdp_unit_types()``: transformer blocks, co-attention layers,
bridges; see :func:`fsdp_units`) gets its own ``fully_shard`` unit and the wrapper is the root
unit; the optimizer must be built after :func:`parallelize`.

**Checkpoints are rank-independent.**  They hold the full model (safetensors + JSON, written by
rank 0 only) and the optimizer state keyed by parameter index exactly as a 1-process
``optimizer.state_dict()`` (for FSDP gathered with
:func:`torch.distributed.checkpoint.state_dict.get_model_state_dict` /
``get_optimizer_state_dict`` with ``full_state_dict=True, cpu_offload=True``), the RNG states of
rank 0 (every rank runs with the same RNG states) and the global data position.  So a
checkpoint of a 2-process run resumes on 1 process (plain :class:`Trainer`) and vice versa.
Every rank reads the checkpoint on resume: the output directory must be on a file system
shared by the nodes.

Only rank 0 writes files (metrics, trackers, plots, checkpoints, the final model); the
other ranks' :class:`~bridgetower.training.metrics.MetricsLogger` is replaced by a no-op.
Logged metrics are averaged over the ranks (``samples`` is summed).

The modules: :mod:`~.process_group` (the context, rank helpers, ``all_reduce_mean``),
:mod:`~.sharding` (``shard_batch``, ``ShardedBatchStream``), :mod:`~.parallel`
(``parallelize``, ``fsdp_units``), :mod:`~.state` (rank-free state dicts), :mod:`~.trainer`
(``DistributedTrainer``); ``all_gather_with_grad`` lives in :mod:`bridgetower.kernels.collectives`.
"""

from ...kernels.collectives import all_gather_with_grad
from .parallel import STRATEGIES, ObjectiveModule, ParallelModel, fsdp_units, parallelize
from .process_group import (
    DistributedContext,
    all_reduce_mean,
    barrier,
    get_rank,
    get_world_size,
    init_distributed,
    is_main_process,
    launched_by_torchrun,
    main_process_only,
    start_data_parallel,
)
from .sharding import ShardedBatchStream, shard_batch, shard_range
from .state import (
    canonical_optimizer_state_dict,
    full_model_state_dict,
    load_canonical_optimizer_state_dict,
    load_full_model_state_dict,
)
from .trainer import DistributedTrainer

__all__ = [
    "STRATEGIES",
    "DistributedContext",
    "DistributedTrainer",
    "ObjectiveModule",
    "ParallelModel",
    "ShardedBatchStream",
    "all_gather_with_grad",
    "all_reduce_mean",
    "barrier",
    "canonical_optimizer_state_dict",
    "fsdp_units",
    "full_model_state_dict",
    "get_rank",
    "get_world_size",
    "init_distributed",
    "is_main_process",
    "launched_by_torchrun",
    "load_canonical_optimizer_state_dict",
    "load_full_model_state_dict",
    "main_process_only",
    "parallelize",
    "shard_batch",
    "shard_range",
    "start_data_parallel",
]
