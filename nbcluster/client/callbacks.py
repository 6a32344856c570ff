"""Result callbacks (`client.options(callback=...)`): run on a thread of their own.

    I/O thread ── result unpickled ──► callbacks thread: callback(value), then the future
                                       settles with value, or with what the callback raised

Never on the I/O thread, so a slow callback cannot delay heartbeats or other results; and
before the future resolves, so whoever waits on it sees the callback's effects (and its
failure). One thread, started with the first task that has a callback: callbacks run one
at a time, in the order results came.
"""

from __future__ import annotations

import concurrent.futures
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..errors import NBClusterError
from ..wire import serialize

if TYPE_CHECKING:
    from .futures import TaskFuture

__all__ = ["ResultCallbacks"]


class ResultCallbacks:
    """The thread that runs a client's result callbacks, each before its future settles."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None

    def start(self) -> None:
        """Start the thread, if it is not running yet (before a task with a callback is
        sent, so no result can beat it)."""
        with self._lock:
            if self._pool is None:
                self._pool = concurrent.futures.ThreadPoolExecutor(
                    1, thread_name_prefix="nbcluster-callbacks")

    def run(self, fut: TaskFuture, callback: Callable[[Any], object], value: Any) -> None:
        """(I/O thread) Queue callback(value), then fut's settling, on the callbacks thread."""
        assert self._pool is not None, "start() comes before the task is sent"
        self._pool.submit(_callback_then_settle, fut, callback, value)

    def shutdown(self) -> None:
        """Stop the thread once the callbacks queued run (without waiting for them)."""
        if self._pool is not None:
            self._pool.shutdown(wait=False)


def _callback_then_settle(fut: TaskFuture, callback: Callable[[Any], object],
                          value: Any) -> None:
    """(callbacks thread) The callback, then the future: its value, or what it raised."""
    try:
        callback(value)
    except BaseException as e:   # noqa: BLE001 - user code: the future's failure
        error = NBClusterError(f"task {fut.key} succeeded but its result callback "
                               f"{serialize.describe(callback)} raised {e!r}")
        error.__cause__ = e
        fut._settle(error=error)
    else:
        fut._settle(value)
