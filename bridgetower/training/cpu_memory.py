"""Make the C allocator give freed tensor memory back to the operating system (CPU, glibc).

PyTorch's CPU tensors come from ``malloc``.  glibc serves blocks above its *mmap threshold*
with ``mmap`` (returned to the system on ``free``) and smaller ones from its heap, which it
keeps.  The threshold is dynamic: after a large block is freed it rises to that block's size
(up to 32 MiB), so from then on the activations of a training step -- mostly a few MiB to
tens of MiB each -- live on the heap, and memory freed in the backward pass stays resident.
The process's resident memory then grows past the live tensors, by more than a gigabyte for
the base model with gradient checkpointing (whose live activations are small).

:func:`release_freed_cpu_memory` fixes the threshold low (which also switches the dynamic
adjustment off) and sets the heap's trim threshold, so freed blocks of tensors leave the
process.  The price is CPU time: a block taken fresh from the system is zeroed page by page
on first touch (measured here: about 20% more CPU time per training step).  Worth it when
resident memory is the limit, e.g. gradient-checkpointed training of a large model on a
machine without much RAM; not by default.

The same settings can be given to any process without code, before it starts:
``MALLOC_MMAP_THRESHOLD_=65536 MALLOC_TRIM_THRESHOLD_=0``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import platform

__all__ = ["release_freed_cpu_memory", "GLIBC_MAX_MMAP_THRESHOLD"]

logger = logging.getLogger(__name__)

# mallopt parameter numbers of glibc's <malloc.h>
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
#: glibc refuses larger mmap thresholds on 64-bit systems (half of HEAP_MAX_SIZE).
GLIBC_MAX_MMAP_THRESHOLD = 32 * 1024 * 1024


def _glibc() -> ctypes.CDLL | None:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    name = ctypes.util.find_library("c") or "libc.so.6"
    try:
        lib = ctypes.CDLL(name)
        lib.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
        lib.mallopt.restype = ctypes.c_int
    except (OSError, AttributeError):
        return None
    return lib


def release_freed_cpu_memory(*, mmap_threshold: int = 64 * 1024, trim_threshold: int = 0) -> bool:
    """Have glibc return freed blocks to the system: ``mmap`` every block of at least
    ``mmap_threshold`` bytes, and trim the heap when more than ``trim_threshold`` bytes at
    its top are free.  Applies to the whole process, from now on.

    Args:
        mmap_threshold: bytes, 0 to :data:`GLIBC_MAX_MMAP_THRESHOLD` (32 MiB); the default
            64 KiB sends every tensor bigger than a 128x128 fp32 matrix to ``mmap``.
        trim_threshold: bytes of free heap top kept before trimming (default 0).

    Returns:
        True if the settings were applied; False where the C library is not glibc (macOS,
        Windows, musl), which is logged and otherwise harmless.

    Raises:
        TypeError / ValueError: for a non-integer or out-of-range threshold.
    """
    for name, value, hi in (("mmap_threshold", mmap_threshold, GLIBC_MAX_MMAP_THRESHOLD),
                            ("trim_threshold", trim_threshold, 2**31 - 1)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be an int (bytes), got {type(value).__name__}")
        if not 0 <= value <= hi:
            raise ValueError(f"{name} must be in [0, {hi}] bytes, got {value}")
    lib = _glibc()
    if lib is None:
        logger.warning("release_freed_cpu_memory: the C library is not glibc (%s); nothing changed",
                       platform.libc_ver()[0] or platform.system())
        return False
    ok = lib.mallopt(_M_MMAP_THRESHOLD, mmap_threshold) == 1
    ok = lib.mallopt(_M_TRIM_THRESHOLD, trim_threshold) == 1 and ok
    if not ok:  # pragma: no cover - glibc accepts every value the checks above let through
        logger.warning("release_freed_cpu_memory: glibc's mallopt refused the settings")
    return ok
