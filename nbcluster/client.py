"""The client: submit work to a cluster and get futures back.

    user threads ── submit/map/cancel ──► outbox (deque) + wake pipe ──┐
                                                                       ▼
    futures ◄── results/output ── I/O thread (owns the DEALER socket) ◄──► broker

Pickling happens in the calling thread, so an unpicklable function or argument fails there
and nothing is sent. The I/O thread sends what accumulated in the outbox as one message
(many small tasks per submit), heartbeats, and resolves futures. Result callbacks run on a
separate thread so a slow callback never delays heartbeats. The client keeps every task it
has no result for, and submits them again if a restarted broker asks it to reconnect.
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

from . import protocol, serialize, tracebacks
from .bars import progress
from .chunks import ChunkFailures, ChunkRunner, auto_chunksize
from .connection import ConnectionInfo
from .curve import CurveKeys
from .errors import (AuthenticationError, NBClusterError, PicklingError, ProtocolError,
                     RemoteErrorGroup, TaskCancelled, WorkerLost, summarize_failures)
from .futures import TaskFuture
from .shm import SharedMemory, available as shm_available
from .transport import dealer, pending_messages

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

    Raises:
        AuthenticationError: the broker rejected our key.
        NBClusterError: no broker answered within `timeout`.
    """

    def __init__(self, endpoint: str, key: bytes, *, timeout: float = CONNECT_TIMEOUT_S,
                 labels: Iterable[str] = (), remember: bool = True,
                 curve: "CurveKeys | None" = None):
        self.endpoint = endpoint
        self.labels = sorted(labels)   # every task of this client asks for these too
        self.signer = protocol.Signer(key)
        self._key = key
        self._curve = curve
        self._refs: serialize.MainRefs | None = None   # set by Mirror: objects its workers have
        self._ctx = zmq.Context(io_threads=1)
        self._sock = dealer(self._ctx, endpoint, curve=curve)
        self._keys = itertools.count(1)
        self._futures: dict[int, TaskFuture] = {}
        self._pending: dict[int, tuple[list, list]] = {}   # key -> (task spec, frames)
        self._replies: dict[int, concurrent.futures.Future] = {}
        self._outbox: collections.deque = collections.deque()
        self._lock = threading.Lock()
        self._wake_r, self._wake_w = os.pipe()
        self._callbacks = None
        self._closed = False
        self._reconnecting = 0.0          # when we last registered again, while not welcomed
        self._epoch: int | None = None    # the broker's, from its welcome: a new one = a restart
        self._cancelling: set[int] = set()   # keys cancelled here, whose last word may still come
        self.n_workers = 0
        self.host = socket.gethostname()
        self.local = False                      # is the broker on this host? (from its welcome)
        self._shm = SharedMemory(key) if shm_available() else None
        self._shm_files: dict[int, list[str]] = {}   # task key -> its argument files
        self.stats = {"results": 0, "unexpected_results": 0}   # the latter must stay 0
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
            raise NBClusterError(f"no nbcluster broker answered at {endpoint} within {timeout} s; "
                                 "is the cluster running?") from None
        except AuthenticationError:
            self.close()
            raise
        if remember:
            remember_latest(self)

    @property
    def closed(self) -> bool:
        return self._closed

    # ---- submitting -------------------------------------------------------------------------
    def submit(self, fn: Callable, *args, labels: Iterable[str] | None = None,
               callback: Callable[[Any], Any] | None = None, retries: int = 0,
               **kwargs) -> TaskFuture:
        """Run fn(*args, **kwargs) on a worker that has all `labels`.

        Args:
            fn: the function, or `prepare(fn)` when submitting the same function many times.
            labels: the task waits for a worker holding every one of these labels.
            callback: called on the client with the result when the task succeeds.
            retries: how many times to run the task again if it raises.

        Raises:
            PicklingError: fn or an argument cannot be pickled (nothing was sent).
        """
        fn_frame, arg_frames = serialize.dumps_call(fn, args, kwargs, self._local_shm, self._refs)
        fut = self._submit_frames([fn_frame, *arg_frames], self._labels(labels), None, retries)
        if callback is not None:
            self._add_callback(fut, callback)
        return fut

    def prepare(self, fn: Callable) -> "serialize.Prepared":
        """fn pickled once, to pass to `submit` in place of fn when submitting it many times.

        Raises:
            PicklingError: fn cannot be pickled.
        """
        return serialize.prepare(fn, self._refs)

    def _labels(self, labels: Iterable[str] | None) -> list[str]:
        return sorted({*self.labels, *(labels or ())})

    def _submit_frames(self, frames: list, labels, target: str | None, retries: int) -> TaskFuture:
        if self._closed:
            raise RuntimeError("this client is closed")
        key = next(self._keys)
        fut = TaskFuture(self, key)
        fut.input_bytes = sum(memoryview(f).nbytes for f in frames)
        shm_files = serialize.shm_names(frames[1:])   # frames[1:]: what dumps() made of the args
        # A task whose data is in this host's shared memory must run on this host.
        spec = [key, len(frames), sorted(labels or ()), target, int(retries),
                self.host if shm_files else None]
        with self._lock:
            if shm_files:
                self._shm_files[key] = shm_files
            self._futures[key] = fut
            self._pending[key] = (spec, frames)
            self._outbox.append(("task", spec, frames))
        os.write(self._wake_w, b"x")
        return fut

    def map(self, fn: Callable, *iterables: Iterable, chunksize: int | None = None,
            labels: Iterable[str] | None = None, retries: int = 0) -> list:
        """[fn(*args) for args in zip(*iterables)], computed on the cluster, in input order.

        Raises:
            RemoteErrorGroup: some elements failed; it holds one error per failed element
                (with `.index` and `.item`) and names every worker involved.
        """
        futures, n = self.map_futures(fn, *iterables, chunksize=chunksize, labels=labels,
                                      retries=retries)
        return gather_chunks(futures, n)

    def map_futures(self, fn: Callable, *iterables: Iterable, chunksize: int | None = None,
                    labels=None, retries: int = 0) -> tuple[list[TaskFuture], int]:
        """Submit a map in chunks; returns (chunk futures, number of elements)."""
        items = list(zip(*iterables))
        if chunksize is None:
            chunksize = auto_chunksize(len(items), self.n_workers or len(self.workers()))
        try:
            runner = serialize.dumps(ChunkRunner(fn))[0]
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
        futures = [self._submit_frames([runner, *frames], labels, None, retries) for frames in chunks]
        return futures, len(items)

    def broadcast(self, fn: Callable, *args, **kwargs) -> dict[str, Any]:
        """Run fn(*args, **kwargs) once on every worker; returns {worker_id: result}.

        Raises:
            RemoteErrorGroup: it failed on some workers (one error per worker).
        """
        futures = self.broadcast_futures(fn, *args, **kwargs)
        progress(futures.values(), desc="broadcast", wait=True)
        errors = [f.exception() for f in futures.values() if f.exception() is not None]
        if errors:
            raise RemoteErrorGroup(summarize_failures(errors, len(futures), "workers"), errors)
        return {wid: f.result() for wid, f in futures.items()}

    def broadcast_futures(self, fn: Callable, *args, **kwargs) -> dict[str, TaskFuture]:
        """Like `broadcast`, without waiting: {worker_id: future} for every worker there now
        that has this client's labels."""
        return self.submit_to([w["id"] for w in self.workers()
                               if set(self.labels) <= set(w.get("labels", ()))], fn, *args, **kwargs)

    def submit_to(self, worker_ids: Iterable[str], fn: Callable, *args, **kwargs
                  ) -> dict[str, TaskFuture]:
        """Run fn(*args, **kwargs) once on each of these workers: {worker_id: future}. A task
        whose worker is gone fails with WorkerLost (it does not move to another worker).

        Raises:
            PicklingError: fn or an argument cannot be pickled (nothing was sent).
        """
        fn_frame, arg_frames = serialize.dumps_call(fn, args, kwargs)
        return {wid: self._submit_frames([fn_frame, *arg_frames], None, wid, 0)
                for wid in worker_ids}

    def cancel(self, futures: TaskFuture | Iterable[TaskFuture]) -> int:
        """Cancel tasks (queued ones are dropped, running ones interrupted); returns how many."""
        if isinstance(futures, TaskFuture):
            futures = [futures]
        return sum(1 for f in futures if f.cancel())

    def _cancel_remote(self, keys: list[int]) -> None:
        with self._lock:
            for k in keys:
                self._pending.pop(k, None)
                if self._futures.pop(k, None) is not None:
                    self._cancelling.add(k)
                self._release_shm(k)
            self._outbox.append(("msg", {"t": "cancel", "ids": list(keys)}, []))
        os.write(self._wake_w, b"x")

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

    def _request(self, header: dict, timeout: float) -> Any:
        reply: concurrent.futures.Future = concurrent.futures.Future()
        with self._lock:
            rid = next(self._keys)
            self._replies[rid] = reply
            self._outbox.append(("msg", {**header, "rid": rid}, []))
        os.write(self._wake_w, b"x")
        return reply.result(timeout)

    def workers(self) -> list[dict]:
        """One dict per worker: id, host, pid, labels, slots, running, done, state, info."""
        return self.status()["workers"]

    def executor(self) -> "concurrent.futures.Executor":
        """A concurrent.futures.Executor running on this cluster."""
        from .executor import Executor
        return Executor(self)

    # ---- callbacks --------------------------------------------------------------------------
    def _add_callback(self, fut: TaskFuture, callback: Callable[[Any], Any]) -> None:
        if self._callbacks is None:
            with self._lock:
                if self._callbacks is None:
                    self._callbacks = concurrent.futures.ThreadPoolExecutor(
                        1, thread_name_prefix="nbcluster-callbacks")

        def run(f: TaskFuture) -> None:
            if not f.cancelled() and f.exception() is None:
                try:
                    callback(f.result())
                except Exception:
                    log.exception("result callback %r failed", callback)
        fut.add_done_callback(lambda f: self._callbacks.submit(run, f))

    # ---- the I/O thread -----------------------------------------------------------------------
    def _io_loop(self) -> None:
        poller = zmq.Poller()
        poller.register(self._sock, zmq.POLLIN)
        poller.register(self._wake_r, zmq.POLLIN)
        self._hello()
        last_heard = last_sent = time.monotonic()
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
                self._drain()
            if now - last_sent >= self.heartbeat_s:
                self._send({"t": "hb"})
                last_sent = now
            if now - last_heard > self.expiry_s and self._welcome.done():
                log.warning("no word from the broker for %.1f s", now - last_heard)
                last_heard = now
        try:
            self._send({"t": "bye"})
        except zmq.ZMQError:
            pass
        self._sock.close(linger=100)
        self._ctx.term()

    def _send(self, header: dict, payload: list = ()) -> None:
        self._sock.send_multipart(protocol.encode(self.signer, header, payload), copy=False)

    def _hello(self) -> None:
        self._send({"t": "hello", "role": "client", "host": self.host, "pid": os.getpid()})

    def _flush_outbox(self) -> bool:
        with self._lock:
            items, self._outbox = self._outbox, collections.deque()
        specs, frames, size = [], [], 0
        for kind, spec, payload in items:
            if kind == "msg":
                self._send(spec)
                continue
            nbytes = sum(memoryview(f).nbytes for f in payload)
            if nbytes >= BIG_TASK_BYTES:
                self._send({"t": "submit", "tasks": [spec]}, payload)
                continue
            specs.append(spec)
            frames += payload
            size += nbytes
            if size >= SUBMIT_BATCH_BYTES or len(specs) >= 4096:
                self._send({"t": "submit", "tasks": specs}, frames)
                specs, frames, size = [], [], 0
        if specs:
            self._send({"t": "submit", "tasks": specs}, frames)
        return bool(items)

    def _drain(self) -> None:
        for frames in pending_messages(self._sock):
            if protocol.is_denied(frames):
                self._welcome.set_exception(AuthenticationError(
                    f"the broker at {self.endpoint} rejected our signature: the cluster key is "
                    "wrong (use the key from the cluster's connection file)"))
                continue
            try:
                header, payload = protocol.decode(self.signer, frames)
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
                        fut.on_output(stream, text, worker)
        elif kind == "hb":
            self.n_workers = header.get("workers", self.n_workers)
        elif kind == "reply":
            reply = self._replies.pop(header.get("rid"), None)
            if reply is not None:
                reply.set_result(header["data"])
        elif kind == "welcome":
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

    def _resubmit(self, restarted: bool) -> None:
        """Submit again every task we have no result for (the broker forgot us). After a
        broker restart, a task meant for one worker fails instead: worker ids are the old
        broker's, and the new one may give the same id to another process."""
        with self._lock:   # pending tasks still in the outbox would go twice
            self._outbox = collections.deque(x for x in self._outbox if x[0] != "task")
            pinned = {k: spec[3] for k, (spec, _) in self._pending.items() if restarted and spec[3]}
            self._outbox.extend(("task", spec, frames) for k, (spec, frames)
                                in self._pending.items() if k not in pinned)
        for key, target in pinned.items():
            self._on_result(key, "lost", [], {"lost_on": [target], "why": (
                "the broker restarted, and worker ids do not carry over to the new one")})
        os.write(self._wake_w, b"x")

    def _on_result(self, key: int, status: str, frames: list, info: dict) -> None:
        with self._lock:
            fut = self._futures.pop(key, None)
            self._pending.pop(key, None)
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
                fut._settle(serialize.loads(frames, self._shm, remove=True))
            elif status == "err":
                fut._settle(error=tracebacks.rebuild(serialize.loads(frames)))
            elif status == "lost":
                lost_on = [str(w) for w in info.get("lost_on", [])]
                pids = info.get("pids") or [None] * len(lost_on)
                why = info.get("why") or f"its worker was lost {len(lost_on)} time(s)"
                where = "; ".join(f"{w}: {self.exit_reason(pid) or 'stopped answering'}"
                                  if self.exit_reason else w for w, pid in zip(lost_on, pids))
                fut._settle(error=WorkerLost(f"task {key} failed: {why} ({where})", lost_on))
            else:
                fut._settle(error=TaskCancelled(f"task {key} was cancelled"))
        except Exception as e:  # e.g. the result needs a module this process cannot import
            fut._settle(error=NBClusterError(f"cannot unpickle the result of task {key}: {e!r}"))

    def _release_shm(self, key: int) -> None:
        """Remove the shared-memory files of a task's arguments (it is over)."""
        for name in self._shm_files.pop(key, ()):
            self._shm.remove(name)

    @property
    def _local_shm(self) -> SharedMemory | None:
        """Shared memory for arguments, when the broker (hence local workers) is on this host."""
        return self._shm if self.local else None

    # ---- closing ----------------------------------------------------------------------------
    def close(self) -> None:
        """Say goodbye to the broker (it drops our queued tasks) and cancel pending futures."""
        if self._closed:
            return
        self._closed = True
        os.write(self._wake_w, b"x")
        self._thread.join(5)
        for fut in list(self._futures.values()):
            fut._cancel_locally()
        self._futures.clear()
        self._pending.clear()
        for key in list(self._shm_files):
            self._release_shm(key)
        if self._callbacks is not None:
            self._callbacks.shutdown(wait=False)
        os.close(self._wake_r)
        os.close(self._wake_w)

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
    """The results of map chunk futures in input order, or one RemoteErrorGroup of all failures."""
    results: list = []
    errors: list = []
    for fut in futures:
        try:
            out = fut.result()
        except (WorkerLost, TaskCancelled) as e:
            errors.append(e)
            continue
        if isinstance(out, ChunkFailures):
            for index, item, data in out.errors:
                err = tracebacks.rebuild(data)
                err.index, err.item = index, item
                errors.append(err)
            out = out.results
        results.extend(out)
    if errors:
        raise RemoteErrorGroup(summarize_failures(errors, n_items, "elements"), errors)
    return results


def _picklable(obj) -> bool:
    try:
        serialize.dumps(obj)
        return True
    except Exception:
        return False


def connect(path_or_url: str = "~/.nbcluster/cluster.json", key: bytes | str | None = None,
            timeout: float = CONNECT_TIMEOUT_S) -> Client:
    """A Client for a running cluster, from its connection file or a tcp:// / ipc:// URL.

    Args:
        path_or_url: a connection file, or the broker's endpoint (then `key` is required).
        key: the cluster key (bytes or hex); overrides the connection file's.
    """
    curve = None
    if "://" in path_or_url:
        if key is None:
            raise ValueError("connecting to a URL needs the cluster key: connect(url, key=...)")
        endpoint = path_or_url
    else:
        info = ConnectionInfo.read(path_or_url)
        endpoint, key = info.best_endpoint(), key if key is not None else info.key
        curve = info.curve
    if isinstance(key, str):
        key = bytes.fromhex(key)
    return Client(endpoint, key, timeout=timeout, curve=curve)
