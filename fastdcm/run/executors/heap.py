"""glibc's malloc thresholds in a worker: keep freed frame buffers for the next file.

glibc serves an allocation above its mmap threshold (128 KiB, raised by itself up to 32 MiB as
such blocks are freed) with fresh pages from the kernel, and gives the top of its heap back once
more than its trim threshold (twice the mmap threshold) is free there. A worker allocates and frees
the same few buffers for every file; when they are large (a window stack's 786 kB RGB image and its
filtered copy, a CR or mammogram frame) the free space at the top of the heap passes the trim
threshold after every file, and every file then pays for its buffers' pages again: a
3-window stack of 4,000 CT slices took 330 minor page faults a file (1.31 million in all, 3.1-3.7 s
of system time), 7 with these thresholds. A Dask nanny starts its workers with
``MALLOC_TRIM_THRESHOLD_=65536``, which also stops the mmap threshold from growing: there every
0.5 MB buffer of a CT slice was an mmap and a munmap, and a batch of 1,000 CT files took 1.9 s of CPU
against 1.0 s in a local worker (the Dask plugin restores the worker's thresholds when it leaves).

So a worker uses the thresholds glibc grows to by itself, fixed from the start: 32 MiB mmap,
64 MiB trim. A worker keeps at most that much freed memory; where there is no glibc nothing changes.
"""

from __future__ import annotations

import os

__all__ = ["keep_heap", "restore_heap"]

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters
MMAP_THRESHOLD = 32 << 20
TRIM_THRESHOLD = 64 << 20


def _mallopt(trim: int, mmap: int) -> bool:
    """Set glibc's trim and mmap thresholds (False where there is no glibc)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, mmap)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, trim))
    except (OSError, AttributeError):
        return False


def keep_heap() -> bool:
    """Fix this process's thresholds at :data:`MMAP_THRESHOLD` and :data:`TRIM_THRESHOLD`; False
    where they cannot be set (no glibc)."""
    return _mallopt(TRIM_THRESHOLD, MMAP_THRESHOLD)


def restore_heap() -> None:
    """The thresholds a process starts with: its MALLOC_TRIM_THRESHOLD_ (or glibc's 128 KiB) and
    128 KiB (a Dask worker gets its own back when the run's plugin leaves it)."""
    try:
        trim = int(os.environ.get("MALLOC_TRIM_THRESHOLD_", 128 << 10))
    except ValueError:
        trim = 128 << 10
    _mallopt(trim, 128 << 10)
