"""Functions as task payloads: pickled once, named by a digest, kept while unchanged.

    client: fn ─dumps_function─► Prepared(frames, digest) ─► broker (once) ─► each worker (once)
    worker: FunctionCache[digest] ─► fn, unpickled on first use

A task carries its function's digest; the payload (the pickle and its out-of-band buffers)
travels once to the broker and once to each worker, which keeps it while it is unchanged.
On the client, a function whose captured values cannot have changed reuses its payload
without pickling it again (see `dumps_function`). The frames themselves are made by
serialize (framing) and pickling (cloudpickle).
"""

from __future__ import annotations

import contextlib
import hashlib
import operator
import pickle
import sys
import types
import weakref
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, NamedTuple

import cloudpickle

from ..errors import PicklingError
from . import pickling, serialize
from .pickling import MainRefs
from .serialize import OOB_MIN_BYTES, describe
from .shm import SharedMemory

__all__ = ["Prepared", "prepare", "dumps_function", "dumps_call", "frames_digest",
           "FunctionCache"]

FN_DIGEST_BYTES = 16       # a function payload is named by a blake2b hash this long
NO_ARGUMENTS = pickle.dumps(((), {}), 5)   # the arguments of fn(): one object for every task


class Prepared:
    """A function pickled once: its frames (the pickle, then its out-of-band buffers) and a
    hash of them. Tasks carry the hash and the frames travel once to the broker and once to
    each worker, which keeps the function while it is unchanged (see `Client.prepare`)."""

    __slots__ = ("frames", "digest", "nbytes", "name", "__weakref__")

    def __init__(self, frames: list[Any], digest: bytes, name: str):
        self.frames, self.digest, self.name = frames, digest, name
        self.nbytes = sum(memoryview(f).nbytes for f in frames)

    def __repr__(self) -> str:
        return f"<Prepared {self.name} ({self.nbytes} bytes)>"


def prepare(fn: Any, refs: MainRefs | None = None) -> Prepared:
    """fn pickled once (with `refs`, names of __main__ objects the receivers already have).

    Raises:
        PicklingError: fn cannot be pickled.
    """
    if isinstance(fn, Prepared):
        return fn
    try:
        return dumps_function(fn, refs)
    except Exception as e:
        raise PicklingError(f"cannot pickle the function {describe(fn)}: {e}") from e


def frames_digest(frames: list[Any]) -> bytes:
    """The hash that names a function payload: blake2b over each frame and its length."""
    h = hashlib.blake2b(digest_size=FN_DIGEST_BYTES)
    for frame in frames:
        view = memoryview(frame)
        h.update(view.nbytes.to_bytes(8, "big"))
        h.update(view)
    return h.digest()


# Payloads by digest while anything uses them: a function pickled again with the same
# content is the same Prepared, so its buffers are copied once (below), not once per task.
_payloads: weakref.WeakValueDictionary[bytes, Prepared] = weakref.WeakValueDictionary()


def _pickle_function(fn: Any, refs: MainRefs | None, previous: Prepared | None = None
                     ) -> Prepared:
    """fn's payload; `previous`, if its frames are still byte for byte the same (a compare
    costs a fifth of a hash), rather than a new one."""
    buffers: list[Any] = []

    def oob(buf: pickle.PickleBuffer) -> bool:
        raw = buf.raw()
        if raw.nbytes < OOB_MIN_BYTES:
            return True
        buffers.append(raw)
        return False

    frames = [pickling.dumps(fn, refs, oob), *buffers]
    if previous is not None and len(previous.frames) == len(frames) and all(
            len(old) == memoryview(new).nbytes and old.startswith(new)
            for old, new in zip(previous.frames, frames, strict=True)):
        return previous
    digest = frames_digest(frames)
    known = _payloads.get(digest)
    if known is None:
        # Copied: what was hashed is what every worker gets, even if the captured array
        # changes later in place (a changed array is a new digest at the next submit).
        known = Prepared([frames[0], *(bytes(b) for b in buffers)], digest, describe(fn))
        _payloads[digest] = known
    return known


def dumps_call(fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any],
               shm: SharedMemory | None = None, refs: MainRefs | None = None
               ) -> tuple[Prepared, list[Any]]:
    """(the function's payload, argument frames) for a task, or a PicklingError naming the
    culprit. fn may be a `Prepared` function."""
    prepared = prepare(fn, refs)
    if not args and not kwargs:
        return prepared, [NO_ARGUMENTS]
    try:
        return prepared, serialize.dumps((args, kwargs), shm, refs)
    except Exception as e:
        culprit = _find_unpicklable(args, kwargs)
        raise PicklingError(f"cannot pickle {culprit} of {describe(fn)}: {e}") from e


def _find_unpicklable(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    for i, a in enumerate(args):
        try:
            cloudpickle.dumps(a, protocol=5)
        except Exception:   # noqa: BLE001 - whatever pickling raises, this is the culprit
            return f"argument {i} ({describe(a)})"
    for k, v in kwargs.items():
        try:
            cloudpickle.dumps(v, protocol=5)
        except Exception:   # noqa: BLE001 - whatever pickling raises, this is the culprit
            return f"keyword argument {k}= ({describe(v)})"
    return "the arguments"


_SAFE_TYPES = (type(None), bool, int, float, complex, str, bytes, types.ModuleType,
               types.BuiltinFunctionType)
_MISSING = object()   # a global name the function reads that is not defined (yet)


class _Cached(NamedTuple):
    """A function's payload, and what its pickle depended on when it was made."""
    fn: weakref.ref[Any]
    names: tuple[str, ...]   # the global names its code reads
    values: list[Any]        # see _values_read
    payload: Prepared


# id(fn) -> its _Cached, while fn lives (by id: a WeakKeyDictionary lookup makes a weakref)
_function_cache: dict[int, _Cached] = {}
_last_payload: weakref.WeakKeyDictionary[Any, weakref.ref[Prepared]] = \
    weakref.WeakKeyDictionary()   # fn -> ref(Prepared)


def dumps_function(fn: Any, refs: MainRefs | None = None) -> Prepared:
    """fn pickled (with its large buffers out of band), reusing the payload of the last call
    while nothing it captured can have changed.

    A function defined in __main__ or a notebook is pickled by value, with the globals and
    closure variables it uses; that costs ~15 us, paid on every submit. The cached payload is
    reused only if every value the function uses is the very same immutable object (a number,
    a string, a module, a class or function importable by reference) as when it was made;
    otherwise it is pickled anew (and hashed: an unchanged array gives the same digest), so a
    changed global is always seen.
    """
    if refs is not None:
        return _pickle_function(fn, refs)
    hit = _function_cache.get(id(fn))
    if hit is not None and _alive(hit) is fn:
        # the very same objects as when the payload was made (they were immutable then)
        code = fn.__code__
        values = _values_read(fn, hit.names if code is hit.values[0] else _global_names(code))
        if len(values) == len(hit.values) and all(map(operator.is_, values, hit.values)):
            return hit.payload
    names = _global_names(fn.__code__) if isinstance(fn, types.FunctionType) else ()
    key = _captured_values(fn, names)
    try:   # fn's payload while its tasks keep it alive: compared rather than hashed again
        last = _last_payload.get(fn)
    except TypeError:   # fn cannot be weakly referenced
        last = None
    prepared = _pickle_function(fn, None, last() if last is not None else None)
    if key is not None:
        _function_cache[id(fn)] = _Cached(weakref.ref(fn, _forgetter(id(fn))), names,
                                          list(key), prepared)
    else:
        with contextlib.suppress(TypeError):
            _last_payload[fn] = weakref.ref(prepared)
    return prepared


def _alive(hit: _Cached) -> Any:
    """The function of a cache entry, or None once it is gone."""
    return hit.fn()


def _forgetter(fn_id: int) -> Callable[[object], None]:
    """What drops a function's cache entry once the function is gone."""
    return lambda _: _function_cache.pop(fn_id, None) and None


def _values_read(fn: types.FunctionType, names: tuple[str, ...]) -> list[Any]:
    """What fn's pickle depends on: its code, defaults, closure values, and the globals
    named (_MISSING for one not defined)."""
    values: list[Any] = [fn.__code__, fn.__defaults__, fn.__kwdefaults__]
    for cell in fn.__closure__ or ():
        try:
            values.append(cell.cell_contents)
        except ValueError:  # an empty cell
            values.append(None)
    fn_globals = fn.__globals__
    values += [fn_globals.get(name, _MISSING) for name in names]
    return values


def _captured_values(fn: Any, names: tuple[str, ...] | None = None) -> tuple[Any, ...] | None:
    """Everything fn's pickle depends on, or None if any of it could change in place."""
    if not isinstance(fn, types.FunctionType):
        return None
    values = _values_read(fn, _global_names(fn.__code__) if names is None else names)
    for v in values[3:]:
        if not (v is _MISSING or isinstance(v, _SAFE_TYPES) or _by_reference(v)):
            return None
    if fn.__defaults__ and not all(isinstance(v, _SAFE_TYPES) for v in fn.__defaults__):
        return None
    if fn.__kwdefaults__ and not all(isinstance(v, _SAFE_TYPES)
                                     for v in fn.__kwdefaults__.values()):
        return None
    return tuple(values)


def _global_names(code: types.CodeType) -> tuple[str, ...]:
    """The names code (and the code nested in it) reads: globals among them."""
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names.update(_global_names(const))
    return tuple(sorted(names))


def _by_reference(obj: Any) -> bool:
    """A class or function that pickle finds by its module and name (so it is not by value)."""
    if not isinstance(obj, (type, types.FunctionType)):
        return False
    module = getattr(obj, "__module__", None)
    return module not in (None, "__main__") and module in sys.modules and \
        getattr(sys.modules[module], obj.__qualname__, None) is obj


_UNLOADED = object()


class FunctionCache:
    """A worker's functions by digest: frames as received, unpickled on first use. Beyond
    `size` functions or `max_bytes` of frames the least recently used go, at `trim` (between
    batches, so a function never goes before the tasks it came with ran; the newest stays)."""

    def __init__(self, size: int = 256, max_bytes: int = 256 << 20):
        self.size, self.max_bytes = size, max_bytes
        # digest -> [frames, fn, nbytes]
        self._entries: OrderedDict[bytes, list[Any]] = OrderedDict()
        self._bytes = 0

    def __contains__(self, digest: bytes) -> bool:
        return digest in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def put(self, digest: bytes, frames: list[Any]) -> None:
        if digest in self._entries:
            self._entries.move_to_end(digest)
            return
        nbytes = sum(memoryview(f).nbytes for f in frames)
        self._entries[digest] = [list(frames), _UNLOADED, nbytes]
        self._bytes += nbytes

    def get(self, digest: bytes) -> Any:
        """The function (KeyError if we do not have it); unpickling errors propagate."""
        entry = self._entries[digest]
        self._entries.move_to_end(digest)
        if entry[1] is _UNLOADED:
            entry[1] = serialize.loads(entry[0])
        return entry[1]

    def trim(self) -> None:
        while len(self._entries) > 1 and (len(self._entries) > self.size
                                          or self._bytes > self.max_bytes):
            self._bytes -= self._entries.popitem(last=False)[1][2]
