"""Process-wide memory settings for the long-running agent."""

from __future__ import annotations

import ctypes
import ctypes.util
import os

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number
LARGE_BUFFER_BYTES = 128 * 1024
OVERRIDE_ENV = "MALLOC_MMAP_THRESHOLD_"


def return_large_buffers_to_os() -> bool:
    """Pins glibc's mmap threshold at 128 KiB, so frame-sized buffers (megabytes each,
    allocated and freed every frame by the capture and inference threads) are mapped and given
    back to the system on free. Left alone, glibc raises the threshold to the largest block
    freed so far, and those frames then stay in per-thread heaps: ~4 MiB of the agent's peak
    RSS at 720p, more on bigger frames. Does nothing where the C library is not glibc or
    ``MALLOC_MMAP_THRESHOLD_`` is set (the operator's choice wins); returns whether it applied."""
    if OVERRIDE_ENV in os.environ:
        return False
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c")).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, LARGE_BUFFER_BYTES))
