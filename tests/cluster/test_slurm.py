"""The Slurm launcher for real: a single-node Slurm (Debian's slurmctld, slurmd, munge)
configured here in a temporary directory, as ../shared/notes/slurm-single-node.md describes.
The job's workers join a cluster listening beyond loopback; closing the launcher scancels it."""

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nbcluster import LocalCluster
from nbcluster.cluster.launchers import SlurmWorkers

pytestmark = [pytest.mark.timeout(180)]

NEEDED = ["slurmctld", "slurmd", "munged", "sbatch", "squeue", "scancel", "sinfo"]
missing = [c for c in NEEDED if shutil.which(c) is None]
if (missing or os.geteuid() != 0) and not os.environ.get("NBCLUSTER_REQUIRE_SLURM"):
    pytest.skip(f"needs root and {', '.join(missing) or 'Slurm'} (apt-get install slurmctld "
                "slurmd slurm-client munge)", allow_module_level=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


@pytest.fixture
def slurm(tmp_path):
    """Munge and a one-node Slurm; stopped by the pids they wrote."""
    node = socket.gethostname().split(".")[0]
    d = tmp_path / "slurm"
    for sub in ("state", "spool", "log"):
        (d / sub).mkdir(parents=True)
    pids = {"munged": tmp_path / "munged.pid", "slurmctld": d / "slurmctld.pid",
            "slurmd": d / "slurmd.pid"}
    key = Path("/etc/munge/munge.key")
    if not key.exists():
        key.parent.mkdir(parents=True, exist_ok=True)
        key.write_bytes(os.urandom(1024))
    for path in ("/etc/munge", "/var/lib/munge", "/var/log/munge", "/run/munge"):
        os.makedirs(path, exist_ok=True)
        shutil.chown(path, "munge", "munge")
    shutil.chown(key, "munge", "munge")
    os.chmod(key, 0o400)
    conf = d / "slurm.conf"
    conf.write_text("\n".join([
        "ClusterName=nbc", f"SlurmctldHost={node}", "SlurmUser=root", "SlurmdUser=root",
        f"SlurmctldPort={free_port()}", f"SlurmdPort={free_port()}",
        f"StateSaveLocation={d / 'state'}", f"SlurmdSpoolDir={d / 'spool'}",
        f"SlurmctldPidFile={pids['slurmctld']}", f"SlurmdPidFile={pids['slurmd']}",
        f"SlurmctldLogFile={d / 'log/slurmctld.log'}", f"SlurmdLogFile={d / 'log/slurmd.log'}",
        "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none",
        "SelectType=select/cons_tres", "SelectTypeParameters=CR_Core", "AuthType=auth/munge",
        "MpiDefault=none", "ReturnToService=2", "SchedulerType=sched/builtin",
        f"NodeName={node} CPUs={os.cpu_count()} State=UNKNOWN",
        f"PartitionName=debug Nodes={node} Default=YES MaxTime=INFINITE State=UP", ""]))
    env = {**os.environ, "SLURM_CONF": str(conf)}
    old = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(conf)
    try:
        subprocess.run(["munged", "--force", f"--pid-file={pids['munged']}"], check=True,
                       env=env)
        subprocess.run(["slurmctld", "-c"], check=True, env=env)
        subprocess.run(["slurmd"], check=True, env=env)
        deadline = time.monotonic() + 30
        while "idle" not in subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True,
                                           text=True, env=env).stdout:
            assert time.monotonic() < deadline, (d / "log/slurmctld.log").read_text()[-2000:]
            time.sleep(0.5)
        yield env
    finally:
        for name in ("slurmd", "slurmctld", "munged"):
            pid = read_pid(pids[name])
            if pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, 15)
        if old is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = old


def test_workers_as_a_slurm_job_join_and_are_cancelled(slurm, tmp_path):
    with LocalCluster(0, ip="0.0.0.0") as cluster:
        client = cluster.client()
        job = SlurmWorkers(cluster.info, nodes=1, n_per_node=2, labels=["slurm"],
                           python=sys.executable, max_tasks_per_child=50)
        try:
            assert job.job_id.isdigit()
            deadline = time.monotonic() + 60
            while len(client.workers()) < 2:
                assert time.monotonic() < deadline, f"job {job.job_id}: {job.state()!r}"
                time.sleep(0.5)
            assert job.state() == "RUNNING"
            assert client.map(abs, range(-10, 0), labels={"slurm"}) == list(range(10, 0, -1))
            # the node's `nbcluster worker` replaces each worker after 50 tasks
            first = {w["pid"] for w in client.workers()}
            client.map(abs, range(300), labels={"slurm"}, chunksize=1)
            deadline = time.monotonic() + 60
            while not {w["pid"] for w in client.workers()} - first:
                assert time.monotonic() < deadline, "no worker was replaced"
                time.sleep(0.5)
        finally:
            job.close()
        assert not job.dir.exists(), "close() leaves the job's directory behind"
        deadline = time.monotonic() + 30
        while client.workers() or job.state():
            assert time.monotonic() < deadline, "the workers outlived scancel"
            time.sleep(0.5)
