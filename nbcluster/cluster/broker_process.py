"""A broker as a child process, started again when it dies unexpectedly.

    LocalCluster / `nbcluster start` (the keeper)
      └─ BrokerProcess ─ spawns ─► python -m nbcluster.cluster.broker_main --watch-stdin ...
           │   stdin:  the Curve keys (one line, when beyond loopback), then held open:
           │           closing it stops the broker; the secret never goes on argv or in a file
           │   stdout: "ready <bound endpoints>" → the connection file is (re)written:
           │           same endpoints and keys, pid = this broker, keeper = us
           └─ a thread waits for the broker to exit:
                status 0, SIGTERM, SIGINT: it was asked to stop (`nbcluster stop`) → stopped
                anything else (SIGKILL, a crash): started again on the endpoints it had
                    bound (the port the system picked first, the same ipc path), after a
                    back-off; the MAX_DEATHS-th death within DEATH_WINDOW_S → give up, stopped

Workers and clients reconnect by themselves (ZeroMQ reconnects; they register and resubmit
again), so a restart costs them only the tasks' re-runs. The connection file is removed by
`stop()` only, and only while it is still ours.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from pathlib import Path

from ..errors import NBClusterError
from ..wire.connection import ConnectionInfo, advertised
from ..wire.curve import CurveKeys, server_keys_line

__all__ = ["BrokerProcess", "describe_exit"]

log = logging.getLogger("nbcluster.cluster")

MAX_DEATHS = 5             # this many unexpected deaths within DEATH_WINDOW_S: give up
DEATH_WINDOW_S = 60.0
FIRST_BACKOFF_S = 0.25     # no wait after a first death; then this, doubled each time
MAX_BACKOFF_S = 8.0
STOP_GRACE_S = 2.0         # stop(): after closing its stdin, wait this long, then SIGKILL
ASKED_TO_STOP = (0, -signal.SIGTERM, -signal.SIGINT)   # exit statuses of a wanted stop


def describe_exit(code: int) -> str:
    """How a process ended, from its Popen return code: "was killed by SIGKILL", "exited
    with status 2"."""
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"


class BrokerProcess:
    """A `nbcluster.broker` child kept running: restarted on the same endpoints with the same
    keys when it dies unexpectedly, until `stop()`, a wanted stop, or too many deaths.

    Args:
        binds: endpoints to bind the first time (tcp port 0: one the system picks, kept).
        key: the cluster key (handed over in `env`, as `KEY_ENV`).
        env: the broker's environment.
        connection_file: written once the broker is ready, again after each restart.
        options: more broker arguments (tunables, --insecure).
        curve: serve CurveZMQ with keys made here, the same for every restart.
        cluster_dir: a LocalCluster's temp directory: the broker removes it, with the
            cluster's shared-memory files, when its stdin closes (we are gone or stopping).
    """

    def __init__(self, binds: list[str], key: bytes, *, env: dict[str, str],
                 connection_file: str | os.PathLike[str], options: Iterable[str] = (),
                 curve: bool = False, cluster_dir: str | None = None) -> None:
        self.binds = list(binds)
        self.cluster_dir = cluster_dir
        self.key = key
        self.env = env
        self.connection_file = Path(connection_file).expanduser()
        self.options = list(options)
        self._curve: tuple[CurveKeys, bytes] | None = CurveKeys.generate() if curve else None
        self.endpoints: list[str] = []        # as bound by the first broker
        self.info: ConnectionInfo | None = None
        self.gave_up: str | None = None       # why it was not started again, if it was not
        self.restarts = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._stopping = threading.Event()
        self._stopped = threading.Event()     # no broker runs, and none will be started
        self._lock = threading.Lock()
        self._watcher: threading.Thread | None = None

    @property
    def pid(self) -> int | None:
        """The current broker's process id."""
        return self._proc.pid if self._proc else None

    def start(self) -> None:
        """Start the broker; `wait_ready()` then waits for it."""
        self._spawn(self.binds)

    def wait_ready(self) -> None:
        """Wait for the first broker's ready line, write the connection file, and from then
        on restart the broker when it dies.

        Raises:
            NBClusterError: the broker did not start (its exit status said).
        """
        if self._watcher is not None:
            return
        assert self._proc is not None, "started in __init__"
        self.endpoints = self._read_ready(self._proc)
        self._watcher = threading.Thread(target=self._watch, name="nbcluster-broker",
                                         daemon=True)
        self._watcher.start()

    def wait_stopped(self, timeout: float | None = None) -> bool:
        """True once no broker runs and none will be started again (it was asked to stop,
        or it died too often: see `gave_up`); False if `timeout` passed first."""
        return self._stopped.wait(timeout)

    def _spawn(self, binds: list[str]) -> subprocess.Popen[bytes]:
        args = [sys.executable, "-m", "nbcluster.cluster.broker_main",
                *(["--cluster-dir", self.cluster_dir] if self.cluster_dir else []),
                "--watch-stdin", *self.options,
                *(["--curve-keys-on-stdin"] if self._curve else []),
                *(arg for b in binds for arg in ("--bind", b))]
        with self._lock:
            if self._stopping.is_set():
                raise NBClusterError("the cluster is stopping")
            try:   # a session of its own: Ctrl-C in the caller's terminal is not for it
                proc = self._proc = subprocess.Popen(
                    args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=self.env,
                    close_fds=True, start_new_session=True)
            except OSError as e:   # e.g. no memory to fork
                raise NBClusterError(f"could not start the broker: {e}") from e
        assert proc.stdin is not None and proc.stdout is not None   # both PIPE
        if self._curve:
            try:
                proc.stdin.write(server_keys_line(*self._curve))
                proc.stdin.flush()
            except (OSError, ValueError):   # it died already (its status will say why)
                pass
        return proc

    def _read_ready(self, proc: subprocess.Popen[bytes]) -> list[str]:
        assert proc.stdout is not None   # PIPE
        line = proc.stdout.readline().decode()
        if not line.startswith("ready"):
            raise NBClusterError(f"the broker did not start: it {describe_exit(proc.wait())}")
        endpoints = line.split()[1:]
        self.info = ConnectionInfo(endpoints=advertised(endpoints), key=self.key,
                                   curve=self._curve[0] if self._curve else None,
                                   pid=proc.pid, keeper=os.getpid())
        self.info.write(self.connection_file)
        return endpoints

    def _watch(self) -> None:
        """Wait for each broker to exit; start it again unless that was wanted."""
        try:
            assert self._proc is not None, "started in __init__"
            self._keep_running(self._proc)
        except Exception as e:   # a bug of ours: said, and the keeper is not left waiting
            log.exception("nbcluster: internal error while keeping the broker running")
            self.gave_up = f"internal error while keeping the broker running: {e!r}"
        if not self._stopping.is_set():   # no broker will answer at this file any more
            self._remove_connection_file()
        self._stopped.set()

    def _keep_running(self, proc: subprocess.Popen[bytes]) -> None:
        deaths: list[float] = []
        while True:
            code = proc.wait()
            if self._stopping.is_set():
                break
            if code in ASKED_TO_STOP:
                log.info("nbcluster: the broker (pid %d) %s: it was asked to stop",
                         proc.pid, describe_exit(code))
                return
            now = time.monotonic()
            deaths = [t for t in deaths if now - t < DEATH_WINDOW_S] + [now]
            if len(deaths) >= MAX_DEATHS:
                self.gave_up = (f"the broker died {len(deaths)} times within "
                                f"{DEATH_WINDOW_S:.0f} s (last: pid {proc.pid} "
                                f"{describe_exit(code)}): giving up, not starting it again")
                log.error("nbcluster: %s", self.gave_up)
                return
            delay = 0.0 if len(deaths) == 1 else \
                min(MAX_BACKOFF_S, FIRST_BACKOFF_S * 2 ** (len(deaths) - 2))
            log.warning("nbcluster: the broker (pid %d) %s unexpectedly: starting it again%s",
                        proc.pid, describe_exit(code), f" in {delay:g} s" if delay else "")
            if self._stopping.wait(delay):
                break
            self._close_pipes(proc)
            try:
                proc = self._spawn(self.endpoints)   # the same ports and paths as at first
                self._read_ready(proc)
            except NBClusterError as e:   # it died at once: counted as a death next round
                log.warning("nbcluster: %s", e)
                if self._stopping.is_set():
                    break
                continue
            except OSError as e:   # it runs; only its connection file could not be written
                log.error("nbcluster: could not write %s: %s", self.connection_file, e)
            self.restarts += 1
            log.warning("nbcluster: the broker is back (pid %d, restart %d)", proc.pid,
                        self.restarts)

    def stop(self) -> None:
        """Stop the broker (closing its stdin, SIGKILL if it lingers), restart it no more,
        and remove the connection file if it is still ours."""
        with self._lock:
            self._stopping.set()
            proc = self._proc
        if proc is not None and proc.stdin is not None:
            with contextlib.suppress(OSError, ValueError):
                proc.stdin.close()   # it watches its stdin: it leaves at once
            try:
                proc.wait(STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._watcher is not None:   # it reads the pipes: closed once it is done
            self._watcher.join()
        if proc is not None:
            self._close_pipes(proc)
        self._stopped.set()
        self._remove_connection_file()

    def _remove_connection_file(self) -> None:
        """Remove the connection file if it is still the one we wrote (a cluster started
        later with the same file keeps its own)."""
        try:
            info = ConnectionInfo.read(self.connection_file)
        except (OSError, NBClusterError):
            return
        if info.key == self.key and info.keeper == os.getpid():
            self.connection_file.unlink(missing_ok=True)

    @staticmethod
    def _close_pipes(proc: subprocess.Popen[bytes]) -> None:
        for pipe in (proc.stdin, proc.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError, ValueError):
                    pipe.close()
