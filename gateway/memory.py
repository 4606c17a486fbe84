"""Large buffers go back to the operating system when freed (glibc's allocator).

glibc serves an allocation of 128 KiB or more with its own memory mapping, released on
free, but it raises that threshold to the size of each such block freed (up to 32 MiB),
so after the first large answer the next ones come from the heap, and freed heap memory
is kept for reuse. A gateway passing a 16 MiB answer then holds a third copy's worth of
memory it no longer uses (docs/benchmarks.md, heavy answers: 3.0x the answer's size per
request in flight before, 2.1x of it live). Fixing the threshold keeps every buffer of a
MiB or more mapped on its own, so what a request frees leaves the process with it.
"""

from __future__ import annotations

import ctypes
import ctypes.util

__all__ = ["LARGE_BUFFER_BYTES", "return_large_buffers"]

LARGE_BUFFER_BYTES = 1 << 20
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def return_large_buffers(threshold: int = LARGE_BUFFER_BYTES) -> bool:
    """Fix glibc's mapping threshold at ``threshold`` (and trim above twice it); False where there is no glibc."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl, macOS: nothing to set
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return bool(mallopt(_M_MMAP_THRESHOLD, threshold)) and bool(mallopt(_M_TRIM_THRESHOLD, 2 * threshold))
