"""A broker and workers started by the test as processes (killed by pid on close), and tasks
that wait for a gate file, so a test decides when each ends, without timing (for
tests/broker/test_restart.py and tests/client/test_broker_lost.py)."""

import os
import subprocess
import sys
import time
from pathlib import Path

from nbcluster.testing import wait_for
from nbcluster.wire import protocol

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
