"""The process the worker runs in: settings of its allocators, made once where an instance (or the CLI) starts.

Process-wide state belongs to the edge: the pure core (``worker.profile`` included) never swaps Arrow's
memory pool or tunes the C library; ``worker.app.get_worker`` and ``python -m worker summarize`` call
:func:`bound_allocator_retention` before their first job.
"""

from __future__ import annotations

import ctypes
import functools

import pyarrow as pa

# glibc's mallopt(3) parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -3, -8


@functools.cache
def bound_allocator_retention() -> None:
    """Keep full mode's memory bounded by what it holds, not by what allocators keep after freeing.

    Decoding row group after row group in several threads makes Arrow's mimalloc heaps and
    glibc's per-thread arenas keep freed memory: measured here, 60 to 90 MiB more peak RSS with
    two threads. Arrow then uses the system allocator, and glibc keeps at most two arenas and
    returns freed memory above 4 MiB. Process-wide and idempotent; a no-op off glibc.
    """
    pa.set_memory_pool(pa.system_memory_pool())
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    for option, value in ((_M_ARENA_MAX, 2), (_M_TRIM_THRESHOLD, 4 << 20), (_M_MMAP_THRESHOLD, 4 << 20)):
        libc.mallopt(option, value)
