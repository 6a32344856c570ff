"""A worker process: pulls tasks from the broker and runs them.

    broker ──run/cancel/hb──► I/O thread ──SimpleQueue──► main thread: fn(*args, **kwargs)
    broker ◄─ready/done/output/hb── I/O thread ◄──deque + wake pipe── results, captured output

Two threads. The I/O thread owns the only socket: it heartbeats even while a task holds the
main thread, asks for work (`ready n`: free slots plus a prefetch sized so short tasks never
wait a round trip), batches results, flushes captured stdout/stderr every OUTPUT_FLUSH_S
(before the result of the task that printed), and interrupts the running task when it is
cancelled. The main thread only runs tasks, so user code sees a normal main thread.
"""

from __future__ import annotations

import collections
import logging
import os
import queue
import select
import signal
import socket
import sys
import threading
import time
from typing import Any

import zmq

from . import protocol, serialize, tracebacks
from .errors import ProtocolError

__all__ = ["Worker", "main"]

log = logging.getLogger("nbcluster.worker")

PREFETCH_TARGET_S = 0.005   # hold enough queued tasks to cover this much work...
MAX_PREFETCH = 64           # ...but never more than this many
LONG_TASK_S = 0.02          # a worker whose tasks take longer than this prefetches none
OUTPUT_FLUSH_S = 0.05       # captured output is sent at most this often (and at task end)
OUTPUT_CHUNK_MAX = 256 * 1024
BIG_RESULT_BYTES = 64 * 1024


class _Output:
    """Captured task output waiting to be sent: [gid, attempt, stream, text] items."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.items: list[list] = []
        self.size = 0
        self.dropped = 0

    def add(self, tag: tuple, stream: str, text: str) -> None:
        with self.lock:
            if self.size > OUTPUT_CHUNK_MAX:
                self.dropped += len(text)
                return
            if self.items and self.items[-1][:3] == [*tag, stream]:
                self.items[-1][3] += text
            else:
                self.items.append([*tag, stream, text])
            self.size += len(text)

    def take(self) -> list[list]:
        with self.lock:
            items, self.items, self.size = self.items, [], 0
            if self.dropped and items:
                items[-1][3] += f"\n[nbcluster: {self.dropped} characters of output dropped]\n"
                self.dropped = 0
            return items


class _TaskStream:
    """sys.stdout/sys.stderr while a task runs: text goes to the client, tagged with the task."""

    def __init__(self, worker: "Worker", name: str, real):
        self._worker, self._name, self._real = worker, name, real
        self.encoding = getattr(real, "encoding", "utf-8")

    def write(self, text: str) -> int:
        tag = self._worker.current_tag
        if tag is None:
            return self._real.write(text)
        self._worker.output.add(tag, self._name, str(text))
        return len(text)

    def flush(self) -> None:
        if self._worker.current_tag is None:
            self._real.flush()

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        return self._real.fileno()


class Worker:
    """A worker connected to the broker at `endpoint` with cluster `key`."""

    def __init__(self, endpoint: str, key: bytes, labels: list[str] | None = None,
                 slots: int = 1, watch_stdin: bool = False):
        self.endpoint, self.labels, self.slots = endpoint, sorted(labels or []), slots
        self.signer = protocol.Signer(key)
        self.watch_stdin = watch_stdin
        self.id = "?"
        self.info = {"host": socket.gethostname(), "pid": os.getpid()}
        self.tasks: queue.SimpleQueue = queue.SimpleQueue()
        self.results: collections.deque = collections.deque()
        self.output = _Output()
        self.functions = serialize.FunctionCache()
        self.current_tag: tuple | None = None
        self._current_lock = threading.Lock()
        self._wake_r, self._wake_w = os.pipe()
        self.epoch = 0                # bumped when the broker forgets us; older tasks are dropped
        self.task_time = None         # moving average of task durations (s)
        self.cancelled: set[tuple] = set()   # (gid, attempt) not to run: cancelled or given back
        self.unstarted: dict[int, int] = {}  # gid -> attempt of tasks received, not yet started
        self.started_at = 0.0                # when the running task started (monotonic)
        self.interrupting = False     # the I/O thread interrupted the main thread to cancel
        self.stopping = False

    # ---- main thread ----------------------------------------------------------------------
    def run(self) -> None:
        """Start the I/O thread and run tasks until stopped."""
        sys.stdout = _TaskStream(self, "stdout", sys.__stdout__)
        sys.stderr = _TaskStream(self, "stderr", sys.__stderr__)
        threading.Thread(target=self._io_loop, name="nbcluster-io", daemon=True).start()
        while True:
            item = self.tasks.get()
            if item is None:
                return
            try:
                self._run_one(*item)
            except KeyboardInterrupt:
                if not self.interrupting:  # a real Ctrl-C, not a cancel that arrived late
                    raise
            self.interrupting = False

    def _run_one(self, epoch: int, gid: int, attempt: int, frames: list) -> None:
        with self._current_lock:
            skip = epoch != self.epoch or (gid, attempt) in self.cancelled
            self.cancelled.discard((gid, attempt))
            if not skip and self.unstarted.get(gid) == attempt:
                del self.unstarted[gid]
            if not skip:
                self.current_tag = (gid, attempt)
                self.started_at = time.monotonic()
        if skip:
            return self._post(epoch, gid, attempt, None, [], {})
        start = time.perf_counter()
        status, payload = "ok", []
        try:
            try:
                fn = self.functions.load(frames[0])
                args, kwargs = serialize.loads(frames[1:])
                result = fn(*args, **kwargs)
            finally:
                with self._current_lock:
                    self.current_tag = None
            try:
                payload = serialize.dumps(result)
            except Exception as e:
                raise TypeError(f"the result ({serialize.describe(result)}) cannot be pickled: "
                                f"{e}") from e
        except BaseException as e:  # noqa: BLE001 - any failure of user code is the task's result
            status = "err"
            payload = serialize.dumps(tracebacks.capture(e, skip=1))
        elapsed = time.perf_counter() - start
        self._post(epoch, gid, attempt, status, payload, {"s": elapsed})

    def _post(self, epoch, gid, attempt, status, payload, info) -> None:
        self.results.append((epoch, gid, attempt, status, payload, info))
        os.write(self._wake_w, b"x")

    # ---- I/O thread -----------------------------------------------------------------------
    def _io_loop(self) -> None:
        try:
            self._io()
        except BaseException:  # noqa: BLE001
            log.exception("worker I/O thread failed")
        finally:
            os._exit(0)

    def _io(self) -> None:
        ctx = zmq.Context(io_threads=1)
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, 0)
        sock.setsockopt(zmq.RCVHWM, 0)
        sock.connect(self.endpoint)
        self.sock = sock
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(self._wake_r, zmq.POLLIN)
        if self.watch_stdin:
            poller.register(0, zmq.POLLIN)
        heartbeat_s, expiry_s = 1.0, 3.0
        self._hello()
        last_heard = last_sent = time.monotonic()
        while True:
            now = time.monotonic()
            timeout = max(0.0, min(last_sent + heartbeat_s, last_heard + expiry_s) - now)
            if self.output.items:
                timeout = min(timeout, OUTPUT_FLUSH_S)
            if self.unstarted and self.current_tag:
                timeout = min(timeout, max(0.0, self.started_at + LONG_TASK_S - now))
            events = dict(poller.poll(timeout * 1000))
            now = time.monotonic()
            if self.watch_stdin and 0 in events and not _stdin_open():
                os._exit(0)  # our parent (LocalCluster) is gone
            if self._wake_r in events:
                os.read(self._wake_r, 65536)
                if self.stopping:
                    self._send({"t": "bye"})
                    os._exit(0)
                self._send_results()
                last_sent = now
            if sock in events:
                while True:
                    try:
                        frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
                    except zmq.Again:
                        break
                    last_heard = now
                    settings = self._on_message(frames)
                    if settings:
                        heartbeat_s, expiry_s = settings
            if self.output.items:
                self._send_output()
            if self.unstarted and self.current_tag and now - self.started_at >= LONG_TASK_S:
                self._give_back()
            if now - last_heard > expiry_s:
                log.warning("no word from the broker for %.1f s: registering again", expiry_s)
                self._hello()
                last_heard = now
            if now - last_sent >= heartbeat_s:
                self._send({"t": "hb", "info": _load_info()})
                last_sent = now

    def _send(self, header: dict, payload: list = ()) -> None:
        self.sock.send_multipart(protocol.encode(self.signer, header, payload), copy=False)

    def _hello(self) -> None:
        self.epoch += 1
        self.unstarted.clear()
        self.granted = self.done = 0
        self.registered = False
        self._send({"t": "hello", "role": "worker", "labels": self.labels, "slots": self.slots,
                    **self.info})

    def _on_message(self, frames) -> tuple | None:
        if [bytes(f) for f in frames[:3]] == protocol.DENIED and not self.registered:
            log.error("the broker at %s rejected our key: check the cluster key", self.endpoint)
            os._exit(2)
        try:
            header, payload = protocol.decode(self.signer, frames)
        except ProtocolError as e:
            log.warning("dropped a message: %s", e)
            return None
        kind = header["t"]
        if kind == "run" and self.registered:
            pos = 0
            for gid, attempt, nframes in header["tasks"]:
                self.unstarted[gid] = attempt
                self.tasks.put((self.epoch, gid, attempt, payload[pos:pos + nframes]))
                pos += nframes
        elif kind == "cancel":
            with self._current_lock:
                for gid in header["ids"]:
                    if self.current_tag and self.current_tag[0] == gid:
                        self.interrupting = True
                        # A real signal, so a blocking call (sleep, I/O) is interrupted too.
                        signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)
                    elif gid in self.unstarted:
                        self.cancelled.add((gid, self.unstarted.pop(gid)))
        elif kind == "welcome":
            self.id = header.get("id", self.id)
            tracebacks.WORKER.update(id=self.id, **self.info)
            self.registered = True
            self._top_up()
            return header["heartbeat_ms"] / 1000, header["heartbeat_ms"] * header["liveness"] / 1000
        elif kind == "reconnect":
            self._hello()
        return None

    def _give_back(self) -> None:
        """The running task is long: return the prefetched tasks so idle workers take them."""
        with self._current_lock:
            items = [[gid, attempt] for gid, attempt in self.unstarted.items()]
            self.cancelled.update((gid, attempt) for gid, attempt in items)
            self.unstarted.clear()
        self.task_time = max(self.task_time or 0.0, LONG_TASK_S)  # stop prefetching for now
        self._send({"t": "giveback", "ids": items})

    def _window(self) -> int:
        t = self.task_time
        if t is None or t >= LONG_TASK_S:
            return self.slots
        return self.slots + min(MAX_PREFETCH, int(PREFETCH_TARGET_S / max(t, 1e-6)))

    def _top_up(self, extra: dict | None = None) -> None:
        n = self._window() - (self.granted - self.done)
        if n > 0:
            self.granted += n
        if extra is not None:
            extra["ready"] = max(n, 0)
        elif n > 0:
            self._send({"t": "ready", "n": n})

    def _send_results(self) -> None:
        if self.output.items:
            self._send_output()
        items, frames = [], []
        while self.results:
            epoch, gid, attempt, status, payload, info = self.results.popleft()
            if epoch != self.epoch:
                continue
            self.done += 1
            if status is None:
                continue
            s = info.get("s", 0.0)
            self.task_time = s if self.task_time is None else 0.8 * self.task_time + 0.2 * s
            if sum(memoryview(f).nbytes for f in payload) >= BIG_RESULT_BYTES:
                self._send({"t": "done", "items": [[gid, attempt, status, len(payload), info]]},
                           payload)
                continue
            items.append([gid, attempt, status, len(payload), info])
            frames += payload
        header = {"t": "done", "items": items}
        self._top_up(header)
        if items or header["ready"]:
            self._send(header, frames)

    def _send_output(self) -> None:
        items = self.output.take()
        if items:
            self._send({"t": "output", "items": items})

    def leave(self) -> None:
        """Ask the I/O thread to tell the broker we are going (it queues our tasks again) and exit."""
        self.stopping = True
        os.write(self._wake_w, b"x")


def _stdin_open() -> bool:
    try:
        return bool(os.read(0, 4096)) if select.select([0], [], [], 0)[0] else True
    except OSError:
        return False


def _load_info() -> dict[str, Any]:
    """Memory (RSS bytes) and CPU seconds of this process, for the worker list."""
    info: dict[str, Any] = {"cpu_s": round(sum(os.times()[:2]), 3)}
    try:
        with open("/proc/self/statm") as f:
            info["rss"] = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        pass
    return info


def main(argv: list[str] | None = None) -> None:
    """`python -m nbcluster.worker --connect ENDPOINT|FILE`; the key comes from $NBCLUSTER_KEY
    or the connection file."""
    import argparse

    from .connection import ConnectionInfo, key_from_env

    p = argparse.ArgumentParser(prog="nbcluster worker")
    p.add_argument("--connect", required=True, help="broker endpoint or connection file")
    p.add_argument("--labels", default="", help="comma-separated labels, e.g. gpu,bigmem")
    p.add_argument("--slots", type=int, default=1)
    p.add_argument("--watch-stdin", action="store_true", help="exit when stdin closes")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.__stderr__,
                        format="nbcluster worker %(asctime)s %(levelname)s %(message)s")
    if "://" in args.connect:
        endpoint, key = args.connect, key_from_env()
    else:
        info = ConnectionInfo.read(args.connect)
        endpoint, key = info.best_endpoint(), info.key
    worker = Worker(endpoint, key, [x for x in args.labels.split(",") if x], args.slots,
                    watch_stdin=args.watch_stdin)
    signal.signal(signal.SIGTERM, lambda *_: worker.leave())
    signal.signal(signal.SIGINT, signal.default_int_handler)  # cancelling a task needs it
    try:
        worker.run()
    except KeyboardInterrupt:
        worker.leave()
        time.sleep(5)  # the I/O thread exits the process once it has said bye


if __name__ == "__main__":
    main()
