"""The future of a task: a concurrent.futures.Future that also carries the task's output.

States follow concurrent.futures: PENDING (queued, or sent to a worker that has not said it
started), RUNNING (its worker said it started: `running()` is True, `cancel()` returns
False), then FINISHED or CANCELLED. A worker tells the client a task started only once it
has run a few milliseconds (see worker.STARTED_NOTE_S), so a short task goes from PENDING
straight to FINISHED and the hot path pays nothing.

A client may hold a million of these at once (queued tasks), so each is small: its fields
are slots, its lock is a `_Condition` (an RLock with the two methods a Future calls, a
tenth of a threading.Condition's memory), and its lock and lists are made on first use: a
queued task's future is one object.
"""

from __future__ import annotations

import _thread
import asyncio
import concurrent.futures
import contextlib
import logging
from collections.abc import Callable, Generator
from concurrent.futures._base import CANCELLED, CANCELLED_AND_NOTIFIED, FINISHED, PENDING, RUNNING
from typing import TYPE_CHECKING, Generic, TypeVar, cast

from .debugging import wait_attending

if TYPE_CHECKING:   # client.py imports this module
    import threading

    from .client import Client

__all__ = ["TaskFuture"]

log = logging.getLogger("nbcluster.client")

T = TypeVar("T")


class _Condition(_thread.RLock):   # type: ignore[misc]  # final in typeshed, not in CPython
    """What a Future uses of threading.Condition (with, acquire, release, wait, notify_all),
    as threading.Condition does it, in ~100 bytes rather than ~1,300: an RLock whose list of
    sleepers is made when someone first waits (made in C: no __init__)."""

    __slots__ = ("_sleepers",)
    _sleepers: list[_thread.LockType]

    def wait(self, timeout: float | None = None) -> bool:
        """Release the lock until notified or timeout seconds passed, then take it again."""
        if not self._is_owned():   # type: ignore[attr-defined]
            raise RuntimeError("cannot wait on un-acquired lock")
        waiter = _thread.allocate_lock()
        waiter.acquire()
        sleepers = getattr(self, "_sleepers", None)
        if sleepers is None:
            sleepers = self._sleepers = []
        sleepers.append(waiter)
        saved = self._release_save()   # type: ignore[attr-defined]
        got = False
        try:
            # (on the main thread, in slices: a task paused at a breakpoint gets its prompt)
            got = wait_attending(lambda s: _acquire(waiter, s), timeout)
            return got
        finally:
            self._acquire_restore(saved)   # type: ignore[attr-defined]
            if not got:   # (a ValueError: notified after the timeout)
                with contextlib.suppress(AttributeError, ValueError):
                    self._sleepers.remove(waiter)

    def notify_all(self) -> None:
        """Wake every thread waiting (the caller holds the lock)."""
        if not self._is_owned():   # type: ignore[attr-defined]
            raise RuntimeError("cannot notify on un-acquired lock")
        sleepers = getattr(self, "_sleepers", None)
        if sleepers:
            self._sleepers = []
            for waiter in sleepers:
                waiter.release()


def _acquire(lock: _thread.LockType, timeout: float | None) -> bool:
    if timeout is None:
        return lock.acquire()
    return lock.acquire(True, timeout) if timeout > 0 else lock.acquire(False)


_DONE = (CANCELLED, CANCELLED_AND_NOTIFIED, FINISHED)
_MAKING_LOCK = _thread.allocate_lock()   # held while a future makes its lock (first use)


class TaskFuture(concurrent.futures.Future[T], Generic[T]):
    """The result of a submitted task.

    Keeps the `concurrent.futures.Future` contract (`result`, `exception`, `cancel`,
    `running`, `add_done_callback`; works with `wait` and `as_completed`) and can be awaited
    in asyncio. As with the stdlib, `cancel()` of a task that is running returns False and
    leaves it running; `interrupt()` stops it on its worker.

    Attributes:
        key: the task's id within its client.
        worker: id of the worker running it (once it started) or that produced the result.
        duration: seconds the task took on its worker, once done.
        input_bytes: size of the pickled arguments sent (the function goes once per
            worker, not with each task).
        on_output: optional callable(stream, text, worker_id) run as output arrives.
    """

    # The stdlib Future's fields (its methods use them; the lock and lists are made on first
    # use, see the properties below), then ours.
    __slots__ = ("_lock", "_state", "_result", "_exception", "_waiter_list", "_callback_list",
                 "_client", "key", "_output", "worker", "duration", "input_bytes", "on_output",
                 "_running_callbacks", "_on_settle", "_on_end")

    def __init__(self, client: Client, key: int, input_bytes: int = 0) -> None:
        # Not Future.__init__: the same fields, made small (see the module docstring).
        self._lock: _Condition | None = None
        self._state = PENDING
        self._result: T | None = None
        self._exception: BaseException | None = None
        self._waiter_list: list | None = None
        self._callback_list: list[Callable[[concurrent.futures.Future[T]], object]] | None = None
        self._client = client
        self.key = key
        self._output: list[tuple[str, str, str]] | None = None
        self.worker: str | None = None
        self.duration: float | None = None
        self.input_bytes = input_bytes
        self.on_output: Callable[[str, str, str], object] | None = None
        self._running_callbacks: list[Callable[[TaskFuture[T]], object]] | None = None
        # Called with (future, value, error) just before it settles, while waiters still
        # wait: the Executor learns its pool is broken before anyone sees the failure.
        self._on_settle: Callable[[TaskFuture[T], object, BaseException | None],
                                  object] | None = None
        # Called with the future once it ended (settled or cancelled): a done-callback of
        # the owner's (the Executor's) without a lock and a list for each future. Either
        # hook, set while the future settles, may run twice (the owner checks done() after
        # setting it: see Executor._track).
        self._on_end: Callable[[TaskFuture[T]], object] | None = None

    # What the stdlib's methods (and wait, as_completed) use, made on first use: a queued
    # task's future has none of them until someone waits for it, adds a callback, or it ends.
    if TYPE_CHECKING:   # what they stand for (typeshed's view of a Future)
        _condition: threading.Condition
        _waiters: list
    else:
        @property
        def _condition(self) -> _Condition:
            lock = self._lock
            if lock is None:
                with _MAKING_LOCK:   # two threads asking at once get the same lock
                    lock = self._lock
                    if lock is None:
                        lock = self._lock = _Condition()
            return lock

        @property
        def _waiters(self) -> list:
            # (the stdlib touches it under _condition only)
            if self._waiter_list is None:
                self._waiter_list = []
            return self._waiter_list

    @property
    def _done_callbacks(self) -> list[Callable[[concurrent.futures.Future[T]], object]]:
        # (add_done_callback appends under _condition)
        if self._callback_list is None:
            self._callback_list = []
        return self._callback_list

    # Reading one field needs no lock (the stdlib takes one; the answer is the same).
    def done(self) -> bool:
        return self._state in _DONE

    def cancelled(self) -> bool:
        return self._state in (CANCELLED, CANCELLED_AND_NOTIFIED)

    def running(self) -> bool:
        return self._state == RUNNING

    @property
    def output(self) -> list[tuple[str, str, str]]:
        """``(stream, text, worker_id)`` items the task printed, in order."""
        return self._output if self._output is not None else []

    def _add_output(self, stream: str, text: str, worker: str) -> None:
        """(I/O thread) The task printed this."""
        if self._output is None:
            self._output = []
        self._output.append((stream, text, worker))

    @property
    def stdout(self) -> str:
        """Everything the task wrote to stdout on its worker (so far)."""
        return "".join(text for stream, text, _ in self.output if stream == "stdout")

    @property
    def stderr(self) -> str:
        """Everything the task wrote to stderr on its worker (so far)."""
        return "".join(text for stream, text, _ in self.output if stream == "stderr")

    def cancel(self) -> bool:
        """Cancel the task if it has not started: True if it is (now) cancelled, False if it
        is running or done (use `interrupt()` to stop a running task)."""
        if self.cancelled():
            return True
        if not super().cancel():
            return False
        self.set_running_or_notify_cancel()   # wait/as_completed see it as done at once
        self._ended()
        self._client._cancel_remote([self.key])
        return True

    def interrupt(self) -> bool:
        """Stop the task wherever it is: dropped if queued, interrupted on its worker (a
        KeyboardInterrupt there) if running. The future ends cancelled. Returns False if it
        was done already."""
        if not self._cancel_locally():
            return False
        self._client._cancel_remote([self.key])
        return True

    def add_running_callback(self, fn: Callable[[TaskFuture[T]], object]) -> None:
        """Call fn(future) when the task starts running on a worker (at once if it is running
        now; never if it finishes or is cancelled first). fn runs on the client's I/O thread:
        keep it short."""
        with self._condition:
            if self._state == PENDING:
                if self._running_callbacks is None:
                    self._running_callbacks = []
                self._running_callbacks.append(fn)
                return
            now = self._state == RUNNING
        if now:
            fn(self)

    def _mark_running(self, worker: str) -> None:
        """Its worker said the task started (from the client's I/O thread)."""
        with self._condition:
            if self._state != PENDING:
                return
            self._state = RUNNING
            self.worker = worker
            callbacks, self._running_callbacks = self._running_callbacks, None
        for fn in callbacks or ():
            try:
                fn(self)
            except Exception:
                log.exception("running callback %r failed", fn)

    def _cancel_locally(self) -> bool:
        """End as cancelled, pending or running, and notify waiters and callbacks (the client
        is closing, or the task was interrupted); False if it was done already."""
        with self._condition:
            if self._state not in (PENDING, RUNNING):
                return False
            self._state = CANCELLED_AND_NOTIFIED
            for waiter in self._waiter_list or ():
                waiter.add_cancelled(self)
            self._condition.notify_all()
        self._invoke_callbacks()
        self._ended()
        return True

    def _settle(self, value: object = None, error: BaseException | None = None) -> None:
        """Resolve from the client's I/O thread; a future the user cancelled stays cancelled."""
        hook = self._on_settle
        if hook is not None and not self.done():
            self._call_hook(hook, value, error)
        try:
            if error is not None:
                self.set_exception(error)
            else:
                self.set_result(cast(T, value))   # what the task's function returned
        except concurrent.futures.InvalidStateError:
            return
        if hook is None and self._on_settle is not None:   # set meanwhile: late, not never
            self._call_hook(self._on_settle, value, error)
        self._ended()

    def _call_hook(self, hook: Callable[[TaskFuture[T], object, BaseException | None], object],
                   value: object, error: BaseException | None) -> None:
        try:
            hook(self, value, error)
        except Exception:
            log.exception("settle hook of task %s failed", self.key)

    def _ended(self) -> None:
        """It just ended (settled or cancelled): tell its owner (`_on_end`)."""
        on_end = self._on_end
        if on_end is not None:
            try:
                on_end(self)
            except Exception:
                log.exception("end hook of task %s failed", self.key)

    def _invoke_callbacks(self) -> None:
        # As the stdlib's, but a callback raising even SystemExit or KeyboardInterrupt is
        # logged and skipped: they run in the client's I/O thread, which must not die of it.
        for callback in self._callback_list or ():
            try:
                callback(self)
            except BaseException:   # noqa: BLE001
                concurrent.futures._base.LOGGER.exception("exception calling callback for %r", self)

    def __await__(self) -> Generator[object, None, T]:
        return asyncio.wrap_future(self).__await__()

    def __repr__(self) -> str:
        # The stdlib's shape, then which task and worker.
        where = f" task={self.key}" + (f" worker={self.worker}" if self.worker else "")
        return super().__repr__()[:-1] + where + ">"
