"""A concurrent.futures.Executor over a cluster: code written for ProcessPoolExecutor runs
on nbcluster unchanged. The differences that remain are intended; docs/executor.md lists
them in one table.

    Executor(4)  ── starts a LocalCluster of 4 workers, stopped once its work is done
    Executor(client=c) ── runs on c's cluster, which outlives the executor

    submit/map ── fn (wrapped with the initializer, if any) ──► Client ──► workers
    futures ◄── TaskFuture (PENDING → RUNNING once its worker says it started → FINISHED)

As with ProcessPoolExecutor, work submitted and not waited for still runs before the
interpreter exits (an exit hook waits for it), and a failing initializer breaks the
executor: its pending futures fail with `BrokenExecutor`.
"""

from __future__ import annotations

import concurrent.futures
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, ParamSpec, Protocol, TypeVar, runtime_checkable

from ..errors import NBClusterError
from ..wire import remote
from .chunks import ChunkFailures
from .debugging import wait_futures
from .futures import TaskFuture

if TYPE_CHECKING:   # client.py imports this module (Client.executor)
    from .client import Client

__all__ = ["Executor", "BrokenExecutor"]

T = TypeVar("T")
P = ParamSpec("P")


class BrokenExecutor(NBClusterError, concurrent.futures.BrokenExecutor):
    """The executor cannot run tasks any more: its initializer failed on a worker. The
    failure, with its remote traceback, is the `__cause__` (on the task that met it, the
    error itself carries the remote traceback)."""


@runtime_checkable
class ClusterLike(Protocol):
    """What makes Clients and can be stopped: a LocalCluster, an SSHCluster."""

    def client(self) -> Client: ...

    def close(self) -> None: ...


# What Executor() without a client starts: a LocalCluster. The cluster layer sits above this
# one (a LocalCluster makes Clients), so it hands its class down when it is imported, and
# `import nbcluster` always imports it (tests/test_layers.py keeps the layers acyclic).
own_cluster: Callable[..., ClusterLike] | None = None

# ---- interpreter exit: submitted work still runs, as ProcessPoolExecutor's does ---------------

_global_shutdown = False
_live: weakref.WeakSet[Executor] = weakref.WeakSet()


def _python_exit() -> None:
    """Before the interpreter exits (threading's exit hooks run before atexit's): refuse new
    work, wait for what was submitted, stop the executors' own clusters."""
    global _global_shutdown
    _global_shutdown = True
    for executor in list(_live):
        executor.shutdown(wait=True)


try:   # what concurrent.futures.process uses (private, so not in typeshed)
    threading._register_atexit(_python_exit)   # type: ignore[attr-defined]
except RuntimeError:   # imported while the interpreter is exiting
    _global_shutdown = True


# ---- the initializer, run on the worker ---------------------------------------------------
_initialized: dict[str, BaseException | None] = {}   # executor token -> its failure here, if any


class _Initialized:
    """fn, run after the executor's initializer has run once in this worker process."""

    def __init__(self, fn: Callable, initializer: Callable, initargs: tuple, token: str):
        self.fn, self.initializer, self.initargs, self.token = fn, initializer, initargs, token

    def __call__(self, *args, **kwargs):
        if self.token not in _initialized:
            try:
                self.initializer(*self.initargs)
                _initialized[self.token] = None
            except BaseException as e:  # noqa: BLE001 - reported with every later task
                _initialized[self.token] = e
        failure = _initialized[self.token]
        if failure is not None:
            raise BrokenExecutor(f"the executor's initializer {self.initializer!r} failed on "
                                 f"this worker: {type(failure).__name__}: {failure}") from failure
        return self.fn(*args, **kwargs)


_BROKEN_TYPE = f"{BrokenExecutor.__module__}.{BrokenExecutor.__qualname__}"


# ---- the executor ---------------------------------------------------------------------------
class Executor(concurrent.futures.Executor):
    """`concurrent.futures.ProcessPoolExecutor` on a cluster, with the same signature.

    Args:
        max_workers: workers of the executor's own LocalCluster (default: one per core),
            started now and stopped once its work is done after `shutdown()`.
        mp_context: accepted for compatibility; meaningless here (workers are processes
            that the cluster starts).
        initializer, initargs: `initializer(*initargs)` runs once on each worker before its
            first task of this executor; if it raises, the executor is broken (pending
            futures fail with `BrokenExecutor`).
        max_tasks_per_child: each worker of the executor's own cluster is replaced by a
            fresh process after this many tasks (its supervisor starts the new one).
        client: run on this Client (or LocalCluster) instead of a cluster of our own; the
            cluster outlives the executor.

    Raises:
        ValueError: max_workers or max_tasks_per_child <= 0, or either given with client.
        TypeError: max_tasks_per_child is not an int.
    """

    def __init__(self, max_workers: int | None = None, mp_context: object = None,
                 initializer: Callable[..., object] | None = None,
                 initargs: Iterable[object] = (), *, max_tasks_per_child: int | None = None,
                 client: Client | ClusterLike | None = None) -> None:
        if max_workers is not None:
            if not isinstance(max_workers, int) or isinstance(max_workers, bool):
                raise TypeError(
                    f"max_workers must be an int, not {type(max_workers).__name__} (the first "
                    "argument is max_workers, as ProcessPoolExecutor's; to run on an existing "
                    "cluster write Executor(client=client))")
            if max_workers <= 0:
                raise ValueError("max_workers must be greater than 0")
            if client is not None:
                raise ValueError("max_workers sizes the executor's own cluster; with client= "
                                 "it runs on that cluster's workers")
        if max_tasks_per_child is not None:   # the stdlib's checks and words
            if not isinstance(max_tasks_per_child, int) or isinstance(max_tasks_per_child, bool):
                raise TypeError("max_tasks_per_child must be an integer")
            if max_tasks_per_child <= 0:
                raise ValueError("max_tasks_per_child must be >= 1")
            if client is not None:
                raise ValueError("max_tasks_per_child is for the executor's own cluster; with "
                                 "client= the cluster's workers are kept as it was started "
                                 "(LocalCluster(max_tasks_per_child=...), nbcluster worker "
                                 "--max-tasks-per-child)")
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        self._cluster: ClusterLike | None = None
        if client is None:
            if own_cluster is None:
                raise NBClusterError("Executor() without client= needs nbcluster.cluster.local "
                                     "imported (`import nbcluster` does it)")
            self._cluster = own_cluster(n_workers=max_workers,
                                        max_tasks_per_child=max_tasks_per_child)
            client = self._cluster.client()
        elif isinstance(client, ClusterLike):   # a cluster: run on a client of it
            client = client.client()
        self._client: Client = client
        self._initializer, self._initargs = initializer, tuple(initargs)
        self._token = os.urandom(8).hex()
        self._futures: set[TaskFuture] = set()
        # bound once, not once per future (a map's may be a million)
        self._settle_hook, self._forget = self._on_settle, self._futures.discard
        self._lock = threading.RLock()   # RLock: submit may break the executor (see _track)
        self._shutdown = False
        self._broken: BaseException | None = None
        _live.add(self)

    # ---- submitting ---------------------------------------------------------------------
    def submit(self, fn: Callable[P, T], /, *args: P.args,
               **kwargs: P.kwargs) -> TaskFuture[T]:
        """Run `fn(*args, **kwargs)` on a worker; every keyword goes to fn."""
        with self._lock:
            self._check_open()
            return self._track(self._client._submit_call(self._wrap(fn), args, kwargs))

    def map(self, fn: Callable[..., T], *iterables: Iterable[object],
            timeout: float | None = None, chunksize: int = 1) -> Iterator[T]:
        """As Executor.map: results in input order, the first failure raised where it
        occurs; a timeout (from this call) raises TimeoutError from `__next__` and cancels
        what has not started. Results already yielded are not kept."""
        if chunksize < 1:
            raise ValueError("chunksize must be >= 1.")
        end_time = None if timeout is None else timeout + time.monotonic()
        with self._lock:
            self._check_open()
            futures, _ = self._client.map_chunks(self._wrap(fn), *iterables, chunksize=chunksize)
            for fut in futures:
                self._track(fut)
        return self._results(futures, end_time)

    def _check_open(self) -> None:
        if self._broken is not None:
            raise BrokenExecutor("the executor is broken: its initializer failed on a worker"
                                 ) from self._broken
        if self._shutdown:
            raise RuntimeError("cannot schedule new futures after shutdown")
        if _global_shutdown:
            raise RuntimeError("cannot schedule new futures after interpreter shutdown")

    def _wrap(self, fn: Callable) -> Callable:
        if self._initializer is None:
            return fn
        return _Initialized(fn, self._initializer, self._initargs, self._token)

    def _track(self, fut: TaskFuture) -> TaskFuture:
        # Forgotten as it ends by its end hook (a done-callback would cost a lock and a list
        # for each of a million futures).
        self._futures.add(fut)
        fut._on_settle, fut._on_end = self._settle_hook, self._forget
        if fut.done():   # it ended before the hooks were set
            self._futures.discard(fut)
            if not fut.cancelled():
                error = fut.exception()
                self._on_settle(fut, None if error else fut.result(), error)
        return fut

    @staticmethod
    def _results(futures: list[TaskFuture[list[T] | ChunkFailures]],
                 end_time: float | None) -> Iterator[T]:
        # Pop each future, and each result out of its chunk, before yielding: what was
        # yielded is the caller's alone (a long map keeps nothing it has given out).
        futures.reverse()
        try:
            while futures:
                fut = futures.pop()
                try:
                    out = fut.result(None if end_time is None else end_time - time.monotonic())
                finally:
                    fut.cancel()
                client = fut._client
                del fut
                if isinstance(out, ChunkFailures):   # as the stdlib: the chunk raises whole
                    index, item, data = out.errors[0]
                    raise remote.rebuild(data, index, item, client)
                out.reverse()
                while out:
                    yield out.pop()
        finally:
            for fut in futures:
                fut.cancel()

    # ---- a failing initializer breaks the executor ------------------------------------------
    def _on_settle(self, fut: TaskFuture[T], value: object,
                   error: BaseException | None) -> None:
        """Runs on the client's I/O thread before fut settles (it may run twice for a
        future, see TaskFuture._settle): a BrokenExecutor from the initializer breaks us
        before anyone waiting on fut wakes up."""
        if isinstance(error, BrokenExecutor):
            self._break(error, fut)
        elif isinstance(value, ChunkFailures) and value.errors[0][2].get("type") == _BROKEN_TYPE:
            self._break(remote.rebuild(value.errors[0][2]), fut)

    def _break(self, cause: BaseException, met_by: TaskFuture) -> None:
        """Fail every pending future but the one that met the failure (it gets its own)."""
        with self._lock:
            if self._broken is not None:
                return
            self._broken = cause
            # list() first: the I/O thread discards finished futures from the set meanwhile
            pending = [f for f in list(self._futures) if not f.done() and f is not met_by]
        where = getattr(cause, "where", lambda: "a worker")()
        self._client._cancel_remote([f.key for f in pending])
        for fut in pending:
            err = BrokenExecutor(f"the executor's initializer failed on {where}: the executor "
                                 "cannot run tasks any more")
            err.__cause__ = cause
            fut._settle(error=err)

    # ---- shutting down ------------------------------------------------------------------
    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """As Executor.shutdown. `cancel_futures` cancels what has not started (running tasks
        finish); without `wait`, submitted work still runs, and the executor's own cluster
        stops once it is done."""
        with self._lock:
            self._shutdown = True
            if cancel_futures:
                for fut in list(self._futures):
                    fut.cancel()
            pending = list(self._futures)
        if wait:
            wait_futures(pending)   # (a task paused at a breakpoint gets its prompt)
            self._close_cluster()
        elif self._cluster is not None:
            threading.Thread(target=self._close_when_done, args=(pending,), daemon=True,
                             name="nbcluster-executor-shutdown").start()

    def _close_when_done(self, pending: list[TaskFuture]) -> None:
        concurrent.futures.wait(pending)
        self._close_cluster()

    def _close_cluster(self) -> None:
        with self._lock:
            cluster, self._cluster = self._cluster, None
        _live.discard(self)
        if cluster is not None:
            cluster.close()

    def __repr__(self) -> str:
        state = "broken" if self._broken else "shut down" if self._shutdown else "open"
        return f"<nbcluster.Executor {state}, {len(self._futures)} pending, on {self._client!r}>"
