"""Many elements in one task: what `Client.map` ships, and how its failures come back."""

from __future__ import annotations

from typing import Any, Callable

from . import serialize, tracebacks

__all__ = ["ChunkRunner", "ChunkFailures", "auto_chunksize"]

CHUNKS_PER_WORKER = 4   # enough chunks to balance uneven elements, few enough to be cheap


class ChunkFailures:
    """The outcome of a chunk in which some elements raised: results, and errors by index."""

    def __init__(self, start: int, results: list, errors: list[tuple[int, str, dict]]):
        self.start, self.results, self.errors = start, results, errors


class ChunkRunner:
    """Runs fn over a chunk of argument tuples on a worker; the same bytes for every chunk of a
    map, so the worker unpickles fn once."""

    def __init__(self, fn: Callable, star: bool = True):
        self.fn, self.star = fn, star

    def __call__(self, items: list, start: int) -> Any:
        fn, results, errors = self.fn, [], []
        for i, args in enumerate(items):
            try:
                results.append(fn(*args) if self.star else fn(args))
            except Exception as e:  # each element fails alone; the rest of the chunk runs
                results.append(None)
                errors.append((start + i, serialize.describe(args if not self.star or len(args) != 1
                                                             else args[0]),
                               tracebacks.capture(e, skip=1)))
        return ChunkFailures(start, results, errors) if errors else results


def auto_chunksize(n_items: int, n_workers: int) -> int:
    """A chunk size giving each worker a few chunks: cheap per element, still balanced."""
    return max(1, -(-n_items // (max(1, n_workers) * CHUNKS_PER_WORKER)))
