"""Big messages in memory of their own, given back to the system when freed.

glibc's malloc serves a buffer of 128 KiB or more with an mmap of its own, returned when it is
freed; but after such a free it raises that threshold (up to 32 MiB), and big buffers then come
from its arenas, which keep freed memory: after a flood of 1 MiB messages the broker's RSS
stayed at its peak (1.3 GB). The broker fixes the threshold, which turns that adjustment off:
every big message is mapped alone and unmapped once forwarded or dropped. (malloc_trim would
do it after the fact, but walks the heap: 100 ms on a fragmented one, too long for a tick.)
"""

from __future__ import annotations

import ctypes
import ctypes.util

__all__ = ["map_big_buffers_alone", "MMAP_THRESHOLD_BYTES"]

M_MMAP_THRESHOLD = -3            # mallopt's parameter number (malloc.h)
MMAP_THRESHOLD_BYTES = 128 * 1024   # glibc's own starting value


def map_big_buffers_alone() -> bool:
    """Fix glibc's mmap threshold for this process; False where libc is not glibc."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))
    except (OSError, AttributeError):
        return False
