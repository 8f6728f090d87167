"""Splitting a global batch over the ranks: :func:`shard_batch`, :class:`ShardedBatchStream`.

Every rank draws the *same* global batch and keeps its rows ``rank*B/W : (rank+1)*B/W``.
Which keys need more than a row split is declared by the model, not known here: its
:class:`~bridgetower.models.BatchSpec` (``model.batch_spec``) names the *image keys* (one
row per image; a shard appends the images its index keys point to in other shards) and the
*image-index keys* (indices into those rows; renumbered into the shard's rows).  See the
package doc of :mod:`bridgetower.training.distributed` for why.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from ...models import BatchSpec

__all__ = ["ShardedBatchStream", "shard_batch", "shard_range"]

#: Keys that describe the whole global batch and are never split: ``skipped`` (the counts of
#: the samples the collator dropped, per reason; every rank sees the same counts).
_WHOLE_KEYS = frozenset({"skipped"})


def shard_range(batch_size: int, rank: int, world_size: int) -> tuple[int, int]:
    """Rows ``[start, stop)`` of a global batch of ``batch_size`` kept by ``rank``."""
    if not (isinstance(world_size, int) and world_size >= 1 and isinstance(rank, int) and 0 <= rank < world_size):
        raise ValueError(f"need ints 0 <= rank < world_size, got rank={rank!r}, world_size={world_size!r}")
    if batch_size % world_size:
        raise ValueError(
            f"the global batch size {batch_size} is not divisible by the world size {world_size}; "
            "choose a batch size that is a multiple of the number of processes"
        )
    per = batch_size // world_size
    return rank * per, (rank + 1) * per


def _global_rows(batch: Mapping[str, Any], special: set[str]) -> int:
    """The global batch size: the leading size of the first pair-row tensor (not an image
    or index key), else of the first tensor."""
    tensors = [(k, v) for k, v in batch.items() if isinstance(v, torch.Tensor) and v.ndim > 0 and k not in _WHOLE_KEYS]
    for key, value in tensors:
        if key not in special:
            return int(value.shape[0])
    if tensors:
        return int(tensors[0][1].shape[0])
    raise ValueError(f"cannot tell the batch size: no tensor among the keys {sorted(batch)}")


def _local_images(
    batch: Mapping[str, Any], index_keys: tuple[str, ...], b: int, start: int, stop: int
) -> tuple[torch.Tensor | None, dict[str, torch.Tensor]]:
    """The images of other shards that this shard's index keys point to (sorted global
    rows), and each index key renumbered into ``own rows + those images``."""
    present = [k for k in index_keys if k in batch]
    if not present:
        return None, {}
    mine: dict[str, torch.Tensor] = {}
    for key in present:
        idx = batch[key]
        if not isinstance(idx, torch.Tensor) or idx.shape != (b,):
            raise ValueError(f"{key} must be a ({b},) tensor, got {getattr(idx, 'shape', idx)!r}")
        if b and (int(idx.min()) < 0 or int(idx.max()) >= b):
            raise ValueError(f"{key} values must lie in [0, {b}), got [{int(idx.min())}, {int(idx.max())}]")
        mine[key] = idx[start:stop]
    wanted = torch.cat([m.cpu() for m in mine.values()])
    extra = torch.unique(wanted[(wanted < start) | (wanted >= stop)])  # sorted
    remap = torch.full((b,), -1, dtype=torch.long)
    remap[start:stop] = torch.arange(stop - start)
    remap[extra] = torch.arange(stop - start, stop - start + extra.numel())
    local = {k: remap.to(m.device)[m].to(m.dtype) for k, m in mine.items()}
    return extra, local


def shard_batch(
    batch: Mapping[str, Any],
    rank: int,
    world_size: int,
    spec: BatchSpec | None = None,
    *,
    ignore_index: int = -100,
) -> dict[str, Any]:
    """The part of a global batch that ``rank`` of ``world_size`` trains on.

    Every tensor (and list/tuple) whose leading size is the global batch size ``B`` keeps rows
    ``rank*B/W : (rank+1)*B/W`` (:func:`shard_range`); other values are kept as they are.
    With a ``spec`` (the model's :class:`~bridgetower.models.BatchSpec`), its image keys keep
    the same rows followed by the images that this shard's image-index keys point to in
    other shards (in increasing order), and the image-index keys are renumbered into these
    local rows.  Without a spec every key is split by rows (except ``skipped``, the skip
    counts of the whole batch, which every rank keeps).  With ``mlm_labels`` the key
    ``mlm_normalizer`` (a float32 scalar: masked tokens of the global batch / ``W``, at least
    ``1/W``) is added: the objective divides the summed MLM token losses of the shard by it.
    ``world_size=1`` returns the batch with only ``mlm_normalizer`` added.
    """
    if not isinstance(batch, Mapping):
        raise TypeError(f"shard_batch expects a dict batch, got {type(batch).__name__}")
    if all(k in _WHOLE_KEYS for k in batch):  # every sample skipped: nothing to split
        return dict(batch)
    image_keys = tuple(spec.image_keys) if spec is not None else ()
    index_keys = tuple(spec.image_index_keys) if spec is not None else ()
    b = _global_rows(batch, set(image_keys) | set(index_keys))
    start, stop = shard_range(b, rank, world_size)
    extra, local_index = _local_images(batch, index_keys, b, start, stop)
    out: dict[str, Any] = {}
    for key, value in batch.items():
        if key in _WHOLE_KEYS:
            out[key] = value
        elif key in local_index:
            out[key] = local_index[key]
        elif isinstance(value, torch.Tensor) and value.ndim > 0 and value.shape[0] == b:
            part = value[start:stop]
            if key in image_keys and extra is not None and extra.numel():
                part = torch.cat([part, value.index_select(0, extra.to(value.device))], 0)
            out[key] = part
        elif isinstance(value, (list, tuple)) and len(value) == b:
            rows = list(value[start:stop])
            if key in image_keys and extra is not None:
                rows += [value[i] for i in extra.tolist()]
            out[key] = type(value)(rows) if isinstance(value, tuple) else rows
        else:
            out[key] = value
    labels = batch.get("mlm_labels")
    if isinstance(labels, torch.Tensor):
        n = int((labels != ignore_index).sum())
        out["mlm_normalizer"] = torch.tensor(max(n, 1) / world_size, dtype=torch.float32, device=labels.device)
    return out


class ShardedBatchStream:
    """A :class:`~bridgetower.training.stream.BatchStream` of *global* batches seen through
    :func:`shard_batch` (with the model's ``spec``): ``next()`` returns this rank's shard.
    ``state_dict()`` is the inner stream's (rank-independent), so a checkpoint resumes on
    any number of ranks."""

    def __init__(self, stream: Any, *, rank: int, world_size: int, spec: BatchSpec | None = None) -> None:
        for name in ("state_dict", "load_state_dict", "__next__"):
            if not hasattr(stream, name):
                raise TypeError(f"stream must have {name}() (a BatchStream), got {type(stream).__name__}")
        global_batch = getattr(stream, "batch_size", None)
        if isinstance(global_batch, int):
            shard_range(global_batch, rank, world_size)  # validates divisibility
        self.stream = stream
        self.rank = rank
        self.world_size = world_size
        self.spec = spec

    @property
    def global_batch_size(self) -> int | None:
        return getattr(self.stream, "batch_size", None)

    @property
    def batch_size(self) -> int | None:
        g = self.global_batch_size
        return None if g is None else g // self.world_size

    def state_dict(self) -> dict:
        return self.stream.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.stream.load_state_dict(state)

    def close(self) -> None:
        """Stop the wrapped stream's loader workers, if it has any."""
        close = getattr(self.stream, "close", None)
        if callable(close):
            close()

    def __iter__(self) -> Iterator[dict]:
        return self

    def __next__(self) -> dict:
        return shard_batch(next(self.stream), self.rank, self.world_size, self.spec)

    def __repr__(self) -> str:
        return (
            f"ShardedBatchStream(rank={self.rank}, world_size={self.world_size}, "
            f"global_batch_size={self.global_batch_size})"
        )
