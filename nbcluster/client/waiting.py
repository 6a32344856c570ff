"""Waiting on many futures without leaving work behind.

Whatever ends a wait early (Ctrl-C, a timeout raised by the caller, any exception) cancels
the futures that are not done yet, so their tasks leave the broker's queue instead of delaying
the next call. Every waiting loop over a batch of tasks (Client.map, broadcast, collections,
MapReduce) waits through these.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import time
from collections.abc import Iterable, Iterator

from .debugging import wait_futures

__all__ = ["cancel_all", "cancel_on_error", "wait", "as_completed"]


def cancel_all(futures: Iterable[concurrent.futures.Future]) -> int:
    """Cancel every future not done (queued tasks are dropped); returns how many were."""
    return sum(1 for f in list(futures) if not f.done() and f.cancel())


@contextlib.contextmanager
def cancel_on_error(futures: Iterable[concurrent.futures.Future]) -> Iterator[None]:
    """Cancel the futures not done if the block raises (KeyboardInterrupt included).

    `futures` may be a list the block is still filling: what is in it when the exception
    comes is cancelled.
    """
    try:
        yield
    except BaseException:
        cancel_all(futures)
        raise


def wait(futures: Iterable[concurrent.futures.Future], timeout: float | None = None,
         return_when: str = concurrent.futures.ALL_COMPLETED):
    """concurrent.futures.wait; interrupted, it cancels the futures not done first."""
    futures = list(futures)
    with cancel_on_error(futures):   # (and tasks paused at a breakpoint get their prompt)
        return wait_futures(futures, timeout, return_when)


def as_completed(futures: Iterable[concurrent.futures.Future], timeout: float | None = None
                 ) -> Iterator[concurrent.futures.Future]:
    """concurrent.futures.as_completed (tasks paused at a breakpoint get their prompt while
    it waits); interrupted while waiting, it cancels the futures not done first (leaving the
    loop early does not: the caller may still want them)."""
    futures = list(futures)
    try:
        yield from _as_completed(futures, timeout)
    except GeneratorExit:
        raise
    except BaseException:
        cancel_all(futures)
        raise


def _as_completed(futures: list[concurrent.futures.Future], timeout: float | None
                  ) -> Iterator[concurrent.futures.Future]:
    """The stdlib's semantics (each future once, as it completes; TimeoutError naming how
    many are unfinished), waiting through wait_futures."""
    deadline = None if timeout is None else time.monotonic() + timeout
    pending = set(futures)
    while pending:
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            raise TimeoutError(f"{len(pending)} (of {len(futures)}) futures unfinished")
        done, pending = wait_futures(pending, left, concurrent.futures.FIRST_COMPLETED)
        yield from done
