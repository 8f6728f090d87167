"""The pyarrow tables of the official BridgeTower / ViLT data preparation: layouts, writing,
opening.

The official repository converts every corpus into Arrow IPC *file* format tables
(``pa.RecordBatchFileWriter``, i.e. ``pa.ipc.new_file``; magic bytes ``ARROW1``), one row
per image. The column layouts (``src/utils/write_*.py`` there) are:

=============== ============================================================================
kind            columns (Arrow type)
=============== ============================================================================
``caption``     ``image`` binary, ``caption`` list<string> (all captions of the image),
                ``image_id`` string, ``split`` string. COCO and Flickr30k Karpathy splits,
                Conceptual Captions, SBU.
``vg``          ``image``, ``caption`` list<string> (region phrases), ``width``,
                ``height``, ``x``, ``y`` list<int64> (one box per phrase), ``image_id``
                string. Visual Genome.
``vqa``         ``image``, ``questions`` list<string>, ``answers`` list<list<string>>,
                ``answer_labels`` list<list<int64>> (indices into the answer vocabulary),
                ``answer_scores`` list<list<double>> (0.3 / 0.6 / 0.9 / 1.0 for 1 / 2 / 3 /
                4+ annotators), ``image_id`` int64, ``question_id`` list<int64>, ``split``
                string. VQAv2; the test tables have empty answer lists.
``nlvr2``       ``image_0``, ``image_1`` binary (left and right), ``questions``
                list<string> (the statements about this pair), ``answers`` list<string>
                (``"True"`` / ``"False"``), ``identifier`` string.
``snli_ve``     ``image``, ``sentences`` list<list<string>> (``[premise, hypothesis]``
                pairs), ``labels`` list<int64> (0 contradiction, 1 neutral, 2 entailment).
=============== ============================================================================

:func:`write_arrow_table` writes such tables (for tests and small corpora);
:func:`open_record_batches` opens one for reading, memory-mapped: record batches are read
lazily from the file format and zero-copy from the stream format (``pa.ipc.new_stream``),
which is read too. Tables written with IPC buffer compression (the official scripts do not
compress) are decompressed by pyarrow when a record batch is read, which loses the
zero-copy benefit of the map. The datasets reading them are in :mod:`bridgetower.data.arrow`.

``pyarrow`` is imported lazily: importing this module works without it; using it raises an
``ImportError`` that says how to install it (:func:`require_pyarrow`).
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from PIL import Image

__all__ = [
    "ARROW_SCHEMA_KINDS",
    "SNLI_VE_LABELS",
    "arrow_paths",
    "arrow_schema",
    "open_record_batches",
    "require_pyarrow",
    "write_arrow_table",
]

#: The table layouts :func:`write_arrow_table` writes (see the module docstring).
ARROW_SCHEMA_KINDS: tuple[str, ...] = ("caption", "vg", "vqa", "nlvr2", "snli_ve")
_KIND_ALIASES = {
    "coco": "caption",
    "f30k": "caption",
    "flickr30k": "caption",
    "cc": "caption",
    "conceptual_caption": "caption",
    "sbu": "caption",
    "vqav2": "vqa",
    "snli": "snli_ve",
}

#: The official SNLI-VE label ids (``write_snli.py``).
SNLI_VE_LABELS: dict[str, int] = {"contradiction": 0, "neutral": 1, "entailment": 2}

_FILE_MAGIC = b"ARROW1"


def require_pyarrow():
    """The ``pyarrow`` module; an ``ImportError`` saying how to install it when it is missing."""
    from .._optional import require

    pa = require("pyarrow", "arrow", needed_for="reading or writing the official pyarrow tables")
    require("pyarrow.ipc", "arrow", needed_for="reading or writing the official pyarrow tables")
    return pa


def _kind(schema_kind: str) -> str:
    if not isinstance(schema_kind, str):
        raise TypeError(f"schema_kind must be a string, got {type(schema_kind).__name__}")
    kind = _KIND_ALIASES.get(schema_kind, schema_kind)
    if kind not in ARROW_SCHEMA_KINDS:
        raise ValueError(
            f"unknown schema_kind {schema_kind!r}; valid: {ARROW_SCHEMA_KINDS} "
            f"(aliases: {sorted(_KIND_ALIASES)})"
        )
    return kind


def arrow_schema(schema_kind: str):
    """The ``pyarrow.Schema`` of an official table kind (one of :data:`ARROW_SCHEMA_KINDS`)."""
    pa = require_pyarrow()
    kind = _kind(schema_kind)
    strings = pa.list_(pa.string())
    ints = pa.list_(pa.int64())
    fields = {
        "caption": [
            ("image", pa.binary()),
            ("caption", strings),
            ("image_id", pa.string()),
            ("split", pa.string()),
        ],
        "vg": [
            ("image", pa.binary()),
            ("caption", strings),
            ("width", ints),
            ("height", ints),
            ("x", ints),
            ("y", ints),
            ("image_id", pa.string()),
        ],
        "vqa": [
            ("image", pa.binary()),
            ("questions", strings),
            ("answers", pa.list_(strings)),
            ("answer_labels", pa.list_(ints)),
            ("answer_scores", pa.list_(pa.list_(pa.float64()))),
            ("image_id", pa.int64()),
            ("question_id", ints),
            ("split", pa.string()),
        ],
        "nlvr2": [
            ("image_0", pa.binary()),
            ("image_1", pa.binary()),
            ("questions", strings),
            ("answers", strings),
            ("identifier", pa.string()),
        ],
        "snli_ve": [
            ("image", pa.binary()),
            ("sentences", pa.list_(strings)),
            ("labels", ints),
        ],
    }[kind]
    return pa.schema(fields)


def _image_bytes(value: Any, where: str) -> Any:
    if isinstance(value, Image.Image):
        buf = io.BytesIO()
        value.save(buf, format="PNG")
        return buf.getvalue()
    if value is None or isinstance(value, (bytes, bytearray)):
        return value
    raise TypeError(f"{where}: an image must be bytes or a PIL image, got {type(value).__name__}")


def _check_nesting(pa, value: Any, type_: Any, where: str) -> None:
    # pyarrow would turn a string given for a list<string> into a list of characters
    if value is None or not pa.types.is_list(type_):
        return
    if not isinstance(value, (list, tuple)):
        raise ValueError(
            f"{where} must be a list ({type_}), got {type(value).__name__}: {value!r:.60}"
        )
    for k, v in enumerate(value):
        _check_nesting(pa, v, type_.value_type, f"{where}[{k}]")


def write_arrow_table(
    path: str | os.PathLike,
    rows: Sequence[Mapping[str, Any]],
    schema_kind: str,
    *,
    rows_per_batch: int | None = None,
    stream: bool = False,
) -> Path:
    """Write ``rows`` as an Arrow IPC table with the official layout ``schema_kind``.

    Each row is a dict with exactly the columns of :func:`arrow_schema` (image columns may
    be bytes or PIL images; PIL images are stored as PNG). ``rows_per_batch`` cuts the table
    into record batches of at most that many rows (default: one batch, as the official
    writers do). ``stream=True`` writes the IPC stream format instead of the file format.
    Returns the path.
    """
    pa = require_pyarrow()
    schema = arrow_schema(schema_kind)
    if isinstance(rows, Mapping) or not isinstance(rows, Sequence):
        raise TypeError(f"rows must be a sequence of dicts, got {type(rows).__name__}")
    if not rows:
        raise ValueError("rows is empty: a table needs at least one row")
    if rows_per_batch is not None and (
        isinstance(rows_per_batch, bool)
        or not isinstance(rows_per_batch, int)
        or rows_per_batch < 1
    ):
        raise ValueError(f"rows_per_batch must be a positive int or None, got {rows_per_batch!r}")
    names = schema.names
    image_cols = [f.name for f in schema if pa.types.is_binary(f.type)]
    clean = []
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise TypeError(f"rows[{i}] must be a dict, got {type(row).__name__}")
        missing = [n for n in names if n not in row]
        extra = sorted(set(row) - set(names))
        if missing or extra:
            raise ValueError(
                f"rows[{i}] does not match the {_kind(schema_kind)!r} layout: missing "
                f"{missing}, unexpected {extra} (columns: {names})"
            )
        r = dict(row)
        for c in image_cols:
            r[c] = _image_bytes(r[c], f"rows[{i}][{c!r}]")
        for field in schema:
            _check_nesting(pa, r[field.name], field.type, f"rows[{i}][{field.name!r}]")
        clean.append(r)
    try:
        table = pa.Table.from_pylist(clean, schema=schema)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
        raise ValueError(
            f"rows do not fit the {_kind(schema_kind)!r} schema {schema}: {e}"
        ) from None
    path = Path(path)
    with pa.OSFile(str(path), "wb") as sink:
        opener = pa.ipc.new_stream if stream else pa.ipc.new_file
        with opener(sink, schema) as writer:
            writer.write_table(table, max_chunksize=rows_per_batch)
    return path


# ----------------------------------------------------------------------------------------
# opening files


def open_record_batches(path: Path):
    """``(memory_map, schema, batches)``: ``batches[i]`` is record batch ``i``, read lazily
    for the file format and zero-copy from the map for the stream format."""
    pa = require_pyarrow()
    mm = pa.memory_map(str(path), "r")
    try:
        head = mm.read(len(_FILE_MAGIC))
        mm.seek(0)
        if head == _FILE_MAGIC:
            reader = pa.ipc.open_file(mm)
            return mm, reader.schema, _FileBatches(reader)
        reader = pa.ipc.open_stream(mm)
        return mm, reader.schema, list(reader)
    except (pa.ArrowInvalid, OSError) as e:
        mm.close()
        raise ValueError(f"{str(path)!r} is not an Arrow IPC file or stream ({e})") from None


class _FileBatches:
    def __init__(self, reader) -> None:
        self.reader = reader

    def __len__(self) -> int:
        return self.reader.num_record_batches

    def __getitem__(self, i: int):
        return self.reader.get_batch(i)


def arrow_paths(paths: Any) -> list[Path]:
    """``paths`` (one path or a list) as existing files; ``TypeError`` / ``ValueError`` otherwise."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    if not isinstance(paths, Sequence) or not all(isinstance(p, (str, os.PathLike)) for p in paths):
        raise TypeError(
            f"paths must be a path or a list of paths to .arrow files, got {type(paths).__name__}"
        )
    out = [Path(p) for p in paths]
    if not out:
        raise ValueError("no .arrow files given")
    missing = [str(p) for p in out if not p.is_file()]
    if missing:
        raise ValueError(f"arrow files not found: {missing}")
    return out
