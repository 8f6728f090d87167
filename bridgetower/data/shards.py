"""Reading WebDataset tar shards sample by sample, counting every sample a broken shard loses.

A shard is a tar archive whose members are grouped into samples by their name up to the
first dot (``000123.jpg`` + ``000123.txt`` = sample ``000123``), as the ``webdataset``
library groups them.  :func:`iter_shard` reads one shard as a stream (a local file, or a
remote URL: :func:`open_shard`) and yields the raw samples (``{"__key__", "__url__",
extension: bytes}``), or a :class:`~bridgetower.data.Skipped` marker for every sample that
cannot be read whole:

* a shard that cannot be opened (a missing file): one ``missing_file``;
* a shard that ends early (truncated by an interrupted copy or download): the samples read
  completely before the break are yielded; the one sample the break cuts through is one
  ``bad_record``.  For an uncompressed shard the bytes after the last complete member tell
  whether a sample was cut at all (a shard that only lacks its closing zero blocks loses
  nothing) and, from the cut member's header, which; a compressed shard whose stream breaks
  or stops before its end counts one lost sample (the one the break cuts);
* two members of one sample with the same extension: that sample is one ``bad_record``.

Remote shards: ``pipe:COMMAND`` runs a shell command and ``http(s)://`` (and the other
schemes of ``webdataset.gopen``) reach the network, so they are read only when the caller
allows it (:func:`check_shard_urls`; the command line's ``--allow-remote-data``).
"""

from __future__ import annotations

import re
import tarfile
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

from .stats import Skipped

__all__ = ["check_shard_urls", "is_remote_url", "iter_shard", "open_shard", "sample_key", "shuffle_buffer"]

# a scheme of two or more letters ("C:" is a Windows drive, not a scheme)
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]+):")
# the webdataset library's split of a member name into sample key and extension
_KEY_EXT = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")
# metadata members the webdataset library skips (``__key__``-style names)
_META = re.compile(r"__[^/]*__($|/)")
_BLOCK = tarfile.BLOCKSIZE
_TAIL = 4 * tarfile.RECORDSIZE  # bytes kept from the end of what was read (the cut header)


def is_remote_url(url: str) -> bool:
    """True for a ``pipe:`` command or a URL with a scheme other than ``file:``."""
    m = _SCHEME.match(str(url))
    return m is not None and m.group(1).lower() != "file"


def check_shard_urls(urls: Sequence[str], *, allow_remote: bool) -> None:
    """``ValueError`` naming the first ``pipe:`` or remote URL unless ``allow_remote``."""
    remote = [u for u in urls if is_remote_url(u)]
    if remote and not allow_remote:
        raise ValueError(
            f"{remote[0]!r} is a remote or pipe: URL ({len(remote)} of {len(urls)} shards); such URLs run shell "
            "commands or reach the network, so they are read only when allowed: allow_remote=True "
            "(command line: --allow-remote-data)"
        )


def open_shard(url: str) -> IO[bytes]:
    """A binary stream of the shard ``url``: a local path (or ``file:`` URL), or a remote URL
    through ``webdataset.gopen`` (``pipe:``, ``http(s)://`` ...; check them first with
    :func:`check_shard_urls`)."""
    if is_remote_url(url):
        from .._optional import require

        gopen = require("webdataset.gopen", "webdataset", needed_for="reading remote shards", package="webdataset")
        return gopen.gopen(url, "rb")
    path = url[len("file:"):] if url.lower().startswith("file:") else url
    if path.startswith("//"):
        path = path[2:]
    return open(Path(path), "rb")


def sample_key(name: str) -> tuple[str | None, str | None]:
    """``(key, extension)`` of a member name, as the webdataset library splits it
    (``"a/b.c.jpg"`` -> ``("a/b", "c.jpg")``); ``(None, None)`` without an extension."""
    m = _KEY_EXT.match(name)
    return (m.group(1), m.group(2)) if m else (None, None)


class _Tally:
    """A read-only stream that counts the bytes read, remembers where the last non-zero byte
    was and keeps the last ``_TAIL`` bytes (to read the name of a cut member header)."""

    def __init__(self, raw: IO[bytes]) -> None:
        self.raw = raw
        self.pos = 0
        self.last_nonzero = 0
        self.tail = bytearray()

    def read(self, size: int = -1) -> bytes:
        chunk = self.raw.read(size)
        if chunk:
            kept = len(chunk.rstrip(b"\0"))
            if kept:
                self.last_nonzero = self.pos + kept
            self.pos += len(chunk)
            self.tail += chunk
            del self.tail[: max(0, len(self.tail) - _TAIL)]
        return chunk

    def drain(self) -> None:
        """Read to the end (what the shard holds after the point the tar reader stopped)."""
        try:
            while self.read(1 << 16):
                pass
        except OSError:
            pass

    def header_name(self, offset: int) -> str | None:
        """The member name of a header cut at ``offset`` (``None`` when less than the
        100-byte name field was read)."""
        start = offset - (self.pos - len(self.tail))
        if start < 0 or len(self.tail) - start < 100:
            return None
        return bytes(self.tail[start : start + 100]).split(b"\0", 1)[0].decode("utf-8", "replace") or None


def iter_shard(
    url: str, lost: Callable[[str, str], Skipped], *, complete: Callable[[dict], bool] = lambda s: True
) -> Iterator[dict[str, Any] | Skipped]:
    """The raw samples of the shard ``url`` (``{"__key__", "__url__", ext: bytes}``, the
    extensions lower-cased) and a marker ``lost(reason, source)`` for each sample it loses;
    see the module doc.  ``complete(sample)`` says whether a sample has every part it needs:
    when a break gives no member name, an incomplete last sample is the one the break cut."""
    try:
        raw = open_shard(url)
    except OSError as e:
        yield lost("missing_file", f"{url} ({type(e).__name__}: {e})"[:300])
        return
    tally = _Tally(raw)
    current: dict[str, Any] | None = None
    known_end = 0  # where the last member tar handed over (and its data) ended
    cut_name: str | None = None  # the member whose data the break cut
    failure: BaseException | None = None
    plain = True  # an uncompressed tar: the byte counts locate the break
    whole_stream = True  # a compressed shard: its compressed stream came to its proper end
    try:
        with raw:
            try:
                stream = tarfile.open(fileobj=tally, mode="r|*")  # type: ignore[call-overload]
                plain = getattr(stream.fileobj, "comptype", "tar") == "tar"
                for info in stream:
                    known_end = max(known_end, info.offset_data)
                    key, ext = sample_key(info.name)
                    if not info.isreg() or key is None or _META.match(info.name):
                        continue
                    cut_name = info.name
                    data = stream.extractfile(info).read()
                    cut_name = None
                    stream.members = []  # a stream of any length in constant memory
                    known_end = info.offset_data + info.size
                    if current is not None and current["__key__"] != key:
                        yield _finished(current, lost)
                        current = None
                    if current is None:
                        current = {"__key__": key, "__url__": url}
                    ext = ext.lower()
                    if ext in current:
                        current["__bad__"] = f"two members {key}.{ext}"
                    current[ext] = data
                if not plain:  # read the compressed stream to its end: is it whole?
                    while stream.fileobj.read(1 << 16):
                        pass
                    whole_stream = getattr(getattr(stream.fileobj, "cmp", None), "eof", True)
            except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
                failure = e
            tally.drain()
    except OSError as e:  # closing a pipe whose command failed
        failure = failure or e
    where = f"{url}:{{}} (the shard ends inside this sample{f': {failure}' if failure else ''})"
    padded_end = -(-known_end // _BLOCK) * _BLOCK
    if plain:
        cut = tally.last_nonzero > known_end or cut_name is not None
        if cut and cut_name is None:
            cut_name = tally.header_name(padded_end)
        # a whole tar ends with two zero blocks: without them the shard was cut short
        short = failure is not None or tally.pos < padded_end + 2 * _BLOCK
    else:
        cut = short = failure is not None or not whole_stream
    cut_key = sample_key(cut_name)[0] if cut_name else None
    if current is not None:
        # the last sample is the one the break cut when a cut header names it, or when the
        # shard ends short and the sample lacks a part
        named = cut_key == current["__key__"]
        this_one = named or (cut_key is None and short and not complete(current))
        if this_one:
            yield lost("bad_record", where.format(current["__key__"]))
            return
        yield _finished(current, lost)
    if cut:
        yield lost("bad_record", where.format((cut_key or "?")[:100]))


def _finished(sample: dict[str, Any], lost: Callable[[str, str], Skipped]) -> dict[str, Any] | Skipped:
    if "__bad__" in sample:
        return lost("bad_record", f"{sample['__url__']}:{sample['__key__']} ({sample['__bad__']})")
    return sample


def shuffle_buffer(items: Iterable[Any], size: int, rng: Any) -> Iterator[Any]:
    """Shuffle a stream with a buffer of ``size`` items: each new item takes the place of a
    random one of the buffer, which is yielded; the rest comes out shuffled at the end.
    ``rng`` is a ``random.Random``."""
    buf: list[Any] = []
    for item in items:
        if len(buf) < size:
            buf.append(item)
            continue
        i = rng.randrange(size)
        buf[i], item = item, buf[i]
        yield item
    rng.shuffle(buf)
    yield from buf
