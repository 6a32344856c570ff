"""A concurrent.futures.Executor over a cluster: code written for ProcessPoolExecutor runs
on nbcluster unchanged."""

from __future__ import annotations

import concurrent.futures
import time
from typing import Any, Callable, Iterable, Iterator

from .chunks import ChunkFailures
from .futures import TaskFuture
from . import tracebacks

__all__ = ["Executor"]


class Executor(concurrent.futures.Executor):
    """Submit and map on a cluster with the `concurrent.futures` interface.

    Args:
        client: a connected Client. Without one, the executor starts a LocalCluster of
            `max_workers` workers and stops it on `shutdown()`, like ProcessPoolExecutor.
    """

    def __init__(self, client=None, max_workers: int | None = None):
        self._cluster = None
        if client is None:
            from .local import LocalCluster
            self._cluster = LocalCluster(n_workers=max_workers)
            client = self._cluster.client()
        self._client = client
        self._futures: set[TaskFuture] = set()
        self._shutdown = False

    def submit(self, fn: Callable, /, *args, **kwargs) -> TaskFuture:
        if self._shutdown:
            raise RuntimeError("cannot schedule new futures after shutdown")
        fut = self._client.submit(fn, *args, **kwargs)
        self._futures.add(fut)
        fut.add_done_callback(self._futures.discard)
        return fut

    def map(self, fn: Callable, *iterables: Iterable, timeout: float | None = None,
            chunksize: int = 1) -> Iterator[Any]:
        """Like Executor.map: results in order; the first failure is raised where it occurs."""
        if self._shutdown:
            raise RuntimeError("cannot schedule new futures after shutdown")
        deadline = None if timeout is None else time.monotonic() + timeout
        futures, _ = self._client.map_futures(fn, *iterables, chunksize=max(1, chunksize))
        self._futures.update(futures)

        def results() -> Iterator[Any]:
            try:
                for fut in futures:
                    remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
                    out = fut.result(remaining)
                    if isinstance(out, ChunkFailures):
                        index, item, data = out.errors[0]
                        yield from out.results[:index - out.start]
                        raise tracebacks.rebuild(data, index, item)
                    yield from out
            finally:
                for fut in futures:
                    fut.cancel()
        return results()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._shutdown = True
        if cancel_futures:
            for fut in list(self._futures):
                fut.cancel()
        if wait:
            concurrent.futures.wait(list(self._futures))
        if self._cluster is not None:
            self._cluster.close()

