"""A joblib backend: joblib.Parallel, and everything built on it (scikit-learn's `n_jobs`),
runs on an nbcluster cluster.

    import joblib, nbcluster
    with joblib.parallel_config(backend="nbcluster"):        # the latest client or cluster
        GridSearchCV(model, grid, n_jobs=-1).fit(X, y)
    with joblib.parallel_config(backend="nbcluster", client=client):   # this one
        joblib.Parallel()(joblib.delayed(f)(x) for x in xs)

Importing this module registers the backend with joblib. `import nbcluster` arranges that
without importing joblib (see nbcluster/joblib_hook.py).

    joblib.Parallel (calling thread) ── submit(batch) ──► client ──► broker ──► workers
          ▲                                                  │
          └── joblib's batch callback ◄── callback thread ◄──┘ (the client's I/O thread
                                                               only hands the future over)

Each joblib batch is one task. joblib's completion callback (which records the result and
dispatches the next batch, pickling it and pulling from the user's iterator) runs on a
thread of this module, never on the client's I/O thread: user code there must not delay
heartbeats. A failing task raises the remote exception's type in the caller (nbcluster's
RemoteError subclass of it, with the remote traceback); on the first failure joblib aborts
and this backend cancels every task of the call it has not got a result for.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import threading
from collections.abc import Callable
from typing import Any

import joblib.parallel
from joblib.parallel import AutoBatchingMixin, ParallelBackendBase, register_parallel_backend

from ..client.client import Client
from ..client.futures import TaskFuture
from ..errors import PicklingError
from ..wire import functions, tracebacks
from .session import current_client

__all__ = ["NBClusterBackend", "BACKEND_NAME"]

log = logging.getLogger("nbcluster.joblib")

BACKEND_NAME = "nbcluster"
WAIT_FOR_WORKERS_S = 10.0   # how long a call waits for a first worker before failing


def _run_batch(batch: Callable[[], list]) -> list:
    """What a worker runs: one joblib batch (a BatchedCalls), returning its list of results."""
    return batch()


# A remote traceback starts at the user's function, not in this plumbing or joblib's batch.
tracebacks.HIDDEN_FILES.update({__file__, joblib.parallel.__file__})


def _probe() -> None:
    """A no-op task: its result means a worker is there."""


_callback_thread: concurrent.futures.ThreadPoolExecutor | None = None
_callback_lock = threading.Lock()


def _callbacks() -> concurrent.futures.ThreadPoolExecutor:
    """The one thread that runs joblib's batch callbacks (created on first use)."""
    global _callback_thread
    with _callback_lock:
        if _callback_thread is None:
            _callback_thread = concurrent.futures.ThreadPoolExecutor(
                1, thread_name_prefix="nbcluster-joblib")
        return _callback_thread


def _forget_callback_thread() -> None:
    global _callback_thread
    _callback_thread = None   # a forked child (a mirror worker) has no such thread


os.register_at_fork(after_in_child=_forget_callback_thread)


def _run_callback(callback: Callable[[Any], Any], fut: concurrent.futures.Future) -> None:
    try:
        callback(fut)
    except BaseException:   # joblib handles its own errors; anything else must not vanish
        log.exception("joblib's batch callback failed")


class NBClusterBackend(AutoBatchingMixin, ParallelBackendBase):
    """joblib's "nbcluster" backend: each joblib batch runs as a task on the cluster.

    Args:
        client: the Client (or LocalCluster) to run on; default: the latest client or cluster
            at each Parallel call (`nbcluster.session.current_client()`), as the rest of
            nbcluster does, starting a local cluster if there is none.
        wait_for_workers_timeout: seconds a call waits for a first worker on a cluster
            that has none yet.

    `n_jobs=-1` (the default under this backend) means every worker slot that can run this
    client's tasks, `-2` all but one, and so on; a positive `n_jobs` is capped at the
    number of slots. When that makes one job, joblib runs the calls in the calling process,
    as it does for `n_jobs=1` on any backend.
    """

    supports_retrieve_callback = True   # results arrive through callbacks: generators, timeouts
    default_n_jobs = -1                  # choosing this backend means using the cluster

    def __init__(self, client=None, wait_for_workers_timeout: float = WAIT_FOR_WORKERS_S,
                 nesting_level: int | None = None, inner_max_num_threads: int | None = None):
        super().__init__(nesting_level=nesting_level, inner_max_num_threads=inner_max_num_threads)
        self._given_client = client
        self.wait_for_workers_timeout = wait_for_workers_timeout
        self.client: Client | None = None   # resolved at each call (effective_n_jobs)
        self._futures: set[concurrent.futures.Future] = set()   # submitted, not finished
        self._aborting = False
        self._lock = threading.Lock()

    # ---- sizing -----------------------------------------------------------------------------
    def _resolve_client(self) -> Client:
        given = self._given_client
        if given is not None and not isinstance(given, Client):   # a LocalCluster
            given = given.default_client()
        client = current_client(given)
        if client.closed:
            raise RuntimeError(f"the nbcluster client given to joblib is closed: {client!r}")
        self.client = client
        return client

    def _slots(self) -> int:
        """Worker slots that can run this client's tasks (waiting for a first worker)."""
        client = self._resolve_client()
        slots = _count_slots(client)
        if slots == 0 and self.wait_for_workers_timeout:
            probe = client.submit(_probe)
            try:
                probe.result(self.wait_for_workers_timeout)
            except concurrent.futures.TimeoutError:
                probe.cancel()
                raise TimeoutError(
                    f"the nbcluster cluster at {client.endpoint} has no worker that can run "
                    f"this client's tasks after {self.wait_for_workers_timeout} s; start "
                    "workers, or wait longer with parallel_config(backend='nbcluster', "
                    "wait_for_workers_timeout=...)") from None
            slots = _count_slots(client)
        return slots

    def effective_n_jobs(self, n_jobs: int | None) -> int:
        if n_jobs == 0:
            raise ValueError("n_jobs == 0 in Parallel has no meaning")
        if n_jobs is None:
            n_jobs = self.default_n_jobs
        slots = self._slots()
        if n_jobs < 0:
            return max(slots + 1 + n_jobs, 1)
        return max(min(n_jobs, slots), 1)

    def configure(self, n_jobs: int = 1, parallel=None, **memmapping_kwargs) -> int:
        """Take the client for this call; returns the number of jobs. joblib's memmapping
        options (max_nbytes, mmap_mode, temp_folder) do not apply: arrays travel out of band,
        through shared memory between processes of one host."""
        self.parallel = parallel
        return self.effective_n_jobs(n_jobs)   # also takes the client for this call

    # ---- running ----------------------------------------------------------------------------
    def start_call(self) -> None:
        with self._lock:
            self._aborting = False

    def submit(self, func: Callable[[], list], callback=None) -> concurrent.futures.Future:
        """Run one joblib batch on the cluster; callback(future) when it is done."""
        with self._lock:   # abort_everything either sees this task or stops it being sent
            if self._aborting:   # joblib's callback thread dispatching after the abort
                fut: concurrent.futures.Future[list[object]] = concurrent.futures.Future()
                fut.cancel()
            else:
                fut = self._submit(func)
        if callback is not None:
            fut.add_done_callback(lambda f: self._done(f, callback))
        else:
            fut.add_done_callback(self._forget)
        return fut

    def _submit(self, func: Callable[[], list]) -> concurrent.futures.Future:
        # (joblib sizes the backend, which resolves the client, before it submits)
        client = self.client if self.client is not None else self._resolve_client()
        fut: concurrent.futures.Future[list[object]]
        try:
            fut = client.submit(_run_batch, func)
        except Exception as e:   # noqa: BLE001 - it becomes the batch's error, see below
            # A batch that cannot be pickled (or a closed client) must reach joblib as the
            # batch's error, as from loky: raised here, inside joblib's callback thread, it
            # would leave the call waiting forever for a batch that was never sent.
            fut = concurrent.futures.Future()
            fut.set_exception(_name_the_call(func, e) if isinstance(e, PicklingError) else e)
        else:
            self._futures.add(fut)
        return fut

    def _forget(self, fut: concurrent.futures.Future) -> None:
        # No lock: this runs on the client's I/O thread, which must not wait for a batch
        # being pickled under self._lock; set.discard is atomic.
        self._futures.discard(fut)

    def _done(self, fut: concurrent.futures.Future, callback: Callable[[Any], Any]) -> None:
        # Runs on the client's I/O thread: only hand over to the callback thread.
        self._forget(fut)
        _callbacks().submit(_run_callback, callback, fut)

    def retrieve_result_callback(self, fut: concurrent.futures.Future) -> list:
        return fut.result()

    def abort_everything(self, ensure_ready: bool = True) -> None:
        """Cancel every task of this backend that has no result yet (joblib stops at the
        first error, or when a generator is dropped): queued ones are dropped, running
        ones stopped."""
        with self._lock:
            futures, self._futures = list(self._futures), set()
            self._aborting = True   # until the next call starts
        client = self.client
        if not futures or client is None or client.closed:   # a closed client cancelled them
            return
        client.cancel([f for f in futures if isinstance(f, TaskFuture)])   # (all of them)
        for fut in futures:
            # A client whose cancel() leaves running tasks running offers interrupt().
            interrupt = getattr(fut, "interrupt", None)
            if interrupt is not None and not fut.done():
                interrupt()

    def terminate(self) -> None:
        self.reset_batch_stats()   # the instance serves the next call of the same context

    def __repr__(self) -> str:
        return f"<NBClusterBackend {self._given_client or 'latest client'}>"


def _name_the_call(batch, error: PicklingError) -> PicklingError:
    """The PicklingError for a batch, naming its first call that cannot be pickled."""
    for fn, args, kwargs in getattr(batch, "items", ()):
        try:
            functions.dumps_call(fn, args, kwargs)
        except PicklingError as e:
            return PicklingError(f"in a joblib call: {e}")
    return error


def _count_slots(client) -> int:
    wanted = set(client.labels)
    return sum(w.get("slots", 1) for w in client.workers() if wanted <= set(w.get("labels", ())))


register_parallel_backend(BACKEND_NAME, NBClusterBackend)
