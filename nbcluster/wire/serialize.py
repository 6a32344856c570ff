"""Turning Python objects into message frames and back (clients and workers; never the broker).

    frames = [pickle, out-of-band buffer, ...]      (a buffer: raw bytes, or a shm reference)

Objects are pickled with pickle protocol 5 (see pickling: cloudpickle, functions by value
with their source); large buffers (numpy arrays) are not copied into the pickle but travel
as out-of-band frames, sent and received zero-copy and arriving writable. Large bytes,
bytearrays and memoryviews go out of band too, and are copied once on arrival into an
object of their type (see oob_bytes: a memoryview arrives as bytes). To a receiver on this
host, buffers go through shared memory (see shm). Functions as task payloads, pickled once
and cached by digest: see functions.
"""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from typing import Any

from . import oob_bytes, pickling
from .pickling import MainRefs
from .shm import REF_PREFIX, SHM_MIN_BYTES, SharedMemory

__all__ = ["dumps", "loads", "shm_names", "nbytes", "describe"]

OOB_MIN_BYTES = 64 * 1024  # smaller buffers are cheaper inline
LIFT_FIRST_ITEMS = 16      # bytes objects are looked for among this many container items...
LIFT_AGAIN_BYTES = 1 << 20  # ...and among all of them (up to the next) if the pickle is this big
LIFT_MAX_ITEMS = 10_000_000
PLAIN_MAX_ITEMS = 64       # containers this small, of plain values, take the fast path
_SCALARS = frozenset({type(None), bool, int, float, complex, str})


def dumps(obj: Any, shm: SharedMemory | None = None, refs: MainRefs | None = None
          ) -> list[Any]:
    """Frames for obj: the pickle, then one frame per large out-of-band buffer. With shm
    (the receiver is on this host), buffers of SHM_MIN_BYTES or more go to shared memory and
    their frame is a short reference. With refs, objects the receiver has already travel as
    their __main__ name."""
    if refs is None and _plain(obj):   # a task's usual arguments: 8x faster this way
        return [pickle.dumps(obj, 5)]
    buffers: list[Any] = []

    def oob(buf: pickle.PickleBuffer) -> bool:
        raw = buf.raw()
        if raw.nbytes < OOB_MIN_BYTES:
            return True  # true means: serialize in-band
        buffers.append(shm.put(raw) if shm is not None and raw.nbytes >= SHM_MIN_BYTES else raw)
        return False

    # Large bytes-like objects out of band too (see oob_bytes): looked for in a few items
    # first, and everywhere only if the pickle came out big (then it is pickled again).
    keep = refs.name_of if refs is not None else None
    lifted, complete = oob_bytes.lift(obj, OOB_MIN_BYTES, LIFT_FIRST_ITEMS, keep)
    data = pickling.dumps(lifted, refs, oob)
    if not complete and len(data) >= LIFT_AGAIN_BYTES:
        lifted, complete = oob_bytes.lift(obj, OOB_MIN_BYTES, LIFT_MAX_ITEMS, keep)
        if complete and lifted is not obj:
            if shm is not None:   # buffers put in shared memory by the first pickle
                for name in shm_names([b"", *buffers]):
                    shm.remove(name)
            buffers.clear()
            data = pickling.dumps(lifted, refs, oob)
    return [data, *buffers]


def _plain(obj: Any) -> bool:
    """Is obj numbers, strings and small bytes, in tuples, lists and dicts of PLAIN_MAX_ITEMS
    items in all? The standard pickler pickles those as cloudpickle would (nothing by value,
    nothing out of band), without the cost of making a cloudpickle Pickler."""
    stack, budget = [obj], PLAIN_MAX_ITEMS
    while stack:
        item = stack.pop()
        kind = type(item)
        if kind in _SCALARS:
            continue
        if kind is bytes:
            if len(item) >= OOB_MIN_BYTES:
                return False
            continue
        if kind is tuple or kind is list or kind is dict:
            budget -= len(item)
            if budget < 0:   # big, or a list holding itself
                return False
            if kind is dict:
                for key in item:
                    if type(key) is not str:
                        return False
                stack += item.values()
            else:
                stack += item
            continue
        return False
    return True


def nbytes(frames: Sequence[Any]) -> int:
    """The size of frames, in bytes."""
    if len(frames) == 1 and type(frames[0]) is bytes:
        return len(frames[0])
    return sum(memoryview(f).nbytes for f in frames)


def loads(frames: list[Any], shm: SharedMemory | None = None, remove: bool = False) -> Any:
    """Inverse of dumps; frames may be bytes, memoryviews or zmq.Frames. Shared-memory
    references are mapped through shm (and their files removed, with remove)."""
    buffers = [shm.get(f, remove) if shm is not None and SharedMemory.is_ref(f) else f
               for f in frames[1:]]
    return pickling.loads(frames[0], buffers)


def shm_names(frames: list[Any]) -> list[str]:
    """Names of the shared-memory files that frames refer to."""
    return [bytes(f)[len(REF_PREFIX):].decode() for f in frames[1:] if SharedMemory.is_ref(f)]


def describe(obj: Any, limit: int = 80) -> str:
    """A short, safe repr for error messages."""
    try:
        text = repr(obj)
    except Exception:   # noqa: BLE001 - a user's __repr__ may raise anything
        text = f"<{type(obj).__name__} object>"
    return text if len(text) <= limit else text[: limit - 3] + "..."
