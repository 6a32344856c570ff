"""A worker process: pulls tasks from the broker and runs them.

    broker ──run──────────────────────► task socket ─► main thread: fn(*args, **kwargs)
    broker ◄─done/ready/final output─── task socket ◄─┘
    broker ◄─hello/hb/output/giveback── control socket ─ I/O thread
    broker ──welcome/hb/cancel/given──► control socket ─┘

Two threads, each with a socket of its own (ZeroMQ sockets are not shared between threads).
The main thread receives tasks and sends their results itself, so a task costs no thread
hand-off (task_thread.py). The I/O thread registers, heartbeats even while a task holds the
main thread, interrupts the running task when it is cancelled, sends captured output of a
running task, and gives back prefetched tasks behind a long one (io_thread.py). What both
share, and the credit they ask for, is in state.py; output capture in output.py; the
command line in main.py.
"""

from __future__ import annotations

import os
import signal
import sys
import threading

import zmq

from .. import runtime
from ..wire import tracebacks
from ..wire.transport import pending_messages
from .io_thread import IOThread
from .output import TaskStream
from .task_thread import TaskThread

__all__ = ["Worker"]


class Worker(TaskThread, IOThread):
    """A worker connected to the broker at `endpoint` with cluster `key`.

    Args:
        endpoint: the broker's address.
        key: the cluster key (messages are signed with it).
        labels: the labels tasks may ask for.
        slots: tasks it holds credit for at once (besides prefetched ones).
        watch_stdin: exit, with whatever it forked, when stdin closes (its supervisor gone).
        curve: the cluster's Curve keys, if it has them.
        max_tasks: leave after running this many tasks (its supervisor starts a fresh one).
    """

    def run(self) -> None:
        """Start the I/O thread and run tasks in this (the main) thread until stopped."""
        real_out, real_err = sys.__stdout__, sys.__stderr__
        assert real_out is not None and real_err is not None   # its supervisor's pipes
        sys.stdout = TaskStream(self, "stdout", real_out)
        sys.stderr = TaskStream(self, "stderr", real_err)
        signal.signal(signal.SIGINT, self._on_sigint)
        runtime.set_emitter(self._emit)
        tracebacks.keep_failure = self.kept.keep   # frames of failures, for err.debug()
        sys.breakpointhook = self.debug.breakpoint
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

