"""Many elements in one task: what `Client.map` ships, and how its failures come back."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..wire import tracebacks

__all__ = ["ChunkRunner", "ChunkFailures", "auto_chunksize"]

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
