"""Turning Python objects into message frames and back (clients and workers; never the broker).

cloudpickle with pickle protocol 5: functions defined in __main__ or a notebook, lambdas and
closures travel by value with what they captured; large buffers (numpy arrays, bytes,
bytearrays) are not copied into the pickle but travel as out-of-band frames, sent and
received zero-copy and arriving writable.
"""

from __future__ import annotations

import pickle
import sys
import types
import weakref
from collections import OrderedDict
from typing import Any

import cloudpickle

from .errors import PicklingError
from .shm import REF_PREFIX, SHM_MIN_BYTES, SharedMemory

__all__ = ["dumps", "loads", "FunctionCache", "describe"]

OOB_MIN_BYTES = 64 * 1024  # smaller buffers are cheaper inline


def dumps(obj: Any, shm: SharedMemory | None = None) -> list:
    """Frames for obj: the pickle, then one frame per large out-of-band buffer. With shm
    (the receiver is on this host), buffers of SHM_MIN_BYTES or more go to shared memory and
    their frame is a short reference."""
    buffers: list = []

    def oob(buf: pickle.PickleBuffer) -> bool:
        raw = buf.raw()
        if raw.nbytes < OOB_MIN_BYTES:
            return True  # true means: serialize in-band
        buffers.append(shm.put(raw) if shm is not None and raw.nbytes >= SHM_MIN_BYTES else raw)
        return False

    return [cloudpickle.dumps(obj, protocol=5, buffer_callback=oob), *buffers]


def loads(frames: list, shm: SharedMemory | None = None, remove: bool = False) -> Any:
    """Inverse of dumps; frames may be bytes, memoryviews or zmq.Frames. Shared-memory
    references are mapped through shm (and their files removed, with remove)."""
    buffers = [shm.get(f, remove) if shm is not None and SharedMemory.is_ref(f) else f
               for f in frames[1:]]
    return pickle.loads(frames[0], buffers=buffers)


def shm_names(frames: list) -> list[str]:
    """Names of the shared-memory files that frames refer to."""
    return [bytes(f)[len(REF_PREFIX):].decode() for f in frames[1:] if SharedMemory.is_ref(f)]


def describe(obj: Any, limit: int = 80) -> str:
    """A short, safe repr for error messages."""
    try:
        text = repr(obj)
    except Exception:
        text = f"<{type(obj).__name__} object>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def dumps_call(fn, args: tuple, kwargs: dict, shm: SharedMemory | None = None) -> tuple[bytes, list]:
    """(function frame, argument frames) for a task, or a PicklingError naming the culprit."""
    try:
        fn_frame = dumps_function(fn)
    except Exception as e:
        raise PicklingError(f"cannot pickle the function {describe(fn)}: {e}") from e
    try:
        return fn_frame, dumps((args, kwargs), shm)
    except Exception as e:
        culprit = _find_unpicklable(args, kwargs)
        raise PicklingError(f"cannot pickle {culprit} of {describe(fn)}: {e}") from e


_SAFE_TYPES = (type(None), bool, int, float, complex, str, bytes, types.ModuleType,
               types.BuiltinFunctionType)
_function_cache: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def dumps_function(fn) -> bytes:
    """cloudpickle.dumps(fn), reusing the bytes of the last call while nothing it captured
    can have changed.

    A function defined in __main__ or a notebook is pickled by value, with the globals and
    closure variables it uses; that costs ~15 us, paid on every submit. The cached bytes are
    reused only if every value the function uses is the very same immutable object (a number,
    a string, a module, a class or function importable by reference); otherwise it is pickled
    anew, so a changed global is always seen.
    """
    key = _captured_values(fn)
    if key is not None:
        hit = _function_cache.get(fn)
        if hit is not None and len(hit[0]) == len(key) and all(a is b for a, b in zip(hit[0], key)):
            return hit[1]
    data = cloudpickle.dumps(fn, protocol=5)
    if key is not None:
        _function_cache[fn] = (key, data)
    return data


def _captured_values(fn) -> tuple | None:
    """Everything fn's pickle depends on, or None if any of it could change in place."""
    if not isinstance(fn, types.FunctionType):
        return None
    values: list = [fn.__code__, fn.__defaults__, fn.__kwdefaults__]
    for cell in fn.__closure__ or ():
        try:
            values.append(cell.cell_contents)
        except ValueError:  # an empty cell
            values.append(None)
    fn_globals = fn.__globals__
    for name in _global_names(fn.__code__):
        if name in fn_globals:
            values.append(fn_globals[name])
    for v in values[3:]:
        if not (isinstance(v, _SAFE_TYPES) or _by_reference(v)):
            return None
    if fn.__defaults__ and not all(isinstance(v, _SAFE_TYPES) for v in fn.__defaults__):
        return None
    if fn.__kwdefaults__ and not all(isinstance(v, _SAFE_TYPES) for v in fn.__kwdefaults__.values()):
        return None
    return tuple(values)


def _global_names(code: types.CodeType) -> set[str]:
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _global_names(const)
    return names


def _by_reference(obj) -> bool:
    """A class or function that pickle finds by its module and name (so it is not by value)."""
    if not isinstance(obj, (type, types.FunctionType)):
        return False
    module = getattr(obj, "__module__", None)
    return module not in (None, "__main__") and module in sys.modules and \
        getattr(sys.modules[module], obj.__qualname__, None) is obj


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
