"""What the broker tells a client, handled on the client's I/O thread.

    "results"   settle futures: a value (after its result callback, if any, on the
                callbacks thread), a RemoteError, WorkerLost, MemoryLimitExceeded, or
                TaskCancelled; a result for no task of ours is counted and dropped
    "output"    stdout/stderr/display lines, appended to `fut.output` (and `on_output`)
    "started"   the task runs on a worker: its future becomes RUNNING
    "refetch"   the broker dropped some functions: send those tasks again, with them
    "hb"        how many workers there are (and on this host)
    "reply"     the answer to a status query or stop request
    "welcome"   registered: the broker's limits and heartbeat; after a reconnect, every task
                we have no result for goes again (`_resubmit`)
    "reconnect" the broker forgot us (it restarted, or we were silent): say hello again

User code run here (an `on_output` handler, unpickling a result) cannot stop the thread:
its failure becomes the failure of its future.

A mixin of `Client`: the state it shares with the rest of the client is declared below.
"""

from __future__ import annotations

import collections
import concurrent.futures
import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from ..errors import MemoryLimitExceeded, NBClusterError, TaskCancelled, WorkerLost
from ..wire import message_limit, remote, serialize
from .english import counted

if TYPE_CHECKING:
    from ..wire.shm import SharedMemory
    from .callbacks import ResultCallbacks
    from .futures import TaskFuture
    from .outbox import OutboxItem, PendingTask

__all__ = ["Inbox", "caused"]

log = logging.getLogger("nbcluster.client")

E = TypeVar("E", bound=BaseException)


class Inbox:
    """Handles each message from the broker (a mixin of `Client`)."""

    # Set up by Client.__init__; _lock guards the outbox and the bookkeeping dicts.
    host: str
    local: bool
    n_workers: int
    max_message_bytes: int
    heartbeat_s: float
    expiry_s: float
    stats: dict[str, int]
    exit_reason: Callable[[int], str | None] | None
    _lock: threading.Lock
    _outbox: collections.deque[OutboxItem]
    _fns_sent: set[bytes]
    _futures: dict[int, TaskFuture]
    _pending: dict[int, PendingTask]
    _result_callbacks: dict[int, Callable[[Any], object]]
    _replies: dict[int, concurrent.futures.Future]
    _cancelling: set[int]
    _callbacks: ResultCallbacks
    _shm: SharedMemory | None
    _workers_here: int | None
    _welcome: concurrent.futures.Future
    _epoch: int | None
    _reconnecting: float
    # Methods of the Client (client.py) and of the IOThread (io_thread.py).
    _wake: Callable[[], None]
    _on_debug_out: Callable[[dict], None]
    _end_debug_sessions: Callable[[str], None]
    _hello: Callable[[], None]
    _release_shm: Callable[[int], None]
    _cancel_remote: Callable[[list[int]], None]

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
                    fut._add_output(stream, text, worker)
                    if fut.on_output is not None:
                        try:
                            fut.on_output(stream, text, worker)
                        except BaseException as e:   # noqa: BLE001 - user code: its task fails
                            handler = serialize.describe(fut.on_output)
                            self._fail_on_client(
                                fut, f"its on_output handler {handler} raised {e!r}", e)
        elif kind == "debug_out":
            self._on_debug_out(header)
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
                        self._outbox.append(entry)
            self._wake()
        elif kind == "hb":
            self.n_workers = header.get("workers", self.n_workers)
            self._workers_here = header.get("here")
        elif kind == "reply":
            rid = header.get("rid")
            reply = self._replies.pop(rid, None) if isinstance(rid, int) else None
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
            if restarted:
                self._end_debug_sessions("the broker restarted: its debugger sessions are gone")
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
        fut._settle(error=caused(NBClusterError(f"task {fut.key} failed on the client: {why}"),
                                 cause))
        self._cancel_remote([fut.key])

    def _resubmit(self, restarted: bool) -> None:
        """Submit again every task we have no result for (the broker forgot us). After a
        broker restart, a task meant for one worker fails instead: worker ids are the old
        broker's, and the new one may give the same id to another process."""
        self._fns_sent.clear()   # a new broker session: it has none of our functions
        with self._lock:   # pending tasks still in the outbox would go twice
            self._outbox = collections.deque(x for x in self._outbox if isinstance(x, dict))
            pinned = {k: spec[3] for k, (spec, _, _) in self._pending.items()
                      if restarted and spec[3]}
            self._outbox.extend(task for k, task in self._pending.items() if k not in pinned)
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
                    self._callbacks.run(fut, callback, value)
            elif status == "err":
                fut._settle(error=remote.rebuild(serialize.loads(frames), client=self))
            elif status == "lost" and info.get("memory"):
                fut._settle(error=_memory_error(key, info))
            elif status == "lost":
                lost_on = [str(w) for w in info.get("lost_on", [])]
                pids = info.get("pids") or [None] * len(lost_on)
                # How each worker ended, as its supervisor told the broker; else as the
                # LocalCluster that started it saw it; else all we know is its silence.
                reasons = info.get("reasons") or [None] * len(lost_on)
                why = info.get("why") or f"its worker was lost {counted(len(lost_on), 'time')}"
                where = "; ".join(f"{w}: " + (reason or (self.exit_reason and self.exit_reason(pid))
                                              or "stopped answering")
                                  for w, pid, reason in zip(lost_on, pids, reasons, strict=False))
                fut._settle(error=WorkerLost(f"task {key} failed: {why} ({where})", lost_on))
            else:
                fut._settle(error=TaskCancelled(f"task {key} was cancelled"))
        except BaseException as e:  # noqa: BLE001 - e.g. the result needs a module this
            # process cannot import, or unpickling it runs code that raises (even SystemExit)
            fut._settle(error=caused(NBClusterError(
                f"cannot unpickle the result of task {key}: {e!r}"), e))


def _memory_error(key: int, info: dict) -> MemoryLimitExceeded:
    """The error of a task whose worker its supervisor killed for passing its memory limit."""
    worker = str((info.get("lost_on") or ["?"])[0])
    return MemoryLimitExceeded(
        f"task {key} failed: its worker {worker} was killed, {info['memory']}; the worker "
        "was replaced. Use less memory per task, or raise the limit: "
        "LocalCluster(memory_limit=...), nbcluster worker/start --memory-limit", worker)


def caused(error: E, cause: BaseException) -> E:
    """error, with cause as its __cause__ (as `raise error from cause` would set it)."""
    error.__cause__ = cause
    return error
