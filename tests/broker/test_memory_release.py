"""Memory handed back after a big release, with the fake clock: once its queues are empty
the broker's state keeps nothing per label set, and a release of many tasks, however they
left (cancelled, dropped with their client, done), asks the process once to hand its freed
heap back (`housekeep(tasks, released=True)`: malloc_trim), on a tick after the sweep, never
while a message is handled. (That the heap really goes back: test_memory_release_process.)"""

import sys

from nbcluster.broker import state as state_module
from nbcluster.broker.state import TRIM_AFTER

from ..support.broker_sim import Sim, runs

PER_MESSAGE = 500   # tasks per submit and ids per cancel, as the client sends them


def sim_recording_housekeeping():
    """A Sim whose housekeeping is recorded: returns (sim, trims), trims being the number
    of tasks held at each hand-back."""
    calls = []
    sim = Sim(audit=False, housekeep=lambda tasks, released: calls.append((tasks, released)))
    return sim, calls


def trims(calls):
    return [tasks for tasks, released in calls if released]


def submit(sim, identity, cids, labels_of):
    cids = list(cids)
    for start in range(0, len(cids), PER_MESSAGE):
        part = cids[start:start + PER_MESSAGE]
        sim.msg(identity, "submit", [b"f"] * len(part),
                tasks=[[cid, 1, labels_of(cid), None, 0] for cid in part])


def cancel(sim, identity, cids):
    cids = list(cids)
    for start in range(0, len(cids), PER_MESSAGE):
        sim.msg(identity, "cancel", ids=cids[start:start + PER_MESSAGE])


def test_label_sets_queued_then_cancelled_leave_nothing_behind_and_memory_goes_back():
    """The bench's labels row in small: tasks each with a label set of its own (no worker
    has any), all cancelled. Before, nothing of this counted as a release (one gid a queue,
    none left to sweep), so the heap was never trimmed: RSS 3.4x its baseline."""
    sim, calls = sim_recording_housekeeping()
    sim.client(b"a")
    sim.worker(b"w", labels=["gpu"], credit=0)
    n = TRIM_AFTER + 2000
    submit(sim, b"a", range(n), lambda cid: [f"set{cid}"])
    queue, client = sim.state.queue, sim.state.clients[b"a"]
    assert len(queue.by_key) == len(queue.unserved) == len(client.queues) == n
    cancel(sim, b"a", range(n))
    assert trims(calls) == []   # not while a message is handled: on a tick
    # nothing per label set or per task is left, and the emptied tables start small again
    # (a dict keeps its size when emptied)
    assert not queue.by_key and not queue.unserved and not client.queues
    assert all(not cls.keys for cls in queue.classes.values())
    assert not queue.dirty and not queue.garbage and not queue.pinned_gids
    assert len(sim.state.tasks) == 0 and not sim.state.tasks.shards
    assert len(client.tasks) == 0 and not client.tasks.shards and not client.running
    for table in (queue.by_key, queue.unserved, client.queues):
        assert sys.getsizeof(table) == sys.getsizeof({})
    assert sim.state.status(sim.now)["label_sets_waiting"] == 0
    assert sim.state.next_deadline() == 0   # the loop ticks at once: the heap goes back now
    sim.tick(0)
    assert trims(calls) == [0] and sim.state.next_deadline() > 0
    sim.tick(5000)
    assert trims(calls) == [0]   # once per release


def test_memory_goes_back_once_the_table_is_half_its_peak(monkeypatch):
    """A fall that leaves more than half of the peak held does not trim (the heap then
    keeps at most what is held, and a trim of a big heap costs milliseconds); reaching half
    does; the peak then starts again from what is held."""
    monkeypatch.setattr(state_module, "TRIM_AFTER", 100)
    sim, calls = sim_recording_housekeeping()
    sim.client(b"a")
    sim.worker(b"w", credit=0)
    submit(sim, b"a", range(1000), lambda cid: ["nowhere"])
    cancel(sim, b"a", range(400))
    sim.tick(0)
    assert trims(calls) == []          # 600 held of 1000
    cancel(sim, b"a", range(400, 500))
    sim.tick(0)
    assert trims(calls) == [500]       # half
    cancel(sim, b"a", range(500, 560))
    sim.tick(0)
    assert trims(calls) == [500]       # 60 fewer since: not a big release
    submit(sim, b"a", range(1000, 1100), lambda cid: ["nowhere"])
    cancel(sim, b"a", range(560, 1100))
    sim.tick(0)
    assert trims(calls) == [500, 0]


def test_memory_goes_back_after_the_sweep_of_a_queue_of_cancelled_gids(monkeypatch):
    """The last live task of a queue leaves after the table's fall was handed back: the
    queue's dead gids, detached then, are freed by sweep, and what it freed goes back too
    (1,000,000 tasks of one label set cancelled: the real broker 68 MB after, 56 MB now)."""
    monkeypatch.setattr(state_module, "TRIM_AFTER", 100)
    monkeypatch.setattr(state_module, "TRIM_AFTER_SWEPT", 1000)
    sim, calls = sim_recording_housekeeping()
    sim.client(b"a")
    sim.worker(b"w", credit=0)
    submit(sim, b"a", range(1000), lambda cid: ["nowhere"])
    cancel(sim, b"a", range(950))
    sim.tick(0)
    assert trims(calls) == [50]
    cancel(sim, b"a", range(950, 1000))   # 50 fewer tasks: not a big release; but the
    assert sim.state.queue.sweeping       # queue's 1,000 gids are to be swept
    sim.tick(0)
    assert not sim.state.sweeping and trims(calls) == [50, 0]


def test_a_dropped_client_is_swept_first_then_memory_goes_back():
    """A dropped client's tasks leave in slices (sweep): the heap is trimmed once, after
    the last slice, not before (its memory would still be held)."""
    sim, calls = sim_recording_housekeeping()
    sim.client(b"a")
    sim.worker(b"w", credit=0)
    submit(sim, b"a", range(TRIM_AFTER + 2000), lambda cid: ["nowhere"])
    sim.msg(b"a", "bye")
    slices = 0
    while sim.state.sweeping:
        assert trims(calls) == []
        sim.state.tick(sim.now)
        slices += 1
    assert slices > 1 and trims(calls) == [0] and len(sim.state.tasks) == 0


def test_memory_goes_back_after_many_tasks_are_done(monkeypatch):
    """A queue run down by the workers is a release as well: trimmed at each halving by
    at least TRIM_AFTER (300 -> 150 -> 50; the last 50 are too few to be worth a trim)."""
    monkeypatch.setattr(state_module, "TRIM_AFTER", 100)
    sim, calls = sim_recording_housekeeping()
    sim.client(b"a")
    sim.worker(b"w", credit=0)
    submit(sim, b"a", range(300), lambda cid: [])
    done = 0
    while done < 300:
        batch = runs(sim.msg(b"w", "ready", n=50))
        assert batch, "the worker got no task though some are queued"
        sim.msg(b"w", "done", [b"r"] * len(batch),
                items=[[gid, attempt, "ok", 1, {}] for _, gid, attempt in batch])
        done += len(batch)
        sim.tick(0, alive=(b"a", b"w"))
    assert len(sim.state.tasks) == 0
    assert trims(calls) == [150, 50]
