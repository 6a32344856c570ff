"""The future of a task: a concurrent.futures.Future that also carries the task's output."""

from __future__ import annotations

import asyncio
import concurrent.futures
from typing import Any, Callable

__all__ = ["TaskFuture"]


class TaskFuture(concurrent.futures.Future):
    """The result of a submitted task.

    Keeps the `concurrent.futures.Future` contract (`result`, `exception`, `cancel`,
    `add_done_callback`; works with `wait` and `as_completed`) and can be awaited in asyncio.
    `cancel()` also stops the task on its worker if it is already running there.

    Attributes:
        key: the task's id within its client.
        output: ``(stream, text, worker_id)`` items the task printed, in order.
        worker: id of the worker that produced the result, once done.
        duration: seconds the task took on its worker, once done.
        input_bytes: size of the pickled arguments sent (the function goes once per
            worker, not with each task).
        on_output: optional callable(stream, text, worker_id) run as output arrives.
    """

    def __init__(self, client, key: int):
        super().__init__()
        self._client = client
        self.key = key
        self.output: list[tuple[str, str, str]] = []
        self.worker: str | None = None
        self.duration: float | None = None
        self.input_bytes = 0
        self.on_output: Callable[[str, str, str], Any] | None = None

    @property
    def stdout(self) -> str:
        """Everything the task wrote to stdout on its worker (so far)."""
        return "".join(text for stream, text, _ in self.output if stream == "stdout")

    @property
    def stderr(self) -> str:
        """Everything the task wrote to stderr on its worker (so far)."""
        return "".join(text for stream, text, _ in self.output if stream == "stderr")

    def cancel(self) -> bool:
        if not self._cancel_locally():
            return False
        self._client._cancel_remote([self.key])
        return True

    def _cancel_locally(self) -> bool:
        """Cancel and notify waiters at once (`wait`/`as_completed` see it as done); False if
        it was done or cancelled already."""
        if self.cancelled() or not super().cancel():
            return False
        self.set_running_or_notify_cancel()
        return True

    def _settle(self, value: Any = None, error: BaseException | None = None) -> None:
        """Resolve from the client's I/O thread; a future the user cancelled stays cancelled."""
        try:
            if error is not None:
                self.set_exception(error)
            else:
                self.set_result(value)
        except concurrent.futures.InvalidStateError:
            pass

    def _invoke_callbacks(self) -> None:
        # As the stdlib's, but a callback raising even SystemExit or KeyboardInterrupt is
        # logged and skipped: they run in the client's I/O thread, which must not die of it.
        for callback in self._done_callbacks:
            try:
                callback(self)
            except BaseException:   # noqa: BLE001
                concurrent.futures._base.LOGGER.exception("exception calling callback for %r", self)

    def __await__(self):
        return asyncio.wrap_future(self).__await__()

    def __repr__(self) -> str:
        return f"<TaskFuture {self.key} {self._state.lower()}>"
