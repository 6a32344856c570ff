"""A broker killed (SIGKILL) and started again on the same address, twice in a row, while
two clients have tasks queued, running and finished-but-undelivered on one worker: every
result reaches its own task, once."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nbcluster import protocol
from nbcluster.client import Client
from nbcluster.testing import wait_for

pytestmark = pytest.mark.timeout(180)

GATE_WAIT_S = 90.0


def gated(name, i, x, folder):
    """Say it started, wait for its gate (or the gate of all), say it finished: the test
    decides when each task ends, without timing. Returns what identifies the task."""
    folder = Path(folder)
    (folder / f"started-{name}-{i}-{time.monotonic_ns()}").touch()
    deadline = time.monotonic() + GATE_WAIT_S
    while not ((folder / f"go-{name}-{i}").exists() or (folder / "go-all").exists()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"gate of {name}-{i} never opened")
        time.sleep(0.005)
    (folder / f"finished-{name}-{i}-{time.monotonic_ns()}").touch()
    return name, i, x


def markers(folder, kind):
    """[(name, i)] of the started/finished markers, in the order they were written."""
    found = [p.name.split("-") for p in folder.glob(f"{kind}-*")]
    return [(n, int(i)) for _, n, i, _ in sorted(found, key=lambda parts: int(parts[3]))]


class Processes:
    """The broker and worker processes of the test; all killed, by pid, on close."""

    def __init__(self, folder: Path):
        self.endpoint = f"ipc://{folder}/broker"
        self.key = protocol.new_key()
        self.env = {**os.environ, "NBCLUSTER_KEY": self.key.hex(), "PYTHONPATH": os.pathsep.join(
            p for p in [os.getcwd(), *sys.path] if p)}
        self.procs: list[subprocess.Popen] = []

    def spawn(self, *args, **kw) -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "-m", *args], env=self.env,
                                stdin=subprocess.PIPE, start_new_session=True, **kw)
        self.procs.append(proc)
        return proc

    def broker(self) -> subprocess.Popen:
        proc = self.spawn("nbcluster.broker", "--watch-stdin", "--bind", self.endpoint,
                          "--heartbeat-ms", "200", stdout=subprocess.PIPE)
        assert proc.stdout.readline().startswith(b"ready"), "the broker did not start"
        return proc

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            for pipe in (proc.stdin, proc.stdout):
                if pipe:
                    pipe.close()


def test_results_reach_their_own_task_across_two_broker_restarts(tmp_path):
    procs = Processes(tmp_path)
    clients = []
    try:
        broker = procs.broker()
        for _ in range(2):
            procs.spawn("nbcluster.worker", "--watch-stdin", "--connect", procs.endpoint)
        x, y = clients[:] = [Client(procs.endpoint, procs.key, remember=False) for _ in "xy"]
        wait_for(lambda: len(x.status()["workers"]) == 2, what="the workers joined")
        futures = {}
        for i in range(8):
            for name, client in (("X", x), ("Y", y)):
                futures[name, i] = client.submit(gated, name, i, f"{name}{i}-input", str(tmp_path))
        for restart in range(2):
            n = len(markers(tmp_path, "started"))
            first, second = wait_for(lambda: markers(tmp_path, "started")[n:][:2] if
                                     len(markers(tmp_path, "started")) >= n + 2 else None,
                                     timeout=60, what=f"two tasks running before restart {restart + 1}")
            broker.kill()   # SIGKILL: its queues and the results it was sending are gone
            broker.wait()
            # One running task finishes while no broker is there: its result is undelivered.
            (tmp_path / "go-{}-{}".format(*first)).touch()
            wait_for(lambda: first in markers(tmp_path, "finished"), timeout=60,
                     what=f"{first} finished")
            broker = procs.broker()
            # The other finishes once its worker belongs to the new broker.
            with Client(procs.endpoint, procs.key, remember=False) as observer:
                wait_for(lambda: len(observer.status()["workers"]) == 2, timeout=60,
                         what="both workers registered with the new broker")
            (tmp_path / "go-{}-{}".format(*second)).touch()
        (tmp_path / "go-all").touch()
        for (name, i), fut in futures.items():
            assert fut.result(120) == (name, i, f"{name}{i}-input"), f"task {name}{i}"
        time.sleep(1.0)   # a late, misrouted or duplicate result would have arrived by now
        assert x.stats == {"results": 8, "unexpected_results": 0}
        assert y.stats == {"results": 8, "unexpected_results": 0}
    finally:
        for client in clients:
            client.close()
        procs.close()
