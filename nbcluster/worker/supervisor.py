"""The supervisor: one small process per host that starts the host's workers and keeps them.

    LocalCluster, `nbcluster worker -n N`, SSH, Slurm
      └─ supervisor ── DEALER, role "supervisor" ──► broker: hello, hb {alive: [pids]}, exited
           ├─ worker (a session of its own)    stdin: a pipe from us (at EOF it exits)
           └─ worker ...                       env: $NBCLUSTER_SUPERVISOR=<our token>

In the spirit of Dask's nanny, and never running user code itself, it:
- starts N workers, each in a session (process group) of its own, with a token they put in
  their hello so the broker knows who vouches for them: forked from a fork server that has
  imported the worker's modules (forkserver.py; milliseconds each, where a fresh
  interpreter costs 0.2 s of CPU), or `python -m nbcluster.worker` where it cannot fork;
- watches them by pid (a pidfd each: an exit wakes us at once) and replaces any that ends,
  whatever its status (a task calling os._exit(0) must not shrink the cluster), unless it
  left because it was asked to (status worker.EXIT_ASKED_TO_LEAVE);
- kills a worker's whole process group when it ends, so no child it forked outlives it;
- kills a worker whose resident memory passes `memory_limit` (its running task fails with
  MemoryLimitExceeded, the worker is replaced);
- tells the broker every heartbeat which workers are alive and not stopped (state in
  /proc/<pid>/stat): a task holding its worker's GIL for minutes does not make it look dead,
  while a frozen or dead worker is still noticed; and when one ends, how ("killed by
  SIGKILL"), so the broker drops it at once and WorkerLost names the cause.

SIGTERM/SIGINT: the workers are asked to leave (SIGTERM), and killed after STOP_GRACE_S.
With --watch-stdin, stdin closing (our parent or ssh gone) kills them at once; then, with
--cluster-dir (a LocalCluster's), once they are gone we remove the cluster's shared-memory
files and that directory: an owner killed with SIGKILL leaves nothing behind. We exit when
no worker is left and none is to be started (e.g. all were stopped with `nbcluster stop`).
With --announce, `started PID` and `exited PID REASON` lines go to stdout (for LocalCluster);
the workers' own stdout then goes to our stderr, so nothing else is mixed into those lines.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import signal
import socket
import sys
import time
from dataclasses import dataclass

import zmq

from ..errors import ProtocolError
from ..wire import protocol, shm
from ..wire.freshness import Freshness
from ..wire.transport import dealer, pending_messages
from . import main as worker_main
from .forkserver import ForkServer, StartedProcess, become_subreaper, reap, spawn_process
from .postmortem import KEEP_MB_ENV
from .procinfo import exit_reason, format_bytes, is_running, rss
from .state import EXIT_ASKED_TO_LEAVE, EXIT_MAX_TASKS, SUPERVISOR_ENV

__all__ = ["Supervisor"]

MAX_UNSENT = 1000   # exits held for a broker that never welcomes us: the newest

log = logging.getLogger("nbcluster.supervisor")

MEMORY_POLL_S = 0.1        # workers' memory is checked this often (with a limit)
STOP_GRACE_S = 5.0         # asked to stop, workers have this long to leave before SIGKILL
QUICK_EXIT_S = 2.0         # a worker ending this soon after it started...
QUICK_EXITS_FREE = 3       # ...this many times in a row is replaced at once; then with a delay
MAX_RESPAWN_DELAY_S = 10.0  # doubling up to this (a worker that cannot start at all)


@dataclass
class _Child:
    proc: StartedProcess
    pidfd: int | None
    started: float
    over_limit: str | None = None   # why we killed it, when its memory passed the limit


class Supervisor:
    """Starts and keeps `n` workers connected to the broker at `endpoint`.

    Args:
        worker_args: arguments of `python -m nbcluster.worker` (--connect and the like).
        stdin_line: the connection file's JSON, handed to each worker on its stdin
            (`--connect -`), so the key never shows on a command line or on disk.
        memory_limit: kill a worker whose resident memory passes this many bytes.
        max_tasks_per_child: a worker leaves after this many tasks and is replaced.
        respawn: replace workers that end (those that crash; those recycled after
            max_tasks_per_child are replaced in any case).
        announce: print `started PID` / `exited PID REASON` lines on stdout.
        watch_stdin: exit, killing the workers, when stdin closes.
        cluster_dir: the temp directory of the LocalCluster that started us: removed, with
            the cluster's shared-memory files, when stdin closes (see `shm.remove_cluster_files`).
    """

    def __init__(self, endpoint: str, key: bytes, worker_args: list[str], n: int = 1, *,
                 curve=None, stdin_line: bytes | None = None, memory_limit: int | None = None,
                 max_tasks_per_child: int | None = None, respawn: bool = True,
                 announce: bool = False, watch_stdin: bool = False,
                 cluster_dir: str | None = None):
        self.n, self.stdin_line = n, stdin_line
        self.key, self.cluster_dir = key, cluster_dir
        self.memory_limit, self.max_tasks = memory_limit, max_tasks_per_child
        self.respawn, self.watch_stdin = respawn, watch_stdin
        self.worker_cmd = [sys.executable, "-m", "nbcluster.worker", *worker_args,
                           "--watch-stdin"]
        if max_tasks_per_child:
            self.worker_cmd += ["--max-tasks-per-child", str(max_tasks_per_child)]
        self.token = secrets.token_hex(12)
        ours = {SUPERVISOR_ENV: self.token}   # in every worker's environment
        if memory_limit:   # kept failures' frames go long before the limit kills a worker
            half_mb = memory_limit / 2 / 2**20
            asked = os.environ.get(KEEP_MB_ENV)
            ours[KEEP_MB_ENV] = f"{min(half_mb, float(asked)) if asked else half_mb:g}"
        self.env = {**os.environ, **ours}
        self.announce_fd = None
        if announce:   # our stdout carries our lines alone; the workers' goes to stderr
            self.announce_fd = os.dup(1)
            os.dup2(2, 1)
        # Forked before our ZeroMQ context exists: the fork server has no threads.
        self.forkserver = ForkServer(worker_main.main, ours, (
            () if self.announce_fd is None else (self.announce_fd,))) \
            if hasattr(os, "fork") and become_subreaper() else None
        self.signer = protocol.Signer(key)
        self.fresh = Freshness()
        # Until our latest hello is welcomed, what we send would carry no nonce (or the
        # last broker's) and be dropped: the exits wait here (the workers' supervisor knew
        # how each ended, and a task lost there would name no reason), the vouches are sent
        # anew at the welcome.
        self.welcomed = False
        self.unsent: list[dict] = []
        self.ctx = zmq.Context(io_threads=1)
        self.sock = dealer(self.ctx, endpoint, None, curve)
        self.endpoint = endpoint
        self.children: dict[int, _Child] = {}
        self.to_start: list[float] = []      # when to start each worker still to start
        self.quick_exits = 0
        self.stop_deadline: float | None = None
        self.heartbeat_s, self.expiry_s = 1.0, 3.0
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self._signals: list[int] = []
        self.orphaned = False   # our stdin closed: whoever started us is gone or closing

    # ---- the loop -----------------------------------------------------------------------
    def run(self) -> int:
        """Supervise until stopped or until every worker left; returns the exit status."""
        signal.set_wakeup_fd(self._wake_w)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda signum, _frame: self._signals.append(signum))
        try:
            now = time.monotonic()
            self.to_start = [now] * self.n
            self._hello()
            return self._loop()
        finally:
            self._kill_all()
            if self.forkserver is not None:
                self.forkserver.close()
            self._send({"t": "bye"})
            # Stopped by our parent closing our stdin (LocalCluster closing, ssh gone), the
            # cluster is going too: no waiting for these to go out. Stopped by a signal, the
            # broker lives on: give the exits and the bye time to reach it (ms).
            self.sock.close(linger=0 if self.orphaned else 500)
            self.ctx.term()
            if self.orphaned and self.cluster_dir:   # our workers are gone: none writes now
                shm.remove_cluster_files(self.key, self.cluster_dir)

    def _loop(self) -> int:
        last_hb = last_memory = time.monotonic()
        next_hello = last_hb + self.expiry_s
        while True:
            now = time.monotonic()
            if self._signals and self.stop_deadline is None:
                self._stop_workers(now)
            if self.stop_deadline is not None and (not self.children or now >= self.stop_deadline):
                return 0
            if not self.children and not self.to_start:
                log.info("no worker left to supervise: exiting")
                return 0
            if self.stop_deadline is None:
                due = [t for t in self.to_start if t <= now]
                self.to_start = [t for t in self.to_start if t > now]
                if due:
                    self._spawn(len(due))
            if self.memory_limit and now - last_memory >= MEMORY_POLL_S:
                self._check_memory()
                last_memory = now
            if now - last_hb >= self.heartbeat_s:
                self._send({"t": "hb", "alive": self._alive()})
                last_hb = now
            if now >= next_hello:   # the broker is silent (restarted, or not up yet)
                self._hello()
                next_hello = now + min(self.expiry_s * 4, 30.0)
            deadlines = [last_hb + self.heartbeat_s, next_hello, *self.to_start]
            if self.memory_limit:
                deadlines.append(last_memory + MEMORY_POLL_S)
            if self.stop_deadline is not None:
                deadlines.append(self.stop_deadline)
            poller = zmq.Poller()
            poller.register(self.sock, zmq.POLLIN)
            poller.register(self._wake_r, zmq.POLLIN)
            if self.watch_stdin:
                poller.register(0, zmq.POLLIN)
            pidfds = {c.pidfd: pid for pid, c in self.children.items() if c.pidfd is not None}
            for fd in pidfds:
                poller.register(fd, zmq.POLLIN)
            # Without pidfds (an old kernel) exits are found by polling often.
            wait = max(0.0, min(deadlines) - time.monotonic())
            if len(pidfds) < len(self.children):
                wait = min(wait, 0.05)
            events = dict(poller.poll(int(wait * 1000)))
            if self._wake_r in events:
                os.read(self._wake_r, 4096)
            if self.watch_stdin and 0 in events and not _stdin_open():
                log.debug("stdin closed: stopping the workers")
                self.orphaned = True
                return 0
            for frames in pending_messages(self.sock) if self.sock in events else ():
                if self._on_message(frames) is not None:
                    return 2
                # after reading: a welcome sets expiry_s
                next_hello = time.monotonic() + self.expiry_s * 2
            reap({pid: c.proc for pid, c in self.children.items()})
            for pid, child in list(self.children.items()):
                if child.proc.poll() is not None:
                    self._ended(pid, child)

    def _on_message(self, frames) -> int | None:
        if protocol.is_denied(frames):
            log.error("the broker at %s rejected our key: check the cluster key", self.endpoint)
            return 2
        try:
            header, _ = protocol.decode(self.signer, frames)
        except ProtocolError as e:
            log.warning("dropped a message: %s", e)
            return None
        if header["t"] == "welcome":
            self.heartbeat_s = header["heartbeat_ms"] / 1000
            self.expiry_s = self.heartbeat_s * header["liveness"]
            self.fresh.welcomed(header)
            self.welcomed = True
            unsent, self.unsent = self.unsent, []
            for held in unsent:
                self._send(held)
            # Vouch at once, not a beat later (before the welcome it would carry no nonce).
            self._send({"t": "hb", "alive": self._alive()})
        elif header["t"] == "refused":   # our hello, for our clock: we try again meanwhile
            log.error("the broker at %s refused our hello: %s", self.endpoint, header.get("why"))
        elif header["t"] == "reconnect":   # the broker forgot us (restarted, or we were silent)
            self._hello()
        return None

    # ---- workers ------------------------------------------------------------------------
    def _spawn(self, n: int) -> None:
        """Start n workers (those that could not be started are tried again)."""
        try:
            procs = self.forkserver.start(self.worker_cmd[3:], n) if self.forkserver else \
                [spawn_process(self.worker_cmd, self.env) for _ in range(n)]
        except OSError as e:   # the fork server gone (or no memory to fork): try again
            log.warning("could not start a worker: %s: trying again%s", e,
                        " with a fresh interpreter per worker" if self.forkserver else " in 1 s")
            delay = 0.0 if self.forkserver else 1.0
            if self.forkserver is not None:
                self.forkserver.close()
                self.forkserver = None
            self.to_start += [time.monotonic() + delay] * n
            return
        self.to_start += [time.monotonic() + 1.0] * (n - len(procs))   # it could fork only some
        for proc in procs:
            self._watch(proc)

    def _watch(self, proc: StartedProcess) -> None:
        if self.stdin_line:
            try:
                proc.stdin.write(self.stdin_line)
                proc.stdin.flush()
            except OSError:   # it died at once: found as an exit below
                pass
        try:
            pidfd = os.pidfd_open(proc.pid)
        except (AttributeError, OSError):
            pidfd = None
        self.children[proc.pid] = _Child(proc, pidfd, time.monotonic())
        self._announce(f"started {proc.pid}")

    def _ended(self, pid: int, child: _Child) -> None:
        """A worker ended: kill its group, say how it ended, and start another if we should."""
        del self.children[pid]
        status = child.proc.wait()   # it has ended: at once
        if child.pidfd is not None:
            os.close(child.pidfd)
        if child.proc.stdin is not None:
            with contextlib.suppress(OSError):
                child.proc.stdin.close()
        _kill_group(pid)
        left = status in (EXIT_ASKED_TO_LEAVE, EXIT_MAX_TASKS) and child.over_limit is None
        if child.over_limit:
            reason = child.over_limit
        elif status == EXIT_ASKED_TO_LEAVE:
            reason = "left when asked to"
        elif status == EXIT_MAX_TASKS:
            reason = f"replaced after {self.max_tasks} tasks (max_tasks_per_child)"
        else:
            reason = exit_reason(status)
        self._send({"t": "exited", "pid": pid, "reason": reason, "left": left,
                    "memory": child.over_limit is not None})
        self._announce(f"exited {pid} {reason}")
        if self.stop_deadline is not None or (status == EXIT_ASKED_TO_LEAVE and left):
            return
        if status == EXIT_MAX_TASKS or self.respawn:
            now = time.monotonic()
            # Only crashes soon after a start count: a worker that cannot start at all must
            # not be restarted in a tight loop. Recycling (max_tasks_per_child) is no crash.
            quick = now - child.started < QUICK_EXIT_S and status != EXIT_MAX_TASKS
            self.quick_exits = self.quick_exits + 1 if quick else 0
            delay = 0.0 if self.quick_exits < QUICK_EXITS_FREE else \
                min(0.25 * 2 ** (self.quick_exits - QUICK_EXITS_FREE), MAX_RESPAWN_DELAY_S)
            if delay:
                log.warning("worker %d %s %.1f s after it started (%d in a row): starting "
                            "another in %.1f s", pid, reason, now - child.started,
                            self.quick_exits, delay)
            self.to_start.append(now + delay)

    def _alive(self) -> list[int]:
        """Workers that can answer: alive, not stopped, not being killed for their memory."""
        return [pid for pid, c in self.children.items()
                if c.over_limit is None and is_running(pid)]

    def _check_memory(self) -> None:
        for pid, child in self.children.items():
            used = rss(pid)
            limit = self.memory_limit
            if child.over_limit is None and limit and used is not None and used > limit:
                child.over_limit = (f"memory limit {format_bytes(limit)} exceeded "
                                    f"(rss {format_bytes(used)})")
                log.warning("worker %d: %s: killing it", pid, child.over_limit)
                _kill_group(pid)

    def _stop_workers(self, now: float) -> None:
        log.info("asked to stop: asking %d worker(s) to leave", len(self.children))
        self.stop_deadline = now + STOP_GRACE_S
        for child in self.children.values():
            with contextlib.suppress(OSError):
                child.proc.send_signal(signal.SIGTERM)

    def _kill_all(self) -> None:
        """Kill every worker's process group (forked children too) and reap them."""
        self.stop_deadline = self.stop_deadline or time.monotonic()   # none is replaced
        for pid, child in list(self.children.items()):
            _kill_group(pid)
            child.proc.wait()
            self._ended(pid, child)

    # ---- the broker -----------------------------------------------------------------------
    def _hello(self) -> None:
        self.welcomed = False
        self._send({"t": "hello", "role": "supervisor", "token": self.token,
                    "host": socket.gethostname(), "pid": os.getpid(), "workers": self.n})

    def _send(self, header: dict) -> None:
        if not self.welcomed and header["t"] != "hello":
            if header["t"] == "exited":   # see __init__: sent once welcomed
                self.unsent = [*self.unsent[-(MAX_UNSENT - 1):], header]
            return
        header = self.fresh.stamp(header)   # replay protection: see wire/freshness.py
        self.sock.send_multipart(protocol.encode(self.signer, header, []), copy=False)

    def _announce(self, line: str) -> None:
        if self.announce_fd is not None:
            with contextlib.suppress(OSError):   # our reader is gone: we are about to be stopped
                os.write(self.announce_fd, (line + "\n").encode())


def _kill_group(pid: int) -> None:
    """SIGKILL the process group led by pid (the worker and whatever it forked)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def _stdin_open() -> bool:
    import select
    try:
        return bool(os.read(0, 4096)) if select.select([0], [], [], 0)[0] else True
    except OSError:
        return False


if __name__ == "__main__":   # the old command line: kept working, not a silent no-op
    import runpy  # (by name: supervisor_main imports this module)

    runpy.run_module("nbcluster.worker.supervisor_main", run_name="__main__")
