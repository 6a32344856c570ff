"""Large bytes, bytearray and memoryview objects out of band, the way numpy arrays go.

Pickle protocol 5 hands a buffer to `buffer_callback` (so it travels as a frame of its own,
or as a file in shared memory, never copied into the pickle) only for objects that reduce to
a `pickle.PickleBuffer`. bytes and bytearray never do: the C pickler writes them in-band
before any reducer is asked. So `lift` replaces each large one, at the top of an object or
inside its lists, tuples and dicts (values), by a stand-in that reduces to a PickleBuffer;
the receiver rebuilds the same type:

    bytes -> bytes     bytearray -> bytearray     memoryview -> bytes (as cloudpickle sends it)

Rebuilding copies once, out of the frame or the shared memory, into the new object (a bytes
object owns its memory). Objects elsewhere (attributes of an instance, a set) go in-band as
before; so does a non-contiguous memoryview. An object reached twice is lifted once, so it
arrives as one object; a container that holds itself is left as it is.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from typing import Any, SupportsIndex

__all__ = ["lift"]

_BYTES = (bytes, bytearray, memoryview)
_CONTAINERS = (list, tuple, dict)
_WATCHED = frozenset({*_BYTES, *_CONTAINERS})
MAX_DEPTH = 4   # containers nested deeper go as they are


class _GiveUp(Exception):
    """The walk met a cycle, or looked at more items than its budget."""


class _OutOfBand:
    """Stands in for a large bytes-like object in a pickle: reduces to a PickleBuffer."""

    __slots__ = ("obj",)

    def __init__(self, obj: bytes | bytearray | memoryview) -> None:
        self.obj = obj

    def __reduce_ex__(self, protocol: SupportsIndex
                      ) -> tuple[Callable[[pickle.PickleBuffer, str], bytes | bytearray],
                                 tuple[pickle.PickleBuffer, str]]:
        kind = "bytearray" if type(self.obj) is bytearray else "bytes"
        return _rebuild, (pickle.PickleBuffer(self.obj), kind)


def _rebuild(buffer: bytes | bytearray | memoryview | pickle.PickleBuffer,
             kind: str) -> bytes | bytearray:
    """(on the receiver) The object back, from its buffer (a frame, a mapped file, or the
    bytes pickle wrote in-band when there was no buffer_callback)."""
    if kind == "bytearray":
        return buffer if type(buffer) is bytearray else bytearray(buffer)
    return buffer if type(buffer) is bytes else bytes(buffer)


def lift(obj: Any, min_bytes: int, budget: int, keep: Callable[[Any], object] | None = None
         ) -> tuple[Any, bool]:
    """(obj with every bytes-like object of min_bytes or more replaced by a stand-in, whether
    the walk was complete). It looks at up to `budget` container items; past that, or at a
    cycle, obj comes back unchanged and incomplete. `keep(x)`: leave x as it is (the
    receiver has it by name)."""
    if type(obj) not in _WATCHED:   # the common case, at no cost
        return obj, True
    found = _scan(obj, budget, min_bytes)
    if found != _FOUND:   # nothing to lift (complete), or too much to look at
        return obj, found >= 0
    walker = _Walker(min_bytes, budget, keep)
    try:
        return walker.visit(obj, MAX_DEPTH), True
    except _GiveUp:
        return obj, False


_FOUND = -2   # what _scan returns when it found a large bytes-like object


def _scan(obj: Any, budget: int, min_bytes: int) -> int:
    """_FOUND, or the budget left (-1: spent). Cheap, as it runs on every task's arguments
    and result: no recursion, and a container of plain items costs ~10 ns an item (in C).
    A cycle ends at MAX_DEPTH."""
    stack = [(obj, MAX_DEPTH)]
    while stack:
        obj, depth = stack.pop()
        t = type(obj)
        if t in _BYTES:
            if memoryview(obj).nbytes >= min_bytes:
                return _FOUND
            continue
        if depth == 0 or not obj:
            continue
        budget -= len(obj)
        if budget < 0:
            return -1
        items = obj.values() if t is dict else obj
        if not _WATCHED.isdisjoint(map(type, items)):
            stack += [(x, depth - 1) for x in items if type(x) in _WATCHED]
    return budget


class _Walker:
    def __init__(self, min_bytes: int, budget: int, keep: Callable[[Any], object] | None):
        self.min_bytes, self.budget, self.keep = min_bytes, budget, keep
        self.done: dict[int, Any] = {}   # id -> its replacement (itself if unchanged)
        self.open: set[int] = set()      # ids of the containers being walked
        self.alive: list[object] = []    # what `done` is keyed by stays alive, so ids stay unique

    def visit(self, obj: Any, depth: int) -> Any:
        t = type(obj)
        if t not in _BYTES and (t not in _CONTAINERS or depth == 0):
            return obj
        key = id(obj)
        if key in self.done:
            return self.done[key]
        if key in self.open:
            raise _GiveUp   # a cycle: rebuilding it would break it
        if self.keep is not None and self.keep(obj):
            new = obj
        elif t in _BYTES:
            view = memoryview(obj)
            big = view.nbytes >= self.min_bytes and view.contiguous
            new = _OutOfBand(obj) if big else obj
        else:
            self.budget -= len(obj)
            if self.budget < 0:
                raise _GiveUp
            self.open.add(key)
            new = self._container(obj, t, depth - 1)
            self.open.discard(key)
        self.done[key] = new
        self.alive.append(obj)
        return new

    def _container(self, obj: Any, t: type, depth: int) -> Any:
        if t is dict:
            values = [self.visit(v, depth) for v in obj.values()]
            if all(a is b for a, b in zip(values, obj.values(), strict=True)):
                return obj
            return dict(zip(obj.keys(), values, strict=True))
        items = [self.visit(x, depth) for x in obj]
        if all(a is b for a, b in zip(items, obj, strict=True)):
            return obj
        return items if t is list else tuple(items)
