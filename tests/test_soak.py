"""Soak (issue 12): 2,000 short tasks while a worker is SIGKILLed every second and the broker
is SIGSTOPped for 5 s, twice. Nothing may be lost, wrong or delivered twice; a task may run
again only if a run of it was on a worker we killed; WorkerLost only for a task that lost
more workers than its limit. The number of re-executions is reported.

Every run of a task leaves a file `<index>-<pid>-<random>` (made when it starts), so runs are
counted from outside the cluster, whatever the cluster says.
"""

import collections
import contextlib
import os
import random
import signal
import threading
import time
import uuid

import pytest

import nbcluster
from nbcluster import LocalCluster

N_TASKS = 2000
MAX_LOST = 3   # LocalCluster's default: a task that loses a 4th worker fails with WorkerLost


def _task(i: int, runs_dir: str) -> tuple[int, int]:
    name = f"{i}-{os.getpid()}-{time.time_ns()}-{uuid.uuid4().hex}"
    with open(os.path.join(runs_dir, name), "x"):
        pass
    time.sleep(random.uniform(0.005, 0.025))
    return i, i * i


class _Faults:
    """A thread that SIGKILLs one of the cluster's workers every second and SIGSTOPs the broker
    for 5 s when a quarter and when 60 % of the results are in (so both stops happen whatever
    the machine's speed), until stopped. Only processes the cluster started, by pid."""

    def __init__(self, cluster: LocalCluster, progress):
        self.cluster, self.progress = cluster, progress
        self.killed: set[int] = set()
        self.broker_stops = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        broker = self.cluster.pids()["broker"][0]
        stops_at = [N_TASKS // 4, N_TASKS * 6 // 10]
        while not self.stop.wait(1.0):
            alive = [p for p in self.cluster.pids()["workers"] if p not in self.killed]
            if alive:
                pid = random.choice(alive)
                self.killed.add(pid)
                _signal(pid, signal.SIGKILL)
            if stops_at and self.progress() >= stops_at[0]:
                stops_at.pop(0)
                _signal(broker, signal.SIGSTOP)
                self.broker_stops += 1
                try:   # workers keep being killed while the broker is stopped
                    for _ in range(5):
                        time.sleep(1.0)
                        alive = [p for p in self.cluster.pids()["workers"] if p not in self.killed]
                        if alive:
                            pid = random.choice(alive)
                            self.killed.add(pid)
                            _signal(pid, signal.SIGKILL)
                finally:
                    _signal(broker, signal.SIGCONT)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(30)
        assert not self.thread.is_alive(), "the fault thread did not stop"


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


@pytest.mark.timeout(600)
def test_soak_kills_and_broker_stalls_lose_nothing_and_rerun_only_what_was_killed(tmp_path):
    runs_dir = str(tmp_path)
    delivered = collections.Counter()
    with LocalCluster(4, max_lost=MAX_LOST) as cluster:
        client = cluster.client()
        on_result = client.options(callback=lambda r: delivered.update([r[0]]))
        with _Faults(cluster, lambda: len(delivered)) as faults:
            futures = [on_result.submit(_task, i, runs_dir) for i in range(N_TASKS)]
            outcomes = {}
            for i, fut in enumerate(futures):
                try:
                    outcomes[i] = fut.result(timeout=300)
                except nbcluster.WorkerLost as e:
                    outcomes[i] = e
        assert faults.broker_stops == 2, "the run ended before both broker stops"

    runs = collections.defaultdict(list)   # task index -> pids it ran on, in start order
    for name in sorted(os.listdir(runs_dir), key=lambda n: int(n.split("-")[2])):
        i, pid, _, _ = name.split("-")
        runs[int(i)].append(int(pid))

    reruns = sum(len(pids) - 1 for pids in runs.values())
    lost = [i for i, o in outcomes.items() if isinstance(o, nbcluster.WorkerLost)]
    print(f"\nsoak: {N_TASKS} tasks, {len(faults.killed)} workers SIGKILLed, broker stopped "
          f"{faults.broker_stops}x5 s: {reruns} re-executions, {len(lost)} WorkerLost")

    wrong = [i for i, o in outcomes.items() if not isinstance(o, Exception) and o != (i, i * i)]
    assert not wrong, f"wrong results for tasks {wrong[:10]}"
    assert set(outcomes) == set(range(N_TASKS))
    never_ran = [i for i in range(N_TASKS) if not runs[i] and i not in lost]
    assert not never_ran, f"tasks {never_ran[:10]} returned without running"
    twice = [i for i, n in delivered.items() if n > 1]
    assert not twice, f"results delivered more than once: {twice[:10]}"
    assert set(delivered) == set(range(N_TASKS)) - set(lost)
    # A task runs again only after a run of it on a worker we killed: every run but the last
    # must be on a killed worker. A run lost to a broker stall (or to anything but a real
    # death) is a silent duplicate.
    for i, pids in runs.items():
        survived = [p for p in pids[:-1] if p not in faults.killed]
        assert not survived, (f"task {i} ran {len(pids)} times, on {pids} in that order; "
                              f"{survived} were not killed, yet it ran again after them")
    # WorkerLost only for a task that really lost more than MAX_LOST workers.
    for i in lost:
        on_killed = sum(1 for p in runs[i] if p in faults.killed)
        assert on_killed > MAX_LOST, f"task {i} failed with WorkerLost after {runs[i]}: " \
                                     f"{outcomes[i]}"
