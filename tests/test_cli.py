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
        fut = client.options(labels={"gpu"}).submit(lambda: os.getpid())
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


def cli(*args, timeout=60):
    return subprocess.run([sys.executable, "-m", "nbcluster.cli", *args], capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return False
    except ProcessLookupError:
        return True


def test_daemon_list_status_stop_and_doctor(tmp_path):
    import json
    conn = str(tmp_path / "cluster.json")
    out = cli("start", "-n", "2", "--daemon", "--ip", "0.0.0.0", "--connection-file", conn,
              "--log-file", str(tmp_path / "log"))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "CurveZMQ on" in out.stdout and "running in the background" in out.stdout
    listed = json.loads(cli("list", "--json", "--connection-file", conn).stdout)
    daemon = int(out.stdout.split("(pid ")[1].split(")")[0])
    pids = [w["pid"] for w in listed["workers"]] + [daemon]
    try:
        assert sorted(w["id"] for w in listed["workers"]) == ["w1", "w2"]
        status = json.loads(cli("status", "--json", "--connection-file", conn).stdout)
        assert status["workers"] == 2 and status["queued"] == 0
        pids.append(status["broker"]["pid"])
        assert "w1" in cli("list", "--connection-file", conn).stdout
        doc = cli("doctor", "--json", "--connection-file", conn)
        assert doc.returncode == 0 and json.loads(doc.stdout)["ok"], doc.stdout
        os.chmod(conn, 0o644)
        doc = cli("doctor", "--connection-file", conn)
        assert doc.returncode == 1 and f"chmod 600 {conn}" in doc.stdout
        os.chmod(conn, 0o600)
        assert cli("stop", "--worker", "w9", "--connection-file", conn).returncode == 1
        assert cli("stop", "--worker", "w1", "--connection-file", conn).returncode == 0
        w1 = next(w["pid"] for w in listed["workers"] if w["id"] == "w1")
        wait_for(lambda: gone(w1), what="w1 stopped")
        assert cli("stop", "--connection-file", conn).returncode == 0
        wait_for(lambda: all(gone(p) for p in pids), timeout=20, what="the whole cluster gone")
        assert cli("status", "--connection-file", conn).returncode == 2
    finally:
        for pid in pids:
            if not gone(pid):
                os.kill(pid, signal.SIGKILL)


def test_worker_command_starts_n_workers_and_sigterm_stops_them(cluster, client):
    proc = subprocess.Popen([sys.executable, "-m", "nbcluster.cli", "worker", "-n", "2",
                             "--connect", str(cluster.connection_file), "--labels", "extra"],
                            stdin=subprocess.DEVNULL)
    try:
        wait_for(lambda: len([w for w in client.workers() if "extra" in w["labels"]]) == 2,
                 what="2 more workers")
        proc.terminate()
        assert proc.wait(15) == 0
        wait_for(lambda: not [w for w in client.workers() if "extra" in w["labels"]],
                 what="they left")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_the_broker_refuses_to_listen_beyond_loopback_without_encryption():
    from nbcluster.broker import Broker
    from nbcluster.protocol import new_key
    with pytest.raises(nbcluster.NBClusterError, match="without encryption"):
        Broker(["tcp://0.0.0.0:0"], new_key())
    env = {**os.environ, "NBCLUSTER_KEY": new_key().hex()}
    proc = subprocess.Popen([sys.executable, "-m", "nbcluster.broker", "--bind",
                             "tcp://0.0.0.0:0", "--insecure"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().startswith("ready")
        assert "WITHOUT encryption" in proc.stderr.readline()
    finally:
        proc.kill()
        proc.wait()
