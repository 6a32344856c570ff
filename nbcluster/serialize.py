"""Turning Python objects into message frames and back (clients and workers; never the broker).

cloudpickle with pickle protocol 5: functions defined in __main__ or a notebook, lambdas and
closures travel by value with what they captured; large buffers (numpy arrays, bytes,
bytearrays) are not copied into the pickle but travel as out-of-band frames, sent and
received zero-copy and arriving writable.
"""

from __future__ import annotations

import pickle
from collections import OrderedDict
from typing import Any

import cloudpickle

from .errors import PicklingError

__all__ = ["dumps", "loads", "FunctionCache", "describe"]

OOB_MIN_BYTES = 64 * 1024  # smaller buffers are cheaper inline


def dumps(obj: Any) -> list:
    """Frames for obj: the pickle, then one frame per large out-of-band buffer."""
    buffers: list = []

    def oob(buf: pickle.PickleBuffer) -> bool:
        raw = buf.raw()
        if raw.nbytes < OOB_MIN_BYTES:
            return True  # true means: serialize in-band
        buffers.append(raw)
        return False

    return [cloudpickle.dumps(obj, protocol=5, buffer_callback=oob), *buffers]


def loads(frames: list) -> Any:
    """Inverse of dumps; frames may be bytes, memoryviews or zmq.Frames."""
    return pickle.loads(frames[0], buffers=frames[1:])


def describe(obj: Any, limit: int = 80) -> str:
    """A short, safe repr for error messages."""
    try:
        text = repr(obj)
    except Exception:
        text = f"<{type(obj).__name__} object>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def dumps_call(fn, args: tuple, kwargs: dict) -> tuple[bytes, list]:
    """(function frame, argument frames) for a task, or a PicklingError naming the culprit."""
    try:
        fn_frame = cloudpickle.dumps(fn, protocol=5)
    except Exception as e:
        raise PicklingError(f"cannot pickle the function {describe(fn)}: {e}") from e
    try:
        return fn_frame, dumps((args, kwargs))
    except Exception as e:
        culprit = _find_unpicklable(args, kwargs)
        raise PicklingError(f"cannot pickle {culprit} of {describe(fn)}: {e}") from e


def _find_unpicklable(args: tuple, kwargs: dict) -> str:
    for i, a in enumerate(args):
        try:
            cloudpickle.dumps(a, protocol=5)
        except Exception:
            return f"argument {i} ({describe(a)})"
    for k, v in kwargs.items():
        try:
            cloudpickle.dumps(v, protocol=5)
        except Exception:
            return f"keyword argument {k}= ({describe(v)})"
    return "the arguments"


class FunctionCache:
    """Unpickled functions by their pickled bytes: a worker unpickles a function once."""

    def __init__(self, size: int = 128, max_bytes: int = 64 * 1024):
        self.size, self.max_bytes = size, max_bytes
        self._cache: OrderedDict[bytes, Any] = OrderedDict()

    def load(self, frame) -> Any:
        data = bytes(frame)
        if len(data) > self.max_bytes:
            return pickle.loads(data)
        fn = self._cache.get(data)
        if fn is None:
            fn = self._cache[data] = pickle.loads(data)
            if len(self._cache) > self.size:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(data)
        return fn
