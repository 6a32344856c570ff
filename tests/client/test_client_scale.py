"""Many queued tasks on one client: bounded messages, little memory per task, and the small
lock of TaskFuture against threading.Condition (the figures: benchmarks/scale_client.py)."""

import concurrent.futures
import threading
import tracemalloc

import pytest

from nbcluster.client.futures import TaskFuture, _Condition
from nbcluster.client.io_thread import MAX_TASKS_PER_SUBMIT
from nbcluster.client.outbox import MAX_IDS_PER_MESSAGE
from nbcluster.testing import wait_for

from ..support.executor_tasks import gated, open_gate

pytestmark = pytest.mark.timeout(120)

NOBODY = {"no-worker-has-this-label"}   # tasks asking for it stay queued


def test_a_backlog_goes_out_in_messages_of_bounded_size(client, tmp_path):
    # The I/O thread runs a done-callback that waits: meanwhile 2,500 submits and their
    # cancels pile up in the outbox, then go in as few messages as the bounds allow.
    gate = tmp_path / "gate"
    first = client.submit(gated, str(gate), 1)
    busy, release = threading.Event(), threading.Event()
    first.add_done_callback(lambda f: (busy.set(), release.wait(60)))
    open_gate(str(gate))
    assert busy.wait(60), "the first task's result never came"
    try:
        queued = [client.options(labels=NOBODY).submit(int, i) for i in range(2500)]
        assert client.cancel(queued) == 2500
    finally:
        release.set()
    wait_for(lambda: client.sent["tasks"] == 2501 and not client._cancelling, 60,
             what="every task sent and every cancel confirmed by the broker")
    assert client.sent["most_in_a_message"] == max(MAX_TASKS_PER_SUBMIT, MAX_IDS_PER_MESSAGE)
    assert client.status()["queued"] == 0
    assert all(f.cancelled() for f in queued) and first.result() == 1


def test_a_queued_task_keeps_under_1000_bytes_on_the_client(client):
    # Measured in the client's process by tracemalloc; it was 2,300 bytes (a
    # threading.Condition per future, task specs as lists, ...). Ends with the tasks
    # cancelled, so the workers of this cluster are left as they were.
    opts = client.options(labels=NOBODY)
    opts.submit(int, 0).cancel()   # the function's payload, the label set: made once
    n = 20_000
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        futures = [opts.submit(int, i) for i in range(n)]
        wait_for(lambda: client.sent["tasks"] == n + 1, 60, what="every task sent")
        per_task = (tracemalloc.get_traced_memory()[0] - before) / n
    finally:
        tracemalloc.stop()
        client.cancel(futures)
    assert per_task < 1000, f"{per_task:.0f} bytes kept per queued task"
    assert all(f.cancelled() for f in futures)


# ---- TaskFuture's lock, side by side with threading.Condition ----------------------------
@pytest.fixture(params=[threading.Condition, _Condition], ids=["threading", "nbcluster"])
def make_condition(request):
    return request.param


def test_wait_times_out_and_returns_false(make_condition):
    cond = make_condition()
    with cond:
        assert cond.wait(0.01) is False
        assert cond.wait(0) is False


def test_notify_all_wakes_every_waiter(make_condition):
    cond, woke, ready = make_condition(), [], threading.Semaphore(0)

    def waiter():
        with cond:
            ready.release()
            woke.append(cond.wait(60))

    threads = [threading.Thread(target=waiter) for _ in range(3)]
    for t in threads:
        t.start()
    for _ in threads:
        assert ready.acquire(timeout=60)

    def three_asleep():
        with cond:
            return _sleeping(cond) == 3

    wait_for(three_asleep, 60, what="three threads waiting")
    with cond:
        cond.notify_all()
    for t in threads:
        t.join(60)
    assert woke == [True, True, True]


def test_wait_and_notify_need_the_lock_and_it_is_reentrant(make_condition):
    cond = make_condition()
    with pytest.raises(RuntimeError):
        cond.wait(0)
    with pytest.raises(RuntimeError):
        cond.notify_all()
    with cond, cond:   # an RLock, as threading.Condition's default
        assert cond.wait(0) is False
    assert cond.acquire(False)
    cond.release()


def _sleeping(cond):
    sleepers = cond._waiters if isinstance(cond, threading.Condition) else \
        getattr(cond, "_sleepers", [])
    return len(sleepers)


def test_a_queued_future_is_one_object_until_someone_waits():
    fut = TaskFuture(None, 1)
    assert fut._lock is None and fut._waiter_list is None and fut._callback_list is None
    assert not fut.done() and not fut.running() and not fut.cancelled() and fut.output == []
    assert fut._lock is None   # reading its state needs no lock
    with pytest.raises(concurrent.futures.TimeoutError):
        fut.result(0)
    fut.set_result(5)
    done, _ = concurrent.futures.wait([fut], 0)
    assert done == {fut} and fut.result() == 5
