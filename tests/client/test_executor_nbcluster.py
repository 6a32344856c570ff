"""nbcluster.Executor's own side, beyond the stdlib's contract
(tests/client/test_executor_contract.py): running on an existing cluster, its own cluster's
lifetime, interrupt(), Client.submit's keywords and options, the RUNNING state as the
progress bar and the broker see it."""

from __future__ import annotations

import concurrent.futures as cf
import os

import pytest

import nbcluster
from nbcluster.testing import wait_for

from ..support.executor_tasks import GATE_TIMEOUT_S, echo, gated, open_gate


def wait_running(fut, what="the task running"):
    wait_for(fut.running, timeout=GATE_TIMEOUT_S, what=what)


def test_executor_on_an_existing_cluster(shared_cluster):
    """Intended: client= (or client.executor()) runs on a cluster that outlives the executor;
    the old positional Executor(client) says how to write it now."""
    client = shared_cluster.client()
    with pytest.raises(TypeError, match="client="):
        nbcluster.Executor(client)
    with pytest.raises(ValueError):
        nbcluster.Executor(2, client=client)
    with client.executor() as ex:
        assert ex.submit(abs, -3).result(30) == 3
    with nbcluster.Executor(client=shared_cluster) as ex:
        assert ex.submit(abs, -4).result(30) == 4
    assert client.submit(abs, -5).result(30) == 5   # the cluster is still there


def test_own_cluster_goes_away_once_the_work_is_done(tmp_path):
    """shutdown(wait=False) of an Executor that started its own cluster: the work finishes,
    then the cluster stops."""
    gate = str(tmp_path / "gate")
    ex = nbcluster.Executor(max_workers=2)
    try:
        pids = ex._client.workers()
        fut = ex.submit(gated, gate, "done")
        ex.shutdown(wait=False)
        assert not fut.done()
        open_gate(gate)
        assert fut.result(GATE_TIMEOUT_S) == "done"

        def gone(pid):
            try:
                os.kill(pid, 0)
                return False
            except ProcessLookupError:
                return True
        wait_for(lambda: all(gone(w["pid"]) for w in pids), timeout=30,
                 what="the executor's workers gone")
    finally:
        open_gate(gate)
        ex.shutdown()


def test_interrupt_stops_a_running_task(shared_cluster, tmp_path):
    """Not in the stdlib: interrupting a running task is a call of its own."""
    with shared_cluster.client().executor() as ex:
        fut = ex.submit(gated, str(tmp_path / "never"))
        wait_running(fut)
        assert fut.interrupt() is True
        assert fut.cancelled() and fut.done()
        with pytest.raises(cf.CancelledError):
            fut.result(0)
        assert fut.interrupt() is False
        assert ex.submit(abs, -1).result(GATE_TIMEOUT_S) == 1   # the cluster works on


def test_client_submit_passes_every_keyword_and_options_go_apart(shared_cluster):
    client = shared_cluster.client()
    kwargs = {"labels": {"gpu"}, "callback": 1, "retries": 2, "fn": 3, "self": 4}
    assert client.submit(echo, **kwargs).result(30) == ((), kwargs)
    with pytest.raises(TypeError, match=r"options\(labels="):
        client.submit(abs, -1, labels={"gpu"})   # the old way: refused, nothing sent
    with pytest.raises(TypeError, match=r"options\(callback="):
        client.submit(pow, 2, 3, callback=print)
    got = []
    fut = client.options(retries=1, callback=got.append).submit(echo, labels="mine")
    assert fut.result(30) == ((), {"labels": "mine"})
    wait_for(lambda: got == [((), {"labels": "mine"})], what="the callback")
    assert client.broadcast(echo, fn=1) == {w["id"]: ((), {"fn": 1}) for w in client.workers()}


class RecordingBar:
    """A progress bar that remembers every `running` count it was told."""

    def __init__(self, total, desc, cancel=None):
        self.running: list[int] = []

    def update(self, done=0, failed=0, running=None, overhead=None):
        if running is not None:
            self.running.append(running)

    def set_description(self, text):
        pass

    def close(self):
        pass


@pytest.fixture
def recorded_bars():
    """The bars operations make during the test, as RecordingBars, in order."""
    from nbcluster.client import bars
    made: list[RecordingBar] = []
    old = bars._factory[0]
    bars.set_progress_factory(lambda *a: made.append(RecordingBar(*a)) or made[-1])
    yield made
    bars.set_progress_factory(old)


def test_progress_counts_as_running_only_started_tasks(shared_cluster, tmp_path, recorded_bars):
    """The bar of `nbcluster.progress` (and %%cluster's) counted nothing as running; now it
    counts the futures whose worker said they started."""
    gate = str(tmp_path / "gate")
    try:
        client = shared_cluster.client()
        futures = [client.submit(gated, gate, i) for i in range(5)]
        nbcluster.progress(futures, wait=False)
        [bar] = recorded_bars
        wait_for(lambda: sum(f.running() for f in futures) == 2, timeout=GATE_TIMEOUT_S,
                 what="two tasks running")
        wait_for(lambda: bar.running and bar.running[-1] == 2, what="the bar says 2")
        open_gate(gate)
        assert [f.result(GATE_TIMEOUT_S) for f in futures] == list(range(5))
        wait_for(lambda: bar.running[-1] == 0, what="the bar says 0 running at the end")
        assert max(bar.running) <= 2, bar.running
    finally:
        open_gate(gate)


def test_a_collection_bar_counts_as_running_only_started_chunks(shared_cluster, tmp_path,
                                                                recorded_bars):
    """A parallel map on 2 workers showed every chunk in flight as running ("5 running").
    The bar is told the running count when a chunk ends: chunk 0 is quick, the others wait
    at the gate until that first count is recorded (while they are in flight)."""
    gate = str(tmp_path / "gate")
    client = shared_cluster.client()
    run = nbcluster.parallel(range(8), client, chunksize=1).map(
        lambda i: i if i == 0 else gated(gate, i))
    import threading
    late = []   # a wait that timed out, reported here (not lost in its thread)

    def open_once_counted():
        try:   # one run, one bar
            wait_for(lambda: recorded_bars and recorded_bars[-1].running, timeout=GATE_TIMEOUT_S,
                     what="the bar's first running count (chunk 0's result)")
        except TimeoutError as e:
            late.append(e)
        finally:
            open_gate(gate)
    opener = threading.Thread(target=open_once_counted)
    opener.start()
    try:
        assert run.to_list() == list(range(8))
    finally:
        open_gate(gate)
        opener.join(GATE_TIMEOUT_S + 10)
        assert not late, late[0]
    counts = [n for bar in recorded_bars for n in bar.running]
    assert len(recorded_bars) == 1 and counts and max(counts) <= 2, counts


def test_broker_forwards_a_started_note_only_from_the_worker_holding_the_task():
    """The state machine's side of RUNNING: checked like output, by worker and attempt."""
    from nbcluster.broker.state import BrokerState
    from nbcluster.errors import ProtocolError

    from ..support.broker_sim import stamp

    state = BrokerState()

    def handle(identity, header, payload=(), now=0):
        return state.handle(identity, stamp(state, identity, header), list(payload), None, now)

    handle(b"c", {"t": "hello", "role": "client", "host": "h", "pid": 1})
    for w in (b"w1", b"w2"):
        handle(w, {"t": "hello", "role": "worker", "host": "h", "pid": 2})
    handle(b"w1", {"t": "ready", "n": 1})
    out = handle(b"c", {"t": "submit", "tasks": [[7, 2, [], None, 0]]}, [b"f", b"a"])
    [(gid, attempt, *_)] = [t for s in out if s.header["t"] == "run" for t in s.header["tasks"]]
    note = {"t": "started", "items": [[gid, attempt]]}
    assert handle(b"w2", note, now=1) == []                # not its task
    assert handle(b"w1", {"t": "started", "items": [[gid, attempt + 1]]}, now=1) == []
    [sent] = handle(b"w1", note, now=1)
    assert sent.identity == b"c" and sent.header == {"t": "started", "items": [[7, "w1"]]}
    state.check_invariants()
    with pytest.raises(ProtocolError):
        handle(b"w1", {"t": "started", "items": [gid]}, now=1)


def test_task_options_are_checked_when_made(shared_cluster):
    client = shared_cluster.client()
    with pytest.raises(TypeError, match=r"labels=\{'gpu'\}"):
        client.options(labels="gpu")   # a string would ask for labels g, p and u
    with pytest.raises(ValueError):
        client.options(retries=-1)
    with pytest.raises(TypeError):
        client.options(callback="print")
    fut = client.options(labels=["nowhere"]).submit(abs, -1)   # waits: no worker has it
    wait_for(lambda: client.status()["waiting_for_labels"] == {"nowhere": 1},
             what="the task waiting for its label")
    assert fut.cancel() and fut.cancelled()
