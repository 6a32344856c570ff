"""LocalCluster: a broker and workers as child processes of this one, on this machine.

Children watch a pipe from us on their stdin and exit the moment it closes, so they go away
with us even if we are killed with SIGKILL; then they also remove the cluster's
shared-memory files and temp directory (the supervisors once their workers are gone).
The workers run under a supervisor process (nbcluster.worker.supervisor, through
local_workers): workers that end are respawned whatever their exit status (a poison task
cannot empty the cluster), their process groups are killed with them, a memory limit and
max_tasks_per_child are enforced. A broker that dies is started
again (see broker_process). `close()` stops everything it started, waits for it, and removes
the connection file.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Iterable
from pathlib import Path

from ..client import executor
from ..client.bars import progress_bar
from ..client.broker_silence import DEFAULT_BROKER_TIMEOUT_S
from ..client.client import Client
from ..client.latest import remember_latest
from ..errors import NBClusterError
from ..wire import protocol, shm
from ..wire.connection import KEY_ENV, ConnectionInfo
from ..wire.curve import is_loopback
from ..worker.procinfo import parse_bytes
from .broker_process import BrokerProcess
from .local_workers import SupervisedWorkers, WorkerProcess

__all__ = ["LocalCluster"]

START_TIMEOUT_S = 30.0
READY_POLL_S = 0.02   # how often a big cluster asks the broker how many workers joined


class LocalCluster:
    """A broker and `n_workers` workers on loopback, stopped on `close()` or leaving `with`.

    Args:
        n_workers: number of workers (default: one per core).
        labels: labels every worker carries.
        connection_file: where to write the connection file (default: in a private temp dir).
        heartbeat_ms, liveness, max_lost, client_expiry_ms: broker tunables (see `broker_state`;
            client_expiry_ms None: the broker's default).
        respawn: start a new worker when one dies.
        memory_limit: kill (and replace) a worker whose resident memory passes this, in
            bytes or as "2GiB"; its running task fails with MemoryLimitExceeded.
        max_tasks_per_child: replace each worker after it ran this many tasks.
        max_message_bytes: the broker refuses larger messages.
        ip: also listen on this address (e.g. "0.0.0.0") so workers on other hosts can join;
            beyond loopback the cluster runs with CurveZMQ (keys in the connection file).
        port: the TCP port (default: one the system picks).
        insecure: beyond loopback without encryption (not recommended).
    """

    def __init__(self, n_workers: int | None = None, labels: Iterable[str] | None = None, *,
                 connection_file: str | os.PathLike[str] | None = None, heartbeat_ms: int = 1000,
                 liveness: int = 3, max_lost: int = 3,
                 client_expiry_ms: int | None = None,
                 respawn: bool = True,
                 max_message_bytes: int = protocol.DEFAULT_MAX_MESSAGE_BYTES,
                 tcp: bool = True, ip: str | None = None, port: int = 0,
                 insecure: bool = False, memory_limit: int | str | None = None,
                 max_tasks_per_child: int | None = None):
        self.n_workers = n_workers if n_workers is not None else (os.cpu_count() or 1)
        self.labels = sorted(labels or ())
        self.key = protocol.new_key()
        self._dir = Path(tempfile.mkdtemp(prefix="nbcluster-"))
        self.connection_file = Path(connection_file or self._dir / "cluster.json").expanduser()
        self.respawn = respawn
        self.memory_limit = parse_bytes(memory_limit)
        if max_tasks_per_child is not None and max_tasks_per_child < 1:
            raise ValueError(f"max_tasks_per_child must be at least 1, not {max_tasks_per_child}")
        self.max_tasks_per_child = max_tasks_per_child
        self._closed = False
        self._clients: list[Client] = []
        self._supervisors: list[SupervisedWorkers] = []   # each starts and keeps some workers
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
        # restarted if it dies, on the same endpoints, with the same keys and file
        self.broker = BrokerProcess(
            binds, self.key, env=env, connection_file=self.connection_file, options=[
                "--heartbeat-ms", str(heartbeat_ms), "--liveness", str(liveness),
                "--max-lost", str(max_lost),
                *(["--client-expiry-ms", str(client_expiry_ms)] if client_expiry_ms else []),
                "--max-message-bytes", str(max_message_bytes),
                *(["--insecure"] if insecure else [])],
            curve=exposed and not insecure, cluster_dir=str(self._dir))
        self.broker.start()
        self.endpoint = ipc
        self.info = ConnectionInfo([ipc], self.key)
        try:
            if exposed:   # workers need the Curve keys of the connection file: wait for it
                self._read_ready_line()
            if self.n_workers:
                self._start_workers(self.n_workers, self.labels)
            self._wait_ready()
        except BaseException:
            self.close()
            raise
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

    def _start_workers(self, n: int, labels: list[str]) -> SupervisedWorkers:
        """n workers under a supervisor of their own (a respawned one keeps their labels)."""
        target = str(self.connection_file) if self.info.curve else self.endpoint
        supervisor = SupervisedWorkers(n, ["--connect", target], labels, self._env,
                                       memory_limit=self.memory_limit,
                                       max_tasks_per_child=self.max_tasks_per_child,
                                       respawn=self.respawn, cluster_dir=str(self._dir))
        with self._lock:
            self._supervisors.append(supervisor)
        return supervisor

    def _read_ready_line(self) -> None:
        self.broker.wait_ready()
        assert self.broker.info is not None   # wait_ready wrote it
        self.endpoints, self.info = self.broker.endpoints, self.broker.info

    def _wait_ready(self) -> None:
        self._read_ready_line()
        bar = progress_bar(self.n_workers, "workers joining")   # shows after 0.5 s only
        with Client(self.endpoint, self.key, remember=False, curve=self.info.curve) as client:
            deadline = time.monotonic() + START_TIMEOUT_S
            while client.n_workers < self.n_workers:
                ended = [s.proc.returncode for s in self._supervisors if s.proc.poll() is not None]
                if ended:   # no worker of it will come: say so now, not after the timeout
                    bar.close()
                    raise NBClusterError(f"the workers' supervisor exited with status "
                                         f"{ended[0]} (its error, if any, is on stderr)")
                if time.monotonic() > deadline:
                    bar.close()
                    raise NBClusterError(f"only {client.n_workers} of {self.n_workers} workers "
                                         f"registered within {START_TIMEOUT_S} s")
                before = client.n_workers
                client.status()
                bar.update(done=max(0, min(client.n_workers, self.n_workers) - before))
                if client.n_workers < self.n_workers:   # a status costs the broker O(workers)
                    time.sleep(READY_POLL_S if self.n_workers > 8 else 0.005)
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
        """How one of our workers ended ("killed by SIGKILL", "exited with status 3", "memory
        limit 2.0 GiB exceeded (rss 2.3 GiB)"), as its supervisor saw it, if it did."""
        with self._lock:
            supervisors = list(self._supervisors)
        return next((s.exits[pid] for s in supervisors if pid in s.exits), None)

    def add_workers(self, n: int = 1, labels: Iterable[str] | None = None) -> list[WorkerProcess]:
        """Start n more workers (with their own labels if given, under a supervisor of their
        own); returns them (their `.pid`) once their processes have started."""
        labels = sorted(labels) if labels is not None else self.labels
        return self._start_workers(n, labels).wait_started(n, START_TIMEOUT_S)

    def close(self) -> None:
        """Stop every process this cluster started and wait until they are gone."""
        if self._closed:
            return
        self._closed = True
        for c in self._clients:
            c.close()
        with self._lock:
            supervisors = list(self._supervisors)
        for s in supervisors:   # each kills its workers' process groups, then exits...
            s.begin_close()
        self.broker.stop()       # ...meanwhile the broker stops, not to be started again
        for s in supervisors:
            s.close()
        shm.remove_cluster_files(self.key)
        shutil.rmtree(self._dir, ignore_errors=True)

    def pids(self) -> dict[str, list[int]]:
        """Process ids of the broker, the live workers and their supervisors."""
        with self._lock:
            supervisors = list(self._supervisors)
        return {"broker": [pid for pid in [self.broker.pid] if pid is not None],
                "workers": [pid for s in supervisors for pid in s.pids()],
                "supervisors": [s.proc.pid for s in supervisors]}

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<LocalCluster {self.n_workers} workers at {self.endpoint}>"


executor.own_cluster = LocalCluster   # what Executor() without a client starts
