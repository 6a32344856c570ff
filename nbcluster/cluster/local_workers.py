"""A supervisor process started by LocalCluster, and what it says about its workers.

    LocalCluster ──stdin pipe──► python -m nbcluster.worker.supervisor_main --announce ...
                 ◄──stdout────── "started PID" / "exited PID REASON"  (read by a thread here)

The supervisor starts, watches and replaces the workers (see nbcluster.worker.supervisor); this
side only keeps the list of live worker pids and how each one that ended did so. Closing
the pipe makes the supervisor kill its workers' process groups and exit, also when we are
killed ourselves; then it also removes the cluster's shared-memory files and temp directory
(`cluster_dir`), which we, killed, cannot. A supervisor that dies while we did not ask it to
(kill -9) takes its workers with it (they watch its pipe); it is started again, so the
cluster does not shrink.
"""

from __future__ import annotations

import contextlib
import logging
import subprocess
import sys
import threading
import time
from typing import NamedTuple

from ..errors import NBClusterError
from ..worker.procinfo import exit_reason

__all__ = ["SupervisedWorkers", "WorkerProcess"]

log = logging.getLogger("nbcluster.local")

CLOSE_TIMEOUT_S = 10.0
MAX_RESTART_DELAY_S = 8.0   # a supervisor that keeps dying is started again this often at most


class WorkerProcess(NamedTuple):
    """A worker process started by a LocalCluster's supervisor."""

    pid: int


class SupervisedWorkers:
    """`n` workers under one supervisor process, connecting with `connect_args`."""

    def __init__(self, n: int, connect_args: list[str], labels: list[str], env: dict, *,
                 memory_limit: int | None = None, max_tasks_per_child: int | None = None,
                 respawn: bool = True, cluster_dir: str | None = None):
        args = [sys.executable, "-m", "nbcluster.worker.supervisor_main", "--announce",
                "--watch-stdin", "-n", str(n), *connect_args]
        if labels:
            args += ["--labels", ",".join(labels)]
        if memory_limit:
            args += ["--memory-limit", str(memory_limit)]
        if max_tasks_per_child:
            args += ["--max-tasks-per-child", str(max_tasks_per_child)]
        if not respawn:
            args.append("--no-respawn")
        if cluster_dir:   # removed by the supervisor if we are killed (see the module doc)
            args += ["--cluster-dir", cluster_dir]
        self.live: list[int] = []            # worker pids, oldest first
        self.exits: dict[int, str] = {}      # pid -> how it ended
        self.started = 0
        self._changed = threading.Condition()
        self._closing = False
        self._args, self._env = args, env
        self.proc = self._spawn()
        self._reader = threading.Thread(target=self._read, name="nbcluster-supervisor",
                                        daemon=True)
        self._reader.start()

    def _spawn(self) -> subprocess.Popen[bytes]:
        # A session of its own: Ctrl-C in the caller's terminal is the caller's, not ours.
        return subprocess.Popen(self._args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                env=self._env, close_fds=True, start_new_session=True)

    def _read(self) -> None:
        """Follow the supervisor's lines; start it again if it dies unasked (killed, or a
        crash: status 0 means its workers all left as they were asked to)."""
        delay = 0.25
        while True:
            proc = self.proc
            self._follow(proc)
            code = proc.wait()
            with self._changed:
                for pid in self.live:   # they watch its pipe: they are gone with it
                    self.exits.setdefault(pid, "its supervisor died")
                self.live.clear()
                self._changed.notify_all()
                if self._closing or code == 0:   # 0: its workers all left, as asked
                    return
            log.warning("the workers' supervisor (pid %d) %s: starting it again in %g s",
                        proc.pid, exit_reason(code), delay)
            time.sleep(delay)
            delay = min(delay * 2, MAX_RESTART_DELAY_S)
            with self._changed:
                if self._closing:
                    return
                if proc.stdout is not None:
                    proc.stdout.close()
                self.proc = self._spawn()

    def _follow(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None   # PIPE
        for line in proc.stdout:
            kind, _, rest = line.decode(errors="replace").rstrip("\n").partition(" ")
            pid_text, _, reason = rest.partition(" ")
            if not pid_text.isdigit():
                continue
            with self._changed:
                if kind == "started":
                    self.live.append(int(pid_text))
                    self.started += 1
                elif kind == "exited":
                    self.exits[int(pid_text)] = reason
                    if int(pid_text) in self.live:
                        self.live.remove(int(pid_text))
                self._changed.notify_all()

    def wait_started(self, n: int, timeout: float) -> list[WorkerProcess]:
        """The first n workers, once started (within timeout seconds)."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while self.started < n:
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    raise NBClusterError(f"the supervisor started {self.started} of {n} "
                                         f"workers within {timeout:.0f} s (exit code "
                                         f"{self.proc.poll()})")
                self._changed.wait(min(left, 0.5))
            return [WorkerProcess(pid) for pid in self.live[:n]]

    def pids(self) -> list[int]:
        with self._changed:
            return list(self.live)

    def begin_close(self) -> None:
        """Ask the supervisor to stop (it kills its workers' process groups), not waiting."""
        with self._changed:
            self._closing = True
            proc = self.proc
        if proc.stdin is not None:
            with contextlib.suppress(OSError, ValueError):
                proc.stdin.close()

    def close(self) -> None:
        """Stop the supervisor and wait for it."""
        self.begin_close()
        try:
            self.proc.wait(CLOSE_TIMEOUT_S)
        except subprocess.TimeoutExpired:   # its workers end when their stdin (from it) closes
            self.proc.kill()
            self.proc.wait()
        self._reader.join(CLOSE_TIMEOUT_S)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
