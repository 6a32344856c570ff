"""The two clusters bench_scale drives, behind one face: nbcluster and dask.distributed.

Each peer starts a broker (dask: a scheduler process) and workers, runs no-op round trips
and status queries from this process, starts agents (scale_agent.py: clients in processes
of their own) and adds workers. Both put every process they start where `stop` ends it:
LocalCluster's own close() for nbcluster, `Procs` (by pid) for dask.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from scale_procs import HERE, Agent, Procs, wait_until

RESULT_TIMEOUT_S = 120.0


def noop():
    return None


def sleep_task(seconds):
    """Sleeps; returns when it started (time.time(): the workers share this host's clock)."""
    start = time.time()
    time.sleep(seconds)
    return start


def _env() -> dict:
    """Our sys.path for children (the worktree's nbcluster, this folder's modules)."""
    path = [os.path.abspath(p or ".") for p in [str(HERE), *sys.path] if os.path.isdir(p or ".")]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(dict.fromkeys(path))}


@contextlib.contextmanager
def _stderr_to(path: Path):
    """Processes started inside inherit path as their stderr (the broker logs every dropped
    message of a flood: thousands of lines), and so does this process, meanwhile."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(path, "ab") as log:
        os.dup2(log.fileno(), 2)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


class NBClusterPeer:
    """A LocalCluster; its broker's and workers' logs go to a file that stop() removes."""

    name = "nbcluster"

    def __init__(self, procs: Procs):
        self.procs = procs
        self.cluster = None
        self.dir: Path | None = None

    def start(self, n_workers: int) -> None:
        import nbcluster
        self.dir = Path(tempfile.mkdtemp(prefix="bench-scale-nbcluster-"))
        with _stderr_to(self.dir / "log"):
            self.cluster = nbcluster.LocalCluster(n_workers)
        self.client = self.cluster.client(broker_timeout=600)
        self.probe_client = self.cluster.client(broker_timeout=600)

    @property
    def broker_pid(self) -> int:
        return self.cluster.pids()["broker"][0]

    def agent(self) -> Agent:
        env = {**_env(), "NBCLUSTER_KEY": self.cluster.key.hex()}
        return Agent(self.procs, self.name, self.cluster.endpoint, env)

    def roundtrip(self) -> None:
        self.probe_client.submit(noop).result(RESULT_TIMEOUT_S)

    def status(self) -> object:
        return self.client.status(timeout=RESULT_TIMEOUT_S)

    def n_workers(self) -> int:
        return len(self.client.status(timeout=RESULT_TIMEOUT_S)["workers"])

    def n_queued(self) -> int:
        return self.client.status(timeout=RESULT_TIMEOUT_S)["queued"]

    def add_workers(self, n: int) -> None:
        assert self.dir is not None
        with _stderr_to(self.dir / "log"):
            self.cluster.add_workers(n)

    def worker_pids(self) -> list[int]:
        return self.cluster.pids()["workers"]

    def submit_sleeps(self, n: int, seconds: float) -> list:
        return [self.client.submit(sleep_task, seconds) for _ in range(n)]

    def cancel(self, futures: list) -> None:
        self.client.cancel(futures)

    def flood_target(self) -> str:
        """The broker's TCP endpoint: what any local process can reach without the key."""
        return next(e for e in self.cluster.broker.endpoints if e.startswith("tcp://"))

    def stop(self) -> None:
        if self.cluster is not None:
            self.cluster.close()
            self.cluster = None
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None


class DaskPeer:
    """A `dask scheduler` process, `dask worker --no-nanny --nthreads 1` processes, and
    distributed.Client here (dask's own LocalCluster would run the scheduler in our process)."""

    name = "dask"

    def __init__(self, procs: Procs):
        self.procs = procs
        self.scheduler: subprocess.Popen | None = None
        self.workers: list[subprocess.Popen] = []
        self.client = None
        self.dir: Path | None = None

    def start(self, n_workers: int) -> None:
        import distributed
        self.dir = Path(tempfile.mkdtemp(prefix="bench-scale-dask-"))
        sched_file = self.dir / "scheduler.json"
        self.log = open(self.dir / "log", "wb")  # noqa: SIM115 - closed in stop()
        self.scheduler = self.procs.spawn(
            [sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
             "--port", "0", "--no-dashboard", "--scheduler-file", str(sched_file)],
            env=_env(), stdout=self.log, stderr=subprocess.STDOUT)
        wait_until(lambda: sched_file.exists() and sched_file.stat().st_size, 60,
                   "the dask scheduler's file")
        self.address = json.loads(sched_file.read_text())["address"]
        self.client = distributed.Client(self.address, timeout=60)
        self.probe_client = distributed.Client(self.address, timeout=60)
        self.add_workers(n_workers)
        wait_until(lambda: self.n_workers() >= n_workers, 120, f"{n_workers} dask workers")

    @property
    def broker_pid(self) -> int:
        assert self.scheduler is not None
        return self.scheduler.pid

    def agent(self) -> Agent:
        return Agent(self.procs, self.name, self.address, _env())

    def roundtrip(self) -> None:
        self.probe_client.submit(noop, pure=False).result(RESULT_TIMEOUT_S)

    def status(self) -> object:
        """The nearest to `nbcluster list`: the scheduler's view of its workers."""
        return self.client.scheduler_info(n_workers=-1)

    def n_workers(self) -> int:
        return len(self.client.nthreads())

    def n_queued(self) -> int:
        # bounded: a scheduler busy with 100,000 cancels answered no call for 10 min
        return self.client.run_on_scheduler(_count_tasks, callback_timeout=RESULT_TIMEOUT_S)

    def add_workers(self, n: int) -> None:
        for _ in range(n):
            self.workers.append(self.procs.spawn(
                [sys.executable, "-m", "distributed.cli.dask_worker", self.address,
                 "--nthreads", "1", "--no-nanny", "--no-dashboard", "--memory-limit", "0"],
                env=_env(), stdout=self.log, stderr=subprocess.STDOUT))

    def worker_pids(self) -> list[int]:
        return [w.pid for w in self.workers]

    def submit_sleeps(self, n: int, seconds: float) -> list:
        return self.client.map(sleep_task, [seconds] * n, pure=False)

    def cancel(self, futures: list) -> None:
        self.client.cancel(futures)

    def stop(self) -> None:
        for c in (self.client, getattr(self, "probe_client", None)):
            if c is not None:
                with contextlib.suppress(Exception):   # its processes are killed next
                    c.close(timeout=10)
        self.client = None
        for w in self.workers:
            self.procs.stop(w, timeout=5)
        self.workers = []
        if self.scheduler is not None:
            self.procs.stop(self.scheduler, timeout=5)
            self.scheduler = None
        if self.dir is not None:
            self.log.close()
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None


def _count_tasks(dask_scheduler) -> int:
    return len(dask_scheduler.tasks)


PEERS = {p.name: p for p in (NBClusterPeer, DaskPeer)}
