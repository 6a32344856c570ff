"""Workers on other machines, started with the tools already there: SSH and Slurm.

    SSHWorkers(["user@host1", "host2"], cluster.info, n_per_host=4)
        ssh host "python3 -m nbcluster.cli worker --connect - --watch-stdin -n 4 ..."
        the connection (key included) goes down ssh's stdin, never on a command line or disk;
        `nbcluster worker` is the host's supervisor (it replaces workers that end, enforces
        memory_limit and max_tasks_per_child); closing our end of ssh ends the remote workers
    SSHCluster(["host1", "host2"], n_per_host=4)    a LocalCluster listening beyond loopback
                                                    (Curve on) plus those workers
    SlurmWorkers(cluster.info, nodes=2, n_per_node=4)   an sbatch job; scancel on close

A host that cannot be reached is reported with ssh's own words, not waited on forever.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TypedDict, Unpack
from urllib.parse import urlparse

from ..errors import NBClusterError
from ..wire.connection import ConnectionInfo
from ..worker.procinfo import parse_bytes
from .local import LocalCluster

__all__ = ["SSHWorkers", "SSHCluster", "ClusterOptions", "SlurmWorkers"]

SSH_CONNECT_TIMEOUT_S = 10


class SSHWorkers:
    """Workers started over SSH on each of `hosts`, joining the cluster of `info`.

    Args:
        hosts: ssh destinations (``host`` or ``user@host``).
        info: the cluster's connection (e.g. ``cluster.info``); it must listen beyond
            loopback (``LocalCluster(ip="0.0.0.0")``, ``nbcluster start --ip 0.0.0.0``).
        n_per_host: worker processes per host.
        labels: labels of these workers.
        python: the Python to run on the hosts (nbcluster installed there).
        endpoint: where the hosts reach the broker (default: this machine's address on the
            route to each host, at the broker's TCP port).
        ssh_options: extra ssh arguments, e.g. ``["-i", "~/.ssh/cluster"]``.
        wait: seconds to wait for the workers to join (0: do not wait).
        memory_limit: replace a worker whose memory passes this (bytes or "2GiB"); its
            running task fails with MemoryLimitExceeded.
        max_tasks_per_child: replace each worker after this many tasks.

    Raises:
        NBClusterError: some hosts could not be reached or their workers did not join; the
            message names each host with ssh's own error. Workers that did start are stopped.
    """

    def __init__(self, hosts: Iterable[str], info: ConnectionInfo, n_per_host: int = 1, *,
                 labels: Iterable[str] = (), python: str = "python3",
                 endpoint: str | None = None, ssh_options: Iterable[str] = (),
                 wait: float = 60.0, memory_limit: int | str | None = None,
                 max_tasks_per_child: int | None = None):
        self.hosts, self.info, self.n_per_host = list(hosts), info, n_per_host
        self.limits = limit_args(memory_limit, max_tasks_per_child)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        try:
            self._start(info, n_per_host, labels, python, endpoint, ssh_options)
            if wait:
                self._wait_joined(wait)
        except BaseException:
            self.close()   # the ssh processes started for earlier hosts must not leak
            raise

    def _start(self, info: ConnectionInfo, n_per_host: int, labels: Iterable[str], python: str,
               endpoint: str | None, ssh_options: Iterable[str]) -> None:
        port = _tcp_port(info)
        line = (info.to_json() + "\n").encode()
        for host in self.hosts:
            ep = endpoint or f"tcp://{_source_address(_hostname(host))}:{port}"
            remote = [python, "-m", "nbcluster.cli", "worker", "--connect", "-",
                      "--watch-stdin", "--endpoint", ep, "-n", str(n_per_host), *self.limits]
            if labels:
                remote += ["--labels", ",".join(labels)]
            proc = subprocess.Popen(
                ["ssh", "-o", "BatchMode=yes", "-o", f"ConnectTimeout={SSH_CONNECT_TIMEOUT_S}",
                 "-o", "ServerAliveInterval=5", *ssh_options, host, shlex.join(remote)],
                stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                start_new_session=True)
            self.procs[host] = proc
            assert proc.stdin is not None   # PIPE
            try:
                proc.stdin.write(line)
                proc.stdin.flush()
            except OSError:   # ssh exited already (host unreachable): _wait_joined says why
                pass

    def _wait_joined(self, timeout: float) -> None:
        from ..client.client import Client
        expected = len(self.hosts) * self.n_per_host
        deadline = time.monotonic() + timeout
        with Client(self.info.best_endpoint(), self.info.key, curve=self.info.curve,
                    remember=False) as client:
            before = len(client.workers())
            while True:
                failed = {h: p for h, p in self.procs.items() if p.poll() is not None}
                if failed:
                    self.close()
                    raise NBClusterError("could not start workers on " + "; ".join(
                        f"{h}: {_stderr(p) or f'ssh exited with {p.returncode}'}"
                        for h, p in failed.items()))
                if len(client.workers()) - before >= expected:
                    return
                if time.monotonic() > deadline:
                    self.close()
                    raise NBClusterError(f"workers on {', '.join(self.hosts)} did not all join "
                                         f"within {timeout:.0f} s (can they reach the broker?)")
                time.sleep(0.1)

    def close(self) -> None:
        """Stop the workers: closing ssh's stdin ends them on their hosts."""
        for p in self.procs.values():
            if p.stdin is not None:
                with contextlib.suppress(OSError):
                    p.stdin.close()
        for p in self.procs.values():
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.terminate()
                p.wait(5)

    def __enter__(self) -> SSHWorkers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ClusterOptions(TypedDict, total=False):
    """The keywords of `LocalCluster` that SSHCluster passes on (kept in step with it)."""
    connection_file: str | os.PathLike[str] | None
    heartbeat_ms: int
    liveness: int
    max_lost: int
    client_expiry_ms: int | None
    respawn: bool
    max_message_bytes: int
    tcp: bool
    insecure: bool
    memory_limit: int | str | None
    max_tasks_per_child: int | None


class SSHCluster(LocalCluster):
    """A LocalCluster that listens beyond loopback (CurveZMQ on) with workers on other hosts
    started over SSH (see SSHWorkers for the arguments); `close()` stops them all.

    Args:
        local_workers: workers on this machine too (default none).
        memory_limit, max_tasks_per_child: for the workers here and there alike.
    """

    def __init__(self, hosts: Iterable[str], n_per_host: int = 1, *, local_workers: int = 0,
                 ip: str = "0.0.0.0", port: int = 0, labels: Iterable[str] = (),
                 python: str = "python3", ssh_options: Iterable[str] = (),
                 **kwargs: Unpack[ClusterOptions]):
        super().__init__(local_workers, labels, ip=ip, port=port, **kwargs)
        try:
            self.ssh = SSHWorkers(hosts, self.info, n_per_host, labels=labels, python=python,
                                  ssh_options=ssh_options, memory_limit=self.memory_limit,
                                  max_tasks_per_child=self.max_tasks_per_child)
        except BaseException:
            super().close()
            raise

    def close(self) -> None:
        if hasattr(self, "ssh"):
            self.ssh.close()
        super().close()


class SlurmWorkers:
    """Workers as a Slurm batch job: `sbatch` on creation, `scancel` on close.

    Each of `nodes` nodes runs `n_per_node` workers; they join as Slurm starts them. The
    connection file goes to a private directory (mode 0700, file 0600) that the job reads,
    as Slurm jobs see the submitting user's files.

    Args:
        partition, time_limit: passed to sbatch (--partition, --time) when given.
        sbatch_options: more sbatch arguments.
        memory_limit, max_tasks_per_child: kept by each node's `nbcluster worker`, the
            node's supervisor (as for SSHWorkers).
    """

    def __init__(self, info: ConnectionInfo, nodes: int = 1, n_per_node: int = 1, *,
                 labels: Iterable[str] = (), python: str = sys.executable,
                 partition: str | None = None, time_limit: str | None = None,
                 sbatch_options: Iterable[str] = (), endpoint: str | None = None,
                 memory_limit: int | str | None = None, max_tasks_per_child: int | None = None):
        self.dir = Path(tempfile.mkdtemp(prefix="nbcluster-slurm-"))
        os.chmod(self.dir, 0o700)
        conn = self.dir / "cluster.json"
        info.write(conn)
        worker = [python, "-m", "nbcluster.cli", "worker", "--connect", str(conn),
                  "-n", str(n_per_node), *limit_args(memory_limit, max_tasks_per_child)]
        if labels:
            worker += ["--labels", ",".join(labels)]
        if endpoint:
            worker += ["--endpoint", endpoint]
        script = self.dir / "job.sh"
        script.write_text("#!/bin/sh\nexec srun --ntasks-per-node=1 " + shlex.join(worker) + "\n")
        args = ["sbatch", "--parsable", f"--nodes={nodes}", "--ntasks-per-node=1",
                f"--cpus-per-task={n_per_node}", "--job-name=nbcluster",
                f"--output={self.dir}/slurm-%j.out"]
        if partition:
            args.append(f"--partition={partition}")
        if time_limit:
            args.append(f"--time={time_limit}")
        done = subprocess.run([*args, *sbatch_options, str(script)], capture_output=True,
                              text=True)
        if done.returncode != 0:
            raise NBClusterError(f"sbatch failed: {done.stderr.strip() or done.stdout.strip()}")
        self.job_id = done.stdout.strip().split(";")[0]

    def state(self) -> str:
        """The job's state as squeue reports it (PENDING, RUNNING...), or "" once it left."""
        done = subprocess.run(["squeue", "-h", "-j", self.job_id, "-o", "%T"],
                              capture_output=True, text=True)
        return done.stdout.strip()

    def close(self) -> None:
        """Cancel the job (its workers end) and remove its directory (connection file, job
        script, Slurm's output)."""
        subprocess.run(["scancel", self.job_id], capture_output=True)
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> SlurmWorkers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def limit_args(memory_limit: int | str | None, max_tasks_per_child: int | None) -> list[str]:
    """`nbcluster worker` arguments for these limits (checked here, not on the far host)."""
    args = []
    if memory_limit is not None:
        args += ["--memory-limit", str(parse_bytes(memory_limit))]
    if max_tasks_per_child is not None:
        if max_tasks_per_child < 1:
            raise ValueError(f"max_tasks_per_child must be at least 1, not {max_tasks_per_child}")
        args += ["--max-tasks-per-child", str(max_tasks_per_child)]
    return args


def _tcp_port(info: ConnectionInfo) -> int:
    for ep in info.endpoints:
        url = urlparse(ep)
        if url.scheme == "tcp" and url.port:
            return url.port
    raise NBClusterError("the cluster has no TCP endpoint: start it with ip='0.0.0.0' (or "
                         "nbcluster start --ip 0.0.0.0) so other hosts can reach it")


def _hostname(destination: str) -> str:
    return destination.rsplit("@", 1)[-1]


def _source_address(host: str) -> str:
    """This machine's address on the route to host (no packet is sent)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect((socket.gethostbyname(host), 22))
            return s.getsockname()[0]
    except OSError as e:
        raise NBClusterError(f"no route to {host}: {e}") from None


def _stderr(proc: subprocess.Popen[bytes]) -> str:
    if proc.stderr is None:
        return ""
    try:
        return proc.stderr.read().decode(errors="replace").strip().splitlines()[-1]
    except (OSError, IndexError, ValueError):
        return ""
