"""Many elements in one task: what `Client.map` ships, and how its results and failures
come back (`gather_chunks`, on the client)."""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..errors import TaskCancelled, WorkerLost
from ..wire import tracebacks
from .debugging import wait_futures

if TYPE_CHECKING:
    from .futures import TaskFuture

__all__ = ["ChunkRunner", "ChunkFailures", "auto_chunksize", "gather_chunks"]

CHUNKS_PER_WORKER = 4   # enough chunks to balance uneven elements, few enough to be cheap


class ChunkFailures:
    """The outcome of a chunk in which some elements raised: results (None where an element
    failed or did not run), errors in full as (index, repr, captured), failures only counted
    as {signature: n}, and whether the chunk stopped early at a repeated failure."""

    def __init__(self, start: int, results: list, errors: list[tuple[int, str, dict]],
                 counted: dict | None = None, stopped: bool = False, not_run: int = 0):
        self.start, self.results, self.errors = start, results, errors
        self.counted, self.stopped, self.not_run = counted or {}, stopped, not_run


class ChunkRunner:
    """Runs fn over a chunk of argument tuples on a worker; the same bytes for every chunk of a
    map, so the worker unpickles fn once. An element that raises fails alone, but a failure
    that keeps repeating stops the chunk (see `tracebacks.ElementFailures`)."""

    def __init__(self, fn: Callable, star: bool = True):
        self.fn, self.star = fn, star

    def __call__(self, items: list, start: int) -> Any:
        fn, results, failures, not_run = self.fn, [], None, 0
        for i, args in enumerate(items):
            try:
                results.append(fn(*args) if self.star else fn(args))
            except (Exception, SystemExit) as e:   # noqa: BLE001 - each element fails alone
                # (a cancel interrupts with KeyboardInterrupt, which ends the chunk)
                results.append(None)
                failures = failures or tracebacks.ElementFailures()
                failures.add(start + i, args if not self.star or len(args) != 1 else args[0],
                             e, skip=1)
                if failures.should_stop:
                    not_run = len(items) - i - 1
                    results += [None] * not_run
                    break
        if failures is None:
            return results
        return ChunkFailures(start, results, failures.detailed, failures.counted,
                             failures.should_stop, not_run)


def auto_chunksize(n_items: int, n_workers: int) -> int:
    """A chunk size giving each worker a few chunks: cheap per element, still balanced."""
    return max(1, -(-n_items // (max(1, n_workers) * CHUNKS_PER_WORKER)))


def gather_chunks(futures: list[TaskFuture], n_items: int) -> list:
    """The results of map chunk futures in input order, or one RemoteErrorGroup of the
    failures. A failure that repeats is a mistake: then the group comes as soon as it is
    known, with the first few of each kind in full and a count of the rest, and the chunks
    not done are cancelled."""
    from ..wire.remote import FailureTally
    tally, not_run = FailureTally(), 0
    pending: set[concurrent.futures.Future[Any]] = set(futures)
    try:
        while pending and not tally.systematic:
            done, pending = wait_futures(pending, return_when=concurrent.futures.FIRST_COMPLETED)
            for fut in done:
                try:
                    out = fut.result()
                except (WorkerLost, TaskCancelled) as e:
                    tally.add(e)
                    continue
                if isinstance(out, ChunkFailures):
                    tally.add_task(out.errors, out.counted, out.stopped,
                                   getattr(fut, "_client", None))
                    not_run += out.not_run
    finally:
        if pending:   # stopped at a repeated failure, or interrupted: queued or running
            futures[0]._client.cancel([f for f in futures if f in pending])
    if tally:
        if pending:
            not_run = n_items - sum(len(_chunk_results(f)) for f in futures if f not in pending
                                    and not f.cancelled() and f.exception() is None) + not_run
        raise tally.group(n_items, "elements", not_run)
    return [x for fut in futures for x in fut.result()]


def _chunk_results(fut: TaskFuture) -> list:
    out = fut.result()
    return out.results if isinstance(out, ChunkFailures) else out
