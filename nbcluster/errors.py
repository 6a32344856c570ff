"""Every error nbcluster raises, in one hierarchy.

    NBClusterError
     ├── RemoteError            a task raised on a worker (remote traceback, frames, locals)
     ├── WorkerLost             the worker(s) running a task died, past the retry limit
     ├── TaskCancelled          (also concurrent.futures.CancelledError)
     ├── AuthenticationError    the broker refused our key
     ├── ProtocolError          a peer sent bytes that are not a valid nbcluster message
     └── PicklingError          a function, argument or result could not be pickled
    RemoteErrorGroup            several tasks failed (an ExceptionGroup of the above)

What the local caller got wrong raises the usual TypeError/ValueError; ProtocolError is
only ever about what a *remote peer* sent, so a decoder of untrusted bytes raises nothing else.
"""

from __future__ import annotations

import collections
import concurrent.futures
from dataclasses import dataclass, field

__all__ = [
    "NBClusterError",
    "RemoteError",
    "RemoteErrorGroup",
    "RemoteFrame",
    "WorkerLost",
    "TaskCancelled",
    "AuthenticationError",
    "ProtocolError",
    "PicklingError",
]


class NBClusterError(Exception):
    """Base class of every error raised by nbcluster."""


@dataclass
class RemoteFrame:
    """One frame of a remote traceback, with its locals as safe, size-bounded reprs."""

    filename: str
    lineno: int
    name: str
    line: str
    locals: dict[str, str] = field(default_factory=dict)


class RemoteError(NBClusterError):
    """A task raised an exception on a worker.

    Attributes:
        type_name: qualified name of the remote exception type, e.g. ``"builtins.KeyError"``.
        message: ``str()`` of the remote exception.
        traceback: the remote traceback, formatted as Python prints it.
        frames: the remote frames (innermost last), each with its locals.
        worker: ``{"id", "host", "pid"}`` of the worker it failed on.
        exception: the remote exception itself when it could be pickled, else None.
        index, item: for map-like calls, the element's index and a repr of its value.

    Instances are also instances of the remote exception's type when that type is
    importable here, so ``except KeyError`` catches a remote ``KeyError``.
    """

    def __init__(self, type_name: str, message: str, traceback: str = "",
                 frames: list[RemoteFrame] | None = None, worker: dict | None = None,
                 exception: BaseException | None = None):
        super().__init__(type_name, message)
        self.type_name = type_name
        self.message = message
        self.traceback = traceback
        self.frames = frames or []
        self.worker = worker or {}
        self.exception = exception
        self.index: int | None = None
        self.item: str | None = None

    @property
    def short_type(self) -> str:
        return self.type_name.rsplit(".", 1)[-1]

    def where(self) -> str:
        w = self.worker
        return f"worker {w.get('id', '?')} on {w.get('host', '?')}, pid {w.get('pid', '?')}"

    def __str__(self) -> str:
        head = f"{self.short_type}: {self.message}"
        if self.index is not None:
            head += f" (element {self.index}: {self.item})"
        text = f"{head}\n\nRemote traceback ({self.where()}):\n{self.traceback}"
        return text.rstrip("\n")

    def explore(self) -> None:
        """Show this failure: its frames and their locals (a widget in a notebook)."""
        from .report import explore
        explore(self)

    def __reduce__(self):
        return (_rebuild_remote_error, (self.type_name, self.message, self.traceback,
                                        self.frames, self.worker, self.index, self.item))


def _rebuild_remote_error(type_name, message, traceback, frames, worker, index, item):
    err = RemoteError(type_name, message, traceback, frames, worker)
    err.index, err.item = index, item
    return err


class RemoteErrorGroup(NBClusterError, ExceptionGroup):
    """Several tasks failed; ``.exceptions`` holds one error per failed element.

    Its message names how many failed, the error types and every worker involved.
    """

    def __new__(cls, message: str, exceptions):
        return super().__new__(cls, message, exceptions)

    def explore(self) -> None:
        """Show the failures grouped by signature, each with its frames and their locals
        (a widget in a notebook)."""
        from .report import explore
        explore(self)

    def derive(self, excs):
        return RemoteErrorGroup(self.message, excs)

    @property
    def workers(self) -> list[str]:
        """Ids of the workers on which an element failed, in first-seen order."""
        seen: dict[str, None] = {}
        for e in self.exceptions:
            if isinstance(e, RemoteError):
                seen[str(e.worker.get("id"))] = None
            elif isinstance(e, WorkerLost):
                seen.update((w, None) for w in e.lost_on)
        return list(seen)


class WorkerLost(NBClusterError):
    """The worker running a task died (or stopped answering) more often than allowed.

    Attributes:
        lost_on: ids of the workers the task was running on when each was lost.
    """

    def __init__(self, message: str, lost_on: list[str] | None = None):
        super().__init__(message)
        self.lost_on = list(lost_on or [])
        self.index: int | None = None
        self.item: str | None = None

    def __reduce__(self):
        return (WorkerLost, (self.args[0], self.lost_on))


class TaskCancelled(NBClusterError, concurrent.futures.CancelledError):
    """The task was cancelled before it produced a result."""


class AuthenticationError(NBClusterError):
    """The broker rejected this peer's signature: the cluster key is wrong."""


class ProtocolError(NBClusterError):
    """A peer sent something that is not a valid nbcluster message (never a local mistake)."""


class PicklingError(NBClusterError, TypeError):
    """A function, argument or result could not be pickled; the message names which."""


def summarize_failures(errors: list[BaseException], total: int, what: str) -> str:
    """One line naming how many of `total` `what` failed, how, and on which workers, e.g.
    "3 of 100 elements failed (2 x KeyError, 1 x WorkerLost) on workers w1, w2"."""
    kinds = collections.Counter(getattr(e, "short_type", type(e).__name__) for e in errors)
    workers: dict[str, None] = {}
    for e in errors:
        w = getattr(e, "worker", None)
        if isinstance(w, dict) and w.get("id"):
            workers[str(w["id"])] = None
        workers.update((x, None) for x in getattr(e, "lost_on", []))
    kinds_text = ", ".join(f"{n} x {k}" for k, n in kinds.most_common())
    return (f"{len(errors)} of {total} {what} failed ({kinds_text}) "
            f"on workers {', '.join(workers) or '?'}")
