"""The future of a task: a concurrent.futures.Future that also carries the task's output.

States follow concurrent.futures: PENDING (queued, or sent to a worker that has not said it
started), RUNNING (its worker said it started: `running()` is True, `cancel()` returns
False), then FINISHED or CANCELLED. A worker tells the client a task started only once it
has run a few milliseconds (see worker.STARTED_NOTE_S), so a short task goes from PENDING
straight to FINISHED and the hot path pays nothing.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from collections.abc import Callable, Generator
from concurrent.futures._base import CANCELLED_AND_NOTIFIED, PENDING, RUNNING
from typing import TYPE_CHECKING, Generic, TypeVar, cast

if TYPE_CHECKING:   # client.py imports this module
    from .client import Client

__all__ = ["TaskFuture"]

log = logging.getLogger("nbcluster.client")

T = TypeVar("T")


class TaskFuture(concurrent.futures.Future[T], Generic[T]):
    """The result of a submitted task.

    Keeps the `concurrent.futures.Future` contract (`result`, `exception`, `cancel`,
    `running`, `add_done_callback`; works with `wait` and `as_completed`) and can be awaited
    in asyncio. As with the stdlib, `cancel()` of a task that is running returns False and
    leaves it running; `interrupt()` stops it on its worker.

    Attributes:
        key: the task's id within its client.
        output: ``(stream, text, worker_id)`` items the task printed, in order.
        worker: id of the worker running it (once it started) or that produced the result.
        duration: seconds the task took on its worker, once done.
        input_bytes: size of the pickled arguments sent (the function goes once per
            worker, not with each task).
        on_output: optional callable(stream, text, worker_id) run as output arrives.
    """

    def __init__(self, client: Client, key: int) -> None:
        super().__init__()
        self._client = client
        self.key = key
        self.output: list[tuple[str, str, str]] = []
        self.worker: str | None = None
        self.duration: float | None = None
        self.input_bytes = 0
        self.on_output: Callable[[str, str, str], object] | None = None
        self._running_callbacks: list[Callable[[TaskFuture[T]], object]] = []
        # Called with (future, value, error) just before it settles, while waiters still
        # wait: the Executor learns its pool is broken before anyone sees the failure.
        self._on_settle: Callable[[TaskFuture[T], object, BaseException | None],
                                  object] | None = None

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
            callbacks, self._running_callbacks = self._running_callbacks, []
        for fn in callbacks:
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
            for waiter in self._waiters:
                waiter.add_cancelled(self)
            self._condition.notify_all()
        self._invoke_callbacks()
        return True

    def _settle(self, value: object = None, error: BaseException | None = None) -> None:
        """Resolve from the client's I/O thread; a future the user cancelled stays cancelled."""
        if self._on_settle is not None and not self.done():
            try:
                self._on_settle(self, value, error)
            except Exception:
                log.exception("settle hook of task %s failed", self.key)
        try:
            if error is not None:
                self.set_exception(error)
            else:
                self.set_result(cast(T, value))   # what the task's function returned
        except concurrent.futures.InvalidStateError:
            pass

    def _invoke_callbacks(self) -> None:
        # As the stdlib's, but a callback raising even SystemExit or KeyboardInterrupt is
        # logged and skipped: they run in the client's I/O thread, which must not die of it.
        # (_done_callbacks: the stdlib's own list, private so not in typeshed)
        for callback in self._done_callbacks:   # type: ignore[attr-defined]
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
