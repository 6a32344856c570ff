"""A task that is not lost runs once: a give-back never leaves a task both queued elsewhere
and started by the worker that handed it back. Real processes; no wall-clock assertions."""

import os
import time
from pathlib import Path

import pytest

from nbcluster.testing import throwaway_cluster

pytestmark = pytest.mark.timeout(300)


def record(folder, round, i, seconds):
    """A task of a few tens of ms (long enough to be given back behind) that leaves a file
    for every run of it."""
    Path(folder, f"{round}-{i}-{os.getpid()}-{time.monotonic_ns()}").touch()
    time.sleep(seconds)
    return i


def test_given_back_tasks_run_once(tmp_path):
    with throwaway_cluster(2) as cluster:
        client = cluster.client()
        for round in range(40):
            # tiny tasks first: both workers prefetch, and hold tasks behind a longer one
            assert client.map(lambda v: v, range(200), chunksize=1) == list(range(200))
            futures = [client.submit(record, str(tmp_path), round, i, 0.015 + 0.005 * i)
                       for i in range(4)]
            assert [f.result(60) for f in futures] == list(range(4))
        client.broadcast(lambda: None)   # every worker is past what it held: no run is to come
    runs: dict[str, int] = {}
    for path in tmp_path.iterdir():
        key = "-".join(path.name.split("-")[:2])
        runs[key] = runs.get(key, 0) + 1
    twice = {k: n for k, n in runs.items() if n > 1}
    assert len(runs) == 40 * 4 and not twice, f"tasks run more than once: {twice}"


def wait_gate(gate):
    """A task that runs until the file `gate` exists (at most 60 s)."""
    import os
    import time
    deadline = time.monotonic() + 60
    while not os.path.exists(gate) and time.monotonic() < deadline:
        time.sleep(0.01)
    return "opened"


@pytest.mark.timeout(120)
def test_a_result_does_not_wait_behind_the_next_task_of_its_batch(tmp_path):
    """A run of tasks [2, 3, 4]: 2 is quick, 3 runs until the test opens its gate. Results of
    quick tasks are sent together, and 2's waited in the worker until 3 ended; 3's giveback
    meanwhile handed 2 back to the broker as if it had not run. Under load (a parallel map's
    chunks coming in one run) chunk 0's result waited 60 s, and chunk 0 waited to run again
    until a worker was free. 2's result must come while 3 runs, before the giveback."""
    from ..support.fake_broker import (
        EPOCH,
        beat,
        fake_broker_and_worker,
        run_message,
        task_run,
        welcome,
    )
    gate = tmp_path / "gate"
    broker, worker = fake_broker_and_worker()
    try:
        ctl, hello = broker.recv(30)
        assert hello["t"] == "hello"
        task_sock, session = hello["task_identity"], hello["session"]
        broker.send(ctl, {**welcome("w1", session), "ledger": session})

        def next_message(what: str) -> dict:
            deadline = time.monotonic() + 30
            while True:
                assert time.monotonic() < deadline, f"waited 30 s for {what}"
                broker.send(ctl, {"t": "hb"})
                try:
                    _, header = broker.recv(0.1)
                except TimeoutError:
                    continue
                if header["t"] not in ("hb", "started", "output"):
                    return header

        assert next_message("credit")["t"] == "ready"
        # a tiny task first: the worker learns its tasks are short and asks for more (prefetch)
        broker.send(task_sock, *run_message("w1", session, [task_run(abs, 1, -1)]))
        warm = next_message("the first result")
        assert warm["t"] == "done" and warm["ready"] > 2, warm
        header, frames = run_message("w1", session, [
            task_run(abs, 2, -2), task_run(wait_gate, 3, str(gate)), task_run(abs, 4, -4)])
        broker.send(task_sock, header, frames)
        got = next_message("task 2's result, while task 3 runs")
        assert got["t"] == "done" and [item[:3] for item in got["items"]] == [[2, 0, "ok"]], \
            f"task 2's result did not come first: {got}"
        assert got["e"] == EPOCH and not gate.exists()
        giveback = next_message("the giveback of task 3's batch")
        assert giveback == {"t": "giveback", "keep": 3}
        broker.send(ctl, {"t": "given", "ids": [[4, 0]], "dropped": warm["ready"] - 3})
        beat(broker, ctl, 0.2)
        gate.touch()
        last = next_message("task 3's result")
        assert last["t"] == "done" and [item[:3] for item in last["items"]] == [[3, 0, "ok"]]
    finally:
        gate.touch()
        worker.kill()
        worker.wait(10)
        broker.close()
