"""Issue 12, with real processes and real signals: a task is charged only for the workers it
was really lost on, a stopped broker expires nobody, and a worker that registers again keeps
the task it runs. Every task leaves a file per run, so runs are counted, not timed."""

import os
import signal
import time
from pathlib import Path

import pytest

from nbcluster import LocalCluster
from nbcluster.testing import wait_for


def run_and_record(folder, name, seconds=0.0, gate=None):
    """Leave a file for this run; then wait `seconds`, or until the file `gate` exists."""
    Path(folder, f"{name}-{os.getpid()}-{time.monotonic_ns()}").touch()
    if gate is not None:
        deadline = time.monotonic() + 300
        while not os.path.exists(gate) and time.monotonic() < deadline:
            time.sleep(0.05)
    else:
        time.sleep(seconds)
    return name, os.getpid()


def runs_of(folder, name) -> list[int]:
    """The pids that started a run of task `name`, in no particular order."""
    return [int(p.name.split("-")[-2]) for p in Path(folder).iterdir()
            if p.name.rsplit("-", 2)[0] == name]


def registered(client, n):
    return wait_for(lambda: len(client.workers()) == n, timeout=60,
                    what=f"{n} workers registered")


@pytest.mark.timeout(240)
def test_eight_workers_killed_at_once_cost_their_task_one_loss(tmp_path):
    """One worker (labelled `live`) is busy; the task runs on one of 8 more; all 8 are
    SIGKILLed at once. The old expiry pass handed the task from one dying worker to the next
    (lost 4 times in one pass: WorkerLost though it ran once). Now it waits for the live
    worker and runs there: two runs, one on a killed worker, one on the live one."""
    gate, blocker_gate = tmp_path / "gate", tmp_path / "blocker-gate"
    runs = tmp_path / "runs"
    runs.mkdir()
    with LocalCluster(1, labels=["live"], heartbeat_ms=500, respawn=False) as cluster:
        client = cluster.client()
        [live_pid] = cluster.pids()["workers"]
        blocker = client.options(labels={"live"}).submit(run_and_record, runs, "blocker",
                                                         gate=blocker_gate)
        wait_for(lambda: runs_of(runs, "blocker"), timeout=60, what="the blocker started")
        doomed = cluster.add_workers(8, labels=[])
        registered(client, 9)
        fut = client.submit(run_and_record, runs, "task", gate=gate)
        [first] = wait_for(lambda: runs_of(runs, "task"), timeout=60, what="the task started")
        assert first in [p.pid for p in doomed]
        for p in doomed:
            os.kill(p.pid, signal.SIGKILL)
        registered(client, 1)                   # all 8 expired: only the live one is left
        blocker_gate.touch()
        assert blocker.result(60)[1] == live_pid
        gate.touch()
        assert fut.result(120) == ("task", live_pid)   # no WorkerLost
        assert sorted(runs_of(runs, "task")) == sorted([first, live_pid])
        assert client.stats == {"results": 2, "unexpected_results": 0}


@pytest.mark.timeout(300)
def test_a_broker_stopped_for_10_s_reruns_nothing(tmp_path):
    """SIGSTOP the broker 10 s while two 12 s tasks and some short ones run. The workers hear
    nothing for their expiry and register again; the broker, resumed, must neither expire
    them (its own stall) nor re-queue what they run. Each task runs exactly once."""
    with LocalCluster(3) as cluster:
        client = cluster.client()
        long = [client.submit(run_and_record, tmp_path, f"long{i}", 12) for i in range(2)]
        wait_for(lambda: runs_of(tmp_path, "long0") and runs_of(tmp_path, "long1"),
                 timeout=60, what="the long tasks started")
        short = [client.submit(run_and_record, tmp_path, f"short{i}", 0.2) for i in range(10)]
        wait_for(lambda: runs_of(tmp_path, "short0"), timeout=60, what="a short task started")
        broker = cluster.pids()["broker"][0]
        os.kill(broker, signal.SIGSTOP)
        try:
            time.sleep(10)
        finally:
            os.kill(broker, signal.SIGCONT)
        assert [f.result(120)[0] for f in long] == ["long0", "long1"]
        assert [f.result(120)[0] for f in short] == [f"short{i}" for i in range(10)]
        for name in [*(f"long{i}" for i in range(2)), *(f"short{i}" for i in range(10))]:
            assert len(runs_of(tmp_path, name)) == 1, f"{name} ran {runs_of(tmp_path, name)}"
        assert client.stats == {"results": 12, "unexpected_results": 0}
        assert len(client.workers()) == 3


@pytest.mark.timeout(240)
@pytest.mark.parametrize("others, runs_expected", [
    (0, 1),   # no other worker: its task stays queued, and it takes it back when it returns
    (1, 2),   # a free worker re-runs it meanwhile: the frozen one's result is dropped
])
def test_a_worker_frozen_past_its_expiry_delivers_each_result_once(tmp_path, others,
                                                                   runs_expected):
    """A frozen process is still noticed and dropped; when it thaws it registers again,
    saying what it runs. A task runs twice only if another worker took it meanwhile, and
    its result is delivered once either way."""
    gate = tmp_path / "gate"
    runs = tmp_path / "runs"
    runs.mkdir()
    with LocalCluster(1, labels=["frozen"], heartbeat_ms=500, respawn=False) as cluster:
        client = cluster.client()
        [frozen] = cluster.pids()["workers"]
        fut = client.submit(run_and_record, runs, "task", gate=gate)
        wait_for(lambda: runs_of(runs, "task"), timeout=60, what="the task started")
        cluster.add_workers(others, labels=[])
        registered(client, 1 + others)
        os.kill(frozen, signal.SIGSTOP)
        try:
            wait_for(lambda: frozen not in [w["pid"] for w in client.workers()], timeout=60,
                     what="the frozen worker dropped")
            if others:
                wait_for(lambda: len(runs_of(runs, "task")) == 2, timeout=60,
                         what="the task re-run on the other worker")
        finally:
            os.kill(frozen, signal.SIGCONT)
        wait_for(lambda: frozen in [w["pid"] for w in client.workers()], timeout=60,
                 what="the thawed worker registered again")
        gate.touch()
        assert fut.result(120)[0] == "task"
        assert len(runs_of(runs, "task")) == runs_expected
        time.sleep(1.0)   # a second result, if any, would arrive by now
        assert client.stats == {"results": 1, "unexpected_results": 0}
        assert client.submit(run_and_record, runs, "after").result(60)[0] == "after"
