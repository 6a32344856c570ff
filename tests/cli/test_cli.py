"""The command line and connecting to a cluster started elsewhere."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys

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
        assert c.submit(lambda: "by file").result(60) == "by file"
    tcp = next(ep for ep in cluster.endpoints if ep.startswith("tcp://"))
    with nbcluster.connect(tcp, key=cluster.key.hex()) as c:
        assert c.submit(lambda: "by url").result(60) == "by url"
    with pytest.raises(ValueError, match="needs the cluster key"):
        nbcluster.connect(tcp)
    with pytest.raises(AuthenticationError):
        nbcluster.connect(tcp, key=b"0" * 32)


def test_start_runs_until_ctrl_c_and_stops_everything(tmp_path):
    conn = tmp_path / "cluster.json"
    proc = subprocess.Popen([sys.executable, "-m", "nbcluster.cli", "start", "-n", "2",
                             "--connection-file", str(conn)], stdout=subprocess.PIPE, text=True)
    try:
        # the real condition, however loaded the machine (pytest-timeout bounds the wait)
        said: list[str] = []
        while "ready\n" not in said:
            line = proc.stdout.readline()
            assert line, f"nbcluster start ended: {proc.wait()} {said}"
            said.append(line)
        assert "2 workers" in "".join(said)
        assert oct(conn.stat().st_mode & 0o777) == "0o600"
        with nbcluster.connect(str(conn)) as client:
            wait_for(lambda: len(client.workers()) == 2, timeout=60, what="2 workers")
            pids = [w["pid"] for w in client.workers()]
            assert client.map(abs, [-1, -2]) == [1, 2]
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 0      # generous: a loaded machine stops slowly, never hangs
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    wait_for(lambda: all(gone(pid) for pid in pids), timeout=30, what="every worker gone")
    assert not conn.exists()          # the file of a cluster that is gone would mislead


def test_a_worker_started_by_hand_joins_with_the_connection_file(cluster, client):
    proc = subprocess.Popen([sys.executable, "-m", "nbcluster.cli", "worker", "--connect",
                             str(cluster.connection_file), "--labels", "gpu,big"],
                            stdin=subprocess.DEVNULL)
    try:
        # `nbcluster worker` is the supervisor; the worker is its child
        pid, parent = client.options(labels={"gpu"}).submit(
            lambda: (os.getpid(), os.getppid())).result(20)
        assert parent == proc.pid
        [w] = [w for w in client.workers() if w["pid"] == pid]
        assert w["labels"] == ["big", "gpu"]
        proc.terminate()                       # SIGTERM: leaves gracefully
        assert proc.wait(60) == 0
        wait_for(lambda: pid not in [w["pid"] for w in client.workers()],
                 timeout=60, what="the worker gone from the list")
        assert gone(pid)
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
    conn = str(tmp_path / "cluster.json")
    out = cli("start", "-n", "2", "--daemon", "--ip", "0.0.0.0", "--connection-file", conn,
              "--log-file", str(tmp_path / "log"))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "CurveZMQ on" in out.stdout and "running in the background" in out.stdout
    assert "2 workers" in out.stdout
    listed = json.loads(cli("list", "--json", "--connection-file", conn).stdout)
    daemon = int(out.stdout.split("(pid ")[1].split(")")[0])
    pids = [w["pid"] for w in listed["workers"]] + [daemon]
    stale = str(tmp_path / "stale.json")   # a copy, to read once the cluster is gone
    shutil.copy(conn, stale)
    try:
        # the wildcard stays a wildcard: no interface address that may vanish later
        file_endpoints = json.loads((tmp_path / "cluster.json").read_text())["endpoints"]
        assert [ep for ep in file_endpoints if ep.startswith("tcp://")] == \
            [f"tcp://0.0.0.0:{file_endpoints[-1].rsplit(':', 1)[1]}"], file_endpoints
        # a second cluster on the same file would make this one unreachable: refused
        again = cli("start", "-n", "1", "--daemon", "--connection-file", conn,
                    "--log-file", str(tmp_path / "log2"))
        assert again.returncode == 2, again.stdout + again.stderr
        assert "already running" in again.stderr and "--connection-file" in again.stderr
        assert (tmp_path / "cluster.json").read_text() == (tmp_path / "stale.json").read_text()
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
        wait_for(lambda: gone(w1), timeout=60, what="w1 stopped")
        # the broker learns it left from its bye (or, if that was lost, from its silence)
        wait_for(lambda: json.loads(cli("status", "--json", "--connection-file", conn).stdout)
                 ["workers"] == 1, timeout=60, what="the broker to drop w1")
        stopped = cli("stop", "--connection-file", conn)
        assert stopped.returncode == 0 and "1 worker, then the broker" in stopped.stdout
        assert not os.path.exists(conn)                   # stop removes the connection file
        wait_for(lambda: all(gone(p) for p in pids), timeout=60, what="the whole cluster gone")
        assert cli("status", "--connection-file", conn).returncode == 2
        for command in ("status", "list", "stop"):        # the file of a cluster gone: said
            out = cli(command, "--connection-file", stale)
            assert out.returncode == 2 and "is not running" in out.stderr, out.stderr
            assert "has exited" in out.stderr             # (its broker's pid), not a timeout
        out = cli("worker", "--connect", stale)
        assert out.returncode == 2 and "is not running" in out.stderr, out.stderr
        with pytest.raises(nbcluster.NBClusterError, match="is not running"):
            nbcluster.connect(stale)
        doc = cli("doctor", "--connection-file", stale)
        assert doc.returncode == 1 and "is not running" in doc.stdout, doc.stdout
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
                 timeout=60, what="2 more workers")
        proc.terminate()
        assert proc.wait(60) == 0
        wait_for(lambda: not [w for w in client.workers() if "extra" in w["labels"]],
                 timeout=60, what="they left")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_the_broker_refuses_to_listen_beyond_loopback_without_encryption():
    from nbcluster.broker.loop import Broker
    from nbcluster.wire.protocol import new_key
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


@pytest.mark.parametrize("n", ["0", "-3", "two"])
def test_start_and_worker_refuse_a_number_of_workers_below_one(tmp_path, n):
    conn = tmp_path / "cluster.json"
    try:
        out = cli("start", "-n", n, "--daemon", "--connection-file", str(conn),
                  "--log-file", str(tmp_path / "log"))
        assert out.returncode == 2, out.stdout + out.stderr
        assert "-n" in out.stderr and ("at least 1" in out.stderr or "whole number" in
                                       out.stderr), out.stderr
        assert not conn.exists()                     # nothing started
    finally:
        if conn.exists():                            # (the bug: a cluster started anyway)
            cli("stop", "--connection-file", str(conn))
    out = cli("worker", "-n", n, "--connect", str(conn))
    assert out.returncode == 2 and "-n" in out.stderr and "Traceback" not in out.stderr


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_bad_connection_file_is_one_clear_line(tmp_path):
    (tmp_path / "garbage.json").write_text("garbage\n")
    (tmp_path / "other.json").write_text('{"endpoints": []}')
    cases = {"missing.json": "no connection file at", "garbage.json": "is not JSON",
             "other.json": "no 'key' in it"}
    for name, said in cases.items():
        path = str(tmp_path / name)
        for argv in (["worker", "--connect", path], ["worker", "-n", "2", "--connect", path],
                     ["status", "--connection-file", path]):
            out = cli(*argv)
            assert out.returncode == 2, (argv, out.stderr)
            lines = out.stderr.strip().splitlines()
            assert len(lines) == 1 and said in lines[0], (argv, out.stderr)
            assert "Traceback" not in out.stderr and "Expecting value" not in out.stderr


def test_doctor_suggests_no_firewall_for_loopback(tmp_path):
    from nbcluster.wire.connection import ConnectionInfo
    from nbcluster.wire.protocol import new_key
    conn = tmp_path / "cluster.json"
    port = free_port()   # nothing listens there
    conn.write_text(json.dumps({"version": 1, "endpoints": [f"tcp://127.0.0.1:{port}"],
                                "key": new_key().hex(), "host": socket.gethostname()}))
    os.chmod(conn, 0o600)
    assert ConnectionInfo.read(conn).pid is None     # (a file without a broker pid)
    doc = cli("doctor", "--connection-file", str(conn))
    assert doc.returncode == 1 and f"127.0.0.1:{port}" in doc.stdout, doc.stdout
    assert "firewall" not in doc.stdout and "nbcluster start" in doc.stdout, doc.stdout


def test_a_worker_whose_broker_never_answers_says_so_and_backs_off():
    from nbcluster.wire.protocol import new_key
    endpoint = f"tcp://127.0.0.1:{free_port()}"   # nothing listens there
    proc = subprocess.Popen([sys.executable, "-m", "nbcluster.cli", "worker", "--connect",
                             endpoint], env={**os.environ, "NBCLUSTER_KEY": new_key().hex()},
                            stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        said = []
        while len(said) < 2:   # ~3 s, then ~6 s later (pytest-timeout bounds the wait)
            line = proc.stderr.readline()
            assert line, f"the worker ended: {proc.wait()}"
            if "registering again" in line:
                said.append(line)
        assert all(f"no broker has answered at {endpoint}" in line for line in said), said
        waits = [float(line.split("next try in ")[1].split()[0]) for line in said]
        assert waits[1] == 2 * waits[0], said        # backs off: 6 s, then 12 s...
    finally:
        proc.kill()
        proc.wait()


def test_a_wildcard_connection_file_outlives_a_vanished_interface(tmp_path):
    """A network interface that comes and goes (here a test namespace's veth, as when tests
    run in parallel) must not leave the connection file naming a dead address."""
    from ..support.netns import Hosts, skip_reason
    if skip_reason():
        pytest.skip(skip_reason())
    conn = str(tmp_path / "cluster.json")
    hosts = Hosts()   # its veth, with an address, appears in this namespace
    try:
        out = cli("start", "-n", "1", "--daemon", "--ip", "0.0.0.0", "--connection-file", conn,
                  "--log-file", str(tmp_path / "log"))
        assert out.returncode == 0, out.stdout + out.stderr
    finally:
        hosts.close()   # ...and goes away
    try:
        doc = cli("doctor", "--json", "--connection-file", conn)
        assert doc.returncode == 0 and json.loads(doc.stdout)["ok"], doc.stdout
        with nbcluster.connect(conn) as client:
            assert client.submit(abs, -3).result(30) == 3
    finally:
        assert cli("stop", "--connection-file", conn).returncode == 0


def test_readers_resolve_a_wildcard_endpoint_where_they_are():
    from nbcluster.wire.connection import ConnectionInfo
    from nbcluster.wire.protocol import new_key
    here = ConnectionInfo(["ipc:///nonexistent/broker", "tcp://0.0.0.0:5555"], new_key(),
                          host=socket.gethostname())
    assert here.best_endpoint() == "tcp://127.0.0.1:5555"        # loopback always works here
    there = ConnectionInfo(here.endpoints, here.key, host="head-node")
    assert there.best_endpoint() == "tcp://head-node:5555"       # the broker's host, by name
    assert ConnectionInfo.from_json(there.to_json()).endpoints == here.endpoints


def test_worker_command_keeps_its_limits(cluster, client):
    """`nbcluster worker --max-tasks-per-child 2`: its supervisor replaces the worker every
    2 tasks; a memory limit that is not a size is refused before anything starts."""
    bad = cli("worker", "--connect", str(cluster.connection_file), "--memory-limit", "lots")
    assert bad.returncode == 2 and "not a memory size: 'lots'" in bad.stderr, bad.stderr
    proc = subprocess.Popen([sys.executable, "-m", "nbcluster.cli", "worker", "--connect",
                             str(cluster.connection_file), "--labels", "kept",
                             "--max-tasks-per-child", "2", "--memory-limit", "4GiB"],
                            stdin=subprocess.DEVNULL)
    try:
        kept = client.options(labels={"kept"})
        ran = [kept.submit(lambda: (os.getpid(), os.getppid())).result(60) for _ in range(4)]
        pids = [pid for pid, _ in ran]
        assert [pids.index(p) for p in pids] == [0, 0, 2, 2], ran
        assert {parent for _, parent in ran} == {proc.pid}
        proc.terminate()
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
