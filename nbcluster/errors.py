"""Every error nbcluster raises, in one hierarchy.

    NBClusterError
     ├── RemoteError            a task raised on a worker; also an instance of the remote type
     │                          (its __cause__, a RemoteTraceback: traceback, frames, locals)
     ├── WorkerLost             the worker(s) running a task died, past the retry limit
     ├── MemoryLimitExceeded    a task's worker grew past its memory limit (also MemoryError)
     ├── TaskCancelled          (also concurrent.futures.CancelledError)
     ├── AuthenticationError    the broker refused our key
     ├── BrokerLost             no word from the broker for longer than the client's broker_timeout
     ├── BrokerTimeout          (also TimeoutError) the broker did not answer a request in time
     ├── MessageTooLarge        (also ValueError) arguments or a result over max_message_bytes
     ├── ProtocolError          a peer sent bytes that are not a valid nbcluster message
     └── PicklingError          a function, argument or result could not be pickled
    RemoteErrorGroup            several tasks failed (an ExceptionGroup of the above)

What the local caller got wrong raises the usual TypeError/ValueError; ProtocolError is
only ever about what a *remote peer* sent, so a decoder of untrusted bytes raises nothing else.
"""

from __future__ import annotations

import concurrent.futures
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Self

__all__ = [
    "NBClusterError",
    "RemoteError",
    "RemoteErrorGroup",
    "RemoteFrame",
    "RemoteTraceback",
    "WorkerLost",
    "MemoryLimitExceeded",
    "TaskCancelled",
    "AuthenticationError",
    "BrokerLost",
    "BrokerTimeout",
    "MessageTooLarge",
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


class RemoteTraceback(Exception):
    """The remote side of a failed task: its traceback, frames and locals, worker, element.

    Every RemoteError carries one, as its ``__cause__`` too (as `concurrent.futures` attaches
    its ``_RemoteTraceback``), so an uncaught remote error prints the remote traceback first.
    """

    def __init__(self, type_name: str, message: str, traceback: str = "",
                 frames: list[RemoteFrame] | None = None,
                 worker: Mapping[str, object] | None = None, index: object = None,
                 item: str | None = None, why: str = "") -> None:
        super().__init__(type_name, message)
        self.type_name, self.message, self.traceback = type_name, message, traceback
        self.frames, self.worker = list(frames or []), dict(worker or {})
        self.index, self.item = index, item
        self.why = why   # why the client got a plain RemoteError, not the remote type
        # (the client that can reach them, failure number) while its worker keeps the
        # failed frames alive: see `attach_debugger`; not pickled
        self.live: tuple[weakref.ref, int] | None = None
        self.released = False   # by `RemoteError.release`

    def attach_debugger(self, client: object, n: int) -> None:
        """The failed frames are kept on the worker as failure n, reachable through
        client; they are released there once this object is gone."""
        client_ref = weakref.ref(client)
        self.live = (client_ref, n)
        weakref.finalize(self, _release_failure, client_ref, str(self.worker.get("id")), n)

    def where(self) -> str:
        w = self.worker
        return f"worker {w.get('id', '?')} on {w.get('host', '?')}, pid {w.get('pid', '?')}"

    def __str__(self) -> str:
        element = "" if self.index is None else f"element {self.index}: {self.item}; "
        why = f"\n({self.why})" if self.why else ""
        return (f"remote traceback ({element}{self.where()}):{why}\n\"\"\"\n"
                f"{self.traceback.rstrip(chr(10))}\n\"\"\"")

    def __reduce__(self):
        return (RemoteTraceback, (self.type_name, self.message, self.traceback, self.frames,
                                  self.worker, self.index, self.item, self.why))


def _release_failure(client_ref: weakref.ref, worker: str, n: int) -> None:
    client = client_ref()
    if client is not None:
        client._debug_release(worker, n)


class _Remote:
    """An attribute read from the error's RemoteTraceback. Not a data descriptor, so a remote
    exception's own attribute of the same name (a user's ``message``, say) wins."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, obj, owner=None):
        if obj is None:
            return self
        return getattr(obj._nbcluster, self.name)


class RemoteError(NBClusterError):
    """A task raised an exception on a worker.

    The error a client gets is the remote exception itself, rebuilt with its own args and
    attributes, as an instance of a subclass of both its type and RemoteError: ``except
    KeyError`` catches it, ``str()`` and ``.args`` are the remote ones. An exception that could
    not be sent back or rebuilt comes back as a plain RemoteError naming its type and message.

    Attributes (unless the remote exception has its own of the same name):
        type_name: qualified name of the remote exception type, e.g. ``"builtins.KeyError"``.
        message: ``str()`` of the remote exception.
        traceback: the remote traceback, formatted as Python prints it.
        frames: the remote frames (innermost last), each with its locals.
        worker: ``{"id", "host", "pid"}`` of the worker it failed on.
        index, item: for map-like calls, the element's index (or key) and a repr of its value.
        remote_traceback: all of the above, as one object (also the ``__cause__``).
    """

    def __init__(self, type_name: str, message: str, traceback: str = "",
                 frames: list[RemoteFrame] | None = None,
                 worker: Mapping[str, object] | None = None,
                 exception: BaseException | None = None) -> None:
        name = type_name.removeprefix("builtins.")
        super().__init__(f"{name}: {message}")
        self.exception = exception   # the remote exception, if it arrived but was not rebuilt
        self._nbcluster = RemoteTraceback(type_name, message, traceback, frames, worker)
        self.__cause__ = self._nbcluster

    # On the class made for each remote type (see wire.remote): the remote type itself.
    _remote_type: ClassVar[type[BaseException]]

    type_name = _Remote()
    message = _Remote()
    traceback = _Remote()
    frames = _Remote()
    worker = _Remote()
    index = _Remote()
    item = _Remote()

    @property
    def remote_traceback(self) -> RemoteTraceback:
        return self._nbcluster

    @property
    def short_type(self) -> str:
        return self._nbcluster.type_name.rsplit(".", 1)[-1]

    def where(self) -> str:
        return self._nbcluster.where()

    def explore(self) -> None:
        """Show this failure: its frames and their locals (a widget in a notebook)."""
        from .report import explore
        explore(self)

    def debug(self, input: Callable[[str], str] | None = None,
              write: Callable[[str], object] | None = None) -> str:
        """A debugger (pdb) on the frame that raised, live, on the worker where it failed:
        every command (``p``, ``pp``, ``l``, ``w``, ``up``, ``down``, ``interact``, any
        expression or assignment) runs there, on the real objects. Input comes from
        ``input()`` (the notebook's stdin box, or the terminal) and output goes to stdout,
        unless given. If the worker no longer keeps the frames, it says so and shows the
        captured frames and locals instead. Returns why the session ended."""
        from .report import debug_failure
        return debug_failure(self, input, write)

    def evaluate(self, expression: str, frame: int = -1, timeout: float = 30.0) -> str:
        """The repr of `expression` evaluated in one of the failed frames (``frames[frame]``,
        the innermost by default), live on its worker; if it raises, the exception as
        Python prints it.

        Raises:
            NBClusterError: the frames are no longer kept (released, expired, the worker or
                the client gone).
            TimeoutError: no answer within `timeout` seconds (the expression may still be
                running on the worker; the frames are still there).
        """
        from .report import evaluate_failure
        problem, text = evaluate_failure(self, expression, frame, timeout)
        if problem == "timeout":
            raise TimeoutError(text)
        if problem is not None:
            raise NBClusterError(text)
        return text

    def release(self) -> None:
        """Let the worker drop this failure's frames now (it keeps them a while otherwise)."""
        live, self._nbcluster.live = self._nbcluster.live, None
        self._nbcluster.released = True
        if live is not None:
            _release_failure(live[0], str(self._nbcluster.worker.get("id")), live[1])

    def __reduce__(self):
        return (_rebuild_remote_error, (self.args, self._nbcluster, self.exception))


def _rebuild_remote_error(args, info: RemoteTraceback, exception):
    err = RemoteError.__new__(RemoteError, *args)
    err.exception, err._nbcluster, err.__cause__ = exception, info, info
    return err


def locate(error: BaseException, index: object, item: str | None = None) -> None:
    """Record which element (or key) of a map-like call an error belongs to."""
    target = getattr(error, "_nbcluster", error)   # a RemoteError's: its RemoteTraceback
    vars(target).update(index=index, item=item)


class RemoteErrorGroup(NBClusterError, ExceptionGroup[Exception]):
    """Several tasks failed; ``.exceptions`` holds one error per failed element, in full for
    the first few failures of each kind (same type, same place).

    Its message names how many failed, the error types and every worker involved.

    Attributes:
        failed: how many failed in all (more than ``len(exceptions)`` when a failure repeated
            so often that only the first few were kept in full and the rest counted).
        not_run: elements that were not run because the run stopped at a repeated failure.
    """

    not_run = 0
    _failed: int | None = None

    def __new__(cls, message: str, exceptions: Sequence[Exception]) -> Self:
        return super().__new__(cls, message, exceptions)

    @property
    def failed(self) -> int:
        return len(self.exceptions) if self._failed is None else self._failed

    def explore(self) -> None:
        """Show the failures grouped by signature, each with its frames and their locals
        (a widget in a notebook)."""
        from .report import explore
        explore(self)

    def debug(self, which: int | None = None, *, group: int | None = None,
              worker: str | None = None, index: object = None,
              input: Callable[[str], str] | None = None,
              write: Callable[[str], object] | None = None) -> list[str]:
        """A debugger on failed workers, live (see `RemoteError.debug`): on failure
        ``exceptions[which]``, on the first failure of `group` (the explorer's groups: same
        type at the same place, `explore()` lists them), of element `index`, or on
        `worker`; with none of these, on the first failure of each failed worker in turn (as
        DMirror opens one debugger per failed worker). Returns why each session ended."""
        from .report import debug_group
        return debug_group(self, which, worker, index, input, write, group)

    def derive(self, excs: Sequence[Exception]) -> RemoteErrorGroup:   # type: ignore[override]
        # (typeshed's overloads also take BaseExceptions; ours are Exceptions, see __new__)
        return RemoteErrorGroup(self.message, excs)

    _workers: list[str] | None = None

    @property
    def workers(self) -> list[str]:
        """Ids of the workers on which an element failed, in first-seen order (all of them,
        also those of failures only counted)."""
        from .report import failed_workers
        return failed_workers(self.exceptions) if self._workers is None else self._workers


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


class MemoryLimitExceeded(NBClusterError, MemoryError):
    """The worker running a task grew past its memory limit: its supervisor killed it (and
    started a new one). The message names the limit, the memory the worker had and how to
    change the limit (`memory_limit=` of LocalCluster, `--memory-limit` of `nbcluster worker`).

    Attributes:
        worker: id of the worker that was killed.
    """

    def __init__(self, message: str, worker: str | None = None):
        super().__init__(message)
        self.worker = worker
        self.lost_on = [worker] if worker else []   # as WorkerLost, for error groups
        self.index: int | None = None
        self.item: str | None = None

    def __reduce__(self):
        return (MemoryLimitExceeded, (self.args[0], self.worker))


class TaskCancelled(NBClusterError, concurrent.futures.CancelledError):
    """The task was cancelled before it produced a result."""


class AuthenticationError(NBClusterError):
    """The broker rejected this peer's signature: the cluster key is wrong."""


class BrokerLost(NBClusterError):
    """The client heard nothing from its broker for longer than its `broker_timeout`: the
    task's result cannot come (a broker restarted within that time is reconnected to, and
    its tasks go on). The message names the broker and since when it has been silent.

    Not a TimeoutError: ``fut.result(timeout=...)`` raising TimeoutError means "not done
    yet", and a task whose broker is lost is done.

    Attributes:
        endpoint: the broker's address.
        silent_since: wall-clock time (``time.time()``) of the last word from it.
    """

    def __init__(self, message: str, endpoint: str = "", silent_since: float = 0.0):
        super().__init__(message)
        self.endpoint, self.silent_since = endpoint, silent_since

    def __reduce__(self):
        return (BrokerLost, (self.args[0], self.endpoint, self.silent_since))


class BrokerTimeout(NBClusterError, TimeoutError):
    """The broker did not answer a request (connecting, `status()`, `workers()`...) within
    its timeout; the message names the broker, the request and how long we waited."""


class MessageTooLarge(NBClusterError, ValueError):
    """A task's arguments (at submit) or its result (on its worker) are larger than the
    broker's `max_message_bytes`; the message names both sizes and how to raise the limit."""


class ProtocolError(NBClusterError):
    """A peer sent something that is not a valid nbcluster message (never a local mistake)."""


class PicklingError(NBClusterError, TypeError):
    """A function, argument or result could not be pickled; the message names which."""
