"""Issue 14, with real processes: a client is judged by its connection, not by heartbeats from
its Python thread. A SIGKILLed client's tasks stop starting at once (the kernel closes its
sockets); a client whose kernel holds the GIL far longer than any threshold is kept (libzmq
answers the broker's pings without the GIL); a SIGSTOPped one is dropped by the pings and,
thawed, gets every result once. Task starts are counted through files, not timed."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nbcluster.broker.router import PING_MS, PING_TIMEOUT_MS
from nbcluster.testing import throwaway_cluster, wait_for

LONG_EXPIRY_MS = 600_000   # the silence expiry cannot be what drops a client in these tests


def start_and_wait(folder: str, i: int, seconds: float) -> int:
    """Leave a file for this start of task i, then sleep."""
    Path(folder, f"{i}-{os.getpid()}-{time.monotonic_ns()}").touch()
    time.sleep(seconds)
    return i


def starts(folder: Path) -> dict[int, int]:
    """How many times each task started."""
    out: dict[int, int] = {}
    for p in folder.iterdir():
        i = int(p.name.split("-")[0])
        out[i] = out.get(i, 0) + 1
    return out


CLIENT = """
import ctypes, json, sys, time, nbcluster
from tests.broker.test_client_connections import start_and_wait
file, folder, n, seconds, hold = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), \\
    float(sys.argv[5])
c = nbcluster.connect(file)
futs = [c.submit(start_and_wait, folder, i, seconds) for i in range(n)]
print("submitted", flush=True)
if hold:
    import os
    deadline = time.monotonic() + 120
    while not os.listdir(folder) and time.monotonic() < deadline:
        time.sleep(0.05)
    print("holding the GIL", flush=True)
    ctypes.PyDLL(None).sleep(int(hold))   # PyDLL: the GIL is held throughout
out = [f.result(600) for f in futs]
print(json.dumps({"ok": out == list(range(n)), **c.stats}), flush=True)
"""


def client_process(cluster, folder: Path, n: int, seconds: float, hold: float = 0.0):
    root = str(Path(__file__).parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen(
        [sys.executable, "-c", CLIENT, str(cluster.connection_file), str(folder), str(n),
         str(seconds), str(hold)], stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout.readline().strip() == "submitted"
    return proc


def known_pids(watcher) -> list[int]:
    return [c["pid"] for c in watcher.status()["client_tasks"]]


@pytest.mark.timeout(240)
def test_a_killed_clients_queued_tasks_stop_starting(tmp_path):
    """2,000 queued sleep tasks, client SIGKILLed: the broker drops it at once (before, only
    after the 30 s silence expiry: 60 more tasks started), so no task of it starts after."""
    with throwaway_cluster(2, client_expiry_ms=LONG_EXPIRY_MS) as cluster:
        proc = client_process(cluster, tmp_path, 2000, 0.05)
        try:
            wait_for(lambda: len(starts(tmp_path)) >= 4, timeout=60, what="tasks started")
            watcher = cluster.client()
            assert proc.pid in known_pids(watcher)
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            wait_for(lambda: proc.pid not in known_pids(watcher), timeout=60,
                     what="the killed client dropped by the broker (its expiry is 10 min)")
            assert watcher.status()["queued"] == 0
            # tasks handed out before the drop may still start; then none does (2 workers
            # would start 40 tasks of 50 ms a second)
            counts: list[int] = []

            def settled() -> bool:
                counts.append(sum(starts(tmp_path).values()))
                return len(counts) >= 3 and counts[-1] == counts[-3]
            wait_for(settled, timeout=60, interval=1.0, what="no more task starts after the drop")
            assert counts[-1] < 2000
        finally:
            proc.kill()
            proc.wait()


@pytest.mark.timeout(300)
def test_a_client_holding_the_gil_past_every_threshold_is_kept(tmp_path):
    """The client's main thread holds the GIL 40 s (past the old 30 s silence expiry and the
    new ping timeout) while its 60 one-second tasks run on one worker: it is not forgotten,
    so each task runs once and every result arrives. (Before, it was forgotten at 30 s; when
    it woke it resubmitted, and the task that was running ran twice.)"""
    hold = 40.0
    assert hold * 1000 > PING_MS + PING_TIMEOUT_MS
    with throwaway_cluster(1) as cluster:   # the default silence expiry (before: 30 s)
        proc = client_process(cluster, tmp_path, 60, 1.0, hold=hold)
        try:
            assert proc.stdout.readline().strip() == "holding the GIL"
            report = json.loads(proc.stdout.readline())
            assert report == {"ok": True, "results": 60, "unexpected_results": 0}
            runs = starts(tmp_path)
            assert sorted(runs) == list(range(60))
            assert [i for i, n in runs.items() if n > 1] == [], "tasks ran more than once"
        finally:
            proc.kill()
            proc.wait()


@pytest.mark.timeout(300)
def test_a_stopped_client_is_dropped_and_thawed_gets_each_result_once(tmp_path):
    """SIGSTOP: no heartbeat and no pong, so libzmq closes the connection and the broker
    drops the client (its silence expiry is 10 min). SIGCONT: it connects again, registers,
    resubmits, and gets each result exactly once."""
    with throwaway_cluster(2, client_expiry_ms=LONG_EXPIRY_MS) as cluster:
        proc = client_process(cluster, tmp_path, 40, 0.2)
        try:
            wait_for(lambda: starts(tmp_path), timeout=60, what="a task started")
            watcher = cluster.client()
            os.kill(proc.pid, signal.SIGSTOP)
            try:
                wait_for(lambda: proc.pid not in known_pids(watcher), timeout=120,
                         what="the stopped client dropped")
            finally:
                os.kill(proc.pid, signal.SIGCONT)
            report = json.loads(proc.stdout.readline())
            assert report == {"ok": True, "results": 40, "unexpected_results": 0}
        finally:
            proc.kill()
            proc.wait()
