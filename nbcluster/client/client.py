"""The client: submit work to a cluster and get futures back.

    user threads ── submit/map/cancel ──► outbox (deque) + wake pipe ──┐
                                                                       ▼
    futures ◄── results/output ── I/O thread (owns the DEALER socket) ◄──► broker

Pickling happens in the calling thread, so an unpicklable function or argument fails there
and nothing is sent. A function is pickled apart from its arguments and named by a hash of
its frames; its frames go to the broker once per session (see broker_functions), tasks carry
the hash. The I/O thread sends what accumulated in the outbox as one message (many small
tasks per submit), heartbeats, and resolves futures. Result callbacks run on a separate
thread so a slow callback never delays heartbeats. The client keeps every task it has no
result for, and submits them again if a restarted broker asks it to reconnect.

User code that runs in the I/O thread (an `on_output` handler, unpickling a result, a
future's done-callbacks) cannot stop it: its failure becomes the failure of its future. If
the I/O thread dies anyway (a bug of ours), every pending future fails at once with an
NBClusterError saying why, and so does every later call.

This module holds the Client's public face: making one, submitting, map, broadcast,
cancel, asking the broker, closing (`connect`, in connect.py, makes one from a connection
file). The rest is one job per module. Three are parts of the Client (mixins), sharing the
state `Client.__init__` sets up; each declares what it uses:

    outbox.py     user threads: register a task's future, callback, shm files; queue it
    io_thread.py  the I/O thread: the socket, batching sends, heartbeats, a silent broker
    inbox.py      each message from the broker: results settle futures, output, reconnect
    debugging.py  debugger sessions on workers: err.debug(), tasks paused at breakpoint()
    targeted.py   tasks for named workers: broadcast, submit_to

and the Client uses:

    callbacks.py  the thread that runs result callbacks
    chunks.py     what `map` ships, and gathering its results
    latest.py     the client made last, for operations given none
    status.py     the types of what `status()` and `workers()` return
"""

from __future__ import annotations

import collections
import concurrent.futures
import itertools
import os
import socket
import threading
import warnings
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, overload

import zmq

from ..errors import (
    AuthenticationError,
    BrokerTimeout,
    MessageTooLarge,
    NBClusterError,
    PicklingError,
)
from ..wire import functions, pickling, protocol, serialize
from ..wire.curve import CurveKeys
from ..wire.shm import SharedMemory
from ..wire.shm import available as shm_available
from ..wire.transport import dealer
from .broker_silence import DEFAULT_BROKER_TIMEOUT_S, BrokerSilence
from .callbacks import ResultCallbacks
from .chunks import ChunkFailures, ChunkRunner, auto_chunksize, gather_chunks
from .debugging import Debugging, DebugSession
from .futures import TaskFuture
from .inbox import Inbox
from .io_thread import IOThread
from .latest import remember_latest
from .options import TaskOptions, refuse_misplaced_options
from .outbox import Outbox, OutboxItem, PendingTask
from .status import ClusterStatus, WorkerInfo
from .targeted import Targeted
from .waiting import cancel_on_error

if TYPE_CHECKING:
    from .executor import Executor

__all__ = ["Client"]

CONNECT_TIMEOUT_S = 10.0

R = TypeVar("R")
P = ParamSpec("P")


class Client(Outbox, IOThread, Inbox, Debugging, Targeted):
    """A connection to a cluster's broker.

    Args:
        endpoint: the broker's ZeroMQ endpoint, e.g. ``tcp://127.0.0.1:5555``.
        key: the cluster key.
        timeout: seconds to wait for the broker to accept us.
        labels: labels every task of this client asks for (on top of each task's own).
        broker_timeout: seconds a task waits for a broker that went silent (so a restarted
            one takes it up again) before it fails with BrokerLost.

    Raises:
        AuthenticationError: the broker rejected our key.
        BrokerTimeout: no broker answered within `timeout` (a TimeoutError).

    Attributes:
        sent: what went to the broker: ``tasks`` and ``task_bytes`` (their arguments),
            ``functions`` and ``function_bytes`` (function payloads, each sent once), and
            ``most_in_a_message``: the most tasks (or cancelled ids) one message carried.
    """

    def __init__(self, endpoint: str, key: bytes, *, timeout: float = CONNECT_TIMEOUT_S,
                 labels: Iterable[str] = (), remember: bool = True,
                 curve: CurveKeys | None = None,
                 broker_timeout: float = DEFAULT_BROKER_TIMEOUT_S) -> None:
        self.endpoint = endpoint
        self._silence = BrokerSilence(endpoint, broker_timeout)
        self.max_message_bytes = protocol.DEFAULT_MAX_MESSAGE_BYTES   # the broker's (welcome)
        self.labels = sorted(labels)   # every task of this client asks for these too
        self.signer = protocol.Signer(key)
        self._key = key
        self._curve = curve
        self._refs: pickling.MainRefs | None = None   # set by Mirror: objects its workers have
        self._ctx = zmq.Context(io_threads=1)
        self._sock = dealer(self._ctx, endpoint, curve=curve)
        self._keys = itertools.count(1)
        self._futures: dict[int, TaskFuture] = {}
        self._pending: dict[int, PendingTask] = {}   # key -> (spec, argument frames, function)
        self._label_sets: dict = {}   # (labels asked, client's) -> shared tuple (see _labels)
        self._result_callbacks: dict[int, Callable[[Any], Any]] = {}   # key -> callback
        self._fns_sent: set[bytes] = set()   # function digests sent to this broker (I/O thread)
        self._broken: NBClusterError | None = None   # why the I/O thread died, if it did
        self._replies: dict[int, concurrent.futures.Future] = {}
        self._outbox: collections.deque[OutboxItem] = collections.deque()
        self._lock = threading.Lock()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)   # see _wake
        self._callbacks = ResultCallbacks()   # its thread starts with the first callback
        self._closed = False
        self._reconnecting = 0.0          # when we last registered again, while not welcomed
        self._epoch: int | None = None    # the broker's, from its welcome: a new one = a restart
        self._cancelling: set[int] = set()   # keys cancelled here, whose last word may still come
        self._debug_sessions: dict[tuple[str, str], DebugSession] = {}   # (worker, sid)
        self._debug_releases: collections.deque[dict] = collections.deque()   # see debugging
        self.n_workers = 0
        self.host = socket.gethostname()
        self.local = False                      # is the broker on this host? (from its welcome)
        self._workers_here: int | None = None   # workers on this host (from heartbeats)
        self._shm = SharedMemory(key) if shm_available() else None
        self._shm_files: dict[int, list[str]] = {}   # task key -> its argument files
        self.stats = {"results": 0, "unexpected_results": 0}   # the latter must stay 0
        self.sent = {"tasks": 0, "task_bytes": 0, "functions": 0, "function_bytes": 0,
                     "most_in_a_message": 0}
        # Set by whoever started the workers (LocalCluster): pid -> how it ended, or None.
        self.exit_reason: Callable[[int], str | None] | None = None
        self.heartbeat_s, self.expiry_s = 1.0, 3.0
        self._welcome: concurrent.futures.Future = concurrent.futures.Future()
        self._thread = threading.Thread(target=self._io_loop, name="nbcluster-client", daemon=True)
        self._thread.start()
        try:
            self._welcome.result(timeout)
        except concurrent.futures.TimeoutError:
            self.close()
            raise BrokerTimeout(f"no nbcluster broker answered at {endpoint} within {timeout} s; "
                                "is the cluster running?") from None
        except AuthenticationError:
            self.close()
            raise
        if remember:
            remember_latest(self)

    @property
    def closed(self) -> bool:
        """Closed, or unusable because its I/O thread died."""
        return self._closed or self._broken is not None

    # ---- submitting -------------------------------------------------------------------------
    @overload
    def submit(self, fn: Callable[P, R], /, *args: P.args,
               **kwargs: P.kwargs) -> TaskFuture[R]: ...

    @overload   # a function prepared once (`prepare`): its result type is not known
    def submit(self, fn: functions.Prepared, /, *args: object,
               **kwargs: object) -> TaskFuture[object]: ...

    def submit(self, fn: Callable[..., R] | functions.Prepared, /, *args: object,
               **kwargs: object) -> TaskFuture[R]:
        """Run `fn(*args, **kwargs)` on a worker. Every keyword goes to fn; nbcluster's own
        options (labels, retries, callback) go through `options()`:
        ``client.options(labels={"gpu"}).submit(fn, x)``.

        Args:
            fn: the function, or `prepare(fn)` when submitting the same function many times.

        Raises:
            PicklingError: fn or an argument cannot be pickled (nothing was sent).
            TypeError: a keyword named like an option (labels=, retries=, callback=) that
                fn does not take: that call meant `options(...)` (nothing was sent).
        """
        refuse_misplaced_options(fn, kwargs)
        return self._submit_call(fn, args, kwargs)

    def options(self, *, labels: Iterable[str] | None = None, retries: int = 0,
                callback: Callable[[R], object] | None = None) -> TaskOptions:
        """Options for the tasks submitted through the returned object, kept apart from the
        function's own keywords: ``client.options(labels={"gpu"}, retries=2).submit(fn, x)``.

        Args:
            labels: the task waits for a worker holding every one of these labels.
            retries: how many times to run the task again if it raises.
            callback: called on the client with the result when the task succeeds.
        """
        return TaskOptions(self, labels=labels, retries=retries, callback=callback)

    def prepare(self, fn: Callable[..., object]) -> functions.Prepared:
        """fn pickled once, to pass to `submit` in place of fn when submitting it many times.

        Raises:
            PicklingError: fn cannot be pickled.
        """
        return functions.prepare(fn, self._refs)

    def map(self, fn: Callable[..., R], *iterables: Iterable[object], chunksize: int | None = None,
            labels: Iterable[str] | None = None, retries: int = 0) -> list[R]:
        """`[fn(*args) for args in zip(*iterables)]`, computed on the cluster, in input order.

        Raises:
            RemoteErrorGroup: some elements failed; it holds one error per failed element
                (with `.index` and `.item`) and names every worker involved.
        """
        futures, n = self.map_chunks(fn, *iterables, chunksize=chunksize, labels=labels,
                                     retries=retries)
        with cancel_on_error(futures):   # Ctrl-C: the chunks not run yet leave the queue
            return gather_chunks(futures, n)

    def map_futures(self, fn: Callable[..., R], *iterables: Iterable[object],
                    chunksize: int | None = None, labels: Iterable[str] | None = None,
                    retries: int = 0) -> tuple[list[TaskFuture[list[R] | ChunkFailures]], int]:
        """Deprecated name of `map_chunks` (it promised a future per element)."""
        warnings.warn("Client.map_futures is renamed Client.map_chunks: it returns one future "
                      "per chunk", DeprecationWarning, stacklevel=2)
        return self.map_chunks(fn, *iterables, chunksize=chunksize, labels=labels,
                               retries=retries)

    def map_chunks(self, fn: Callable[..., R], *iterables: Iterable[object],
                   chunksize: int | None = None, labels: Iterable[str] | None = None,
                   retries: int = 0) -> tuple[list[TaskFuture[list[R] | ChunkFailures]], int]:
        """Submit a map in chunks, without waiting: (one future per chunk, whose result is the
        list of its elements' results, number of elements)."""
        items = list(zip(*iterables, strict=False))   # as map(): up to the shortest
        if chunksize is None:
            chunksize = auto_chunksize(len(items), self.n_workers or len(self.workers()))
        try:   # one payload for every chunk: it travels once to each worker
            runner = functions.dumps_function(ChunkRunner(fn), self._refs)
        except Exception as e:
            raise PicklingError(
                f"cannot pickle the function {serialize.describe(fn)}: {e}") from e
        chunks = self._dumps_chunks(items, chunksize)
        labels = self._labels(labels)
        try:   # before any chunk goes, so no chunk is left in shared memory
            for frames in chunks:
                self._check_fits(runner, frames)
        except MessageTooLarge:
            self._remove_chunk_files(chunks)
            raise
        futures: list[TaskFuture[list[R] | ChunkFailures]] = []
        with cancel_on_error(futures):   # interrupted while submitting: cancel what went out
            for frames in chunks:
                futures.append(self._submit_frames(runner, frames, labels, None, retries))
        return futures, len(items)

    def cancel(self, futures: TaskFuture[R] | Iterable[TaskFuture[R]]) -> int:
        """Stop tasks: queued ones are dropped, running ones interrupted (`fut.interrupt()`;
        `fut.cancel()` leaves a running task alone, as concurrent.futures does); returns how
        many were stopped."""
        if isinstance(futures, TaskFuture):
            futures = [futures]
        return sum(1 for f in futures if f.interrupt())

    # ---- inspecting -------------------------------------------------------------------------
    def status(self, timeout: float = 10.0) -> ClusterStatus:
        """The broker's view: workers, queued and running counts, tasks waiting for labels."""
        data: ClusterStatus = self._request({"t": "query"}, timeout)
        self.n_workers = len(data["workers"])
        return data

    def stop_workers(self, worker_ids: Iterable[str] | None = None,
                     timeout: float = 10.0) -> list[str]:
        """Ask workers (default: all) to leave once their running task is done; the tasks
        they had not started go to others. Returns the ids asked.

        Raises:
            LookupError: no worker has one of these ids.
        """
        ids = None if worker_ids is None else list(worker_ids)
        data = self._request({"t": "stop", "workers": ids}, timeout)
        if data["unknown"]:
            raise LookupError(f"no worker {', '.join(data['unknown'])} in this cluster")
        return data["stopping"]

    def shutdown_cluster(self, timeout: float = 10.0) -> list[str]:
        """Stop the whole cluster: every worker (once its running task is done), then the
        broker. Returns the ids of the workers asked to stop."""
        return self._request({"t": "stop", "workers": None, "broker": True}, timeout)["stopping"]

    def workers(self) -> list[WorkerInfo]:
        """One dict per worker: id, host, pid, labels, slots, running, done, state, info."""
        return self.status()["workers"]

    def executor(self, *, initializer: Callable[..., object] | None = None,
                 initargs: Iterable[object] = (), max_workers: int | None = None,
                 mp_context: object = None, max_tasks_per_child: int | None = None) -> Executor:
        """A concurrent.futures.Executor running on this cluster (the keywords: `Executor`'s;
        max_workers and max_tasks_per_child are refused, as with its client=); its shutdown
        leaves the cluster running."""
        from .executor import Executor
        return Executor(max_workers, mp_context, initializer, initargs,
                        max_tasks_per_child=max_tasks_per_child, client=self)

    # ---- closing ----------------------------------------------------------------------------
    def close(self) -> None:
        """Say goodbye to the broker (it drops our queued tasks) and cancel pending futures."""
        if self._closed:
            return
        self._closed = True
        self._wake()
        if threading.current_thread() is not self._thread:   # (a done-callback may close us)
            self._thread.join(5)
        for fut in list(self._futures.values()):
            fut._cancel_locally()
        self._futures.clear()
        self._pending.clear()
        self._result_callbacks.clear()
        for key in list(self._shm_files):
            self._release_shm(key)
        self._callbacks.shutdown()
        wake_r, wake_w, self._wake_w = self._wake_r, self._wake_w, -1   # later wakes: no-ops
        os.close(wake_r)
        os.close(wake_w)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<nbcluster.Client {self.endpoint} {self.n_workers} workers>"

