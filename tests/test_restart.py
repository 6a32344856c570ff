"""A broker killed (SIGKILL) and started again on the same address, twice in a row, while
two clients have tasks queued, running and finished-but-undelivered on one worker: every
result reaches its own task, once. Tasks wait for a gate file, so the test decides when each
ends, without timing."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nbcluster.client.client import Client
from nbcluster.testing import wait_for
from nbcluster.wire import protocol

pytestmark = pytest.mark.timeout(180)

GATE_WAIT_S = 90.0


def gated(name, i, x, folder):
    """Say it started, wait for its gate (or the gate of all), say it finished: the test
    decides when each task ends, without timing. A gate opens once: a task run again waits
    for a gate of its own. Returns what identifies the task."""
    folder = Path(folder)
    (folder / f"started-{name}-{i}-{time.monotonic_ns()}").touch()
    gate = folder / f"go-{name}-{i}"
    deadline = time.monotonic() + GATE_WAIT_S
    while not (folder / "go-all").exists():
        try:
            gate.unlink()
            break
        except FileNotFoundError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"gate of {name}-{i} never opened")
        time.sleep(0.005)
    (folder / f"finished-{name}-{i}-{time.monotonic_ns()}").touch()
    return name, i, x


def markers(folder, kind):
    """[(name, i)] of the started/finished markers, in the order they were written."""
    found = [p.name.split("-") for p in folder.glob(f"{kind}-*")]
    return [(n, int(i)) for _, n, i, _ in sorted(found, key=lambda parts: int(parts[3]))]


def running(folder):
    """The tasks started more often than they finished, oldest first."""
    started, finished = markers(folder, "started"), markers(folder, "finished")
    return [t for t in dict.fromkeys(started) if started.count(t) > finished.count(t)]


def release(folder, task):
    """Open the gate of a running task and wait until it has finished."""
    finished = len(markers(folder, "finished"))
    (folder / "go-{}-{}".format(*task)).touch()
    wait_for(lambda: len(markers(folder, "finished")) > finished, timeout=60,
             what=f"{task} finished")


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


@pytest.mark.parametrize("ends", [("after", "after"), ("during", "after")])
def test_results_reach_their_own_task_across_two_broker_restarts(tmp_path, ends):
    """One worker runs two clients' tasks; the broker is killed twice. At each restart the
    running task ends either while no broker runs (its result is sent to nobody) or once the
    worker has registered with the new broker (its result, of the old broker's task, reaches
    the new one); the rest are queued, and resubmitted by their clients."""
    procs = Processes(tmp_path)
    clients = []
    try:
        broker = procs.broker()
        procs.spawn("nbcluster.worker", "--watch-stdin", "--connect", procs.endpoint)
        x, y = clients[:] = [Client(procs.endpoint, procs.key, remember=False) for _ in "xy"]
        wait_for(lambda: x.status()["workers"], what="the worker joined")
        futures = {}
        for i in range(4):
            for name, client in (("X", x), ("Y", y)):
                futures[name, i] = client.submit(gated, name, i, f"{name}{i}-input", str(tmp_path))
        for restart, end in enumerate(ends):
            task = wait_for(lambda: running(tmp_path), timeout=60,
                            what=f"a task running before restart {restart + 1}")[0]
            broker.kill()   # SIGKILL: its queues and the results it was sending are gone
            broker.wait()
            if end == "during":
                release(tmp_path, task)
            broker = procs.broker()
            if end == "after":
                with Client(procs.endpoint, procs.key, remember=False) as observer:
                    wait_for(lambda: observer.status()["workers"], timeout=60,
                             what="the worker registered with the new broker")
                release(tmp_path, task)
        (tmp_path / "go-all").touch()
        for (name, i), fut in futures.items():
            assert fut.result(120) == (name, i, f"{name}{i}-input"), f"task {name}{i}"
        time.sleep(1.0)   # a late, misrouted or duplicate result would have arrived by now
        assert x.stats == y.stats == {"results": len(futures) // 2, "unexpected_results": 0}
    finally:
        for client in clients:
            client.close()
        procs.close()


def test_a_task_for_one_worker_fails_when_the_broker_restarts(tmp_path):
    """Worker ids are per broker: after a restart `w1` may be another process, so a task
    meant for one worker fails with WorkerLost rather than running somewhere else."""
    from nbcluster import WorkerLost
    procs = Processes(tmp_path)
    client = None
    try:
        broker = procs.broker()
        procs.spawn("nbcluster.worker", "--watch-stdin", "--connect", procs.endpoint)
        client = Client(procs.endpoint, procs.key, remember=False)
        [wid] = wait_for(lambda: [w["id"] for w in client.status()["workers"]],
                         what="the worker joined")
        [fut] = client.submit_to([wid], gated, "P", 0, "pinned", str(tmp_path)).values()
        wait_for(lambda: running(tmp_path), timeout=60, what="the pinned task started")
        broker.kill()
        broker.wait()
        broker = procs.broker()
        with pytest.raises(WorkerLost, match="restarted"):
            fut.result(60)
        (tmp_path / "go-all").touch()
        assert client.submit(lambda: "still works").result(60) == "still works"
    finally:
        (tmp_path / "go-all").touch()
        if client is not None:
            client.close()
        procs.close()
