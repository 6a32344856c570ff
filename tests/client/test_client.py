"""Submit, map, broadcast, callbacks, cancel, output, large buffers: real broker and workers."""

import asyncio
import concurrent.futures
import os
import threading
import time

import numpy as np
import pytest

import nbcluster
from nbcluster import PicklingError, RemoteError, RemoteErrorGroup, TaskCancelled
from nbcluster.testing import wait_for

pytestmark = pytest.mark.timeout(60)


def test_submit_result_with_captured_variables(client):
    offset = 1000
    assert client.submit(lambda x: x + offset, 5).result(60) == 1005
    assert client.submit(pow, 2, 10).result(60) == 1024
    assert client.submit(sorted, [3, 1, 2], reverse=True).result(60) == [3, 2, 1]


def test_map_keeps_order_on_100k_items(client):
    out = client.map(lambda x: x * 10, range(100_000))
    assert out == [x * 10 for x in range(100_000)]


def test_map_of_several_iterables_and_explicit_chunksize(client):
    assert client.map(lambda a, b: a - b, range(50), range(0, 100, 2), chunksize=7) == \
        [a - b for a, b in zip(range(50), range(0, 100, 2), strict=True)]
    assert client.map(str, []) == []


def test_map_chunks_gives_a_future_per_chunk_and_its_old_name_warns(client):
    futures, n = client.map_chunks(lambda x: -x, range(10), chunksize=4)
    assert n == 10 and [f.result(60) for f in futures] == [[0, -1, -2, -3], [-4, -5, -6, -7],
                                                           [-8, -9]]
    with pytest.deprecated_call(match="map_chunks"):
        futures, n = client.map_futures(abs, [-1, -2], chunksize=1)
    assert n == 2 and [f.result(60) for f in futures] == [[1], [2]]


def test_10k_individually_submitted_tasks(client):
    futures = [client.submit(lambda i: i * i, i) for i in range(10_000)]
    assert [f.result(30) for f in futures] == [i * i for i in range(10_000)]
    assert client.stats == {"results": 10_000, "unexpected_results": 0}


def test_tasks_spread_over_workers(client):
    pids = set(client.map(lambda _: __import__("os").getpid(), range(8), chunksize=1))
    if len(pids) < 2:  # one worker may win all 8 tiny tasks; make them long enough to share
        pids = set(client.map(
            lambda _: (__import__("time").sleep(0.2), __import__("os").getpid())[1],
            range(4), chunksize=1))
    assert len(pids) == 2


def test_broadcast_runs_once_on_every_worker(client):
    out = client.broadcast(lambda: __import__("os").getpid())
    assert sorted(out) == sorted(w["id"] for w in client.workers())
    assert len(set(out.values())) == 2


def test_callback_runs_on_the_client(client):
    got, done = [], threading.Event()

    def callback(value):
        got.append((value, threading.current_thread().name))
        done.set()
    client.options(callback=callback).submit(lambda: 42).result(60)
    assert done.wait(60)
    assert got[0][0] == 42 and got[0][1].startswith("nbcluster-callbacks")


def test_cancel_queued_and_running(client):
    # longer than any wait below: an interrupt that fails shows
    running = client.submit(time.sleep, 600)
    queued = [client.submit(time.sleep, 600) for _ in range(3)]
    wait_for(lambda: sum(w["running"] for w in client.workers()) >= 1, what="a task running")
    assert client.cancel([running, *queued]) == 4
    assert all(f.cancelled() for f in [running, *queued])
    with pytest.raises(concurrent.futures.CancelledError):
        running.result()
    # The workers were interrupted and are free again: new work runs at once.
    assert client.submit(lambda: "free").result(60) == "free"
    wait_for(lambda: all(w["running"] == 0 for w in client.workers()), what="workers idle")


def test_futures_keep_the_concurrent_futures_contract(client):
    futures = [client.submit(time.sleep, d, ) for d in (0.3, 0.0, 0.1)]
    order = [futures.index(f) for f in concurrent.futures.as_completed(futures, timeout=60)]
    assert sorted(order) == [0, 1, 2] and order[-1] == 0
    done, not_done = concurrent.futures.wait(futures, timeout=60)
    assert len(done) == 3 and not not_done
    f = client.submit(lambda: 1 / 0)
    assert isinstance(f.exception(10), ZeroDivisionError)
    seen = []
    f.add_done_callback(seen.append)      # already done: called at once
    assert seen == [f] and f.done() and not f.running()
    with pytest.raises(concurrent.futures.TimeoutError):
        client.submit(time.sleep, 5).result(timeout=0.1)


def test_futures_can_be_awaited(client):
    async def main():
        return await asyncio.gather(client.submit(lambda: 1), client.submit(lambda: 2))
    assert asyncio.run(main()) == [1, 2]


def test_output_is_captured_per_task(client):
    def noisy(n):
        import sys
        for i in range(n):
            print("line", i)
        print("oops", file=sys.stderr)
        return n
    f = client.submit(noisy, 3)
    assert f.result(60) == 3
    assert f.stdout == "line 0\nline 1\nline 2\n"
    assert f.stderr == "oops\n"
    assert {w for _, _, w in f.output} == {f.worker}


def test_output_arrives_while_the_task_runs(client, tmp_path):
    def prints_then_waits(gate):
        print("started", flush=True)
        deadline = time.monotonic() + 60
        while not os.path.exists(gate) and time.monotonic() < deadline:
            time.sleep(0.01)
    first_line = threading.Event()
    gate = tmp_path / "gate"
    f = client.submit(prints_then_waits, str(gate))
    f.on_output = lambda stream, text, worker: first_line.set()
    if f.output:   # it arrived before the handler was set (the I/O thread keeps it first)
        first_line.set()
    assert first_line.wait(60) and not f.done()   # the task is still waiting for the gate
    assert ("stdout", "started\n") in [(s, t) for s, t, _ in f.output]
    gate.touch()
    f.result(60)


def test_100mb_numpy_round_trip(client):
    a = np.random.default_rng(0).random(100_000_000 // 8)
    out = client.submit(lambda x: x * 2, a).result(60)
    assert out.shape == a.shape and np.array_equal(out, a * 2)
    out[0] = 1.0   # arrives writable


def test_remote_error_has_frames_locals_and_worker(client):
    def inner(d, k):
        secret = "local value"   # noqa: F841 - the frame's locals are what is tested
        return d[k]

    def outer(k):
        return inner({"a": 1}, k)
    with pytest.raises(KeyError) as info:
        client.submit(outer, "zz").result(60)
    err = info.value
    assert isinstance(err, RemoteError) and err.type_name == "builtins.KeyError"
    assert err.message == "'zz'"
    assert [f.name for f in err.frames][-2:] == ["outer", "inner"]
    assert err.frames[-1].locals["secret"] == "'local value'"
    assert err.frames[-1].line == "return d[k]"
    assert err.worker["id"] in {w["id"] for w in client.workers()}
    assert err.worker["pid"] and err.worker["host"]
    assert "in inner" in err.traceback and "KeyError: 'zz'" in err.traceback
    assert str(err) == "'zz'" and err.args == ("zz",)   # the remote exception's own


def test_several_failures_come_back_as_one_group(client):
    def f(x):
        if x % 10 == 3:
            raise ValueError(f"bad {x}")
        return x
    with pytest.raises(RemoteErrorGroup) as info:
        client.map(f, range(40), chunksize=4)
    group = info.value
    assert sorted(e.index for e in group.exceptions) == [3, 13, 23, 33]
    assert {e.item for e in group.exceptions} == {"3", "13", "23", "33"}
    assert "4 of 40 elements failed (4 x ValueError)" in str(group)
    assert set(group.workers) <= {w["id"] for w in client.workers()}
    assert all(w in str(group) for w in group.workers)
    match, rest = group.split(ValueError)
    assert len(match.exceptions) == 4 and rest is None


def test_unpicklable_input_fails_at_once_and_sends_nothing(client):
    lock = threading.Lock()
    with pytest.raises(PicklingError, match=r"argument 1 \(<unlocked _thread.lock"):
        client.submit(lambda a, b: None, 1, lock)
    with pytest.raises(PicklingError, match="function"):
        client.submit(lock.acquire)
    with pytest.raises(PicklingError, match="element"):
        client.map(lambda x: x, [1, lock])
    assert client.status()["queued"] == 0 and client.status()["running"] == 0


def test_unpicklable_result_is_a_remote_error(client):
    with pytest.raises(RemoteError, match="cannot be pickled"):
        client.submit(lambda: threading.Lock()).result(60)


def test_retries_rerun_a_raising_task(client, tmp_path):
    marker = tmp_path / "tries"

    def flaky():
        n = int(marker.read_text()) if marker.exists() else 0
        marker.write_text(str(n + 1))
        if n < 2:
            raise RuntimeError("not yet")
        return n
    assert client.options(retries=2).submit(flaky).result(60) == 2
    with pytest.raises(ZeroDivisionError):   # still failing after its retries: the last error
        client.options(retries=1).submit(lambda: 1 / 0).result(60)


def test_two_clients_are_isolated(cluster):
    a, b = cluster.client(), cluster.client()
    fa = [a.submit(lambda i: ("a", i), i) for i in range(200)]
    fb = [b.submit(lambda i: ("b", i), i) for i in range(200)]
    assert [f.result(60) for f in fa] == [("a", i) for i in range(200)]
    assert [f.result(60) for f in fb] == [("b", i) for i in range(200)]
    assert not a._futures and not b._futures


def test_client_disconnect_leaves_nothing_in_the_broker(cluster):
    gone = cluster.client()
    [gone.submit(time.sleep, 1) for _ in range(20)]
    wait_for(lambda: gone.status()["running"] == 2, what="tasks running")
    gone.close()
    watcher = cluster.client()
    wait_for(lambda: watcher.status()["queued"] == 0 and watcher.status()["clients"] == 1,
             what="the closed client's tasks dropped")
    assert watcher.submit(lambda: "ok").result(60) == "ok"


def test_labels_wait_and_are_served_when_a_labelled_worker_joins(cluster, client):
    fut = client.options(labels={"gpu"}).submit(lambda: "on gpu")
    wait_for(lambda: client.status()["waiting_for_labels"] == {"gpu": 1}, what="waiting state")
    assert not fut.done()
    cluster.add_workers(1, labels=["gpu"])
    assert fut.result(60) == "on gpu"
    gpu = [w for w in client.workers() if w["labels"] == ["gpu"]]
    assert len(gpu) == 1 and fut.worker == gpu[0]["id"]


def test_executor_is_a_drop_in_for_process_pool(client):
    ex = client.executor()
    assert isinstance(ex, concurrent.futures.Executor)
    assert ex.submit(pow, 3, 3).result(60) == 27
    assert list(ex.map(lambda x: x + 1, range(10), chunksize=3)) == list(range(1, 11))
    it = ex.map(lambda x: 10 // x, [5, 2, 0, 1])
    assert next(it) == 2 and next(it) == 5
    with pytest.raises(ZeroDivisionError):
        next(it)
    with pytest.raises(concurrent.futures.TimeoutError):
        list(ex.map(time.sleep, [2, 2], timeout=0.3))
    ex.shutdown()
    with pytest.raises(RuntimeError):
        ex.submit(pow, 1, 1)


def test_executor_without_a_client_owns_a_local_cluster():
    with nbcluster.Executor(max_workers=2) as ex:
        assert sorted(ex.map(abs, [-1, -2, 3])) == [1, 2, 3]
        pids = ex._cluster.pids()
    import os
    for pid in [*pids["workers"], *pids["broker"]]:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_cancelled_error_type():
    assert issubclass(TaskCancelled, concurrent.futures.CancelledError)


def test_wait_sees_cancelled_futures_as_done(client):
    f = client.options(labels={"nowhere"}).submit(time.sleep, 10)   # stays queued
    assert f.cancel()
    done, _ = concurrent.futures.wait([f], timeout=2)
    assert done == {f}
    assert list(concurrent.futures.as_completed([f], timeout=2)) == [f]


def test_workers_import_what_the_client_can_import(tmp_path):
    import sys
    (tmp_path / "my_helpers.py").write_text("def triple(x):\n    return 3 * x\n")
    sys.path.insert(0, str(tmp_path))
    try:
        import my_helpers
        with nbcluster.LocalCluster(1) as cluster:
            assert cluster.client().map(my_helpers.triple, [1, 2]) == [3, 6]
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("my_helpers", None)


def test_large_buffers_use_shared_memory_and_leave_no_file(cluster, client):
    import os

    from nbcluster.wire import shm
    prefix = shm.cluster_prefix(cluster.key)
    a = np.arange(2_000_000, dtype=np.float64)
    fut = client.submit(lambda x: (x.sum(), x * 3), a)
    total, tripled = fut.result(30)
    assert total == a.sum() and np.array_equal(tripled, a * 3)
    assert not [f for f in os.listdir("/dev/shm") if f.startswith(prefix)]
    client.local = False                      # as if the broker were on another host
    assert np.array_equal(client.submit(lambda x: x + 1, a).result(30), a + 1)
    futs = [client.submit(lambda x: (__import__("time").sleep(5), x)[1], a) for _ in range(3)]
    client.local = True
    futs += [client.submit(lambda x: (__import__("time").sleep(5), x)[1], a) for _ in range(3)]
    assert [f for f in os.listdir("/dev/shm") if f.startswith(prefix)]
    client.cancel(futs)                       # cancelled tasks' files go too
    wait_for(lambda: not [f for f in os.listdir("/dev/shm") if f.startswith(prefix)],
             what="shared-memory files removed")


def test_failure_summary_reads_as_english():
    from nbcluster.errors import WorkerLost
    from nbcluster.report import summarize_failures
    one = summarize_failures([WorkerLost("x", ["w2"])], 3, "elements")
    two = summarize_failures([WorkerLost("x", ["w1"]), WorkerLost("y", ["w2"])], 3, "elements")
    assert one.endswith("on worker w2") and two.endswith("on workers w1, w2")
