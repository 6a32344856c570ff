"""Progress bars for long operations: tqdm in a terminal; the notebook layer installs widgets.

An operation asks `progress_bar(total, desc, cancel=...)` for a bar and reports to it; which
bar that is depends on where we run, decided once by `set_progress_factory`. `progress(futures)`
shows a bar for futures the user made.
"""

from __future__ import annotations

import concurrent.futures
import sys
import threading
from collections.abc import Callable, Iterable
from typing import Protocol, TypeVar

from .debugging import wait_futures

T = TypeVar("T")

__all__ = ["ProgressBar", "progress_bar", "set_progress_factory", "progress"]

SHOW_AFTER_S = 0.5      # operations quicker than this show no bar at all


class ProgressBar(Protocol):
    """What an operation reports to. `running` (tasks started on a worker and not done: never
    more than the workers' slots) and `overhead` (the share of time spent scheduling rather
    than working, 0-1) are optional news, not counts."""

    def update(self, done: int = 0, failed: int = 0, running: int | None = None,
               overhead: float | None = None) -> None: ...
    def set_description(self, text: str) -> None: ...
    def close(self) -> None: ...


Factory = Callable[[int | None, str, Callable[[], None] | None], ProgressBar]


class _Tqdm:
    def __init__(self, total: int | None, desc: str, cancel: Callable[[], None] | None = None):
        from tqdm.auto import tqdm  # imported on first use: scripts that show no bar skip it
        self._bar = tqdm(total=total, desc=desc, unit="it", delay=SHOW_AFTER_S, file=sys.stderr,
                         dynamic_ncols=True, leave=False)
        self.failed = 0

    def update(self, done: int = 0, failed: int = 0, running: int | None = None,
               overhead: float | None = None) -> None:
        self.failed += failed
        if failed:
            self._bar.set_postfix(failed=self.failed, refresh=False)
        self._bar.update(done + failed)

    def set_description(self, text: str) -> None:
        self._bar.set_description(text, refresh=False)

    def close(self) -> None:
        self._bar.close()


class _NoBar:
    def update(self, done: int = 0, failed: int = 0, running: int | None = None,
               overhead: float | None = None) -> None:
        pass

    def set_description(self, text: str) -> None:
        pass

    def close(self) -> None:
        pass


_factory: list[Factory] = [_Tqdm]


def set_progress_factory(factory: Factory) -> None:
    """Make every later operation's bar with factory(total, description, cancel), where
    cancel (or None) stops the operation."""
    _factory[0] = factory


def progress_bar(total: int | None, desc: str, enabled: bool = True,
                 cancel: Callable[[], None] | None = None) -> ProgressBar:
    """A bar for an operation of `total` items (None: unknown), or one that shows nothing."""
    return _factory[0](total, desc, cancel) if enabled else _NoBar()


def progress(futures: Iterable[concurrent.futures.Future[T]], desc: str = "tasks",
             wait: bool | None = None) -> list[concurrent.futures.Future[T]]:
    """A progress bar following futures (with a button that cancels them in a notebook).

    Args:
        wait: block until all are done; by default only in a terminal (in a notebook the
            bar updates on its own and the cell returns at once).

    Returns:
        The futures, as a list.
    """
    futures = list(futures)
    # The button stops the work: a TaskFuture that is running is interrupted, not left to run.
    def cancel_all() -> None:
        for f in futures:
            getattr(f, "interrupt", f.cancel)()

    bar = progress_bar(len(futures), desc, cancel=cancel_all)
    lock, left = threading.Lock(), [len(futures)]
    started: set[int] = set()   # ids of futures that were RUNNING: those count as running

    def one_started(fut: concurrent.futures.Future) -> None:
        with lock:
            started.add(id(fut))
            running = len(started)
        bar.update(running=running)

    def one_done(fut: concurrent.futures.Future) -> None:
        failed = fut.cancelled() or fut.exception() is not None
        with lock:
            started.discard(id(fut))
            running = len(started)
            left[0] -= 1
            last = left[0] == 0
        bar.update(done=0 if failed else 1, failed=1 if failed else 0, running=running)
        if last:
            bar.close()

    for fut in futures:
        if hasattr(fut, "add_running_callback"):   # a TaskFuture: its worker says it started
            fut.add_running_callback(one_started)
        fut.add_done_callback(one_done)
    if not futures:
        bar.close()
    if wait if wait is not None else _factory[0] is _Tqdm:
        wait_futures(futures)   # (tasks paused at a breakpoint get their prompt meanwhile)
    return futures
