"""Memory given back to the system after big messages went through the broker.

A big message is freed once it is forwarded or dropped, but glibc's malloc keeps freed memory
in its arenas (and raises its mmap threshold after each big free, so the next big buffers
come from the arenas too): after a flood of big messages the broker's RSS would stay at its
peak. `malloc_trim` hands the free pages back. It walks the heap, so it runs only after
TRIM_AFTER_BYTES of big messages, from the loop's tick (at most once a heartbeat).
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Callable

__all__ = ["HeapTrimmer", "BIG_MESSAGE_BYTES", "TRIM_AFTER_BYTES"]

BIG_MESSAGE_BYTES = 64 * 1024   # smaller ones live in malloc's bins and are reused
TRIM_AFTER_BYTES = 64 << 20


def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim, or None (another libc: nothing to do)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim: Callable[[int], int] = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    return trim


class HeapTrimmer:
    """Counts the bytes of big messages received; trims the heap once enough went by."""

    def __init__(self) -> None:
        self.pending = 0
        self._again = False   # trim once more: a forwarded message is freed once libzmq sent it
        self._trim = _malloc_trim()

    def received(self, nbytes: int) -> None:
        if nbytes >= BIG_MESSAGE_BYTES:
            self.pending += nbytes

    def maybe_trim(self) -> None:
        """Give free memory back if enough big messages went by since the last time
        (call when they are freed: after the messages were handled)."""
        if self.pending >= TRIM_AFTER_BYTES or self._again:
            self._again = self.pending >= TRIM_AFTER_BYTES
            self.pending = 0
            if self._trim is not None:
                self._trim(0)
