"""No silent starvation: after tiny tasks (prefetch), give-backs and cancels of running
tasks, every worker still takes queued work. Real processes; no wall-clock assertions."""

import asyncio
import concurrent.futures
import os
import time
from pathlib import Path

import pytest

from nbcluster.testing import throwaway_cluster, wait_for

pytestmark = pytest.mark.timeout(180)


def slow(marker, i):
    """Say it started, then wait until interrupted or released (bounded, so nothing hangs)."""
    Path(f"{marker}-{i}-{os.getpid()}").touch()
    deadline = time.monotonic() + 30
    while not Path(f"{marker}-release").exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    return i


def starts(tmp_path) -> int:
    return len(list(tmp_path.glob("run*-*-*")))   # run<round>-<i>-<pid>: not the release files


def started(tmp_path, n):
    return wait_for(lambda: starts(tmp_path) >= n, timeout=60, what=f"{n} slow tasks started")


def interrupt_directly(client, marker, tmp_path, delay):
    before = starts(tmp_path)   # counted first: both may start before the next line
    futures = [client.submit(slow, marker, i) for i in range(2)]
    started(tmp_path, before + 1)
    time.sleep(delay)   # vary where the interrupt lands against the give-back
    for fut in futures:
        fut.cancel()      # the queued one is cancelled; the running one is left running...
        fut.interrupt()   # ...until interrupted


def cancel_by_client(client, marker, tmp_path, delay):
    before = starts(tmp_path)   # counted first: both may start before the next line
    futures = [client.submit(slow, marker, i) for i in range(2)]
    started(tmp_path, before + 1)
    time.sleep(delay)
    client.cancel(futures)   # stops the job: queued tasks dropped, running ones interrupted


def cancel_by_asyncio_timeout(client, marker, tmp_path, delay):
    async def main():
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.gather(*(client.submit(slow, marker, i)
                                                    for i in range(2))), 0.05 + delay)
    asyncio.run(main())


def cancel_by_map_timeout(client, marker, tmp_path, delay):
    with pytest.raises(concurrent.futures.TimeoutError):
        list(client.executor().map(slow, [marker] * 2, range(2), timeout=0.05 + delay))


def cancel_by_executor_shutdown(client, marker, tmp_path, delay):
    executor = client.executor()
    before = starts(tmp_path)
    futures = [executor.submit(slow, marker, i) for i in range(3)]
    started(tmp_path, before + 1)
    time.sleep(delay)
    executor.shutdown(wait=False, cancel_futures=True)   # what has not started is cancelled
    assert any(f.cancelled() for f in futures)


@pytest.mark.parametrize("cancel", [interrupt_directly, cancel_by_client,
                                    cancel_by_asyncio_timeout, cancel_by_map_timeout,
                                    cancel_by_executor_shutdown])
def test_every_worker_takes_work_after_tiny_tasks_giveback_and_cancels(tmp_path, cancel):
    with throwaway_cluster(2) as cluster:
        client = cluster.client()
        for round, delay in enumerate([0.0, 0.01, 0.03, 0.1] * 2):
            # Tiny tasks: both workers prefetch; then a slow one is given back and cancelled.
            assert client.map(lambda v: v, range(400), chunksize=1) == list(range(400))
            marker = str(tmp_path / f"run{round}")
            cancel(client, marker, tmp_path, delay)
            Path(f"{marker}-release").touch()   # tasks a cancel left running (as the stdlib) end
        wait_for(lambda: all(w["running"] == 0 for w in client.workers()) and
                 client.status()["queued"] == 0, timeout=60, what="the cluster idle")
        pids = [f.result(60) for f in [client.submit(lambda: (time.sleep(0.5), os.getpid())[1])
                                       for _ in range(2)]]
        # Both workers are idle with free slots: each must take one of the two tasks.
        assert sorted(pids) == sorted(w["pid"] for w in client.workers()), \
            f"one worker ran both tasks: the other starves ({client.workers()})"
        # And not thanks to the workers' safety net: it must never have had to step in.
        since = time.time()
        workers = wait_for(lambda: [w for w in client.workers() if w["info"]["time"] > since]
                           if all(w["info"]["time"] > since for w in client.workers()) else None,
                           what="a heartbeat from every worker")
        assert [w["info"]["credit_heals"] for w in workers] == [0, 0]
