"""A broker that dies (SIGKILL) is started again by its keeper (`nbcluster start`, foreground
or --daemon, and LocalCluster) on the same endpoints, with the same key, connection file and
Curve keys; workers and clients carry on. A broker that keeps dying makes its keeper give up
with a clear line, remove its file and leave no process behind. `nbcluster stop` still stops
everything (a wanted stop is not a death)."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import nbcluster
from nbcluster.client.client import Client
from nbcluster.testing import throwaway_cluster, wait_for
from nbcluster.wire.connection import ConnectionInfo

from ..support.netns import skip_reason

pytestmark = pytest.mark.timeout(240)


def cli(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "nbcluster.cli", *args], capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def gone(pid: int) -> bool:
    """Has pid exited (a zombie, one of our children not reaped yet, has)?"""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


class Keeper:
    """`nbcluster start` in the foreground or as a daemon, and every pid it showed us; those
    still alive are SIGKILLed, by pid, on close."""

    def __init__(self, mode: str, folder: Path, *extra: str):
        self.conn, self.log = str(folder / "cluster.json"), str(folder / "cluster.log")
        self.proc = None
        self.pids: set[int] = set()
        args = ["start", "-n", "2", "--connection-file", self.conn, *extra]
        if mode == "daemon":
            out = cli(*args, "--daemon", "--log-file", self.log)
            assert out.returncode == 0, out.stdout + out.stderr
            self.pid = int(out.stdout.split("(pid ")[1].split(")")[0])
        else:
            self.proc = subprocess.Popen([sys.executable, "-m", "nbcluster.cli", *args],
                                         stdout=subprocess.PIPE, text=True,
                                         stdin=subprocess.DEVNULL)
            self.pid = self.proc.pid
            said = []
            while "ready\n" not in said:   # however loaded the machine (pytest-timeout bounds it)
                line = self.proc.stdout.readline()
                assert line, f"nbcluster start ended: {self.proc.wait()} {said}"
                said.append(line)
        self.pids.add(self.pid)

    def info(self) -> ConnectionInfo:
        info = ConnectionInfo.read(self.conn)
        self.pids.add(info.pid)
        return info

    def worker_pids(self) -> list[int]:
        out = cli("list", "--json", "--connection-file", self.conn)
        assert out.returncode == 0, out.stderr
        pids = sorted(w["pid"] for w in json.loads(out.stdout)["workers"])
        self.pids.update(pids)
        return pids

    def exited(self) -> bool:
        return self.proc.poll() is not None if self.proc else gone(self.pid)

    def close(self) -> None:
        for pid in self.pids:
            if pid != self.pid and not gone(pid):
                os.kill(pid, signal.SIGKILL)
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait()
            self.proc.stdout.close()
        elif not gone(self.pid):
            os.kill(self.pid, signal.SIGKILL)


def kill_broker(keeper: Keeper) -> int:
    """SIGKILL the broker named in the connection file; wait for the next one to be ready
    (the file names it) or for the keeper to end. Returns the new broker's pid (None: none)."""
    old = keeper.info().pid
    os.kill(old, signal.SIGKILL)

    def next_broker():
        if keeper.exited():
            return "keeper gone"
        try:
            pid = keeper.info().pid
        except FileNotFoundError:
            return None
        return pid if pid != old and not gone(pid) else None
    found = wait_for(next_broker, timeout=90, what=f"a broker after {old} was killed")
    return None if found == "keeper gone" else found


def square(x):
    return x * x


def check_survives_a_broker_kill(keeper: Keeper, tcp: str | None = None,
                                 n_workers: int = 2) -> None:
    """Kill the broker; then the file is the same but for the pid, the workers are the same
    processes, clients from before and after run tasks (over `tcp` with Curve if given);
    `nbcluster stop` removes the file and every process goes."""
    before = keeper.info()
    workers = wait_for(lambda: len(keeper.worker_pids()) == n_workers and keeper.worker_pids(),
                       timeout=60, what=f"{n_workers} workers")
    old = Client(tcp, before.key, curve=before.curve, remember=False) if tcp else \
        nbcluster.connect(keeper.conn)
    with old:
        assert old.map(square, range(4)) == [0, 1, 4, 9]
        broker = kill_broker(keeper)
        assert broker is not None, \
            Path(keeper.log).read_text() if os.path.exists(keeper.log) else ""
        after = keeper.info()
        assert (after.endpoints, after.key, after.curve, after.keeper) == \
            (before.endpoints, before.key, before.curve, keeper.pid)
        assert after.gone_reason() is None
        for ep in after.endpoints:   # the ipc socket is where it was
            assert not ep.startswith("ipc://") or os.path.exists(ep[len("ipc://"):]), ep
        assert [f.result(120) for f in [old.submit(square, i) for i in range(5)]] == \
            [0, 1, 4, 9, 16]
        new = Client(tcp, after.key, curve=after.curve, remember=False) if tcp else \
            nbcluster.connect(keeper.conn)
        with new:
            assert new.submit(square, 7).result(120) == 49
            if n_workers > 2:   # the one on another host, over TCP with Curve
                remote = new.options(labels={"remote"}).submit(square, 8)
                assert remote.result(120) == 64
            wait_for(lambda: keeper.worker_pids() == workers, timeout=60,
                     what=f"the same workers {workers} back")
    stopped = cli("stop", "--connection-file", keeper.conn)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert not os.path.exists(keeper.conn)
    if keeper.proc is not None:
        assert keeper.proc.wait(60) == 0
    wait_for(lambda: all(gone(p) for p in keeper.pids), timeout=60,
             what=f"every process of the cluster gone: {sorted(keeper.pids)}")


@pytest.mark.parametrize("mode", ["daemon", "foreground"])
def test_start_survives_its_broker_being_killed(tmp_path, mode):
    keeper = Keeper(mode, tmp_path)
    try:
        check_survives_a_broker_kill(keeper)
        if mode == "daemon":
            log = Path(keeper.log).read_text()
            assert "was killed by SIGKILL unexpectedly: starting it again" in log, log
            assert "the broker is back" in log, log
    finally:
        keeper.close()


@pytest.mark.skipif(skip_reason() is not None and not os.environ.get("NBCLUSTER_REQUIRE_NETNS"),
                    reason=str(skip_reason()))
def test_a_daemon_beyond_loopback_keeps_its_port_and_curve_keys(hosts, tmp_path):
    """--ip on an address beyond loopback (the root namespace's end of a test link): the
    port the system picked and the Curve keys survive the restart; clients over TCP with
    the keys of the file, and a worker on another host, carry on."""
    ip = f"10.{hosts.net}.0.1"
    keeper = Keeper("daemon", tmp_path, "--ip", ip)
    try:
        info = keeper.info()
        assert info.curve is not None
        [tcp] = [ep for ep in info.endpoints if ep.startswith(f"tcp://{ip}:")]
        assert not tcp.endswith(":0")
        hosts.spawn("host1", [sys.executable, "-m", "nbcluster.worker", "--connect",
                              keeper.conn, "--endpoint", tcp, "--labels", "remote"],
                    env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
        check_survives_a_broker_kill(keeper, tcp, n_workers=3)
    finally:
        keeper.close()


def test_a_broker_that_keeps_dying_makes_the_daemon_give_up(tmp_path):
    keeper = Keeper("daemon", tmp_path)
    try:
        keeper.worker_pids()
        for _ in range(20):   # it gives up after a few deaths; 20 would be a bug
            if kill_broker(keeper) is None:
                break
        else:
            pytest.fail("the daemon restarted its broker 20 times in a row")
        wait_for(keeper.exited, timeout=60, what="the daemon gone")
        log = Path(keeper.log).read_text()
        assert "giving up, not starting it again" in log and "was killed by SIGKILL" in log, log
        assert not os.path.exists(keeper.conn)
        wait_for(lambda: all(gone(p) for p in keeper.pids), timeout=60,
                 what=f"every process of the cluster gone: {sorted(keeper.pids)}")
    finally:
        keeper.close()


def slow_square(x):
    import time
    time.sleep(0.05)
    return x * x


def test_a_local_cluster_restarts_its_broker_while_tasks_run(tmp_path):
    conn = tmp_path / "cluster.json"
    with throwaway_cluster(2, connection_file=conn) as cluster:
        client = cluster.client()
        before = ConnectionInfo.read(conn)
        workers = sorted(cluster.pids()["workers"])
        futures = [client.submit(slow_square, i) for i in range(200)]
        wait_for(lambda: sum(f.done() for f in futures) >= 10, timeout=60,
                 what="tasks under way")
        [broker] = cluster.pids()["broker"]
        os.kill(broker, signal.SIGKILL)
        assert [f.result(180) for f in futures] == [i * i for i in range(200)]
        assert client.stats == {"results": 200, "unexpected_results": 0}
        assert cluster.pids()["broker"] != [broker] and not gone(cluster.pids()["broker"][0])
        assert sorted(cluster.pids()["workers"]) == workers
        after = ConnectionInfo.read(conn)
        assert (after.endpoints, after.key) == (before.endpoints, before.key)
        assert after.pid == cluster.pids()["broker"][0]
    assert not conn.exists()   # removed when the cluster stops, not before
    assert gone(broker)


def test_a_file_whose_broker_died_is_not_gone_while_its_keeper_lives(tmp_path):
    """Between a broker's death and its restart, readers (connect, list, a second `start`)
    must not take the cluster for gone: its keeper still runs."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    info = ConnectionInfo([f"ipc://{tmp_path}/broker"], b"k" * 32, pid=dead.pid,
                          keeper=os.getpid())
    info.write(tmp_path / "c.json")
    assert ConnectionInfo.read(tmp_path / "c.json").gone_reason() is None
    info.keeper = dead.pid   # the keeper gone too: the cluster is
    assert f"its broker (pid {dead.pid}) has exited" in info.gone_reason()


def test_sigterm_stops_rather_than_restarts(tmp_path):
    """SIGTERM is someone asking: to the broker, the cluster stops (it is not started
    again); to the daemon, it stops everything and removes its file, as `nbcluster stop`."""
    keeper = Keeper("daemon", tmp_path)
    try:
        keeper.worker_pids()
        os.kill(keeper.info().pid, signal.SIGTERM)
        wait_for(keeper.exited, timeout=60, what="the daemon gone")
        assert "starting it again" not in Path(keeper.log).read_text()
        assert not os.path.exists(keeper.conn)
        wait_for(lambda: all(gone(p) for p in keeper.pids), timeout=60,
                 what=f"every process of the cluster gone: {sorted(keeper.pids)}")
    finally:
        keeper.close()
    keeper = Keeper("daemon", tmp_path)
    try:
        keeper.worker_pids()
        keeper.info()
        os.kill(keeper.pid, signal.SIGTERM)
        wait_for(keeper.exited, timeout=60, what="the daemon gone")
        assert not os.path.exists(keeper.conn)
        wait_for(lambda: all(gone(p) for p in keeper.pids), timeout=60,
                 what=f"every process of the cluster gone: {sorted(keeper.pids)}")
    finally:
        keeper.close()
