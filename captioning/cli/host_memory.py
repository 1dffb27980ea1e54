"""The command line's process keeps freed memory for reuse (glibc's malloc).

A CPU training or decoding step makes and drops tens of arrays of several MB. By
default glibc returns each freed block of that size to the system, and the next array
faults its pages in again: measured ~9% of a numba training step on the 2-core host
(benchmarks/RESULTS.md). The command line's process is its own, so it asks glibc once
to keep such blocks; the price is that the process holds on to its peak memory. The
same from Python: MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=2147483647 in
the environment before the interpreter starts.
"""

from __future__ import annotations

import ctypes

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters
MMAP_THRESHOLD = 32 * 1024 * 1024  # glibc's largest: blocks up to this come from the heap
TRIM_THRESHOLD = 2**31 - 1  # free memory kept at the heap's top before any is returned


def keep_freed_memory() -> bool:
    """Ask glibc to serve blocks of up to 32 MB from its heap and to keep what is freed
    there; False (nothing changed) where the C library is not glibc."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError, TypeError):  # not a glibc (macOS, Windows, musl...)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
                and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
