"""Remote failures on the client: the real exception, rebuilt; many of them, kept in bounds.

    worker: tracebacks.capture(exc) ──{type, message, traceback, frames, worker,
                                        exception: pickled (type, make, args, state)}──► client
    client: rebuild(data) ──► an instance of Remote<type>(type, RemoteError), made as pickle
                              would make the exception, with its args and attributes, and
                              the RemoteTraceback as its __cause__
                          └─► a plain RemoteError naming type and message, if that fails

    FailureTally: the failures of one run (a map, a collection, a MapReduce phase) in full
    for the first few of each kind, counted for the rest; tells when the run should stop.
"""

from __future__ import annotations

import collections
import threading
import types
from collections.abc import Callable, Iterable
from typing import Any, cast

from ..errors import (
    RemoteError,
    RemoteErrorGroup,
    RemoteFrame,
    RemoteTraceback,
)
from ..report import failed_workers, summarize_failures
from . import pickling
from .tracebacks import DETAILED_PER_SIGNATURE

__all__ = ["rebuild", "FailureTally"]


def rebuild(data: dict[str, Any], index: object = None, item: str | None = None,
            client: object = None) -> RemoteError:
    """The error for a failure captured on a worker: the remote exception itself (also a
    RemoteError) when it arrived and can be rebuilt here, else a plain RemoteError.
    `client`: the one that ran the task, through which `debug()` reaches the failed frames
    while the worker keeps them."""
    info = RemoteTraceback(data["type"], data["message"], data["traceback"],
                           [RemoteFrame(**f) for f in data["frames"]], data["worker"], index, item,
                           data.get("why", ""))
    if client is not None and isinstance(data.get("kept"), int):
        info.attach_debugger(client, data["kept"])
    parts: tuple[type, Any, tuple[Any, ...], Any] | None = None   # see tracebacks.capture
    if data.get("exception") is not None:
        try:
            parts = pickling.loads(data["exception"])
        except BaseException as e:  # noqa: BLE001 - unpickling runs remote code; never raise
            info.why = f"the exception could not be unpickled here: {type(e).__name__}: {e}"
    if parts is not None:
        try:
            return _remote_instance(*parts, info)
        except BaseException as e:  # noqa: BLE001
            info.why = f"the exception could not be rebuilt here: {type(e).__name__}: {e}"
    err = RemoteError(data["type"], data["message"])
    err._nbcluster = err.__cause__ = info
    return err


def _remote_instance(cls: type, make: Any, args: tuple[Any, ...], state: Any,
                     info: RemoteTraceback) -> RemoteError:
    """An instance of cls's remote class with the args and state pickle would give it."""
    cls = getattr(cls, "_remote_type", cls)   # a remote error raised again on a worker
    remote_cls = _remote_class(cls)
    err: RemoteError
    if remote_cls is None:   # cannot be subclassed: the real one, carried by a RemoteError
        info.why = (f"{cls.__qualname__} cannot be subclassed with RemoteError; "
                    "the exception itself is this error's .exception")
        err = RemoteError(info.type_name, info.message, exception=_made(make, args, state))
        err._nbcluster = err.__cause__ = info
        return err
    if make is cls:
        try:
            err = remote_cls(*args)
        except Exception:   # noqa: BLE001 - its __init__ wants other arguments (keyword-only)
            err = remote_cls.__new__(remote_cls, *args)
        if state is not None:
            err.__setstate__(state)
    else:   # a __reduce__ of its own: make it so, then copy what it made
        made = make(*args)
        if state is not None:
            made.__setstate__(state)
        err = remote_cls.__new__(remote_cls, *made.args)
        err.__dict__.update(made.__dict__)
    err._nbcluster = err.__cause__ = info
    return err


def _made(make: Any, args: tuple[Any, ...], state: Any) -> BaseException | None:
    try:
        made: BaseException = make(*args)
        if state is not None:
            made.__setstate__(state)
        return made
    except Exception:  # noqa: BLE001 - the RemoteError still names type and message
        return None


_classes: dict[type, type[RemoteError] | None] = {}
_classes_lock = threading.Lock()   # one class per remote type, whichever thread rebuilds


def _remote_class(cls: type) -> type[RemoteError] | None:
    """A subclass of cls and RemoteError that looks like cls (name, str, repr, pickling);
    None if cls cannot be subclassed so."""
    with _classes_lock:
        if cls not in _classes:
            _classes[cls] = _make_remote_class(cls)
        return _classes[cls]


def _make_remote_class(cls: type) -> type[RemoteError] | None:
    remote_cls: type[RemoteError] | None = None
    if isinstance(cls, type) and issubclass(cls, BaseException) \
            and not issubclass(cls, RemoteError):
        def body(ns: dict[str, Any]) -> None:
            # RemoteError.__init__ comes after cls's own in the MRO, but not after one that
            # cls inherits from BaseException: name cls's explicitly.
            ns.update(__init__=cls.__init__, __reduce__=_reduce_remote, __module__=cls.__module__,
                      __qualname__=cls.__qualname__, _remote_type=cls)
        try:
            remote_cls = types.new_class(cls.__name__, (cls, RemoteError), exec_body=body)
        except Exception:  # noqa: BLE001 - a layout, metaclass or __init_subclass__ refusal
            remote_cls = None
    return remote_cls


def _reduce_remote(self: RemoteError) -> tuple[Callable[..., BaseException], tuple[Any, ...]]:
    """Pickles as the remote exception's own reduction plus its RemoteTraceback."""
    cls = type(self)._remote_type
    rv = cls.__reduce__(self)   # (not __reduce_ex__: object's would call ours again)
    make, args = rv[0], rv[1]
    state = rv[2] if len(rv) > 2 else None
    if make is type(self):
        make = cls
    if isinstance(state, dict) and "_nbcluster" in state:
        state = {k: v for k, v in state.items() if k != "_nbcluster"} or None
    return (_rebuild_pickled, (cls, make, args, state, self._nbcluster))


def _rebuild_pickled(cls: type, make: Any, args: tuple[Any, ...], state: Any,
                     info: RemoteTraceback) -> RemoteError:
    return _remote_instance(cls, make, args, state, info)


class FailureTally:
    """The failures of one run on the client: in full for the first DETAILED_PER_SIGNATURE
    of each signature (type, innermost file and line), counted for the rest.

    `systematic` turns true once a failure repeats past that (or a task stopped at one): the
    run should then cancel what is left and raise `group()`.
    """

    def __init__(self) -> None:
        self.errors: list[BaseException] = []
        self.counted: collections.Counter[tuple[str, str, int]] = collections.Counter()
        self._seen: collections.Counter[tuple[str, str, int]] = collections.Counter()
        self._workers: dict[str, None] = {}
        self.stopped = False

    def __bool__(self) -> bool:
        return bool(self.errors)

    def add(self, error: BaseException) -> None:
        self._workers.update((w, None) for w in failed_workers([error]))
        sig = _signature(error)
        self._seen[sig] += 1
        if self._seen[sig] <= DETAILED_PER_SIGNATURE:
            self.errors.append(error)
        else:
            self.counted[sig] += 1

    def add_task(self, detailed: Iterable[tuple[object, str | None, dict[str, Any]]],
                 counted: dict[tuple[str, str, int], int] | None = None,
                 stopped: bool = False, client: object = None) -> None:
        """A task's element failures: [(index, item, captured)], {signature: count};
        `client`: the one that ran the task (see `rebuild`)."""
        for index, item, data in detailed:
            if data["worker"].get("id"):
                self._workers[str(data["worker"]["id"])] = None
            sig = _data_signature(data)
            if self._seen[sig] < DETAILED_PER_SIGNATURE:
                self.add(rebuild(data, index, item, client))
            else:   # not rebuilt: it would not be kept
                self._seen[sig] += 1
                self.counted[sig] += 1
        for sig, n in (counted or {}).items():
            key = cast(tuple[str, str, int], tuple(sig))   # msgpack sends it as a list
            self._seen[key] += n
            self.counted[key] += n
        self.stopped |= bool(stopped)

    @property
    def count(self) -> int:
        """Failures in all, kept in full or counted."""
        return len(self.errors) + sum(self.counted.values())

    @property
    def systematic(self) -> bool:
        return self.stopped or bool(self.counted)

    def group(self, total: int | None, what: str, not_run: int = 0,
              stopped: bool = False) -> RemoteErrorGroup:
        """The RemoteErrorGroup of these failures, out of `total` `what` (if known); `stopped`:
        the run stopped here, leaving `not_run` not run."""
        self.errors.sort(key=_index_key)   # input order
        group = RemoteErrorGroup(
            summarize_failures(self.errors, total, what, dict(self.counted), not_run,
                               list(self._workers), stopped),
            cast(list[Exception], self.errors))   # an ExceptionGroup checks this at run time
        group._failed, group.not_run, group._workers = self.count, not_run, list(self._workers)
        return group


def _signature(error: BaseException) -> tuple[str, str, int]:
    info = getattr(error, "_nbcluster", None)
    if info is None:
        return f"{type(error).__module__}.{type(error).__qualname__}", "", 0
    f = info.frames[-1] if info.frames else None
    return info.type_name, f.filename if f else "", f.lineno if f else 0


def _data_signature(data: dict[str, Any]) -> tuple[str, str, int]:
    f = data["frames"][-1] if data["frames"] else None
    return data["type"], f["filename"] if f else "", f["lineno"] if f else 0


def _index_key(error: BaseException) -> tuple[int, int]:
    index = getattr(getattr(error, "_nbcluster", error), "index", None)
    return (0, index) if isinstance(index, int) else (1, 0)
