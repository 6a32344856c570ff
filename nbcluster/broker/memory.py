"""The broker process's memory: garbage collection that never stops the loop for long, and
memory handed back to the system after a big release, and big messages in memory of their
own.

A full collection of CPython's cyclic garbage collector visits every tracked object: with a
million queued tasks one takes 100+ ms, during which no message is handled (workers would
be thought dead). The broker's tables hold no reference cycles (they are freed by reference
counting as tasks end), so the automatic collections are limited to the young generations
(cheap: they visit only recent objects) and `housekeep` runs a full one only while the
tables are small. What exists when the loop starts (modules, classes, functions: 25,000
objects, never garbage) is frozen out of every collection: on a VM whose memory goes cold
while the broker idles, visiting them took 80-130 ms every 10 s (a tick over our 10 ms
bound, and about 1 % of a core), against 3 ms for what the broker made since.

glibc keeps freed memory in its heap: after a big release (a client's million queued tasks
dropped or cancelled: see `BrokerState.sweep`) `malloc_trim` hands it back.

glibc's malloc serves a buffer of 128 KiB or more with an mmap of its own, returned when it is
freed; but after such a free it raises that threshold (up to 32 MiB), and big buffers then come
from its arenas, which keep freed memory: after a flood of 1 MiB messages the broker's RSS
stayed at its peak (1.3 GB). `map_big_buffers_alone` fixes the threshold, which turns that
adjustment off: every big message is mapped alone and unmapped once forwarded or dropped
(malloc_trim would do it after the fact, but walks the heap: 100 ms on a fragmented one, too
long to run after every big message).

`BrokerState` stays pure: it calls `housekeep` (given to it by the loop) on its ticks.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import gc

__all__ = ["limit_collections", "housekeep", "map_big_buffers_alone"]

FULL_GC_BELOW_TASKS = 5_000   # a full collection then visits a few tens of thousands of objects
RELEASE_GC_BELOW_TASKS = 1_000   # after a big release: see housekeep
NO_AUTOMATIC_FULL_GC = 1 << 30   # gen2 threshold: never reached
M_MMAP_THRESHOLD = -3            # mallopt's parameter number (malloc.h)
MMAP_THRESHOLD_BYTES = 128 * 1024   # glibc's own starting value


def limit_collections() -> None:
    """Automatic collections of the young generations only, and what exists now left out of
    every collection; call it once, when the loop starts (see the module docstring)."""
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, NO_AUTOMATIC_FULL_GC)
    gc.collect()   # what is garbage now is not frozen with the rest
    gc.freeze()


def housekeep(tasks: int, released: bool) -> None:
    """Called now and then with the number of tasks held: collect cyclic garbage while that
    is cheap, and hand freed heap memory back to the system after a big release."""
    # After a release, a full collection only once (nearly) nothing is held: it frees no
    # table (they hold no cycles), yet leaves the RSS about 8 MB lower after 111,000 label
    # sets cancelled (most likely CPython's free lists, which it empties: their objects pin
    # obmalloc arenas); with 40,000 tasks still held (halfway through a cancel) it took 89 ms.
    if tasks < (RELEASE_GC_BELOW_TASKS if released else FULL_GC_BELOW_TASKS):
        gc.collect()
    if released:
        _malloc_trim()   # 1-3 ms


def map_big_buffers_alone() -> bool:
    """Fix glibc's mmap threshold for this process; False where libc is not glibc."""
    try:
        return bool(_libc().mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))
    except (OSError, AttributeError):
        return False


def _malloc_trim() -> None:
    with contextlib.suppress(OSError, AttributeError):   # not glibc
        _libc().malloc_trim(0)


@functools.cache   # find_library runs `ldconfig -p` in a child process: 1-3 ms, every trim
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
