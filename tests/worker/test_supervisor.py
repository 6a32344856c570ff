"""Workers kept by their host's supervisor: real processes, real signals (see
nbcluster/supervisor.py). Liveness without the worker's GIL, respawn whatever the exit
status, process groups killed, memory limit, max_tasks_per_child, exit reasons."""

import math
import os
import re
import signal
import time

import pytest

import nbcluster
from nbcluster import MemoryLimitExceeded, WorkerLost
from nbcluster.testing import kill_worker, throwaway_cluster, wait_for
from nbcluster.worker.procinfo import is_running

pytestmark = pytest.mark.timeout(120)


def running_on(client, n=1):
    """Ids of workers running a task, once at least n are."""
    return wait_for(lambda: [w["id"] for w in client.workers() if w["running"]] if
                    sum(1 for w in client.workers() if w["running"]) >= n else None,
                    timeout=60, what=f"{n} worker(s) running a task")


def starts_in(path):
    return path.read_text().split() if path.exists() else []


def gone(pid: int) -> bool:
    """The process is gone (a zombie waiting for init to reap it counts as gone)."""
    return not os.path.exists(f"/proc/{pid}") or (not is_running(pid) and \
        open(f"/proc/{pid}/stat").read().rsplit(")", 1)[-1].split()[0] in "ZX")


def regex_size_for(seconds: float) -> int:
    """N such that re.match(r'(a+)+$', 'a' * N + 'b') runs about `seconds` here: each extra
    'a' doubles its time, so time a size that takes a measurable while and extrapolate."""
    n = 16
    while True:
        t0 = time.perf_counter()
        re.match(r"(a+)+$", "a" * n + "b")
        took = time.perf_counter() - t0
        if took >= 0.3 or n >= 40:
            return n + max(0, round(math.log2(seconds / max(took, 1e-6))))
        n += 1


@pytest.mark.timeout(300)
def test_a_task_holding_the_gil_for_20_s_runs_once_and_succeeds(tmp_path):
    """The worker cannot heartbeat (the regex holds its GIL in C); its supervisor vouches."""
    n = regex_size_for(20.0)
    log = tmp_path / "starts"

    def hold_gil(n):
        with open(log, "a") as f:
            f.write(f"{os.getpid()}\n")
        return re.match(r"(a+)+$", "a" * n + "b") is None, os.getpid()

    with throwaway_cluster(2) as cluster:
        client = cluster.client()
        no_match, pid = client.submit(hold_gil, n).result(240)
        assert no_match
        assert starts_in(log) == [str(pid)]          # it ran once, where it finished
        assert pid in [w["pid"] for w in client.workers()]   # its worker was never dropped
        assert client.stats["unexpected_results"] == 0


def test_a_stopped_worker_is_not_vouched_for_and_its_task_runs_elsewhere(tmp_path):
    log = tmp_path / "starts"

    def slow():
        with open(log, "a") as f:
            f.write(f"{os.getpid()}\n")
        time.sleep(2)
        return os.getpid()

    with throwaway_cluster(2) as cluster:
        client = cluster.client()
        wait_for(lambda: sorted(p for s in client.status()["supervisors"] for p in s["alive"])
                 == sorted(cluster.pids()["workers"]), timeout=60, what="both vouched for")
        fut = client.submit(slow)
        wait_for(lambda: starts_in(log), timeout=60, what="the task started")
        [frozen] = running_on(client)
        frozen_pid = kill_worker(cluster, frozen, signal.SIGSTOP, client=client)
        try:
            wait_for(lambda: all(frozen_pid not in s["alive"]
                                 for s in client.status()["supervisors"]),
                     timeout=60, what="the supervisor to stop vouching for the frozen worker")
            result = fut.result(60)
        finally:
            os.kill(frozen_pid, signal.SIGCONT)
        assert result != frozen_pid and starts_in(log) == [str(frozen_pid), str(result)]


def exit_zero():
    os._exit(0)


def close_std_fds():
    for fd in (0, 1, 2):
        os.close(fd)
    time.sleep(1)   # the worker notices its stdin is gone and leaves
    return "survived"


@pytest.mark.parametrize("poison", [exit_zero, close_std_fds], ids=["os._exit(0)", "close fds 0-2"])
def test_a_worker_that_exits_with_status_0_is_replaced(poison):
    """Both workers taken down: without respawn every later future would hang."""
    with throwaway_cluster(2, max_lost=1) as cluster:
        client = cluster.client()
        first = set(cluster.pids()["workers"])
        bad = [client.submit(poison) for _ in range(2)]
        for fut in bad:
            try:
                assert fut.result(90) == "survived"
            except WorkerLost as e:
                assert "exited with status 0" in str(e), str(e)
        wait_for(lambda: not first & set(cluster.pids()["workers"]), timeout=60,
                 what="both first workers replaced")
        assert client.map(lambda x: x + 1, range(20), chunksize=1) == list(range(1, 21))
        wait_for(lambda: len(client.workers()) == 2, timeout=60, what="2 workers again")


def fork_sleeper():
    """Fork a child that sleeps (in this worker's process group); return its pid."""
    pid = os.fork()
    if pid == 0:
        try:
            time.sleep(300)
        finally:
            os._exit(0)
    return pid


def test_a_forked_child_dies_with_its_worker_and_with_the_cluster():
    cluster = throwaway_cluster(2)
    children = []
    try:
        client = cluster.client()
        child = client.submit(fork_sleeper).result(60)
        children.append(child)
        worker = next(w for w in client.workers() if w["done"])
        assert not gone(child)
        kill_worker(cluster, worker["id"], client=client)
        wait_for(lambda: gone(child), timeout=60, what="the child gone with its worker")
        wait_for(lambda: len(client.workers()) == 2, timeout=60, what="the worker replaced")
        child = client.submit(fork_sleeper).result(60)
        children.append(child)
        assert not gone(child)
    finally:
        cluster.close()
        for pid in children:   # only ours, by pid, and only if the test failed
            if not gone(pid):
                os.kill(pid, signal.SIGKILL)
    wait_for(lambda: gone(children[-1]), timeout=60, what="the child gone after close()")


def allocate(mib):
    """Grow by 8 MiB steps (pages touched) up to mib MiB, slowly enough to be watched."""
    chunks = []
    for _ in range(mib // 8):
        chunks.append(bytearray(8 << 20))
        time.sleep(0.005)
    return len(chunks)


def test_a_task_past_the_memory_limit_fails_and_its_worker_is_replaced():
    with throwaway_cluster(1, memory_limit="300MiB") as cluster:
        client = cluster.client()
        [before] = cluster.pids()["workers"]
        with pytest.raises(MemoryLimitExceeded) as info:
            client.submit(allocate, 4096).result(90)
        message = str(info.value)
        assert isinstance(info.value, MemoryError)
        assert isinstance(info.value, nbcluster.NBClusterError)
        assert "memory limit 300.0 MiB exceeded (rss " in message, message
        assert "memory_limit=" in message and "--memory-limit" in message   # how to change it
        reason = wait_for(lambda: cluster.exit_reason(before), timeout=60, what="its exit line")
        assert reason.startswith("memory limit 300.0 MiB exceeded"), reason
        assert client.submit(allocate, 40).result(60) == 5          # the next task runs
        [after] = cluster.pids()["workers"]
        assert after != before


def test_max_tasks_per_child_replaces_workers_and_loses_or_repeats_no_task(tmp_path):
    log = tmp_path / "starts"

    def note(i):
        with open(log, "a") as f:
            f.write(f"{i}:{os.getpid()}\n")
        return i, os.getpid()

    with throwaway_cluster(1, max_tasks_per_child=3) as cluster:
        client = cluster.client()
        pids = [client.submit(note, i).result(60)[1] for i in range(7)]
        assert [pids.index(p) for p in pids] == [0, 0, 0, 3, 3, 3, 6], pids
        # many at once: prefetched tasks a leaving worker had not started run elsewhere, once
        cluster.add_workers(1)
        out = client.map(note, range(100, 160), chunksize=1)
    assert [i for i, _ in out] == list(range(100, 160))
    ran = [line.split(":") for line in starts_in(log)]
    assert sorted(int(i) for i, _ in ran) == [*range(7), *range(100, 160)]   # each once
    per_pid = {}
    for _, pid in ran:
        per_pid[pid] = per_pid.get(pid, 0) + 1
    assert max(per_pid.values()) <= 3, per_pid


def test_worker_lost_names_sigkill_for_a_client_that_did_not_start_the_cluster():
    """The reason comes from the supervisor through the broker, not from LocalCluster.
    (Default heartbeats: with throwaway_cluster's 200 ms the broker's 600 ms expiry could
    beat the supervisor's report on a loaded machine, and the reason was "stopped
    answering".)"""
    with throwaway_cluster(2, max_lost=0, heartbeat_ms=1000) as cluster:
        with nbcluster.connect(str(cluster.connection_file)) as client:
            assert client.exit_reason is None
            fut = client.submit(time.sleep, 60)
            [victim] = running_on(client)
            kill_worker(cluster, victim, client=client)
            with pytest.raises(WorkerLost) as info:
                fut.result(60)
            assert f"{victim}: killed by SIGKILL" in str(info.value), str(info.value)


def test_a_sigkilled_supervisor_takes_its_workers_and_their_children_and_is_restarted():
    """With its supervisor SIGKILLed, nobody kills the worker's process group: the worker,
    seeing its stdin (the supervisor's pipe) close, takes its group with it. LocalCluster
    starts the supervisor again, so the cluster does not lose its workers for good."""
    cluster = throwaway_cluster(1)
    children = []
    try:
        client = cluster.client()
        children.append(client.submit(fork_sleeper).result(60))
        assert not gone(children[0])
        [supervisor] = cluster.pids()["supervisors"]
        [worker] = cluster.pids()["workers"]
        os.kill(supervisor, signal.SIGKILL)
        wait_for(lambda: gone(children[0]), timeout=60,
                 what="the forked child gone with its worker, its supervisor killed")
        # LocalCluster starts its supervisor again: the cluster has its worker back
        wait_for(lambda: cluster.pids()["supervisors"] != [supervisor], timeout=60,
                 what="a new supervisor")
        assert client.submit(os.getpid).result(60) not in (worker, supervisor)
    finally:
        cluster.close()
        for pid in children:   # only ours, by pid, and only if the test failed
            if not gone(pid):
                os.kill(pid, signal.SIGKILL)
