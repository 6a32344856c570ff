"""A worker's I/O thread: registration, heartbeats, cancellation, output, give-backs.

    broker ◄─hello/hb/output/started/giveback── control socket ─ I/O thread
    broker ──welcome/hb/cancel/stop/given─────► control socket ─┘

It has a socket of its own (ZeroMQ sockets are not shared between threads), so it heartbeats
even while a task holds the main thread. It registers (and registers again, resuming its
registration, when the broker goes quiet or forgets it), interrupts the running task when
it is cancelled, sends captured stdout/stderr of a running task every OUTPUT_FLUSH_S (the
task thread sends the rest just before the result), tells the client when a task has run
STARTED_NOTE_S, and, when the running task turns out long, gives back the tasks prefetched
behind it so idle workers take them. It exits the process: asked to leave, or its
supervisor gone.
"""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import select
import signal
import threading
import time
from typing import Any

import zmq

from .. import runtime
from ..errors import ProtocolError
from ..version import __version__
from ..wire import message_limit, protocol
from ..wire.transport import dealer, pending_messages
from .procinfo import group_members
from .state import EXIT_ASKED_TO_LEAVE, LONG_TASK_S, WorkerState

__all__ = ["IOThread"]

log = logging.getLogger("nbcluster.worker")

STARTED_NOTE_S = 0.02       # a task still running after this long is reported as started
OUTPUT_FLUSH_S = 0.05       # captured output is sent at most this often (and at task end)
_MAX_ATTEMPTS = 16          # a cancelled task is skipped whatever attempt it arrives as
MAX_RETRY_S = 60.0          # a silent broker is asked again after 2x, 4x... the expiry, up to this


class IOThread(WorkerState):
    """What a worker's I/O thread does (see the module doc); `leave` asks it to go."""

    ctl: zmq.Socket          # the control socket, made by the I/O thread (sockets stay in theirs)
    heartbeat_s: float       # as the broker's welcome says
    expiry_s: float

    def _ask_io(self, stop: bool = False) -> None:
        self.stopping |= stop
        os.write(self._wake_w, b"x")

    def leave(self) -> None:
        """Tell the broker we are going (it queues our tasks again) and exit."""
        self._ask_io(stop=True)

    def _io_loop(self) -> None:
        try:
            self._io()
        except BaseException:
            log.exception("worker I/O thread failed")
        finally:
            os._exit(0)

    def _io(self) -> None:
        self.ctl = dealer(self.ctx, self.endpoint, self.task_identity + b"/ctl", self.curve)
        poller = zmq.Poller()
        poller.register(self.ctl, zmq.POLLIN)
        poller.register(self._wake_r, zmq.POLLIN)
        if self.watch_stdin:
            poller.register(0, zmq.POLLIN)
        self.heartbeat_s, self.expiry_s = 1.0, 3.0
        self._hello()
        last_heard = last_sent = time.monotonic()
        tries, next_try = 0, last_heard + self.expiry_s   # registering again while unheard
        while True:
            now = time.monotonic()
            deadlines = [last_sent + self.heartbeat_s, next_try]
            with self.lock:   # the main thread changes the running task under this lock
                tag = self.current_tag
                if tag is not None:
                    if self.output.items:
                        deadlines.append(now + OUTPUT_FLUSH_S)
                    if self.gave_back_for != tag[0]:
                        deadlines.append(self.started_at + LONG_TASK_S)
                    if self.reported_start != tag:
                        deadlines.append(self.started_at + STARTED_NOTE_S)
                wait = max(0.0, min(deadlines) - now)
                # A task starting while we sleep this long wakes us (see _run_one).
                self.io_sleeping = wait > STARTED_NOTE_S
            events = dict(poller.poll(int(wait * 1000)))   # as pyzmq would round it
            now = time.monotonic()
            if self.watch_stdin and 0 in events and not _stdin_open():
                _end_with_our_group()   # our parent (the supervisor) is gone
            if self._wake_r in events:
                os.read(self._wake_r, 4096)
                if self.stopping:
                    self._send(self.ctl, {"t": "bye"})
                    time.sleep(0.1)   # let ZeroMQ's I/O thread put it on the wire
                    os._exit(EXIT_ASKED_TO_LEAVE)
            # Read the socket whatever woke us: a poll that returned for the wake pipe, then
            # waited for the GIL while a task held it in C, finds the broker's heartbeats
            # here, not in `events`; unread, they would look like a silent broker.
            heard = False
            for frames in pending_messages(self.ctl):
                heard = True
                self._on_control_message(frames)
            if heard:   # after reading: a welcome sets expiry_s (3x longer when supervised)
                last_heard, tries, next_try = now, 0, now + self.expiry_s
            while self.debug_outbox:
                self._send(self.ctl, self.debug_outbox.popleft())
            if self.current_tag is not None and self.output.items:
                items = self.output.take()
                if items:
                    self._send(self.ctl, {"t": "output", "items": items})
            self._maybe_report_start(now)
            self._maybe_give_back(now)
            if now >= next_try:   # silent broker: try again, less and less often
                tries += 1
                backoff = min(self.expiry_s * 2 ** tries, MAX_RETRY_S)
                never = self.id == "?"   # never welcomed: maybe nothing runs there at all
                log.warning("%s at %s for %.0f s%s: registering again (next try in %.0f s)",
                            "no broker has answered" if never else "no word from the broker",
                            self.endpoint, now - last_heard, " (is the cluster running, and is "
                            "this its address?)" if never else "", backoff)
                self._hello()
                next_try = now + backoff
            if now - last_sent >= self.heartbeat_s:
                self._check_credit()
                load = _load_info()
                self.kept.expire(now, load.get("rss"))
                self._send(self.ctl, {"t": "hb", "info": {
                    **load, "credit_heals": self.credit_heals, "kept": len(self.kept),
                    "hellos": self.session}})   # more than 1: it thought the broker lost
                last_sent = now

    def _hello(self) -> None:
        """Register, or register again: then we name our registration (`resume`) and the
        task we run (`running`). The broker resumes the registration if it still holds it,
        else makes a new one that keeps that task if nobody else has it (welcome `kept`).
        Until the welcome, no task of the old registration starts (see _ours)."""
        with self.lock:
            self.registered = False
            self.session += 1
            hello = {"t": "hello", "role": "worker", "labels": self.labels, "slots": self.slots,
                     "task_identity": self.task_identity, "session": self.session,
                     "running": [list(self.current_tag)] if self.current_tag else [], **self.info}
            if self.registration is not None:
                hello["resume"] = list(self.registration)
        self._send(self.ctl, hello)

    def _welcome(self, header: dict[str, Any]) -> None:
        """The welcome of our latest hello (call under the lock). Resumed: our registration
        and ledger go on. Else (or resumed, but a registration whose welcome we never read)
        a new ledger starts, holding the tasks the broker kept for us:
        the one still running counts in it; one that ended meanwhile is given back (refetch)
        as its result may have reached the broker before our hello, and been dropped."""
        self.registered = True
        self.given_arrived.notify_all()   # tasks waiting to know whether they are still ours
        ledger = header.get("ledger", self.session)
        if header.get("resumed") and ledger == self.ledger:
            return
        self.registration = (self.id, header.get("epoch"))
        self.ledger = ledger
        self.granted = self.done = 0
        self.cancelled.clear()
        self.awaiting_given = False   # a given for the old registration came before, or never
        for tag in header.get("kept", []):
            if tuple(tag) == self.current_tag:
                self.running_ledger = self.ledger
                self.granted += 1
            else:
                self.to_release.append(tag)

    def _on_control_message(self, frames: list[Any]) -> None:
        if protocol.is_denied(frames) and not self.registered:
            log.error("the broker at %s rejected our key: check the cluster key", self.endpoint)
            os._exit(2)
        try:
            header, _payload = protocol.decode(self.signer, frames, max_bytes=None)
        except ProtocolError as e:
            log.warning("dropped a message: %s", e)
            return
        kind = header["t"]
        if kind == "cancel":
            with self.lock:
                for gid in header["ids"]:
                    if self.current_tag and self.current_tag[0] == gid:
                        self.interrupting = True
                        self.interrupt_tag = self.current_tag
                        # A real signal, so a blocking call (sleep, I/O) is interrupted too.
                        main_thread = threading.main_thread().ident
                        assert main_thread is not None   # it runs: it is this process
                        signal.pthread_kill(main_thread, signal.SIGINT)
                    else:
                        self.cancelled.update((gid, a) for a in range(_MAX_ATTEMPTS))
        elif kind == "stop":
            with self.lock:
                self.draining, self.leave_status = True, EXIT_ASKED_TO_LEAVE
            os.write(self._registered_w, b"x")   # wakes the main thread if it is idle
        elif kind == "given":
            with self.lock:
                self.cancelled.update(tuple(x) for x in header["ids"])
                self.granted -= header.get("dropped", 0)
                self.awaiting_given = False
                self.given_arrived.notify_all()
            # The voided credit must be asked for again once we are free: if the task we kept
            # has ended already (cancelled, or quick), no finished task will ask for us and we
            # would sit idle forever. The main thread tops up when it is between tasks.
            os.write(self._registered_w, b"x")
        elif kind == "welcome":
            if header.get("session") != self.session:
                return   # the answer to an earlier hello: the broker drops that registration
            self.fresh.welcomed(header)   # before the main thread sends, below
            self.id = header.get("id", self.id)
            runtime.WORKER.update(id=self.id, **self.info)
            self.heartbeat_s = header["heartbeat_ms"] / 1000
            self.expiry_s = self.heartbeat_s * header["liveness"]
            self.max_message_bytes = message_limit.limit_from_welcome(header)
            with self.lock:
                self._welcome(header)
            os.write(self._registered_w, b"x")   # the main thread asks for work
        elif kind == "refused":   # our hello, for our clock: we try again (backoff) meanwhile
            log.error("the broker at %s refused our hello: %s", self.endpoint, header.get("why"))
        elif kind == "reconnect" and self.registered:   # once, not once per message in flight
            self._hello()
        elif kind == "debug":   # a client's debugger session (debugger.py)
            self.debug.on_message(header)

    def _maybe_report_start(self, now: float) -> None:
        """The running task has run STARTED_NOTE_S: tell its client (through the broker) that
        it started, so its future is RUNNING. Shorter tasks are never reported: no message
        on the hot path."""
        with self.lock:
            tag = self.current_tag
            if tag is None or self.reported_start == tag or now - self.started_at < STARTED_NOTE_S:
                return
            self.reported_start = tag
        self._send_held()
        self._send(self.ctl, {"t": "started", "items": [list(tag)]})

    def _send_held(self) -> None:
        """Send the results held while a task runs on (see held_items), on the control
        socket, after their output. They ask for no credit: the task socket does that (a
        `ready` after a `giveback` would bring tasks to wait behind the long task)."""
        with self.lock:
            items, frames, epoch = self._take_held()
        if not items:
            return
        output = self.output.take()
        if output:
            self._send(self.ctl, {"t": "output", "items": output})
        self._send(self.ctl, {"t": "done", "e": epoch, "items": items, "ready": 0}, frames)

    def _check_credit(self) -> None:
        """Safety net, checked every heartbeat: idle for a whole heartbeat with less credit
        out than our window means no finished task will ever ask for more (a bug: the
        ledger lost track). Ask again, say so in the log and count it (`credit_heals` in
        the heartbeat's info, so tests and `nbcluster status` see it)."""
        with self.lock:
            probe = (self.session, self.granted, self.done)
            short = self.registered and self.current_tag is None and \
                self.granted - self.done < self._window()
            stuck = short and probe == self._credit_probe
            self._credit_probe = probe if short else None
        if stuck:
            self.credit_heals += 1
            log.warning("idle with credit %d below our window %d: asking again (a bug in "
                        "credit accounting; please report it)", probe[1] - probe[2], self._window())
            os.write(self._registered_w, b"x")   # the main thread tops up

    def _maybe_give_back(self, now: float) -> None:
        """The running task is long: hand back the tasks prefetched behind it."""
        with self.lock:
            tag = self.current_tag
            if tag is None or self.gave_back_for == tag[0] or now - self.started_at < LONG_TASK_S \
                    or not self.registered:   # registering again: its `given` might not come
                return
            self.gave_back_for = tag[0]
            self.task_time = max(self.task_time or 0.0, LONG_TASK_S)   # stop prefetching
            holding = self.granted - self.done > 1
            self.awaiting_given |= holding
        if holding:
            self._send_held()   # first: the tasks that have run are not to be handed back
            self._send(self.ctl, {"t": "giveback", "keep": tag[0]})


def _end_with_our_group() -> None:
    """Exit with status 0, killing whatever we forked, if we lead our process group (a
    supervisor starts us so, and kills the group when we end; with the supervisor itself
    gone, nobody else would). A worker started otherwise shares its parent's group: it
    exits alone."""
    me = os.getpid()
    if os.getpgid(0) == me:
        for pid in group_members(me):
            if pid != me:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
    os._exit(0)


def _stdin_open() -> bool:
    try:
        return bool(os.read(0, 4096)) if select.select([0], [], [], 0)[0] else True
    except OSError:
        return False


def _load_info() -> dict[str, Any]:
    """Memory (RSS bytes) and CPU seconds of this process, for the worker list."""
    info: dict[str, Any] = {"cpu_s": round(sum(os.times()[:2]), 3), "time": time.time(),
                            "python": platform.python_version(), "version": __version__}
    try:
        with open("/proc/self/statm") as f:
            info["rss"] = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        pass
    return info
