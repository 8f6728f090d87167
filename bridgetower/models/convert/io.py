"""Reading state dicts from disk: safetensors (validated, read lazily), pickles only with
``torch.load(weights_only=True)``, and the weight files of a Hugging Face directory.

The safetensors reader is our own so that each tensor can be read straight into the
parameter it loads (peak memory: one copy of the weights, no memory-mapped pages).  It checks
the file the way ``safetensors.safe_open`` does before reading anything: a header of sane
size that is a JSON object, known dtypes, offsets that lie inside the data area, cover it
exactly, do not overlap, and match each tensor's shape and dtype.  A bad file gets a
``ValueError`` naming it and the problem.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

__all__ = ["LazyTensor", "hf_weights_in", "read_safetensors_lazy", "read_state_dict"]

_SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}
# safetensors refuses headers above 100 MB
_MAX_HEADER_BYTES = 100_000_000


class LazyTensor:
    """One tensor of a ``.safetensors`` file, read on demand with plain file reads.

    Reading straight into the destination parameter (:meth:`read_into`) keeps the peak memory
    of loading at one copy of the weights (no state-dict copy, no memory-mapped pages).
    """

    def __init__(self, path: Path, dtype: torch.dtype, shape: tuple[int, ...], start: int, end: int):
        self.path, self.dtype, self.shape = path, dtype, torch.Size(shape)
        self.start, self.end = start, end

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def read_into(self, dst: torch.Tensor) -> None:
        if dst.dtype != self.dtype or not dst.is_contiguous() or dst.device.type != "cpu":
            dst.copy_(self.load())
            return
        with open(self.path, "rb") as f:
            f.seek(self.start)
            buf = dst.view(-1).view(torch.uint8).numpy()
            if f.readinto(buf) != self.end - self.start:
                raise ValueError(f"{self.path}: truncated tensor data")

    def load(self) -> torch.Tensor:
        t = torch.empty(self.shape, dtype=self.dtype)
        self.read_into(t)
        return t

    def __repr__(self) -> str:
        return f"LazyTensor({tuple(self.shape)}, {self.dtype})"


def read_safetensors_lazy(path: str | Path) -> dict[str, LazyTensor]:
    """The tensors of a ``.safetensors`` file as :class:`LazyTensor` (nothing read yet),
    after validating the header (see the module docstring)."""
    path = Path(path)
    size = path.stat().st_size

    def bad(problem: str) -> ValueError:
        return ValueError(f"{path}: not a valid safetensors file ({problem})")

    if size < 8:
        raise bad(f"{size} bytes, shorter than the 8-byte header length")
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        if n > min(_MAX_HEADER_BYTES, size - 8):
            raise bad(f"header length {n} exceeds the file ({size} bytes) or the 100 MB limit")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise bad(f"header is not JSON: {err}") from None
    if not isinstance(header, dict):
        raise bad("header is not a JSON object")
    data_start, data_size = 8 + n, size - 8 - n
    spans = []
    out = {}
    for key, info in header.items():
        if key == "__metadata__":
            continue
        if not isinstance(info, dict) or not {"dtype", "shape", "data_offsets"} <= set(info):
            raise bad(f"entry {key!r} lacks dtype/shape/data_offsets")
        dtype = _SAFETENSORS_DTYPES.get(info["dtype"])
        if dtype is None:
            raise bad(f"unsupported dtype {info['dtype']!r} for {key!r}")
        shape, offsets = info["shape"], info["data_offsets"]
        if not (isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)):
            raise bad(f"shape {shape!r} of {key!r}")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
            raise bad(f"data_offsets {offsets!r} of {key!r}")
        s, e = offsets
        if not 0 <= s <= e <= data_size:
            raise bad(f"{key!r} spans bytes [{s}, {e}) outside the data area of {data_size} bytes")
        want = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
        if e - s != want:
            raise bad(f"{key!r} holds {e - s} bytes, its shape {shape} and dtype need {want}")
        spans.append((s, e, key))
        out[key] = LazyTensor(path, dtype, tuple(shape), data_start + s, data_start + e)
    spans.sort()
    end = 0
    for s, e, key in spans:
        if s != end:
            raise bad(f"{key!r} starts at byte {s} of the data area, expected {end} (overlap or gap)")
        end = e
    if end != data_size:
        raise bad(f"the tensors cover {end} of {data_size} data bytes")
    return out


def read_state_dict(path: str | Path, *, lazy: bool = False) -> dict[str, Any]:
    """A state dict from ``.safetensors`` (validated; :class:`LazyTensor` values when ``lazy``)
    or from a pickle (``.ckpt``/``.bin``/``.pt``, read with ``torch.load(weights_only=True)``:
    no code in the file runs); a Lightning checkpoint gives its ``state_dict``."""
    path = Path(path)
    if path.suffix == ".safetensors":
        tensors = read_safetensors_lazy(path)
        return tensors if lazy else {k: t.load() for k, t in tensors.items()}
    obj = torch.load(str(path), map_location="cpu", weights_only=True)
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        return dict(obj["state_dict"])
    if isinstance(obj, Mapping):
        return dict(obj)
    raise ValueError(f"{path}: not a state dict or Lightning checkpoint")


def hf_weights_in(directory: str | Path) -> dict[str, Any]:
    """The weights of a Hugging Face model directory: ``model.safetensors``, the shards of
    ``model.safetensors.index.json``, or ``pytorch_model.bin`` (see
    :func:`~bridgetower.models.convert.sources.read_weights`)."""
    from .sources import local_locator, read_weights

    return read_weights(local_locator(Path(directory)), str(directory))
