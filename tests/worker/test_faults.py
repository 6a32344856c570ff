"""Workers lost, frozen, poisoned, joining and leaving: real processes, real signals."""

import os
import signal
import time

import pytest

from nbcluster import WorkerLost
from nbcluster.testing import kill_worker, throwaway_cluster, wait_for

pytestmark = pytest.mark.timeout(90)


def running_on(client, n=1):
    """Ids of workers running a task, once at least n are."""
    return wait_for(lambda: [w["id"] for w in client.workers() if w["running"]] if
                    sum(1 for w in client.workers() if w["running"]) >= n else None,
                    what=f"{n} worker(s) running a task")


def starts_in(path):
    return path.read_text().split() if path.exists() else []


def test_kill_9_mid_task_reruns_elsewhere_and_delivers_once(tmp_path):
    log = tmp_path / "starts"

    def slow(x):
        with open(log, "a") as f:
            f.write(f"{os.getpid()}\n")
        time.sleep(1.0)
        return x * 2, os.getpid()

    with throwaway_cluster(2) as cluster:
        client = cluster.client()
        fut = client.submit(slow, 21)
        [victim] = running_on(client)
        wait_for(lambda: starts_in(log), what="the task started")   # not just dispatched
        t0 = time.monotonic()
        killed_pid = kill_worker(cluster, victim, client=client)
        value, pid = fut.result(30)
        assert value == 42 and pid != killed_pid
        assert time.monotonic() - t0 < 20   # noticed by heartbeats, not by a long timeout
        assert starts_in(log).count(str(killed_pid)) == 1 and len(starts_in(log)) == 2
        time.sleep(0.5)  # anything late would have arrived by now
        assert client.stats == {"results": 1, "unexpected_results": 0}
        wait_for(lambda: len(client.workers()) == 2, what="the killed worker respawned")


def test_frozen_worker_is_declared_dead_and_its_late_result_dropped(tmp_path):
    log = tmp_path / "starts"

    def slow():
        with open(log, "a") as f:
            f.write(f"{os.getpid()}\n")
        time.sleep(1.5)
        return os.getpid()

    with throwaway_cluster(2, respawn=False) as cluster:
        client = cluster.client()
        fut = client.submit(slow)
        wait_for(lambda: starts_in(log), what="the task started")   # not just assigned
        [frozen] = running_on(client)
        frozen_pid = next(w["pid"] for w in client.workers() if w["id"] == frozen)
        kill_worker(cluster, frozen, signal.SIGSTOP, client=client)
        try:
            result = fut.result(20)            # re-run on the other worker
        finally:
            os.kill(frozen_pid, signal.SIGCONT)
        assert result != frozen_pid
        assert starts_in(log) == [str(frozen_pid), str(result)]
        # The resumed worker registers again (under a new id) and finishes its stale run.
        wait_for(lambda: frozen_pid in [w["pid"] for w in client.workers()], what="re-registered")
        time.sleep(2.0)
        assert client.stats == {"results": 1, "unexpected_results": 0}
        assert client.submit(lambda: "alive").result(60) == "alive"


@pytest.mark.parametrize("how, reason", [("sigkill", "killed by SIGKILL"),
                                         ("abort", "killed by SIGABRT"),
                                         ("exit", "exited with status 3")])
def test_poison_task_fails_after_the_retry_limit_and_spares_the_rest(how, reason):
    def poison():
        if how == "sigkill":
            os.kill(os.getpid(), signal.SIGKILL)
        elif how == "abort":
            os.abort()
        os._exit(3)

    with throwaway_cluster(2, max_lost=2) as cluster:
        client = cluster.client()
        bad = client.submit(poison)
        good = [client.submit(lambda i: (time.sleep(0.05), i)[1], i) for i in range(30)]
        with pytest.raises(WorkerLost) as info:
            bad.result(60)
        assert len(info.value.lost_on) == 3 and len(set(info.value.lost_on)) == 3
        assert all(w in str(info.value) for w in info.value.lost_on)
        assert str(info.value).count(reason) == 3, str(info.value)
        assert [f.result(60) for f in good] == list(range(30))
        wait_for(lambda: len(client.workers()) == 2, what="workers respawned")


def test_retry_limit_zero_fails_on_first_loss():
    with throwaway_cluster(2, max_lost=0) as cluster:
        client = cluster.client()
        fut = client.submit(time.sleep, 10)
        [victim] = running_on(client)
        kill_worker(cluster, victim, client=client)
        with pytest.raises(WorkerLost) as info:
            fut.result(20)
        assert info.value.lost_on == [victim]


def test_workers_join_and_leave_while_a_map_runs():
    with throwaway_cluster(2) as cluster:
        client = cluster.client()
        futures, _n = client.map_chunks(lambda i: (time.sleep(0.02), i * i)[1], range(300),
                                        chunksize=1)
        time.sleep(0.3)
        cluster.add_workers(2)
        wait_for(lambda: len(client.workers()) == 4, what="new workers joined")
        leaving = client.workers()[0]
        kill_worker(cluster, leaving["id"], signal.SIGTERM, client=client)   # graceful leave
        assert [f.result(60)[0] for f in futures] == [i * i for i in range(300)]
        workers = client.workers()
        assert leaving["pid"] not in [w["pid"] for w in workers]
        newcomers = [w for w in workers if w["id"] in ("w3", "w4")]
        assert newcomers and all(w["done"] > 0 for w in newcomers)
        assert client.stats["unexpected_results"] == 0


def test_processes_are_gone_quickly_after_close():
    cluster = throwaway_cluster(2)
    pids = cluster.pids()
    t0 = time.monotonic()
    cluster.close()
    assert time.monotonic() - t0 < 10   # stopped and waited for, not left to time out
    for pid in [*pids["broker"], *pids["workers"]]:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_children_exit_when_their_parent_is_killed(tmp_path):
    import subprocess
    import sys
    script = tmp_path / "parent.py"
    script.write_text(
        "import nbcluster, sys, time\n"
        "c = nbcluster.LocalCluster(2)\n"
        "p = c.pids()\n"
        "print(*p['broker'], *p['workers'], flush=True)\n"
        "time.sleep(60)\n")
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        pids = [int(x) for x in parent.stdout.readline().split()]
        assert len(pids) == 3
    finally:
        parent.kill()
        parent.wait()

    def all_gone():
        for pid in pids:
            try:
                os.kill(pid, 0)
                return False
            except ProcessLookupError:
                pass
        return True
    wait_for(all_gone, timeout=30, what="children gone after their parent was killed")


def test_prefetched_tasks_are_given_back_when_a_long_task_blocks_them():
    """After many tiny tasks a worker prefetches; long tasks must still spread over workers."""
    with throwaway_cluster(2) as cluster:
        client = cluster.client()
        client.map(lambda x: x, range(2000), chunksize=1)       # both workers now prefetch
        pids = client.map(lambda _: (time.sleep(0.3), os.getpid())[1], range(8), chunksize=1)
        assert len(set(pids)) == 2   # both ran them: the prefetched ones were given back


def test_a_long_task_does_not_hold_back_the_short_ones_behind_it():
    with throwaway_cluster(2) as cluster:
        client = cluster.client()
        client.map(lambda x: x, range(2000), chunksize=1)       # both workers now prefetch
        out = client.map(lambda d: (time.sleep(d), os.getpid())[1], [2.0] + [0.1] * 7, chunksize=1)
        long_pid, short_pids = out[0], set(out[1:])
        assert short_pids == set(cluster.pids()["workers"]) - {long_pid}   # all given back


def test_a_client_forgotten_by_the_broker_gets_each_result_once(tmp_path):
    """A client process frozen past the broker's client timeout is forgotten (its tasks
    dropped); when it resumes it registers again and resubmits: every result, exactly once."""
    import subprocess
    import sys
    with throwaway_cluster(2, client_expiry_ms=600) as cluster:
        script = tmp_path / "client.py"
        script.write_text(
            "import json, sys, time, nbcluster\n"
            f"c = nbcluster.connect({str(cluster.connection_file)!r})\n"
            "futs = [c.submit(lambda i: (time.sleep(0.05), i)[1], i) for i in range(60)]\n"
            "print('submitted', flush=True)\n"
            "out = [f.result(60) for f in futs]\n"
            "time.sleep(1)\n"
            "print(json.dumps({'ok': out == list(range(60)), **c.stats}), flush=True)\n")
        proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
        try:
            assert proc.stdout.readline().strip() == "submitted"
            os.kill(proc.pid, signal.SIGSTOP)
            watcher = cluster.client()
            wait_for(lambda: watcher.status()["clients"] == 1, what="the frozen client forgotten")
            os.kill(proc.pid, signal.SIGCONT)
            import json
            report = json.loads(proc.stdout.readline())
            assert report == {"ok": True, "results": 60, "unexpected_results": 0}
        finally:
            os.kill(proc.pid, signal.SIGCONT)
            proc.kill()
            proc.wait()


def test_a_respawned_worker_keeps_its_own_labels():
    with throwaway_cluster(1) as cluster:
        client = cluster.client()
        [gpu] = cluster.add_workers(1, labels=["gpu"])
        wait_for(lambda: len(client.workers()) == 2, what="the gpu worker joined")
        os.kill(gpu.pid, signal.SIGKILL)
        wait_for(lambda: sorted(w["labels"] for w in client.workers()) == [[], ["gpu"]]
                 and gpu.pid not in [w["pid"] for w in client.workers()],
                 what="the gpu worker respawned with its label")
        assert client.options(labels={"gpu"}).submit(lambda: "on gpu").result(20) == "on gpu"
