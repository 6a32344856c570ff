"""The broker process's memory: garbage collection that never stops the loop for long, and
memory handed back to the system after a big release.

A full collection of CPython's cyclic garbage collector visits every tracked object: with a
million queued tasks one takes 100+ ms, during which no message is handled (workers would
be thought dead). The broker's tables hold no reference cycles (they are freed by reference
counting as tasks end), so the automatic collections are limited to the young generations
(cheap: they visit only recent objects) and `housekeep` runs a full one only while the
tables are small. glibc keeps freed memory in its heap: after a big release (a client's
million queued tasks dropped) `malloc_trim` hands it back.

`BrokerState` stays pure: it calls `housekeep` (given to it by the loop) on its ticks.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc

__all__ = ["limit_collections", "housekeep"]

FULL_GC_BELOW_TASKS = 50_000   # a full collection while fewer tasks exist takes a few ms
NO_AUTOMATIC_FULL_GC = 1 << 30   # gen2 threshold: never reached


def limit_collections() -> None:
    """Automatic collections of the young generations only (see the module docstring)."""
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, NO_AUTOMATIC_FULL_GC)


def housekeep(tasks: int, released: bool) -> None:
    """Called now and then with the number of tasks held: collect cyclic garbage while that
    is cheap, and hand freed heap memory back to the system after a big release."""
    if tasks < FULL_GC_BELOW_TASKS:
        gc.collect()
    if released:
        _malloc_trim()


def _malloc_trim() -> None:
    name = ctypes.util.find_library("c")
    if name is None:
        return
    libc = ctypes.CDLL(name)
    if hasattr(libc, "malloc_trim"):   # glibc only
        libc.malloc_trim(0)
