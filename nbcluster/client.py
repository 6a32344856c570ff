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
"""

from __future__ import annotations

import collections
import concurrent.futures
import itertools
import logging
import os
import socket
import threading
import time
import weakref
from typing import Any, Callable, Iterable

import zmq

from . import message_limit, protocol, serialize, tracebacks
from .bars import progress
from .broker_silence import DEFAULT_BROKER_TIMEOUT_S, BrokerSilence
from .chunks import ChunkFailures, ChunkRunner, auto_chunksize
from .connection import ConnectionInfo
from .curve import CurveKeys
from .english import counted
from .errors import (AuthenticationError, BrokerTimeout, MemoryLimitExceeded, MessageTooLarge,
                     NBClusterError, PicklingError, ProtocolError, RemoteErrorGroup,
                     TaskCancelled, WorkerLost,
                     summarize_failures)
from .futures import TaskFuture
from .options import TaskOptions, refuse_misplaced_options
from .shm import SharedMemory, available as shm_available
from .transport import dealer, pending_messages
from .waiting import cancel_on_error

__all__ = ["Client", "connect"]

log = logging.getLogger("nbcluster.client")

CONNECT_TIMEOUT_S = 10.0
SUBMIT_BATCH_BYTES = 1 << 20    # small tasks are sent together up to this size per message
BIG_TASK_BYTES = 64 * 1024      # a task at least this big is sent alone (forwarded zero-copy)


class Client:
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
        sent: what went to the broker: ``tasks`` and ``task_bytes`` (their arguments), and
            ``functions`` and ``function_bytes`` (function payloads, each sent once).
    """

    def __init__(self, endpoint: str, key: bytes, *, timeout: float = CONNECT_TIMEOUT_S,
                 labels: Iterable[str] = (), remember: bool = True,
                 curve: "CurveKeys | None" = None,
                 broker_timeout: float = DEFAULT_BROKER_TIMEOUT_S):
        self.endpoint = endpoint
        self._silence = BrokerSilence(endpoint, broker_timeout)
        self.max_message_bytes = protocol.DEFAULT_MAX_MESSAGE_BYTES   # the broker's (welcome)
        self.labels = sorted(labels)   # every task of this client asks for these too
        self.signer = protocol.Signer(key)
        self._key = key
        self._curve = curve
        self._refs: serialize.MainRefs | None = None   # set by Mirror: objects its workers have
        self._ctx = zmq.Context(io_threads=1)
        self._sock = dealer(self._ctx, endpoint, curve=curve)
        self._keys = itertools.count(1)
        self._futures: dict[int, TaskFuture] = {}
        self._pending: dict[int, tuple] = {}   # key -> (task spec, argument frames, Prepared fn)
        self._result_callbacks: dict[int, Callable[[Any], Any]] = {}   # key -> callback
        self._fns_sent: set[bytes] = set()   # function digests sent to this broker (I/O thread)
        self._broken: NBClusterError | None = None   # why the I/O thread died, if it did
        self._replies: dict[int, concurrent.futures.Future] = {}
        self._outbox: collections.deque = collections.deque()
        self._lock = threading.Lock()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)   # see _wake
        self._callbacks = None
        self._closed = False
        self._reconnecting = 0.0          # when we last registered again, while not welcomed
        self._epoch: int | None = None    # the broker's, from its welcome: a new one = a restart
        self._cancelling: set[int] = set()   # keys cancelled here, whose last word may still come
        self.n_workers = 0
        self.host = socket.gethostname()
        self.local = False                      # is the broker on this host? (from its welcome)
        self._workers_here: int | None = None   # workers on this host (from heartbeats)
        self._shm = SharedMemory(key) if shm_available() else None
        self._shm_files: dict[int, list[str]] = {}   # task key -> its argument files
        self.stats = {"results": 0, "unexpected_results": 0}   # the latter must stay 0
        # What went to the broker: task argument frames, and function payloads (once each).
        self.sent = {"tasks": 0, "task_bytes": 0, "functions": 0, "function_bytes": 0}
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
    def submit(self, fn: Callable, /, *args, **kwargs) -> TaskFuture:
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
                callback: Callable[[Any], Any] | None = None) -> TaskOptions:
        """Options for the tasks submitted through the returned object, kept apart from the
        function's own keywords: ``client.options(labels={"gpu"}, retries=2).submit(fn, x)``.

        Args:
            labels: the task waits for a worker holding every one of these labels.
            retries: how many times to run the task again if it raises.
            callback: called on the client with the result when the task succeeds.
        """
        return TaskOptions(self, labels=labels, retries=retries, callback=callback)

    def _submit_call(self, fn: Callable, args: tuple, kwargs: dict, labels=None,
                     retries: int = 0, callback: Callable[[Any], Any] | None = None
                     ) -> TaskFuture:
        prepared, arg_frames = serialize.dumps_call(fn, args, kwargs, self._local_shm, self._refs)
        return self._submit_frames(prepared, arg_frames, self._labels(labels), None, retries,
                                   callback)

    def prepare(self, fn: Callable) -> "serialize.Prepared":
        """fn pickled once, to pass to `submit` in place of fn when submitting it many times.

        Raises:
            PicklingError: fn cannot be pickled.
        """
        return serialize.prepare(fn, self._refs)

    def _labels(self, labels: Iterable[str] | None) -> list[str]:
        return sorted({*self.labels, *(labels or ())})

    def _submit_frames(self, fn: "serialize.Prepared", frames: list, labels, target: str | None,
                       retries: int, callback: Callable[[Any], Any] | None = None) -> TaskFuture:
        """Queue a task: fn's payload (sent once per session) and the argument frames. A
        `callback` is registered before the task can be sent, so no result can beat it."""
        if self._closed:
            raise RuntimeError("this client is closed")
        self._raise_if_broken()
        shm_files = serialize.shm_names(frames)
        try:
            self._check_fits(fn, frames)
        except MessageTooLarge:
            for name in shm_files:
                self._shm.remove(name)
            raise
        key = next(self._keys)
        fut = TaskFuture(self, key)
        fut.input_bytes = sum(memoryview(f).nbytes for f in frames)
        # A task whose data is in this host's shared memory must run on this host.
        spec = [key, len(frames), sorted(labels or ()), target, int(retries),
                self.host if shm_files else None, fn.digest]
        if callback is not None:
            self._start_callbacks_thread()
        with self._lock:
            if shm_files:
                self._shm_files[key] = shm_files
            if callback is not None:
                self._result_callbacks[key] = callback
            self._futures[key] = fut
            self._pending[key] = (spec, frames, fn)
            self._outbox.append(("task", spec, frames, fn))
        self._wake()
        return fut

    def _check_fits(self, fn: "serialize.Prepared", frames: list) -> None:
        """Raise MessageTooLarge if a task (with its function, which goes along with the
        first task that needs it) is over the broker's limit: sent, it would be dropped."""
        nbytes = sum(memoryview(f).nbytes for f in frames)
        message_limit.check(f"a task of {fn.name} (arguments {nbytes:,} bytes, function "
                            f"{fn.nbytes:,} bytes)", nbytes + fn.nbytes, self.max_message_bytes)

    def _wake(self) -> None:
        """Wake the I/O thread. Never blocks, so the I/O thread may wake itself: a full pipe
        means a wake-up is pending already."""
        try:
            os.write(self._wake_w, b"x")
        except OSError:   # BlockingIOError: full; or the client is closed: nobody to wake
            pass

    def _raise_if_broken(self) -> None:
        if self._broken is not None:
            raise NBClusterError(self._broken.args[0]) from self._broken.__cause__

    def map(self, fn: Callable, *iterables: Iterable, chunksize: int | None = None,
            labels: Iterable[str] | None = None, retries: int = 0) -> list:
        """`[fn(*args) for args in zip(*iterables)]`, computed on the cluster, in input order.

        Raises:
            RemoteErrorGroup: some elements failed; it holds one error per failed element
                (with `.index` and `.item`) and names every worker involved.
        """
        futures, n = self.map_futures(fn, *iterables, chunksize=chunksize, labels=labels,
                                      retries=retries)
        with cancel_on_error(futures):   # Ctrl-C: the chunks not run yet leave the queue
            return gather_chunks(futures, n)

    def map_futures(self, fn: Callable, *iterables: Iterable, chunksize: int | None = None,
                    labels=None, retries: int = 0) -> tuple[list[TaskFuture], int]:
        """Submit a map in chunks; returns (chunk futures, number of elements)."""
        items = list(zip(*iterables))
        if chunksize is None:
            chunksize = auto_chunksize(len(items), self.n_workers or len(self.workers()))
        try:   # one payload for every chunk: it travels once to each worker
            runner = serialize.dumps_function(ChunkRunner(fn), self._refs)
        except Exception as e:
            raise PicklingError(
                f"cannot pickle the function {serialize.describe(fn)}: {e}") from e
        chunks = []   # all pickled before any is sent: an unpicklable element sends nothing
        for start in range(0, len(items), chunksize):
            chunk = items[start:start + chunksize]
            try:
                chunks.append(serialize.dumps(((chunk, start), {}), self._local_shm))
            except Exception as e:
                for name in (n for frames in chunks for n in serialize.shm_names(frames)):
                    self._shm.remove(name)
                culprit = next((i for i, x in enumerate(chunk, start) if not _picklable(x)), start)
                raise PicklingError(f"cannot pickle element {culprit} "
                                    f"({serialize.describe(items[culprit])}): {e}") from e
        labels = self._labels(labels)
        try:   # before any chunk goes, so no chunk is left in shared memory
            for frames in chunks:
                self._check_fits(runner, frames)
        except MessageTooLarge:
            for name in (n for frames in chunks for n in serialize.shm_names(frames)):
                self._shm.remove(name)
            raise
        futures: list[TaskFuture] = []
        with cancel_on_error(futures):   # interrupted while submitting: cancel what went out
            for frames in chunks:
                futures.append(self._submit_frames(runner, frames, labels, None, retries))
        return futures, len(items)

    def broadcast(self, fn: Callable, /, *args, **kwargs) -> dict[str, Any]:
        """Run `fn(*args, **kwargs)` once on every worker; returns {worker_id: result}.

        Raises:
            RemoteErrorGroup: it failed on some workers (one error per worker).
        """
        futures = self.broadcast_futures(fn, *args, **kwargs)
        with cancel_on_error(futures.values()):
            progress(futures.values(), desc="broadcast", wait=True)
        errors = [f.exception() for f in futures.values() if f.exception() is not None]
        if errors:
            raise RemoteErrorGroup(summarize_failures(errors, len(futures), "workers"), errors)
        return {wid: f.result() for wid, f in futures.items()}

    def broadcast_futures(self, fn: Callable, /, *args, **kwargs) -> dict[str, TaskFuture]:
        """Like `broadcast`, without waiting: {worker_id: future} for every worker there now
        that has this client's labels."""
        return self.submit_to([w["id"] for w in self.workers()
                               if set(self.labels) <= set(w.get("labels", ()))], fn, *args, **kwargs)

    def submit_to(self, worker_ids: Iterable[str], fn: Callable, /, *args, **kwargs
                  ) -> dict[str, TaskFuture]:
        """Run `fn(*args, **kwargs)` once on each of these workers: {worker_id: future}. A task
        whose worker is gone fails with WorkerLost (it does not move to another worker).

        Raises:
            PicklingError: fn or an argument cannot be pickled (nothing was sent).
        """
        prepared, arg_frames = serialize.dumps_call(fn, args, kwargs)
        return {wid: self._submit_frames(prepared, arg_frames, None, wid, 0)
                for wid in worker_ids}

    def cancel(self, futures: TaskFuture | Iterable[TaskFuture]) -> int:
        """Stop tasks: queued ones are dropped, running ones interrupted (`fut.interrupt()`;
        `fut.cancel()` leaves a running task alone, as concurrent.futures does); returns how
        many were stopped."""
        if isinstance(futures, TaskFuture):
            futures = [futures]
        return sum(1 for f in futures if f.interrupt())

    def _cancel_remote(self, keys: list[int]) -> None:
        with self._lock:
            for k in keys:
                self._pending.pop(k, None)
                if self._futures.pop(k, None) is not None:
                    self._cancelling.add(k)
                self._result_callbacks.pop(k, None)
                self._release_shm(k)
            last = self._outbox[-1] if self._outbox else None
            if last is not None and last[0] == "msg" and last[1]["t"] == "cancel":
                last[1]["ids"].extend(keys)   # many cancels in a row (a map's): one message
            else:
                self._outbox.append(("msg", {"t": "cancel", "ids": list(keys)}, [], None))
        self._wake()

    # ---- inspecting -------------------------------------------------------------------------
    def status(self, timeout: float = 10.0) -> dict:
        """The broker's view: workers, queued and running counts, tasks waiting for labels."""
        data = self._request({"t": "query"}, timeout)
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

    def _request(self, header: dict, timeout: float | None) -> Any:
        """The broker's reply; BrokerTimeout if none comes within timeout (or, with timeout
        None, once the broker has been silent longer than broker_timeout)."""
        self._raise_if_broken()
        reply: concurrent.futures.Future = concurrent.futures.Future()
        with self._lock:
            rid = next(self._keys)
            self._replies[rid] = reply
            self._outbox.append(("msg", {**header, "rid": rid}, [], None))
        self._wake()
        start = time.monotonic()
        try:
            return reply.result(timeout)
        except TimeoutError:   # ours, or the I/O thread's once broker_timeout is over
            self._replies.pop(rid, None)
            now = time.monotonic()
            what = {"query": "a status query", "stop": "a stop request"}.get(header["t"], "")
            raise self._silence.timeout_error(what or repr(header["t"]), now - start, now,
                                              self.expiry_s) from None

    def workers(self) -> list[dict]:
        """One dict per worker: id, host, pid, labels, slots, running, done, state, info."""
        return self.status()["workers"]

    def executor(self, **kwargs) -> "concurrent.futures.Executor":
        """A concurrent.futures.Executor running on this cluster (`kwargs`: `Executor`'s,
        e.g. initializer=); its shutdown leaves the cluster running."""
        from .executor import Executor
        return Executor(client=self, **kwargs)

    # ---- callbacks --------------------------------------------------------------------------
    def _start_callbacks_thread(self) -> None:
        """Result callbacks run on a thread of their own (never the I/O thread), before their
        future resolves: a callback that raises fails its future with that error."""
        with self._lock:
            if self._callbacks is None:
                self._callbacks = concurrent.futures.ThreadPoolExecutor(
                    1, thread_name_prefix="nbcluster-callbacks")

    def _callback_then_settle(self, fut: TaskFuture, callback: Callable, value: Any) -> None:
        """(callbacks thread) The callback, then the future: its value, or what it raised."""
        try:
            callback(value)
        except BaseException as e:   # noqa: BLE001 - user code: the future's failure
            fut._settle(error=_caused(NBClusterError(
                f"task {fut.key} succeeded but its result callback "
                f"{serialize.describe(callback)} raised {e!r}"), e))
        else:
            fut._settle(value)

    # ---- the I/O thread -----------------------------------------------------------------------
    def _io_loop(self) -> None:
        try:
            self._serve()
        except BaseException as e:   # noqa: BLE001 - a bug of ours: fail loudly, never hang
            log.exception("the nbcluster client's I/O thread failed")
            self._break(e)
        try:
            self._send({"t": "bye"})   # the broker drops our queued tasks
        except Exception:   # noqa: BLE001 - the socket may be what failed
            pass
        self._sock.close(linger=100)
        self._ctx.term()

    def _break(self, cause: BaseException) -> None:
        """The I/O thread is dying: fail every pending future, reply and later call."""
        error = _caused(NBClusterError(
            f"the client's I/O thread failed ({cause!r}): no result can reach this client "
            "any more, so its pending tasks failed; connect a new Client"), cause)
        with self._lock:
            self._broken = error
            futures, replies = list(self._futures.values()), list(self._replies.values())
            self._futures.clear()
            self._pending.clear()
            self._replies.clear()
            self._result_callbacks.clear()
            for key in list(self._shm_files):
                self._release_shm(key)
        for fut in futures:
            fut._settle(error=error)
        for reply in [*replies, self._welcome]:
            if not reply.done():
                reply.set_exception(error)

    def _serve(self) -> None:
        poller = zmq.Poller()
        poller.register(self._sock, zmq.POLLIN)
        poller.register(self._wake_r, zmq.POLLIN)
        self._hello()
        last_heard = last_sent = time.monotonic()   # last_heard: of the warning below
        while not self._closed:
            timeout = max(0.0, last_sent + self.heartbeat_s - time.monotonic())
            events = dict(poller.poll(timeout * 1000))
            now = time.monotonic()
            if self._wake_r in events:
                os.read(self._wake_r, 65536)
                if self._closed:
                    break
                if self._flush_outbox():
                    last_sent = now
            if self._sock in events:
                last_heard = now
                self._silence.heard(now)
                self._drain()
            if now - last_sent >= self.heartbeat_s:
                self._send({"t": "hb"})
                last_sent = now
            if now - last_heard > self.expiry_s and self._welcome.done():
                log.warning("no word from the broker for %.1f s", self._silence.silent_for(now))
                last_heard = now
            if self._silence.lost(now) and (self._futures or self._replies):
                self._fail_pending_broker_lost(now)

    def _fail_pending_broker_lost(self, now: float) -> None:
        """(I/O thread) The broker has been silent past broker_timeout: every pending task
        fails with BrokerLost (and is cancelled, should that broker come back), every
        request waiting for a reply with BrokerTimeout."""
        with self._lock:
            futures = list(self._futures.values())
            replies, self._replies = list(self._replies.values()), {}
        self._cancel_remote([fut.key for fut in futures])
        for fut in futures:
            fut._settle(error=self._silence.lost_error(f"task {fut.key}", now))
        for reply in replies:
            if not reply.done():
                reply.set_exception(TimeoutError())   # _request says what and why

    def _send(self, header: dict, payload: list = ()) -> None:
        self._sock.send_multipart(protocol.encode(self.signer, header, payload), copy=False)

    def _hello(self) -> None:
        self._send({"t": "hello", "role": "client", "host": self.host, "pid": os.getpid()})

    def _flush_outbox(self) -> bool:
        """Send what the outbox holds, in order: small tasks together, a big one alone, each
        function payload the broker does not have yet with the first task that needs it."""
        with self._lock:
            items, self._outbox = self._outbox, collections.deque()
        specs: list = []
        frames: list = []
        fns: list = []
        size = 0
        for kind, spec, payload, fn in items:
            if kind == "msg":
                self._send_tasks(specs, frames, fns)
                specs, frames, fns, size = [], [], [], 0
                self._send(spec)
                continue
            new_fn = fn.digest not in self._fns_sent
            self._fns_sent.add(fn.digest)
            nbytes = sum(memoryview(f).nbytes for f in payload)
            if specs and size + nbytes + (fn.nbytes if new_fn else 0) + \
                    message_limit.HEADROOM_BYTES > self.max_message_bytes:   # the broker's limit
                self._send_tasks(specs, frames, fns)
                specs, frames, fns, size = [], [], [], 0
            if nbytes >= BIG_TASK_BYTES:
                self._send_tasks(specs, frames, fns)
                specs, frames, fns, size = [], [], [], 0
                self._send_tasks([spec], payload, [fn] if new_fn else [])
                continue
            specs.append(spec)
            frames += payload
            size += nbytes + (fn.nbytes if new_fn else 0)
            if new_fn:
                fns.append(fn)
            if size >= SUBMIT_BATCH_BYTES or len(specs) >= 4096:
                self._send_tasks(specs, frames, fns)
                specs, frames, fns, size = [], [], [], 0
        self._send_tasks(specs, frames, fns)
        return bool(items)

    def _send_tasks(self, specs: list, frames: list, fns: list) -> None:
        if not specs:
            return
        header = {"t": "submit", "tasks": specs}
        if fns:
            header["fns"] = [[fn.digest, len(fn.frames)] for fn in fns]
        self._send(header, [*(f for fn in fns for f in fn.frames), *frames])
        self.sent["tasks"] += len(specs)
        self.sent["task_bytes"] += sum(memoryview(f).nbytes for f in frames)
        self.sent["functions"] += len(fns)
        self.sent["function_bytes"] += sum(fn.nbytes for fn in fns)

    def _drain(self) -> None:
        for frames in pending_messages(self._sock):
            if protocol.is_denied(frames):
                if self._welcome.done():   # denied again (a heartbeat): we failed already
                    continue
                self._welcome.set_exception(AuthenticationError(
                    f"the broker at {self.endpoint} rejected our signature: the cluster key is "
                    "wrong (use the key from the cluster's connection file)"))
                continue
            try:
                header, payload = protocol.decode(self.signer, frames, max_bytes=None)
                self._on_message(header, payload)
            except ProtocolError as e:
                log.warning("dropped a message from the broker: %s", e)

    def _on_message(self, header: dict, payload: list) -> None:
        kind = header["t"]
        if kind == "results":
            pos = 0
            for key, status, nframes, info in header["items"]:
                self._on_result(key, status, payload[pos:pos + nframes], info)
                pos += nframes
        elif kind == "output":
            for key, stream, text, worker in header["items"]:
                fut = self._futures.get(key)
                if fut is not None:
                    fut.output.append((stream, text, worker))
                    if fut.on_output is not None:
                        try:
                            fut.on_output(stream, text, worker)
                        except BaseException as e:   # noqa: BLE001 - user code: its task fails
                            handler = serialize.describe(fut.on_output)
                            self._fail_on_client(
                                fut, f"its on_output handler {handler} raised {e!r}", e)
        elif kind == "started":
            for key, worker in header["items"]:
                fut = self._futures.get(key)
                if fut is not None:
                    fut._mark_running(worker)
        elif kind == "refetch":
            # The broker dropped these tasks' function payloads (it keeps idle ones only up to
            # a bound): send the tasks again, with their functions.
            with self._lock:
                for key in header.get("ids", []):
                    entry = self._pending.get(key)
                    if entry is not None:
                        self._fns_sent.discard(entry[2].digest)
                        self._outbox.append(("task", *entry))
            self._wake()
        elif kind == "hb":
            self.n_workers = header.get("workers", self.n_workers)
            self._workers_here = header.get("here")
        elif kind == "reply":
            reply = self._replies.pop(header.get("rid"), None)
            if reply is not None:
                reply.set_result(header["data"])
        elif kind == "welcome":
            self.max_message_bytes = message_limit.limit_from_welcome(header)
            self.heartbeat_s = header["heartbeat_ms"] / 1000
            self.expiry_s = self.heartbeat_s * header["liveness"]
            self.local = self._shm is not None and header.get("broker", {}).get("host") == self.host
            if not self._welcome.done():
                self._welcome.set_result(header)
            restarted = self._epoch is not None and header.get("epoch") != self._epoch
            self._epoch = header.get("epoch")
            if self._reconnecting:
                self._reconnecting = 0.0
                self._resubmit(restarted)
        elif kind == "reconnect" and (not self._reconnecting or
                                      time.monotonic() - self._reconnecting > self.expiry_s):
            # The broker forgot us (it restarted, or we were silent too long): register again
            # (once, unless that hello went unanswered), and once welcomed, submit every task
            # we have no result for.
            self._reconnecting = time.monotonic()
            self._hello()

    def _fail_on_client(self, fut: TaskFuture, why: str, cause: BaseException) -> None:
        """User code on the client failed for this task: the future gets the error and the
        task, no longer wanted, is cancelled."""
        fut._settle(error=_caused(NBClusterError(f"task {fut.key} failed on the client: {why}"),
                                  cause))
        self._cancel_remote([fut.key])

    def _resubmit(self, restarted: bool) -> None:
        """Submit again every task we have no result for (the broker forgot us). After a
        broker restart, a task meant for one worker fails instead: worker ids are the old
        broker's, and the new one may give the same id to another process."""
        self._fns_sent.clear()   # a new broker session: it has none of our functions
        with self._lock:   # pending tasks still in the outbox would go twice
            self._outbox = collections.deque(x for x in self._outbox if x[0] != "task")
            pinned = {k: spec[3] for k, (spec, _, _) in self._pending.items()
                      if restarted and spec[3]}
            self._outbox.extend(("task", *entry) for k, entry in self._pending.items()
                                if k not in pinned)
        for key, target in pinned.items():
            self._on_result(key, "lost", [], {"lost_on": [target], "why": (
                "the broker restarted, and worker ids do not carry over to the new one")})
        self._wake()

    def _on_result(self, key: int, status: str, frames: list, info: dict) -> None:
        with self._lock:
            fut = self._futures.pop(key, None)
            self._pending.pop(key, None)
            callback = self._result_callbacks.pop(key, None)
            self._release_shm(key)
        self.stats["results"] += 1
        if fut is None:
            # A cancel crossed its result (or the broker confirms it): expected, once.
            if key in self._cancelling:
                self._cancelling.discard(key)
            else:   # not a task of ours: never settle anything with it
                self.stats["unexpected_results"] += 1
                log.warning("dropped a %s result for task %s, which this client is not "
                            "waiting for", status, key)
            return
        fut.worker, fut.duration = info.get("worker"), info.get("s")
        try:
            if status == "ok":
                value = serialize.loads(frames, self._shm, remove=True)
                if callback is None:
                    fut._settle(value)
                else:
                    self._callbacks.submit(self._callback_then_settle, fut, callback, value)
            elif status == "err":
                fut._settle(error=tracebacks.rebuild(serialize.loads(frames)))
            elif status == "lost" and info.get("memory"):
                fut._settle(error=_memory_error(key, info))
            elif status == "lost":
                lost_on = [str(w) for w in info.get("lost_on", [])]
                pids = info.get("pids") or [None] * len(lost_on)
                # How each worker ended, as its supervisor told the broker; else as the
                # LocalCluster that started it saw it; else all we know is its silence.
                reasons = info.get("reasons") or [None] * len(lost_on)
                why = info.get("why") or f"its worker was lost {counted(len(lost_on), 'time')}"
                where = "; ".join(f"{w}: " + (reason or self.exit_reason and self.exit_reason(pid)
                                              or "stopped answering")
                                  for w, pid, reason in zip(lost_on, pids, reasons))
                fut._settle(error=WorkerLost(f"task {key} failed: {why} ({where})", lost_on))
            else:
                fut._settle(error=TaskCancelled(f"task {key} was cancelled"))
        except BaseException as e:  # noqa: BLE001 - e.g. the result needs a module this
            # process cannot import, or unpickling it runs code that raises (even SystemExit)
            fut._settle(error=_caused(NBClusterError(
                f"cannot unpickle the result of task {key}: {e!r}"), e))

    def _release_shm(self, key: int) -> None:
        """Remove the shared-memory files of a task's arguments (it is over)."""
        for name in self._shm_files.pop(key, ()):
            self._shm.remove(name)

    @property
    def _local_shm(self) -> SharedMemory | None:
        """Shared memory for arguments, when the broker is on this host, unless it said no
        worker is (a task whose data is in shm waits for a worker on this host)."""
        return self._shm if self.local and self._workers_here != 0 else None

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
        if self._callbacks is not None:
            self._callbacks.shutdown(wait=False)
        wake_r, wake_w, self._wake_w = self._wake_r, self._wake_w, -1   # later wakes: no-ops
        os.close(wake_r)
        os.close(wake_w)

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<nbcluster.Client {self.endpoint} {self.n_workers} workers>"


_latest: list[weakref.ref] = []


def remember_latest(obj: Any) -> None:
    """Record the client (or cluster) made last: operations given no client use it."""
    _latest[:] = [weakref.ref(obj)]


def latest() -> Any:
    """The client or cluster made last that is still open, or None."""
    obj = _latest[0]() if _latest else None
    return obj if obj is not None and not obj.closed else None


def gather_chunks(futures: list[TaskFuture], n_items: int) -> list:
    """The results of map chunk futures in input order, or one RemoteErrorGroup of the
    failures. A failure that repeats is a mistake: then the group comes as soon as it is
    known, with the first few of each kind in full and a count of the rest, and the chunks
    not done are cancelled."""
    from .remote import FailureTally
    tally, pending, not_run = FailureTally(), set(futures), 0
    try:
        while pending and not tally.systematic:
            done, pending = concurrent.futures.wait(
                pending, return_when=concurrent.futures.FIRST_COMPLETED)
            for fut in done:
                try:
                    out = fut.result()
                except (WorkerLost, TaskCancelled) as e:
                    tally.add(e)
                    continue
                if isinstance(out, ChunkFailures):
                    tally.add_task(out.errors, out.counted, out.stopped)
                    not_run += out.not_run
    finally:
        if pending:   # stopped at a repeated failure, or interrupted: queued or running
            futures[0]._client.cancel(list(pending))
    if tally:
        if pending:
            not_run = n_items - sum(len(_chunk_results(f)) for f in futures if f not in pending
                                    and not f.cancelled() and f.exception() is None) + not_run
        raise tally.group(n_items, "elements", not_run)
    return [x for fut in futures for x in fut.result()]


def _chunk_results(fut: TaskFuture) -> list:
    out = fut.result()
    return out.results if isinstance(out, ChunkFailures) else out


def _memory_error(key: int, info: dict) -> MemoryLimitExceeded:
    """The error of a task whose worker its supervisor killed for passing its memory limit."""
    worker = str((info.get("lost_on") or ["?"])[0])
    return MemoryLimitExceeded(
        f"task {key} failed: its worker {worker} was killed, {info['memory']}; the worker "
        "was replaced. Use less memory per task, or raise the limit: "
        "LocalCluster(memory_limit=...), nbcluster worker/start --memory-limit", worker)


def _caused(error: BaseException, cause: BaseException) -> BaseException:
    error.__cause__ = cause
    return error


def _picklable(obj) -> bool:
    try:
        serialize.dumps(obj)
        return True
    except Exception:
        return False


def connect(path_or_url: str = "~/.nbcluster/cluster.json", key: bytes | str | None = None,
            timeout: float = CONNECT_TIMEOUT_S,
            broker_timeout: float = DEFAULT_BROKER_TIMEOUT_S) -> Client:
    """A Client for a running cluster, from its connection file or a tcp:// / ipc:// URL.

    Args:
        path_or_url: a connection file, or the broker's endpoint (then `key` is required).
        key: the cluster key (bytes or hex); overrides the connection file's.
        broker_timeout: see `Client`.

    Raises:
        FileNotFoundError: no connection file there.
        NBClusterError: the file is not a connection file, its cluster is gone (said at
            once), or no broker answered within `timeout`.
    """
    curve = None
    if "://" in path_or_url:
        if key is None:
            raise ValueError("connecting to a URL needs the cluster key: connect(url, key=...)")
        endpoint = path_or_url
    else:
        info = ConnectionInfo.read(path_or_url)
        info.check_running(path_or_url)   # a cluster that is gone: say so now, not after timeout
        endpoint, key = info.best_endpoint(), key if key is not None else info.key
        curve = info.curve
    if isinstance(key, str):
        key = bytes.fromhex(key)
    return Client(endpoint, key, timeout=timeout, curve=curve, broker_timeout=broker_timeout)
