"""release_freed_cpu_memory: freed tensor memory leaves the process (glibc)."""

from __future__ import annotations

import platform
import subprocess
import sys
import textwrap

import pytest

from bridgetower.training.cpu_memory import GLIBC_MAX_MMAP_THRESHOLD, release_freed_cpu_memory

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

# A child process: warm glibc's dynamic threshold up with a freed 24 MiB block, allocate
# 40 blocks of 4 MiB (below the raised threshold, so from the heap), free every other one
# (holes below live blocks: the heap cannot shrink over them) and report how much resident
# memory the frees gave back.
_CHILD = textwrap.dedent("""
    import sys, torch
    from bridgetower.training.cpu_memory import release_freed_cpu_memory

    def rss_mb():
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024

    if sys.argv[1] == "release":
        assert release_freed_cpu_memory() is True
    big = torch.ones(6 * 1024 * 1024)  # 24 MiB, mmapped, then freed: raises the threshold
    del big
    blocks = [torch.ones(1024 * 1024) for _ in range(40)]  # 40 x 4 MiB, touched
    before = rss_mb()
    del blocks[::2]
    print(before - rss_mb())
""")


def _returned_mb(mode: str) -> float:
    out = subprocess.run([sys.executable, "-c", _CHILD, mode], capture_output=True, text=True,
                         env={"OMP_NUM_THREADS": "1", "PATH": ""}, check=True)
    return float(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not GLIBC, reason="mallopt thresholds are a glibc feature")
def test_freed_blocks_leave_the_process_only_with_the_setting():
    default, released = _returned_mb("default"), _returned_mb("release")
    assert released > 70  # ~80 MiB of blocks given back
    assert default < 0.25 * released  # glibc's default keeps (most of) them


@pytest.mark.parametrize("kwargs, exc", [
    ({"mmap_threshold": -1}, ValueError),
    ({"mmap_threshold": GLIBC_MAX_MMAP_THRESHOLD + 1}, ValueError),
    ({"trim_threshold": 2**31}, ValueError),
    ({"mmap_threshold": 1.5}, TypeError),
    ({"trim_threshold": True}, TypeError),
])
def test_bad_thresholds_are_refused(kwargs, exc):
    with pytest.raises(exc, match="threshold"):
        release_freed_cpu_memory(**kwargs)


def test_non_glibc_is_a_logged_no_op(monkeypatch, caplog):
    import bridgetower.training.cpu_memory as m

    monkeypatch.setattr(m, "_glibc", lambda: None)
    with caplog.at_level("WARNING"):
        assert release_freed_cpu_memory() is False
    assert "not glibc" in caplog.text
