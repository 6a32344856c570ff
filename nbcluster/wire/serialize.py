"""Turning Python objects into message frames and back (clients and workers; never the broker).

cloudpickle with pickle protocol 5: functions defined in __main__ or a notebook, lambdas and
closures travel by value with what they captured; large buffers (numpy arrays) are not
copied into the pickle but travel as out-of-band frames, sent and received zero-copy and
arriving writable. Large bytes, bytearrays and memoryviews go out of band too, and are
copied once on arrival into an object of their type (see oob_bytes: a memoryview arrives as
bytes). To a receiver on this host, buffers go through shared memory (see shm).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import linecache
import os
import pickle
import sys
import types
import weakref
from collections import ChainMap, OrderedDict
from typing import Any

import cloudpickle

from . import oob_bytes
from ..errors import PicklingError
from .shm import REF_PREFIX, SHM_MIN_BYTES, SharedMemory

__all__ = ["dumps", "loads", "FunctionCache", "describe", "Prepared", "prepare", "MainRefs",
           "frames_digest"]

OOB_MIN_BYTES = 64 * 1024  # smaller buffers are cheaper inline
LIFT_FIRST_ITEMS = 16      # bytes objects are looked for among this many container items...
LIFT_AGAIN_BYTES = 1 << 20  # ...and among all of them (up to the next) if the pickle is this big
LIFT_MAX_ITEMS = 10_000_000
FN_DIGEST_BYTES = 16       # a function payload is named by a blake2b hash this long


class MainRefs:
    """The globals of __main__ as they were when mirror workers were forked from this process.

    Pickling with these, an object that is still bound to the same __main__ name as at the
    fork travels as that name: the forked workers have their own copy of it already.
    """

    def __init__(self) -> None:
        main = sys.modules["__main__"].__dict__
        self._names: dict[int, tuple[str, Any]] = {}
        for name, value in main.items():
            if name.startswith("__") or isinstance(value, (types.ModuleType, types.FunctionType,
                                                           type, int, float, str, type(None))):
                # Modules go by reference anyway and small values are cheaper inline.
                # Functions and classes go by value, so the globals they use are looked up
                # here: each one still bound as at the fork then goes by name.
                continue
            try:   # a weak reference, where possible, guards against a recycled id()
                guard: Any = weakref.ref(value)
            except TypeError:
                guard = type(value)
            self._names[id(value)] = (name, guard)

    def name_of(self, obj: Any) -> str | None:
        entry = self._names.get(id(obj))
        if entry is None:
            return None
        name, guard = entry
        if sys.modules["__main__"].__dict__.get(name) is not obj:
            return None          # rebound since the fork: the workers' copy is stale
        if isinstance(guard, weakref.ref) and guard() is not obj:
            return None
        if isinstance(guard, type) and type(obj) is not guard:
            return None
        return name


def _reduce_code(code: types.CodeType):
    """cloudpickle's reduction of a code object, keeping its co_filename: cloudpickle 3.1
    names every code object pickled by value "<dynamic-code>", which leaves remote tracebacks
    with neither the file nor the source line."""
    make, args = _cloudpickle_reduce_code(code)
    if _FILENAME_AT is None:
        return make, args
    return make, (*args[:_FILENAME_AT], code.co_filename, *args[_FILENAME_AT + 1:])


_cloudpickle_reduce_code = cloudpickle.Pickler.dispatch_table[types.CodeType]
# Where cloudpickle puts "<dynamic-code>" among the code constructor's arguments, if it does
# (3.1 does, 3.0 keeps the file name): found once, on a probe.
_FILENAME_AT = next((i for i, a in enumerate(_cloudpickle_reduce_code(
    (lambda: None).__code__.replace(co_filename="<nbcluster-probe>"))[1])
    if isinstance(a, str) and a == "<dynamic-code>"), None)
MAX_SOURCE_LINES = 2000   # a function's source travels with it up to this many lines


class _Pickler(cloudpickle.Pickler):
    """cloudpickle's Pickler, except that a function pickled by value keeps its file name and
    first line, and takes its source lines along: a worker may not be able to read the file
    (a notebook cell, a script on another host), and its tracebacks should show them."""

    # as many maps as cloudpickle's own: the pickler looks every object's type up in it
    dispatch_table = ChainMap({**cloudpickle.Pickler.dispatch_table.maps[0],
                               types.CodeType: _reduce_code},
                              *cloudpickle.Pickler.dispatch_table.maps[1:])

    def __init__(self, file, buffer_callback=None):
        super().__init__(file, protocol=5, buffer_callback=buffer_callback)

    def _dynamic_function_reduce(self, func: types.FunctionType) -> tuple:
        # cloudpickle calls this for functions pickled by value only (cloudpickle 3.0, 3.1;
        # tests/wire/test_serialize.py notices if it stops): nothing is added for other objects
        rv = super()._dynamic_function_reduce(func)
        source = _source_of(func.__code__)
        return rv if source is None else (_with_source, (source, rv[0], rv[1]), *rv[2:])


class _MirrorPickler(_Pickler):
    def __init__(self, file, refs: MainRefs, buffer_callback=None):
        super().__init__(file, buffer_callback=buffer_callback)
        self._refs = refs

    def persistent_id(self, obj: Any) -> str | None:
        return self._refs.name_of(obj)


_sources: dict[int, tuple[weakref.ref, tuple | None]] = {}   # id(code) -> (code, its source)


def _source_of(code: types.CodeType) -> tuple | None:
    """(file name, first line number, the lines) of a function's code, or None if unknown."""
    hit = _sources.get(id(code))   # by id: hashing a code object costs more than all this
    if hit is not None and hit[0]() is code:
        return hit[1]
    first, last = code.co_firstlineno, _last_line(code)
    lines = linecache.getlines(code.co_filename)[first - 1:last]
    source = (code.co_filename, first, lines) if lines and last - first < MAX_SOURCE_LINES \
        else None
    if len(_sources) > 4096:
        _sources.clear()
    _sources[id(code)] = (weakref.ref(code), source)
    return source


def _last_line(code: types.CodeType) -> int:
    last = max((line for _, _, line in code.co_lines() if line is not None),
               default=code.co_firstlineno)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            last = max(last, _last_line(const))
    return last


def _with_source(source: tuple, make, args: tuple) -> Any:
    """make(*args), once the source lines of what it makes are in this process's linecache."""
    remember_source(*source)
    return make(*args)


def remember_source(filename: str, first: int, lines: list[str]) -> None:
    """Put lines first.. of filename into linecache, unless this process can read the file
    itself; lines of other functions of the same file or cell are kept."""
    entry = linecache.cache.get(filename)
    if entry is not None and len(entry) == 4 and entry[1] is not None:
        return   # read from the file here
    if entry is None and os.path.exists(filename):
        return
    have = list(entry[2]) if entry is not None and len(entry) == 4 else []
    end = first - 1 + len(lines)
    if len(have) < end:
        have += ["\n"] * (end - len(have))
    have[first - 1:end] = lines
    # mtime None: linecache.checkcache keeps the entry (as it does IPython's cells)
    linecache.cache[filename] = (sum(map(len, have)), None, have, filename)


def _cloudpickle(obj: Any, refs: MainRefs | None = None, buffer_callback=None) -> bytes:
    out = io.BytesIO()
    if refs is None:
        _Pickler(out, buffer_callback=buffer_callback).dump(obj)
    else:
        _MirrorPickler(out, refs, buffer_callback=buffer_callback).dump(obj)
    return out.getvalue()


def pickle_bytes(obj: Any) -> bytes:
    """obj pickled into one bytes object (buffers in-band), as functions are pickled."""
    return _cloudpickle(obj)


def unpickle_bytes(data: bytes) -> Any:
    """Inverse of pickle_bytes."""
    return _unpickle(data)


class _Unpickler(pickle.Unpickler):
    def persistent_load(self, name: str) -> Any:
        main = sys.modules["__main__"].__dict__
        if name not in main:
            raise pickle.UnpicklingError(
                f"this task refers to {name!r} of the process that forked the mirror workers, "
                "and this worker is not one of them (run it with the Mirror's client)")
        return main[name]


def _unpickle(data, buffers=()) -> Any:
    # pickle.loads is 5x cheaper for small pickles; only a Mirror's pickles hold names.
    try:
        return pickle.loads(data, buffers=buffers)
    except pickle.UnpicklingError as e:
        if "persistent" not in str(e):
            raise
    return _Unpickler(io.BytesIO(data), buffers=buffers).load()


class Prepared:
    """A function pickled once: its frames (the pickle, then its out-of-band buffers) and a
    hash of them. Tasks carry the hash and the frames travel once to the broker and once to
    each worker, which keeps the function while it is unchanged (see `Client.prepare`)."""

    __slots__ = ("frames", "digest", "nbytes", "name", "__weakref__")

    def __init__(self, frames: list, digest: bytes, name: str):
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


def frames_digest(frames: list) -> bytes:
    """The hash that names a function payload: blake2b over each frame and its length."""
    h = hashlib.blake2b(digest_size=FN_DIGEST_BYTES)
    for frame in frames:
        view = memoryview(frame)
        h.update(view.nbytes.to_bytes(8, "big"))
        h.update(view)
    return h.digest()


# Payloads by digest while anything uses them: a function pickled again with the same
# content is the same Prepared, so its buffers are copied once (below), not once per task.
_payloads: "weakref.WeakValueDictionary[bytes, Prepared]" = weakref.WeakValueDictionary()


def _pickle_function(fn: Any, refs: MainRefs | None, previous: Prepared | None = None
                     ) -> Prepared:
    """fn's payload; `previous`, if its frames are still byte for byte the same (a compare
    costs a fifth of a hash), rather than a new one."""
    buffers: list = []

    def oob(buf: pickle.PickleBuffer) -> bool:
        raw = buf.raw()
        if raw.nbytes < OOB_MIN_BYTES:
            return True
        buffers.append(raw)
        return False

    frames = [_cloudpickle(fn, refs, oob), *buffers]
    if previous is not None and len(previous.frames) == len(frames) and all(
            len(old) == memoryview(new).nbytes and old.startswith(new)
            for old, new in zip(previous.frames, frames)):
        return previous
    digest = frames_digest(frames)
    known = _payloads.get(digest)
    if known is None:
        # Copied: what was hashed is what every worker gets, even if the captured array
        # changes later in place (a changed array is a new digest at the next submit).
        known = Prepared([frames[0], *(bytes(b) for b in buffers)], digest, describe(fn))
        _payloads[digest] = known
    return known


def dumps(obj: Any, shm: SharedMemory | None = None, refs: MainRefs | None = None) -> list:
    """Frames for obj: the pickle, then one frame per large out-of-band buffer. With shm
    (the receiver is on this host), buffers of SHM_MIN_BYTES or more go to shared memory and
    their frame is a short reference. With refs, objects the receiver has already travel as
    their __main__ name."""
    buffers: list = []

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
    data = _cloudpickle(lifted, refs, oob)
    if not complete and len(data) >= LIFT_AGAIN_BYTES:
        lifted, complete = oob_bytes.lift(obj, OOB_MIN_BYTES, LIFT_MAX_ITEMS, keep)
        if complete and lifted is not obj:
            for name in shm_names([b"", *buffers]):
                shm.remove(name)
            buffers.clear()
            data = _cloudpickle(lifted, refs, oob)
    return [data, *buffers]


def loads(frames: list, shm: SharedMemory | None = None, remove: bool = False) -> Any:
    """Inverse of dumps; frames may be bytes, memoryviews or zmq.Frames. Shared-memory
    references are mapped through shm (and their files removed, with remove)."""
    buffers = [shm.get(f, remove) if shm is not None and SharedMemory.is_ref(f) else f
               for f in frames[1:]]
    return _unpickle(frames[0], buffers)


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


def dumps_call(fn, args: tuple, kwargs: dict, shm: SharedMemory | None = None,
               refs: MainRefs | None = None) -> tuple[Prepared, list]:
    """(the function's payload, argument frames) for a task, or a PicklingError naming the
    culprit. fn may be a `Prepared` function."""
    prepared = prepare(fn, refs)
    try:
        return prepared, dumps((args, kwargs), shm, refs)
    except Exception as e:
        culprit = _find_unpicklable(args, kwargs)
        raise PicklingError(f"cannot pickle {culprit} of {describe(fn)}: {e}") from e


_SAFE_TYPES = (type(None), bool, int, float, complex, str, bytes, types.ModuleType,
               types.BuiltinFunctionType)
_function_cache: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_last_payload: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()   # fn -> ref(Prepared)


def dumps_function(fn, refs: MainRefs | None = None) -> Prepared:
    """fn pickled (with its large buffers out of band), reusing the payload of the last call
    while nothing it captured can have changed.

    A function defined in __main__ or a notebook is pickled by value, with the globals and
    closure variables it uses; that costs ~15 us, paid on every submit. The cached payload is
    reused only if every value the function uses is the very same immutable object (a number,
    a string, a module, a class or function importable by reference); otherwise it is pickled
    anew (and hashed: an unchanged array gives the same digest), so a changed global is
    always seen.
    """
    if refs is not None:
        return _pickle_function(fn, refs)
    key = _captured_values(fn)
    if key is not None:
        hit = _function_cache.get(fn)
        if hit is not None and len(hit[0]) == len(key) and all(a is b for a, b in zip(hit[0], key)):
            return hit[1]
    try:   # fn's payload while its tasks keep it alive: compared rather than hashed again
        last = _last_payload.get(fn)
    except TypeError:   # fn cannot be weakly referenced
        last = None
    prepared = _pickle_function(fn, None, last() if last is not None else None)
    if key is not None:
        _function_cache[fn] = (key, prepared)
    else:
        with contextlib.suppress(TypeError):
            _last_payload[fn] = weakref.ref(prepared)
    return prepared


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


_UNLOADED = object()


class FunctionCache:
    """A worker's functions by digest: frames as received, unpickled on first use. Beyond
    `size` functions or `max_bytes` of frames the least recently used go, at `trim` (between
    batches, so a function never goes before the tasks it came with ran; the newest stays)."""

    def __init__(self, size: int = 256, max_bytes: int = 256 << 20):
        self.size, self.max_bytes = size, max_bytes
        self._entries: OrderedDict[bytes, list] = OrderedDict()   # digest -> [frames, fn, nbytes]
        self._bytes = 0

    def __contains__(self, digest: bytes) -> bool:
        return digest in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def put(self, digest: bytes, frames: list) -> None:
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
            entry[1] = loads(entry[0])
        return entry[1]

    def trim(self) -> None:
        while len(self._entries) > 1 and (len(self._entries) > self.size
                                          or self._bytes > self.max_bytes):
            self._bytes -= self._entries.popitem(last=False)[1][2]
