"""Helpers for testing code that uses nbcluster (and for nbcluster's own tests).

For example::

    from nbcluster.testing import throwaway_cluster, kill_worker
    with throwaway_cluster(2, heartbeat_ms=200) as cluster:
        ...
        kill_worker(cluster, "w1")   # SIGKILL, by pid, only a process the cluster started
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable

from .cluster.local import LocalCluster

__all__ = ["throwaway_cluster", "kill_worker", "worker_pid", "wait_for"]


def throwaway_cluster(n_workers: int = 2, **kwargs) -> LocalCluster:
    """A LocalCluster with fast heartbeats (so faults are noticed in well under a second)."""
    kwargs.setdefault("heartbeat_ms", 200)
    return LocalCluster(n_workers, **kwargs)


def worker_pid(client, worker_id: str) -> int:
    """The process id of a worker, as the broker knows it."""
    for w in client.workers():
        if w["id"] == worker_id:
            return w["pid"]
    raise LookupError(f"no worker {worker_id!r}")


def kill_worker(cluster: LocalCluster, worker_id: str, sig: int = signal.SIGKILL,
                client=None) -> int:
    """Send sig (default SIGKILL) to one of cluster's worker processes; returns its pid."""
    pid = worker_pid(client or cluster.client(), worker_id)
    if pid not in cluster.pids()["workers"]:
        raise LookupError(f"worker {worker_id} (pid {pid}) was not started by this cluster")
    os.kill(pid, sig)
    return pid


def wait_for(condition: Callable[[], object], timeout: float = 10.0, interval: float = 0.02,
             what: str = "condition"):
    """Poll condition() until it is truthy; returns its value or raises TimeoutError."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not met within {timeout} s")
        time.sleep(interval)
