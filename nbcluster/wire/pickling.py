"""cloudpickle as nbcluster pickles: with pickle protocol 5, functions keep their source, and
a Mirror's objects travel by name.

Functions defined in __main__ or a notebook, lambdas and closures travel by value with what
they captured (cloudpickle). A function pickled by value keeps its file name and takes its
source lines along, so a worker's tracebacks show them (a worker may not be able to read the
file: a notebook cell, a script on another host). With `MainRefs`, an object still bound to
the same __main__ name as when mirror workers were forked travels as that name.

This module makes pickles of single objects; serialize.py frames them (out-of-band buffers,
shared memory) and functions.py makes function payloads of them.
"""

from __future__ import annotations

import io
import linecache
import os
import pickle
import sys
import types
import weakref
from collections import ChainMap
from collections.abc import Callable, Sequence
from typing import IO, Any, ClassVar

import cloudpickle

__all__ = ["MainRefs", "dumps", "loads", "remember_source"]

MAX_SOURCE_LINES = 2000   # a function's source travels with it up to this many lines

BufferCallback = Callable[[pickle.PickleBuffer], Any]
Source = tuple[str, int, list[str]]   # (file name, first line number, the lines)


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


def _reduce_code(code: types.CodeType) -> tuple[Any, tuple[Any, ...]]:
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


class _Pickler(cloudpickle.Pickler):  # type: ignore[misc]
    """cloudpickle's Pickler, except that a function pickled by value keeps its file name and
    first line, and takes its source lines along: a worker may not be able to read the file
    (a notebook cell, a script on another host), and its tracebacks should show them."""

    # as many maps as cloudpickle's own: the pickler looks every object's type up in it
    dispatch_table: ClassVar[ChainMap[type, Callable[..., object]]] = ChainMap(
        {**cloudpickle.Pickler.dispatch_table.maps[0], types.CodeType: _reduce_code},
        *cloudpickle.Pickler.dispatch_table.maps[1:])

    def __init__(self, file: IO[bytes], buffer_callback: BufferCallback | None = None):
        super().__init__(file, protocol=5, buffer_callback=buffer_callback)

    def _dynamic_function_reduce(self, func: types.FunctionType) -> tuple[Any, ...]:
        # cloudpickle calls this for functions pickled by value only (cloudpickle 3.0, 3.1;
        # tests/wire/test_serialize.py notices if it stops): nothing is added for other objects
        rv = super()._dynamic_function_reduce(func)
        source = _source_of(func.__code__)
        return rv if source is None else (_with_source, (source, rv[0], rv[1]), *rv[2:])


class _MirrorPickler(_Pickler):
    def __init__(self, file: IO[bytes], refs: MainRefs,
                 buffer_callback: BufferCallback | None = None):
        super().__init__(file, buffer_callback=buffer_callback)
        self._refs = refs

    def persistent_id(self, obj: Any) -> str | None:
        return self._refs.name_of(obj)


# id(code) -> (code, its source)
_sources: dict[int, tuple[weakref.ref[types.CodeType], Source | None]] = {}


def _source_of(code: types.CodeType) -> Source | None:
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


def _with_source(source: Source, make: Callable[..., Any], args: tuple[Any, ...]) -> Any:
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


def dumps(obj: Any, refs: MainRefs | None = None,
          buffer_callback: BufferCallback | None = None) -> bytes:
    """obj pickled (with refs, objects the receiver has already travel as their __main__
    name); buffer_callback as pickle's (returning false takes a buffer out of band)."""
    out = io.BytesIO()
    if refs is None:
        _Pickler(out, buffer_callback=buffer_callback).dump(obj)
    else:
        _MirrorPickler(out, refs, buffer_callback=buffer_callback).dump(obj)
    return out.getvalue()


class _Unpickler(pickle.Unpickler):
    def persistent_load(self, name: str) -> Any:
        main = sys.modules["__main__"].__dict__
        if name not in main:
            raise pickle.UnpicklingError(
                f"this task refers to {name!r} of the process that forked the mirror workers, "
                "and this worker is not one of them (run it with the Mirror's client)")
        return main[name]


def loads(data: Any, buffers: Sequence[Any] = ()) -> Any:
    """Inverse of dumps (with the out-of-band buffers, in order); data and buffers may be
    any bytes-like objects."""
    # pickle.loads is 5x cheaper for small pickles; only a Mirror's pickles hold names.
    try:
        return pickle.loads(data, buffers=buffers)
    except pickle.UnpicklingError as e:
        if "persistent" not in str(e):
            raise
    return _Unpickler(io.BytesIO(data), buffers=buffers).load()
