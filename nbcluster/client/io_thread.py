"""The client's I/O thread: the one thread that owns the DEALER socket to the broker.

    user threads ── _outbox.append + _wake() ──► wake pipe ─┐
                                                            ▼
        poll(socket, wake pipe, heartbeat due) ── _flush_outbox ──► broker
                  │                          ── "hb" every heartbeat_s ──►
                  └── _drain: decode, verify ── _on_message (inbox.py) ◄── broker

Sending: what accumulated in the outbox goes in order, small tasks together in one
"submit" message (up to SUBMIT_BATCH_BYTES or the broker's limit), a big task alone (the
broker forwards its frames zero-copy), each function payload with the first task that
needs it (once per broker session). Receiving: each message is checked (signature, format)
and handed to the inbox. A broker silent past broker_timeout fails every pending task with
BrokerLost. If this thread dies of a bug of ours, `_break` fails every pending future,
reply and later call at once, so nothing waits for a result that cannot come.

A mixin of `Client`: the state it shares with the rest of the client is declared below.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import zmq

from ..errors import AuthenticationError, NBClusterError, ProtocolError
from ..wire import message_limit, protocol, serialize
from ..wire.freshness import Freshness
from ..wire.transport import pending_messages, send_frames
from .inbox import caused

if TYPE_CHECKING:
    from ..wire.functions import Prepared
    from .broker_silence import BrokerSilence
    from .futures import TaskFuture
    from .outbox import OutboxItem, PendingTask

__all__ = ["IOThread", "SUBMIT_BATCH_BYTES", "MAX_TASKS_PER_SUBMIT", "BIG_TASK_BYTES"]

log = logging.getLogger("nbcluster.client")

SUBMIT_BATCH_BYTES = 1 << 20    # small tasks are sent together up to this size per message
# and this many: the broker takes each message in < 10 ms, also when every task has a label
# set of its own (1000 such tasks took it 8-24 ms)
MAX_TASKS_PER_SUBMIT = 500
BIG_TASK_BYTES = 64 * 1024      # a task at least this big is sent alone (forwarded zero-copy)


class IOThread:
    """The I/O thread's loop and the sending side of the protocol (a mixin of `Client`)."""

    # Set up by Client.__init__; _lock guards the outbox and the bookkeeping dicts.
    endpoint: str
    signer: protocol.Signer
    host: str
    max_message_bytes: int
    heartbeat_s: float
    expiry_s: float
    sent: dict[str, int]
    _ctx: zmq.Context
    _sock: zmq.Socket
    _wake_r: int
    _wake_w: int
    _lock: threading.Lock
    _outbox: collections.deque[OutboxItem]
    _fns_sent: set[bytes]
    _closed: bool
    _reconnecting: float   # nonzero: said hello again, welcome not read yet (inbox.py)
    _fresh: Freshness      # stamps what we send (made by the I/O thread)
    _broken: NBClusterError | None
    _silence: BrokerSilence
    _welcome: concurrent.futures.Future
    _futures: dict[int, TaskFuture]
    _pending: dict[int, PendingTask]
    _replies: dict[int, concurrent.futures.Future]
    _result_callbacks: dict[int, Callable[[Any], object]]
    _shm_files: dict[int, list[str]]
    # Methods of the Client (client.py) and of the Inbox (inbox.py).
    _release_shm: Callable[[int], None]
    _cancel_remote: Callable[[list[int]], None]
    _on_message: Callable[[dict, list], None]
    _debug_releases: collections.deque[dict]
    _end_debug_sessions: Callable[[str], None]

    def _wake(self) -> None:
        """Wake the I/O thread. Never blocks, so the I/O thread may wake itself: a full pipe
        means a wake-up is pending already."""
        with contextlib.suppress(OSError):   # BlockingIOError: full; or closed: nobody to wake
            os.write(self._wake_w, b"x")

    def _io_loop(self) -> None:
        try:
            self._serve()
        except BaseException as e:
            log.exception("the nbcluster client's I/O thread failed")
            self._break(e)
        with contextlib.suppress(Exception):   # the socket may be what failed
            self._send({"t": "bye"})   # the broker drops our queued tasks
        self._sock.close(linger=100)
        self._ctx.term()

    def _break(self, cause: BaseException) -> None:
        """The I/O thread is dying: fail every pending future, reply and later call."""
        error = caused(NBClusterError(
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
        self._fresh = Freshness()
        poller = zmq.Poller()
        poller.register(self._sock, zmq.POLLIN)
        poller.register(self._wake_r, zmq.POLLIN)
        self._hello()
        last_heard = last_sent = time.monotonic()   # last_heard: of the warning below
        while not self._closed:
            timeout = max(0.0, last_sent + self.heartbeat_s - time.monotonic())
            events = dict(poller.poll(int(timeout * 1000)))   # as pyzmq would round it
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
        self._end_debug_sessions("the broker is lost")
        for fut in futures:
            fut._settle(error=self._silence.lost_error(f"task {fut.key}", now))
        for reply in replies:
            if not reply.done():
                reply.set_exception(TimeoutError())   # _request says what and why

    def _send(self, header: dict, payload: list | tuple = ()) -> None:
        header = self._fresh.stamp(header)   # replay protection (wire/freshness.py)
        send_frames(self._sock, protocol.encode(self.signer, header, payload))

    def _hello(self) -> None:
        self._send({"t": "hello", "role": "client", "host": self.host, "pid": os.getpid()})

    def _flush_outbox(self) -> bool:
        """Send what the outbox holds, in order: small tasks together (up to
        MAX_TASKS_PER_SUBMIT or SUBMIT_BATCH_BYTES a message), a big one alone, each function
        payload the broker does not have yet with the first task that needs it."""
        if self._reconnecting:   # a new registration is on its way: what we sent now would
            return False         # carry the old one's nonce, and be dropped (see _drain)
        while self._debug_releases:   # see Debugging._debug_release
            self._send(self._debug_releases.popleft())
        with self._lock:
            items, self._outbox = self._outbox, collections.deque()
        specs: list = []
        frames: list = []
        fns: list[Prepared] = []
        size = 0
        for item in items:
            if isinstance(item, dict):   # a control message
                self._send_tasks(specs, frames, fns, size)
                specs, frames, fns, size = [], [], [], 0
                self._send(item)
                if item["t"] == "cancel":
                    self._count_items(len(item["ids"]))
                continue
            spec, payload, fn = item
            new_fn = fn.digest not in self._fns_sent
            if new_fn:
                self._fns_sent.add(fn.digest)
            nbytes = serialize.nbytes(payload)
            adds = nbytes + (fn.nbytes if new_fn else 0)
            if specs and (len(specs) >= MAX_TASKS_PER_SUBMIT or nbytes >= BIG_TASK_BYTES or
                          size + adds + message_limit.HEADROOM_BYTES > self.max_message_bytes):
                self._send_tasks(specs, frames, fns, size)
                specs, frames, fns, size = [], [], [], 0
            specs.append(spec)
            frames += payload
            size += adds
            if new_fn:
                fns.append(fn)
            if size >= SUBMIT_BATCH_BYTES or nbytes >= BIG_TASK_BYTES:   # a big task goes alone
                self._send_tasks(specs, frames, fns, size)
                specs, frames, fns, size = [], [], [], 0
        self._send_tasks(specs, frames, fns, size)
        return bool(items)

    def _send_tasks(self, specs: list, frames: list, fns: list[Prepared], size: int) -> None:
        """One "submit" message: these tasks, with the functions the broker does not have."""
        if not specs:
            return
        header: dict[str, Any] = {"t": "submit", "tasks": specs}
        fn_bytes = 0
        if fns:
            header["fns"] = [[fn.digest, len(fn.frames)] for fn in fns]
            fn_bytes = sum(fn.nbytes for fn in fns)
        self._send(header, [*(f for fn in fns for f in fn.frames), *frames])
        self._count_items(len(specs))
        self.sent["tasks"] += len(specs)
        self.sent["task_bytes"] += size - fn_bytes
        self.sent["functions"] += len(fns)
        self.sent["function_bytes"] += fn_bytes

    def _count_items(self, n: int) -> None:
        """A submit or cancel message of n tasks went."""
        if n > self.sent["most_in_a_message"]:
            self.sent["most_in_a_message"] = n

    def _refused(self, why: str) -> None:
        error = AuthenticationError(f"the broker at {self.endpoint} refused our hello: {why}")
        if not self._welcome.done():
            self._welcome.set_exception(error)
        else:
            log.error("%s", error)

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
                if header["t"] == "welcome":   # our session nonce; then what we held goes
                    self._fresh.welcomed(header)
                elif header["t"] == "refused":   # our hello: our clock is far from the broker's
                    self._refused(str(header.get("why")))
                    continue
                self._on_message(header, payload)
            except ProtocolError as e:
                log.warning("dropped a message from the broker: %s", e)
