"""A worker process: pulls tasks from the broker and runs them.

    broker ──run──────────────────────► task socket ─► main thread: fn(*args, **kwargs)
    broker ◄─done/ready/final output─── task socket ◄─┘
    broker ◄─hello/hb/output/giveback── control socket ─ I/O thread
    broker ──welcome/hb/cancel/given──► control socket ─┘

Two threads, each with a socket of its own (ZeroMQ sockets are not shared between threads).
The main thread receives tasks and sends their results itself, so a task costs no thread
hand-off. The I/O thread registers, heartbeats even while a task holds the main thread,
interrupts the running task when it is cancelled, sends captured stdout/stderr of a running
task every OUTPUT_FLUSH_S (the main thread sends the rest just before the result), and,
when the running task turns out long, gives back the tasks prefetched behind it so idle
workers take them. Credit (`ready n`) is free slots plus a prefetch sized so short tasks
never wait a round trip.
"""

from __future__ import annotations

import logging
import os
import platform
import select
import signal
import socket
import sys
import threading
import time
from typing import TYPE_CHECKING, Any

import zmq

from ..wire import message_limit, protocol, serialize, tracebacks
from .. import runtime
from .procinfo import group_members
from ..wire.shm import SharedMemory, available as shm_available
from ..wire.transport import dealer, pending_messages
from ..errors import ProtocolError
from ..version import __version__

if TYPE_CHECKING:
    from ..wire.curve import CurveKeys

__all__ = ["Worker", "main"]

log = logging.getLogger("nbcluster.worker")

PREFETCH_TARGET_S = 0.005   # hold enough queued tasks to cover this much work...
MAX_PREFETCH = 64           # ...but never more than this many
LONG_TASK_S = 0.02          # a worker whose tasks take longer than this prefetches none
STARTED_NOTE_S = 0.02       # a task still running after this long is reported as started
OUTPUT_FLUSH_S = 0.05       # captured output is sent at most this often (and at task end)
OUTPUT_CHUNK_MAX = 256 * 1024
BIG_RESULT_BYTES = 64 * 1024
RESULT_BATCH_S = 0.002      # results of tiny tasks are sent together at least this often
_MAX_ATTEMPTS = 16          # a cancelled task is skipped whatever attempt it arrives as
MAX_RETRY_S = 60.0          # a silent broker is asked again after 2x, 4x... the expiry, up to this

# Exit statuses that tell our supervisor why we left (any other status, or a signal, is a
# crash, and a crashed worker is replaced): asked to leave (SIGTERM, `nbcluster stop
# --worker`, Ctrl-C) is not replaced; done `max_tasks_per_child` tasks is.
EXIT_ASKED_TO_LEAVE = 86
EXIT_MAX_TASKS = 87
SUPERVISOR_ENV = "NBCLUSTER_SUPERVISOR"   # our supervisor's token, sent in our hello


_TEXT_STREAMS = ("stdout", "stderr")   # consecutive text of one stream is sent as one item


class _Output:
    """Captured task output waiting to be sent: [gid, attempt, stream, text] items. At most
    OUTPUT_CHUNK_MAX characters wait: past that the oldest items go (a task printing in a
    tight loop shows its latest output, and a note of how much was dropped)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.items: list[list] = []
        self.size = 0
        self.dropped = 0

    def add(self, tag: tuple, stream: str, text: str) -> None:
        with self.lock:
            while self.items and self.size + len(text) > OUTPUT_CHUNK_MAX:
                self.dropped += len(self.items.pop(0)[3])
                self.size = sum(len(item[3]) for item in self.items)
            if self.items and self.items[-1][:3] == [*tag, stream] and stream in _TEXT_STREAMS:
                self.items[-1][3] += text
            else:
                self.items.append([*tag, stream, text])
            self.size += len(text)

    def take(self) -> list[list]:
        with self.lock:
            items, self.items, self.size = self.items, [], 0
            if self.dropped and items:
                note = f"[nbcluster: {self.dropped} characters of earlier output dropped]\n"
                items.insert(0, [*items[0][:2], "stderr", note])
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
                 slots: int = 1, watch_stdin: bool = False, curve: "CurveKeys | None" = None,
                 max_tasks: int | None = None):
        self.endpoint, self.labels, self.slots = endpoint, sorted(labels or []), slots
        self.signer = protocol.Signer(key)
        runtime.set_worker(key, endpoint, curve)
        self.curve = curve
        self.watch_stdin = watch_stdin
        self.id = "?"
        self.info = {"host": socket.gethostname(), "pid": os.getpid()}
        if os.environ.get(SUPERVISOR_ENV):   # the broker asks it whether we are alive
            self.info["supervisor"] = os.environ[SUPERVISOR_ENV]
        self.max_tasks, self.tasks_run = max_tasks, 0   # leave (to be replaced) after max_tasks
        self.leave_status = EXIT_ASKED_TO_LEAVE
        self.output = _Output()
        self.functions = serialize.FunctionCache()
        self.shm = SharedMemory(key) if shm_available() else None
        self.max_message_bytes = protocol.DEFAULT_MAX_MESSAGE_BYTES   # the broker's (welcome)
        self.lock = threading.Lock()          # guards the state below, shared by both threads
        # A give-back asked for and not yet answered: the tasks we hold may be queued elsewhere
        # already, so none of them starts here until the broker's `given` says which.
        self.awaiting_given = False
        self.given_arrived = threading.Condition(self.lock)
        self.registered = False
        # (worker id, broker epoch) of our registration; kept while we say hello again, as
        # the broker may resume it (see _hello and _ours).
        self.registration: tuple | None = None
        self.session = 0                      # bumped by every hello (runs echo it as `s`)
        self.ledger = 0                       # the session whose welcome started our ledger:
        self.granted = self.done = 0          # credit given to the broker / tasks finished
        self.running_ledger: int | None = None   # the ledger the running task counts in
        self.to_release: list = []            # kept tasks we finished before knowing (_welcome)
        self.cancelled: set[tuple] = set()    # (gid, attempt) not to run: cancelled, given back
        self.current_tag: tuple | None = None  # (gid, attempt) of the running task
        self.started_at = 0.0
        self.gave_back_for: int | None = None
        self.reported_start: tuple | None = None   # (gid, attempt) we said has started
        self.io_sleeping = False              # the I/O thread sleeps past STARTED_NOTE_S
        self.task_time: float | None = None   # moving average of task durations (s)
        self.interrupting = False             # the I/O thread interrupted a task to cancel it
        self.interrupt_tag: tuple | None = None   # the task that interrupt is meant for
        self.credit_heals = 0                 # times _check_credit found us starving
        self._credit_probe: tuple | None = None
        self.stopping = False
        self.draining = False                 # asked to leave: finish the running task, then go
        self._wake_r, self._wake_w = os.pipe()              # to the I/O thread
        self._registered_r, self._registered_w = os.pipe()  # to the main thread
        self.ctx = zmq.Context(io_threads=1)
        self.task_identity = os.urandom(12).hex().encode()
        self.task_sock = dealer(self.ctx, endpoint, self.task_identity, curve)

    # ---- main thread ----------------------------------------------------------------------
    def run(self) -> None:
        """Start the I/O thread and run tasks until stopped."""
        sys.stdout = _TaskStream(self, "stdout", sys.__stdout__)
        sys.stderr = _TaskStream(self, "stderr", sys.__stderr__)
        signal.signal(signal.SIGINT, self._on_sigint)
        runtime.set_emitter(self._emit)
        threading.Thread(target=self._io_loop, name="nbcluster-io", daemon=True).start()
        poller = zmq.Poller()
        poller.register(self.task_sock, zmq.POLLIN)
        poller.register(self._registered_r, zmq.POLLIN)
        while True:
            try:
                events = dict(poller.poll())
                if self._registered_r in events:
                    # Credit is always granted from this socket: the broker can only route
                    # tasks to it once a message from it has arrived.
                    os.read(self._registered_r, 4096)
                    if self.draining:
                        self._leave_now()
                    with self.lock:
                        release, self.to_release = self.to_release, []
                    if release:   # on this socket, after their results (see _welcome)
                        self._send(self.task_sock, {"t": "refetch", "tasks": release})
                    n, ledger = self._top_up()
                    if n:
                        self._send(self.task_sock, {"t": "ready", "n": n, "l": ledger})
                for frames in pending_messages(self.task_sock):
                    self._on_task_message(frames)
            except KeyboardInterrupt:
                if not self.interrupting:  # a real Ctrl-C, not a cancel that arrived late
                    raise
            self.interrupting = False

    def _emit(self, stream: str, text: str) -> None:
        tag = self.current_tag
        if tag is not None:
            self.output.add(tag, stream, text)

    def _on_task_message(self, frames) -> None:
        try:
            header, payload = protocol.decode(self.signer, frames, max_bytes=None)
        except ProtocolError as e:
            log.warning("dropped a message: %s", e)
            return
        # A `reconnect` here is not acted on: it answers a message sent on this socket, maybe
        # before our latest hello, and would end the registration that hello made (its tasks
        # counted as lost on us). Our heartbeats on the control socket, ordered with our
        # hellos, get a reconnect there within a heartbeat if the broker forgot us.
        if header["t"] == "run":   # each task is checked as it comes up: see _ours
            self._run_batch(header["tasks"], payload, header.get("fns", []),
                            (header.get("w"), header.get("e"), header.get("s")))

    def _on_sigint(self, signum, frame) -> None:
        """SIGINT: a real Ctrl-C, or the I/O thread interrupting a cancelled task. The latter
        is ignored if its task has ended meanwhile: it must not break the loop between tasks
        (the rest of the batch and its credit would be lost)."""
        target, self.interrupt_tag = self.interrupt_tag, None
        if target is None or target == self.current_tag:
            raise KeyboardInterrupt

    def _ours(self, batch: tuple) -> bool | None:
        """Is a task of a run for `batch` (its w, e, s) ours to run (call under the lock)?
        None: not known until the welcome of our latest hello is read (resumed or not)."""
        wid, epoch, session = batch
        if session == self.session:
            # Sent after the broker read our latest hello: ours, even if that hello's welcome
            # (on the other socket) is not read yet; dropped, the task would be held here
            # for good.
            return not self.registered or self.registration == (wid, epoch)
        if self.registration != (wid, epoch):
            return False   # an earlier registration's: the broker has queued it again
        return True if self.registered else None

    def _run_batch(self, tasks: list, payload: list, fns: list, batch: tuple) -> None:
        """Run the tasks of one `run` message; results go back in batches of at least
        RESULT_BATCH_S worth of work, and at the end. The message starts with the payloads of
        functions we did not have (`fns`); they are kept before any task runs, so a task that
        is skipped (cancelled, given back) does not lose the function of the ones after it."""
        pos, items, frames, epoch = 0, [], [], batch[1]
        for digest, n in fns:
            self.functions.put(digest, payload[pos:pos + n])
            pos += n
        last_sent = time.monotonic()
        batch_bytes = 0
        for i, (gid, attempt, nframes, local, *fn) in enumerate(tasks):
            if self.draining:   # leaving: the tasks not started go back to the broker
                self._send_done(items, frames, epoch)
                self._leave_now()
            result = self._run_one(gid, attempt, fn[0] if fn else None,
                                   payload[pos:pos + nframes], local, batch)
            pos += nframes
            self._count_task(result)
            nbytes = 0 if result is None else sum(memoryview(f).nbytes for f in result[1])
            if items and batch_bytes + nbytes + message_limit.HEADROOM_BYTES > \
                    self.max_message_bytes:   # together they would be over the broker's limit
                self._send_done(items, frames, epoch)
                items, frames, batch_bytes = [], [], 0
            if result is not None:
                items.append(result[0])
                frames += result[1]
                batch_bytes += nbytes
            if i == len(tasks) - 1 or batch_bytes >= BIG_RESULT_BYTES or \
                    time.monotonic() - last_sent >= RESULT_BATCH_S:
                self._send_done(items, frames, epoch)
                items, frames, batch_bytes = [], [], 0
                last_sent = time.monotonic()
        self.functions.trim()
        if self.draining and self.leave_status == EXIT_MAX_TASKS:
            self._leave_now()

    def _count_task(self, result: tuple | None) -> None:
        """After max_tasks tasks run (not skipped), leave: our supervisor starts a fresh worker."""
        if result is None or self.max_tasks is None:
            return
        self.tasks_run += 1
        if self.tasks_run >= self.max_tasks:
            with self.lock:
                if not self.draining:   # asked to leave already: not to be replaced
                    self.draining, self.leave_status = True, EXIT_MAX_TASKS

    def _run_one(self, gid: int, attempt: int, fn_digest: bytes | None, frames: list,
                 local: bool, batch: tuple) -> tuple | None:
        """Run one task of a run for `batch`; its result goes through shared memory if its
        client is `local`. fn_digest names its function; without one, the function is the
        task's first frame. The task counts in our ledger as finished once it ends (or is
        skipped), if it counts in it still (see _welcome)."""
        if fn_digest is None:   # an inline function pickle: the task's first frame
            fn_digest, frames = bytes(frames[0]), frames[1:]
            self.functions.put(fn_digest, [fn_digest])
        missing = fn_digest not in self.functions
        with self.lock:
            # Wait for the `given` (see __init__: else a task could run here and elsewhere),
            # and for our welcome if only it can say whether the task is still ours.
            while ((ours := self._ours(batch)) is None or ours and self.awaiting_given) \
                    and not self.draining:
                self.given_arrived.wait(1.0)
            if not ours or self.draining:   # leaving: our `bye` queues it again
                return None   # not run, not counted: that registration and its ledger are over
            wake = False
            if (gid, attempt) in self.cancelled:
                self.cancelled.discard((gid, attempt))
                self.done += 1
                return None
            if missing:
                self.done += 1
            else:
                self.running_ledger = self.ledger
                self.current_tag = (gid, attempt)
                self.started_at = time.monotonic()
                wake, self.io_sleeping = self.io_sleeping, False
        if missing:
            # Our cache dropped its function: the broker queues it again, with the function.
            self._send(self.task_sock, {"t": "refetch", "tasks": [[gid, attempt]]})
            return None
        if wake:   # once per idle-to-busy change, so a long task is reported in time
            os.write(self._wake_w, b"s")
        status, payload = "ok", []
        start = time.perf_counter()
        try:
            try:
                fn = self.functions.get(fn_digest)
                args, kwargs = serialize.loads(frames, self.shm)
                result = fn(*args, **kwargs)
            finally:
                # No lock: a cancel's SIGINT could land while waiting for it, and _on_sigint
                # ignores one whose task is no longer current.
                self.current_tag = None
            try:
                payload = serialize.dumps(result, self.shm if local else None)
            except Exception as e:
                raise TypeError(f"the result ({serialize.describe(result)}) cannot be pickled: "
                                f"{e}") from e
            self._check_size(payload, result)
        except BaseException as e:  # noqa: BLE001 - any failure of user code is the task's result
            status = "err"
            payload = serialize.dumps(tracebacks.capture(e, skip=1))
        elapsed = time.perf_counter() - start
        t = self.task_time
        self.task_time = elapsed if t is None else 0.8 * t + 0.2 * elapsed
        with self.lock:   # a cancel's SIGINT no longer lands here: the task is not current
            if self.running_ledger == self.ledger:
                self.done += 1
        return [gid, attempt, status, len(payload), {"s": elapsed}], payload

    def _check_size(self, payload: list, result: Any) -> None:
        """A result over the broker's limit would be dropped on the way, its task never
        answered: it fails the task instead (its shared-memory files go)."""
        nbytes = sum(memoryview(f).nbytes for f in payload)
        if nbytes + message_limit.HEADROOM_BYTES <= self.max_message_bytes:
            return
        for name in serialize.shm_names(payload):
            self.shm.remove(name)
        what = f"the result ({_describe_big(result)})"
        # The error's traceback shows this frame's locals: not the GiB of them.
        del payload, result
        message_limit.check(what, nbytes, self.max_message_bytes)

    def _leave_now(self) -> None:
        """Say bye on the task socket, after the results sent on it (so they arrive first);
        the broker queues our unstarted tasks again."""
        self._send(self.task_sock, {"t": "bye"})
        time.sleep(0.2)   # let ZeroMQ's I/O thread put it on the wire
        os._exit(self.leave_status)

    def _send_done(self, items: list, frames: list, epoch: int) -> None:
        if self.shm is not None and self.shm.created:
            self.shm.remove_orphans()
        output = self.output.take()      # a task's output goes before its result
        if output:
            self._send(self.task_sock, {"t": "output", "items": output})
        # `e`: the epoch of the broker that sent these tasks; another broker drops the items.
        n, ledger = self._top_up()
        header = {"t": "done", "e": epoch, "items": items, "ready": n, "l": ledger}
        if items or n:
            self._send(self.task_sock, header, frames)

    # ---- both threads -----------------------------------------------------------------------
    def _send(self, sock: zmq.Socket, header: dict, payload: list = ()) -> None:
        sock.send_multipart(protocol.encode(self.signer, header, payload), copy=False)

    def _top_up(self) -> tuple[int, int]:
        """The credit to ask for so we hold a full window, and the ledger it is for (`l`:
        the broker ignores credit of a ledger that is not its registration's)."""
        with self.lock:
            if not self.registered:
                return 0, self.ledger
            n = max(0, self._window() - (self.granted - self.done))
            self.granted += n
            return n, self.ledger

    def _window(self) -> int:
        t = self.task_time
        if t is None or t >= LONG_TASK_S:
            return self.slots
        return self.slots + min(MAX_PREFETCH, int(PREFETCH_TARGET_S / max(t, 1e-6)))

    def _ask_io(self, stop: bool = False) -> None:
        self.stopping |= stop
        os.write(self._wake_w, b"x")

    def leave(self) -> None:
        """Tell the broker we are going (it queues our tasks again) and exit."""
        self._ask_io(stop=True)

    # ---- I/O thread -----------------------------------------------------------------------
    def _io_loop(self) -> None:
        try:
            self._io()
        except BaseException:  # noqa: BLE001
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
            events = dict(poller.poll(wait * 1000))
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
            for frames in pending_messages(self.ctl):
                last_heard, tries, next_try = now, 0, now + self.expiry_s
                self._on_control_message(frames)
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
                self._send(self.ctl, {"t": "hb", "info": {**_load_info(),
                                                          "credit_heals": self.credit_heals}})
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

    def _welcome(self, header: dict) -> None:
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

    def _on_control_message(self, frames) -> None:
        if protocol.is_denied(frames) and not self.registered:
            log.error("the broker at %s rejected our key: check the cluster key", self.endpoint)
            os._exit(2)
        try:
            header, payload = protocol.decode(self.signer, frames, max_bytes=None)
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
                        signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)
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
            self.id = header.get("id", self.id)
            runtime.WORKER.update(id=self.id, **self.info)
            self.heartbeat_s = header["heartbeat_ms"] / 1000
            self.expiry_s = self.heartbeat_s * header["liveness"]
            self.max_message_bytes = message_limit.limit_from_welcome(header)
            with self.lock:
                self._welcome(header)
            os.write(self._registered_w, b"x")   # the main thread asks for work
        elif kind == "reconnect" and self.registered:   # once, not once per message in flight
            self._hello()

    def _maybe_report_start(self, now: float) -> None:
        """The running task has run STARTED_NOTE_S: tell its client (through the broker) that
        it started, so its future is RUNNING. Shorter tasks are never reported: no message
        on the hot path."""
        with self.lock:
            tag = self.current_tag
            if tag is None or self.reported_start == tag or now - self.started_at < STARTED_NOTE_S:
                return
            self.reported_start = tag
        self._send(self.ctl, {"t": "started", "items": [list(tag)]})
    def _check_credit(self) -> None:
        """Safety net, checked every heartbeat: idle for a whole heartbeat with less credit
        out than our window means no finished task will ever ask for more (a bug: the
        ledger lost track). Ask again, say so in the log and count it (`credit_heals` in
        the heartbeat's info, so tests and `nbcluster status` see it)."""
        with self.lock:
            probe = (self.session, self.granted, self.done)
            short = self.registered and self.current_tag is None and \
                self.granted - self.done < self._window()
            stuck, self._credit_probe = short and probe == self._credit_probe, probe if short else None
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
            self._send(self.ctl, {"t": "giveback", "keep": tag[0]})


def _describe_big(result: Any) -> str:
    """A short description of a result too big to send (whose full repr could take seconds)."""
    if isinstance(result, memoryview):
        return f"a memoryview of {result.nbytes:,} bytes"
    if isinstance(result, (bytes, bytearray, str)):
        return f"{serialize.describe(result[:40])}..."
    if isinstance(result, (list, tuple, dict, set, frozenset)):
        return f"a {type(result).__name__} of {len(result):,} items"
    return serialize.describe(result, 60)


def read_line(fd: int) -> str:
    """One line from fd, read byte by byte so nothing after it is buffered away."""
    data = bytearray()
    while not data.endswith(b"\n"):
        chunk = os.read(fd, 1)
        if not chunk:
            break
        data += chunk
    return data.decode()


def _end_with_our_group() -> None:
    """Exit with status 0, killing whatever we forked, if we lead our process group (a
    supervisor starts us so, and kills the group when we end; with the supervisor itself
    gone, nobody else would). A worker started otherwise shares its parent's group: it
    exits alone."""
    me = os.getpid()
    if os.getpgid(0) == me:
        for pid in group_members(me):
            if pid != me:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
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


def main(argv: list[str] | None = None) -> None:
    """`python -m nbcluster.worker --connect ENDPOINT|FILE`; the key comes from $NBCLUSTER_KEY
    or the connection file."""
    import argparse

    from ..wire.connection import ConnectionInfo, key_from_env, read_or_exit

    p = argparse.ArgumentParser(
        prog="nbcluster worker", formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  nbcluster worker --connect ~/.nbcluster/cluster.json -n 4\n"
               "  nbcluster worker --connect cluster.json --endpoint tcp://head:5555 "
               "--labels gpu")
    p.add_argument("-n", type=int, default=1, help="start this many worker processes "
                   "(`nbcluster worker` only)")
    p.add_argument("--connect", required=True, help="broker endpoint or connection file, or "
                   "- to read the connection file's JSON as the first line of stdin (what "
                   "launchers do: the key never shows in a file or a command line)")
    p.add_argument("--endpoint", help="reach the broker here rather than where the "
                   "connection file says, e.g. tcp://head-node:5555")
    p.add_argument("--labels", default="", help="comma-separated labels, e.g. gpu,bigmem")
    p.add_argument("--watch-stdin", action="store_true", help="exit when stdin closes")
    p.add_argument("--max-tasks-per-child", type=int, default=None,
                   help="leave after this many tasks (our supervisor starts a fresh worker)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.__stderr__,
                        format="nbcluster worker %(asctime)s %(levelname)s %(message)s")
    if "://" in args.connect:
        endpoint, key, curve = args.connect, key_from_env(), None
    else:   # a file that is missing, garbage or of a cluster gone: one line, exit 2
        info = ConnectionInfo.from_json(read_line(0)) if args.connect == "-" else \
            read_or_exit(args.connect, "nbcluster worker", args.endpoint)
        endpoint, key, curve = args.endpoint or info.best_endpoint(), info.key, info.curve
    worker = Worker(endpoint, key, [x for x in args.labels.split(",") if x],
                    watch_stdin=args.watch_stdin, curve=curve,
                    max_tasks=args.max_tasks_per_child)
    signal.signal(signal.SIGTERM, lambda *_: worker.leave())
    signal.signal(signal.SIGINT, signal.default_int_handler)  # cancelling a task needs it
    try:
        worker.run()
    except KeyboardInterrupt:
        worker.leave()
        time.sleep(5)  # the I/O thread exits the process once it has said bye
