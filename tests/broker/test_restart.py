"""A broker killed (SIGKILL) and started again on the same address, twice in a row, while
two clients have tasks queued, running and finished-but-undelivered on one worker: every
result reaches its own task, once. Tasks wait for a gate file, so the test decides when each
ends, without timing."""

import time

import pytest

from nbcluster.client.client import Client
from nbcluster.testing import wait_for

from ..support.processes import Processes, gated, release, running

pytestmark = pytest.mark.timeout(180)


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
