"""What both threads of a worker share: registration, the credit ledger, the running task.

The task thread (task_thread.py) and the I/O thread (io_thread.py) read and change this
state under `lock`; each thread's own code lives in its module, and `loop.Worker` is both.
Here too: the exit statuses a worker tells its supervisor why it left with, and the credit
it asks the broker for (free slots plus a prefetch sized so short tasks never wait a round
trip).
"""

from __future__ import annotations

import collections
import os
import socket
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import zmq

from .. import runtime
from ..wire import functions, protocol
from ..wire.freshness import Freshness
from ..wire.shm import SharedMemory
from ..wire.shm import available as shm_available
from ..wire.transport import dealer, send_frames
from .debugger import Debugger
from .output import OutputBuffer
from .postmortem import KeptFailures

if TYPE_CHECKING:
    from ..wire.curve import CurveKeys

__all__ = ["WorkerState", "EXIT_ASKED_TO_LEAVE", "EXIT_MAX_TASKS", "SUPERVISOR_ENV"]

PREFETCH_TARGET_S = 0.005   # hold enough queued tasks to cover this much work...
MAX_PREFETCH = 64           # ...but never more than this many
LONG_TASK_S = 0.02          # a worker whose tasks take longer than this prefetches none

# Exit statuses that tell our supervisor why we left (any other status, or a signal, is a
# crash, and a crashed worker is replaced): asked to leave (SIGTERM, `nbcluster stop
# --worker`, Ctrl-C) is not replaced; done `max_tasks_per_child` tasks is.
EXIT_ASKED_TO_LEAVE = 86
EXIT_MAX_TASKS = 87
SUPERVISOR_ENV = "NBCLUSTER_SUPERVISOR"   # our supervisor's token, sent in our hello


class WorkerState:
    """A worker's state, shared by its two threads, for the broker at `endpoint` with
    cluster `key` (see `loop.Worker` for the arguments)."""

    def __init__(self, endpoint: str, key: bytes, labels: list[str] | None = None,
                 slots: int = 1, watch_stdin: bool = False, curve: CurveKeys | None = None,
                 max_tasks: int | None = None):
        self.endpoint, self.labels, self.slots = endpoint, sorted(labels or []), slots
        self.signer = protocol.Signer(key)
        self.fresh = Freshness()   # both sockets' stamps (each socket is one thread's)
        runtime.set_worker(key, endpoint, curve)
        self.curve = curve
        self.watch_stdin = watch_stdin
        self.id = "?"
        self.info: dict[str, Any] = {"host": socket.gethostname(), "pid": os.getpid()}
        if os.environ.get(SUPERVISOR_ENV):   # the broker asks it whether we are alive
            self.info["supervisor"] = os.environ[SUPERVISOR_ENV]
        self.max_tasks, self.tasks_run = max_tasks, 0   # leave (to be replaced) after max_tasks
        self.leave_status = EXIT_ASKED_TO_LEAVE
        self.output = OutputBuffer()
        self.kept = KeptFailures()            # failed tasks' frames, for a debugger
        self.debug_outbox: collections.deque[dict[str, Any]] = collections.deque()
        self.debug = Debugger(self.kept, self._queue_debug, self._running_gid)
        self.functions = functions.FunctionCache()
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
        self.registration: tuple[str, Any] | None = None
        self.session = 0                      # bumped by every hello (runs echo it as `s`)
        self.ledger = 0                       # the session whose welcome started our ledger:
        self.granted = self.done = 0          # credit given to the broker / tasks finished
        self.running_ledger: int | None = None   # the ledger the running task counts in
        self.to_release: list[Any] = []       # kept tasks we finished before knowing (_welcome)
        # (gid, attempt) not to run: cancelled, given back
        self.cancelled: set[tuple[int, int]] = set()
        self.current_tag: tuple[int, int] | None = None  # (gid, attempt) of the running task
        # Results of finished tasks not sent yet (tiny tasks' results go together, see
        # _run_batch), with the epoch of their run. A task that runs on past STARTED_NOTE_S
        # has the I/O thread send them (_send_held): else they would wait for it, and a
        # giveback sent meanwhile would hand back tasks that have run as if they had not.
        self.held_items: list[Any] = []
        self.held_frames: list[Any] = []
        self.held_bytes = 0
        self.held_epoch: int | None = None
        self.started_at = 0.0
        self.gave_back_for: int | None = None
        self.reported_start: tuple[int, int] | None = None   # (gid, attempt) we said has started
        self.io_sleeping = False              # the I/O thread sleeps past STARTED_NOTE_S
        self.task_time: float | None = None   # moving average of task durations (s)
        self.interrupting = False             # the I/O thread interrupted a task to cancel it
        self.interrupt_tag: tuple[int, int] | None = None   # the task that interrupt is meant for
        self.in_task = False                  # the running task's `try` is entered (_run_one)
        self.interrupt_due: tuple[int, int] | None = None   # an interrupt that came before it
        self.credit_heals = 0                 # times _check_credit found us starving
        self._credit_probe: tuple[int, int, int] | None = None
        self.stopping = False
        self.draining = False                 # asked to leave: finish the running task, then go
        self._wake_r, self._wake_w = os.pipe()              # to the I/O thread
        self._registered_r, self._registered_w = os.pipe()  # to the main thread
        self.ctx = zmq.Context(io_threads=1)
        self.task_identity = os.urandom(12).hex().encode()
        self.task_sock = dealer(self.ctx, endpoint, self.task_identity, curve)

    def _send(self, sock: zmq.Socket, header: dict[str, Any], payload: Sequence[Any] = ()) -> None:
        header = self.fresh.stamp(header)   # replay protection: see wire/freshness.py
        send_frames(sock, protocol.encode(self.signer, header, payload))

    def _queue_debug(self, header: dict[str, Any]) -> None:
        """(any thread) A debugger's message, for the I/O thread to send."""
        self.debug_outbox.append(header)
        os.write(self._wake_w, b"d")

    def _running_gid(self) -> int | None:
        tag = self.current_tag
        return None if tag is None else tag[0]

    def _take_held(self) -> tuple[list[Any], list[Any], int | None]:
        """The held results, their frames and epoch, no longer held (call under the lock)."""
        taken = self.held_items, self.held_frames, self.held_epoch
        self.held_items, self.held_frames, self.held_bytes = [], [], 0
        return taken

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
