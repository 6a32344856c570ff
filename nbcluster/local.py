"""LocalCluster: a broker and workers as child processes of this one, on this machine.

Children watch a pipe from us on their stdin and exit the moment it closes, so they go away
with us even if we are killed with SIGKILL. Workers that die are respawned (a poison task
cannot empty the cluster); `close()` stops everything it started and waits for it.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Iterable

from . import protocol, shm
from .bars import progress_bar
from .broker_silence import DEFAULT_BROKER_TIMEOUT_S
from .client import Client, remember_latest
from .connection import KEY_ENV, ConnectionInfo
from .curve import is_loopback
from .errors import NBClusterError

__all__ = ["LocalCluster"]

START_TIMEOUT_S = 30.0


class LocalCluster:
    """A broker and `n_workers` workers on loopback, stopped on `close()` or leaving `with`.

    Args:
        n_workers: number of workers (default: one per core).
        labels: labels every worker carries.
        connection_file: where to write the connection file (default: in a private temp dir).
        heartbeat_ms, liveness, max_lost, client_expiry_ms: broker tunables (see `broker_state`).
        respawn: start a new worker when one dies.
        max_message_bytes: the broker refuses larger messages.
        ip: also listen on this address (e.g. "0.0.0.0") so workers on other hosts can join;
            beyond loopback the cluster runs with CurveZMQ (keys in the connection file).
        port: the TCP port (default: one the system picks).
        insecure: beyond loopback without encryption (not recommended).
    """

    def __init__(self, n_workers: int | None = None, labels: Iterable[str] | None = None, *,
                 connection_file: str | os.PathLike | None = None, heartbeat_ms: int = 1000,
                 liveness: int = 3, max_lost: int = 3, client_expiry_ms: int = 30_000,
                 respawn: bool = True,
                 max_message_bytes: int = protocol.DEFAULT_MAX_MESSAGE_BYTES,
                 tcp: bool = True, ip: str | None = None, port: int = 0,
                 insecure: bool = False):
        self.n_workers = n_workers if n_workers is not None else (os.cpu_count() or 1)
        self.labels = sorted(labels or ())
        self.key = protocol.new_key()
        self._dir = Path(tempfile.mkdtemp(prefix="nbcluster-"))
        self.connection_file = Path(connection_file or self._dir / "cluster.json").expanduser()
        self.respawn = respawn
        self._closed = False
        self._clients: list[Client] = []
        self._exits: dict[int, int] = {}     # pid -> exit code of workers that ended
        self._labels_of: dict[int, list[str]] = {}   # pid -> labels of the workers we started
        self._lock = threading.Lock()
        # Workers see the modules we see, as multiprocessing's spawn does: our sys.path first.
        path = [os.path.abspath(p or ".") for p in sys.path if os.path.isdir(p or ".")]
        env = {**os.environ, KEY_ENV: self.key.hex(), "PYTHONUNBUFFERED": "1",
               "PYTHONPATH": os.pathsep.join(dict.fromkeys(path))}
        env.pop("PYTHONSTARTUP", None)
        self._env = env
        ipc = f"ipc://{self._dir}/broker"
        binds = [ipc] + ([f"tcp://{ip or '127.0.0.1'}:{port}"] if tcp or ip else [])
        exposed = not all(is_loopback(b) for b in binds)
        self.broker = self._spawn(
            ["-m", "nbcluster.broker", "--watch-stdin", "--connection-file",
             str(self.connection_file), "--heartbeat-ms", str(heartbeat_ms), "--liveness",
             str(liveness), "--max-lost", str(max_lost), "--client-expiry-ms",
             str(client_expiry_ms), "--max-message-bytes",
             str(max_message_bytes), *(["--insecure"] if insecure else []),
             *sum((["--bind", b] for b in binds), [])],
            stdout=subprocess.PIPE)
        self.endpoint = ipc
        self.info = ConnectionInfo([ipc], self.key)
        self.workers: list[subprocess.Popen] = []
        try:
            if exposed:   # workers need the Curve keys of the connection file: wait for it
                self._read_ready_line()
            self.workers += [self._start_worker(self.labels) for _ in range(self.n_workers)]
            self._wait_ready()
        except BaseException:
            self.close()
            raise
        self._watcher = threading.Thread(target=self._watch, name="nbcluster-respawn", daemon=True)
        self._watcher.start()
        self._default_client: Client | None = None
        remember_latest(self)

    @property
    def closed(self) -> bool:
        return self._closed

    def default_client(self) -> Client:
        """The client that operations given no client use while this is the latest cluster."""
        if self._default_client is None or self._default_client.closed:
            self._default_client = self.client()
        return self._default_client

    def _spawn(self, args: list[str], **kw) -> subprocess.Popen:
        # A session of their own: Ctrl-C in the caller's terminal is the caller's, not theirs.
        return subprocess.Popen([sys.executable, *args], stdin=subprocess.PIPE, env=self._env,
                                close_fds=True, start_new_session=True, **kw)

    def _start_worker(self, labels: list[str]) -> subprocess.Popen:
        args = ["--labels", ",".join(labels)] if labels else []
        target = str(self.connection_file) if self.info.curve else self.endpoint
        proc = self._spawn(["-m", "nbcluster.worker", "--watch-stdin", "--connect", target,
                            *args])
        self._labels_of[proc.pid] = labels   # a respawned worker gets the same labels
        return proc

    def _read_ready_line(self) -> None:
        if getattr(self, "endpoints", None):
            return
        line = self.broker.stdout.readline().decode()
        if not line.startswith("ready"):
            raise NBClusterError(f"the broker did not start (exit code {self.broker.wait(5)})")
        self.endpoints = line.split()[1:]
        self.info = ConnectionInfo.read(self.connection_file)

    def _wait_ready(self) -> None:
        self._read_ready_line()
        bar = progress_bar(self.n_workers, "workers joining")   # shows after 0.5 s only
        with Client(self.endpoint, self.key, remember=False, curve=self.info.curve) as client:
            deadline = time.monotonic() + START_TIMEOUT_S
            while client.n_workers < self.n_workers:
                if time.monotonic() > deadline:
                    bar.close()
                    raise NBClusterError(f"only {client.n_workers} of {self.n_workers} workers "
                                         f"registered within {START_TIMEOUT_S} s")
                before = client.n_workers
                client.status()
                bar.update(done=max(0, min(client.n_workers, self.n_workers) - before))
                if client.n_workers < self.n_workers:
                    time.sleep(0.005)
        bar.close()

    def client(self, broker_timeout: float = DEFAULT_BROKER_TIMEOUT_S) -> Client:
        """A new Client connected to this cluster (closed with the cluster); see `Client`
        for broker_timeout."""
        client = Client(self.endpoint, self.key, remember=False, curve=self.info.curve,
                        broker_timeout=broker_timeout)
        remember_latest(client)
        client.exit_reason = self.exit_reason
        self._clients.append(client)
        return client

    def exit_reason(self, pid: int | None) -> str | None:
        """How one of our workers ended ("killed by SIGKILL", "exited with status 3"), if it did."""
        code = self._exits.get(pid)
        if code is None:
            return None
        if code < 0:
            try:
                return f"killed by {signal.Signals(-code).name}"
            except ValueError:
                return f"killed by signal {-code}"
        return f"exited with status {code}"

    def add_workers(self, n: int = 1, labels: Iterable[str] | None = None) -> list[subprocess.Popen]:
        """Start n more workers (with their own labels if given); returns their processes."""
        labels = sorted(labels) if labels is not None else self.labels
        with self._lock:
            new = [self._start_worker(labels) for _ in range(n)]
            self.workers += new
        return new

    def _watch(self) -> None:
        """Respawn workers that died (unless we are closing); reap them either way."""
        while not self._closed:
            time.sleep(0.1)
            with self._lock:
                for i, p in enumerate(self.workers):
                    if p.poll() is not None and p.pid not in self._exits:
                        self._exits[p.pid] = p.returncode
                        if not self._closed and self.respawn and p.returncode != 0:
                            self.workers[i] = self._start_worker(self._labels_of.pop(p.pid))

    def close(self) -> None:
        """Stop every process this cluster started and wait until they are gone."""
        if self._closed:
            return
        self._closed = True
        for c in self._clients:
            c.close()
        with self._lock:
            procs = [*self.workers, self.broker]
        for p in procs:          # closing stdin makes each child exit at once
            try:
                p.stdin.close()
            except (OSError, ValueError):
                pass
        deadline = time.monotonic() + 2.0
        for p in procs:
            try:
                p.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        if self.broker.stdout:
            self.broker.stdout.close()
        if shm.available():
            shm.SharedMemory(self.key).remove_all_of_cluster()
        shutil.rmtree(self._dir, ignore_errors=True)

    def pids(self) -> dict[str, list[int]]:
        """Process ids of the broker and the workers, for tests and tooling."""
        with self._lock:
            return {"broker": [self.broker.pid], "workers": [p.pid for p in self.workers]}

    def __enter__(self) -> "LocalCluster":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<LocalCluster {self.n_workers} workers at {self.endpoint}>"
