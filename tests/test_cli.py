"""The command line and connecting to a cluster started elsewhere."""

import os
import signal
import subprocess
import sys
import time

import pytest

import nbcluster
from nbcluster import AuthenticationError
from nbcluster.testing import wait_for

pytestmark = pytest.mark.timeout(90)


def test_demo_estimates_pi_with_a_progress_bar():
    out = subprocess.run([sys.executable, "-m", "nbcluster.cli", "demo", "-n", "2", "--tasks", "6",
                          "--samples", "20000"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "pi ~ 3.1" in out.stdout and "speed-up" in out.stdout
    assert "6/6" in out.stderr            # tqdm's bar reached the end


def test_connect_by_file_and_by_url(cluster):
    with nbcluster.connect(str(cluster.connection_file)) as c:
        assert c.submit(lambda: "by file").result(10) == "by file"
    tcp = next(ep for ep in cluster.endpoints if ep.startswith("tcp://"))
    with nbcluster.connect(tcp, key=cluster.key.hex()) as c:
        assert c.submit(lambda: "by url").result(10) == "by url"
    with pytest.raises(ValueError, match="needs the cluster key"):
        nbcluster.connect(tcp)
    with pytest.raises(AuthenticationError):
        nbcluster.connect(tcp, key=b"0" * 32)


def test_start_runs_until_ctrl_c_and_stops_everything(tmp_path):
    conn = tmp_path / "cluster.json"
    proc = subprocess.Popen([sys.executable, "-m", "nbcluster.cli", "start", "-n", "2",
                             "--connection-file", str(conn)], stdout=subprocess.PIPE, text=True)
    try:
        wait_for(conn.exists, timeout=20, what="connection file written")
        assert oct(conn.stat().st_mode & 0o777) == "0o600"
        with nbcluster.connect(str(conn)) as client:
            wait_for(lambda: len(client.workers()) == 2, what="2 workers")
            pids = [w["pid"] for w in client.workers()]
            assert client.map(abs, [-1, -2]) == [1, 2]
        proc.send_signal(signal.SIGINT)
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    time.sleep(0.5)
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_a_worker_started_by_hand_joins_with_the_connection_file(cluster, client):
    proc = subprocess.Popen([sys.executable, "-m", "nbcluster.cli", "worker", "--connect",
                             str(cluster.connection_file), "--labels", "gpu,big"],
                            stdin=subprocess.DEVNULL)
    try:
        fut = client.submit(lambda: os.getpid(), labels={"gpu"})
        assert fut.result(20) == proc.pid
        [w] = [w for w in client.workers() if w["pid"] == proc.pid]
        assert w["labels"] == ["big", "gpu"]
        proc.terminate()                       # SIGTERM: leaves gracefully
        assert proc.wait(10) == 0
        wait_for(lambda: proc.pid not in [w["pid"] for w in client.workers()],
                 what="the worker gone from the list")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
