"""Remote failures, captured on the worker as plain data (the client rebuilds them: `remote`)."""

from __future__ import annotations

import itertools
import linecache
import reprlib
import time
import traceback
import types
from collections.abc import Callable
from typing import Any

from ..errors import RemoteFrame
from ..runtime import WORKER
from . import pickling, serialize

__all__ = ["capture", "signature", "ElementFailures"]

DETAILED_PER_SIGNATURE = 5   # failures of one kind kept in full; the rest are counted
MAX_DETAILED = 50            # failures of a task kept in full, whatever their kinds
STOP_AFTER_S = 0.5           # a task stops this long after a failure began to repeat

MAX_LOCALS = 30       # per frame
MAX_FRAMES = 50


class _Repr(reprlib.Repr):
    """reprlib's, except that big dicts and sets are not sorted first (a local holding a
    dict of a million keys made every captured failure cost a sort of it)."""

    def repr_dict(self, x: dict[Any, Any], level: int) -> str:
        if len(x) <= self.maxdict:
            return super().repr_dict(x, level)
        items = ", ".join(f"{self.repr1(k, level - 1)}: {self.repr1(v, level - 1)}"
                          for k, v in itertools.islice(x.items(), self.maxdict))
        return f"{{{items}, ...}}"

    def repr_set(self, x: set[Any], level: int) -> str:
        if len(x) <= self.maxset:
            return super().repr_set(x, level)
        items = ", ".join(self.repr1(v, level - 1) for v in itertools.islice(x, self.maxset))
        return f"{{{items}, ...}}"


_repr = _Repr()
_repr.maxstring = 200
_repr.maxother = 200
_repr.maxlist = _repr.maxdict = _repr.maxset = _repr.maxtuple = 10


def _safe_repr(value: Any) -> str:
    try:
        return _repr.repr(value)
    except Exception as e:  # noqa: BLE001 - a broken __repr__ must not hide the real error
        return f"<unrepresentable {type(value).__name__}: {type(e).__name__}>"


_SHELL_NAMES = {"In", "Out", "get_ipython", "exit", "quit", "open"}   # IPython's own
HIDDEN_FILES: set[str] = set()   # plumbing whose outer frames a user need not see

# In a worker: keeps a failure's frames alive for a debugger (worker/postmortem.py), and
# returns the number its client names it by, or None if it is not kept.
keep_failure: Callable[[BaseException, types.TracebackType | None], int | None] | None = None


def capture(exc: BaseException, skip: int = 0) -> dict[str, Any]:
    """Plain, picklable data describing exc and its traceback (skipping `skip` outer frames,
    then outer frames of HIDDEN_FILES), and the exception itself, pickled apart so that a
    client that cannot unpickle it still gets the rest."""
    tb = exc.__traceback__
    for _ in range(skip):
        if tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
    while tb is not None and tb.tb_next is not None and \
            tb.tb_frame.f_code.co_filename in HIDDEN_FILES:
        tb = tb.tb_next
    frames = []
    for frame, lineno in list(traceback.walk_tb(tb))[-MAX_FRAMES:]:
        code = frame.f_code
        local_items = list(frame.f_locals.items())
        if code.co_name == "<module>":   # a module's or a cell's globals: only the user's names
            local_items = [(k, v) for k, v in local_items if not k.startswith("_")
                           and k not in _SHELL_NAMES and not isinstance(v, types.ModuleType)]
        local_items = local_items[:MAX_LOCALS]
        frames.append(RemoteFrame(code.co_filename, lineno, code.co_name,
                                  _source_line(code.co_filename, lineno, frame.f_globals),
                                  {k: _safe_repr(v) for k, v in local_items}))
    text = "".join(traceback.format_exception(type(exc), exc, tb))
    pickled, why = _pickle_exception(exc)
    data: dict[str, Any] = {
        "type": type_name(type(exc)), "message": _safe_str(exc), "traceback": text,
        "frames": [vars(f) for f in frames], "worker": dict(WORKER), "exception": pickled,
        "why": why}
    kept = keep_failure(exc, tb) if keep_failure is not None else None
    if kept is not None:
        data["kept"] = kept
    return data


def type_name(t: type) -> str:
    return f"{t.__module__}.{t.__qualname__}"


def _pickle_exception(exc: BaseException) -> tuple[bytes | None, str]:
    """(type, how to make it, its args, its state) as pickle would rebuild exc, pickled; the
    client rebuilds it as an instance of a subclass of its type (see `remote`)."""
    try:
        rv = exc.__reduce_ex__(5)
        parts = (type(exc), rv[0], rv[1], rv[2] if len(rv) > 2 else None)
        return pickling.dumps(parts), ""
    except Exception as e:   # noqa: BLE001 - e.g. an attribute holding a lock
        return None, f"the exception could not be pickled on its worker: {type(e).__name__}: {e}"


def _safe_str(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception as e:  # noqa: BLE001 - a broken __str__ must not hide the real error
        return f"<str() failed: {type(e).__name__}>"


def _source_line(filename: str, lineno: int, module_globals: dict[str, Any]) -> str:
    return linecache.getline(filename, lineno, module_globals).strip()


def signature(exc: BaseException) -> tuple[str, str, int]:
    """(type name, file, line) of exc's innermost frame: failures alike share it."""
    tb = exc.__traceback__
    if tb is None:
        return type_name(type(exc)), "", 0
    while tb.tb_next is not None:
        tb = tb.tb_next
    return type_name(type(exc)), tb.tb_frame.f_code.co_filename, tb.tb_lineno


class ElementFailures:
    """The failures of one task's elements: in full (`capture`) for the first
    DETAILED_PER_SIGNATURE of each signature, counted for the rest. A task stops
    (`should_stop`) once a failure has kept repeating for STOP_AFTER_S: it is a mistake,
    not bad data, and the client stops the whole run when it hears of it.

    Attributes:
        detailed: [(index or key, repr of the element, captured failure)].
        counted: {signature: failures not kept in full}.
    """

    def __init__(self) -> None:
        self.detailed: list[tuple[Any, str, dict[str, Any]]] = []
        self.counted: dict[tuple[str, str, int], int] = {}
        self._seen: dict[tuple[str, str, int], int] = {}
        self._repeating_since: float | None = None

    def __bool__(self) -> bool:
        return bool(self.detailed)

    def add(self, index: Any, element: Any, exc: BaseException, skip: int = 0) -> None:
        sig = signature(exc)
        n = self._seen[sig] = self._seen.get(sig, 0) + 1
        if n <= DETAILED_PER_SIGNATURE and len(self.detailed) < MAX_DETAILED:
            self.detailed.append((index, serialize.describe(element), capture(exc, skip)))
            return
        self.counted[sig] = self.counted.get(sig, 0) + 1
        if self._repeating_since is None:
            self._repeating_since = time.monotonic()

    @property
    def should_stop(self) -> bool:
        return self._repeating_since is not None and \
            time.monotonic() - self._repeating_since >= STOP_AFTER_S
