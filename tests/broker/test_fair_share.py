"""Fair share between clients, first in first out within one, with the fake clock; and a
fuzzer that checks every task handed out against a recount (broker_sim.audit_pops)."""

from hypothesis import given, settings
from hypothesis import strategies as st

from nbcluster.errors import ProtocolError

from ..support.broker_sim import HB, Sim, runs


def submit_many(sim, identity, cids, labels=()):
    cids = list(cids)
    for start in range(0, len(cids), 1000):   # messages of at most 1000 tasks, as clients send
        part = cids[start:start + 1000]
        sim.msg(identity, "submit", [b"f"] * len(part),
                tasks=[[cid, 1, list(labels), None, 0] for cid in part])


def owner(sim, gid):
    return sim.state.tasks[gid].client


def test_b_starts_within_one_task_behind_a_long_queue_and_gets_half_the_workers():
    """A queues 10,000 one-second tasks on 2 workers (window 1: one-second tasks are not
    prefetched); B then submits 100. B's first task starts at the next free slot, and
    from then on each client has one worker: B's 100 take twice the 50 s they would take
    alone (not the 5,000 s behind A's queue), while A goes on at half speed."""
    sim = Sim(audit=False)   # the audit rescans every queued task: too slow for 10,000
    sim.client(b"a")
    sim.client(b"b")
    workers = [b"w0", b"w1"]
    for w in workers:
        sim.worker(w, credit=1)
    submit_many(sim, b"a", range(10_000))
    sim.now += HB // 2
    submit_many(sim, b"b", range(100))
    first_b = finished_b = None
    done = {b"a": 0, b"b": 0}
    for second in range(1, 400):          # every second each worker ends its task
        sim.now = second * HB
        for w in workers:
            wid = sim.state.worker_by_identity[w]
            [gid] = sim.state.workers[wid].tasks
            t = sim.state.tasks[gid]
            done[t.client] += 1
            out = sim.msg(w, "done", [b"r"], items=[[gid, 0, "ok", 1, {}]], ready=1)
            [(_, new, _)] = runs(out)
            if owner(sim, new) == b"b" and first_b is None:
                first_b = sim.now
        if done[b"b"] == 100:
            finished_b = sim.now
            break
    assert first_b == HB, "B's first task waits only for the first free slot"
    assert finished_b == 100 * HB + HB, "one worker each: B's 100 tasks take 100 s"
    assert done[b"a"] == 102   # both workers at first, then the other one all along


def test_clients_alternate_on_one_worker_each_in_its_own_order():
    sim = Sim()
    sim.client(b"a")
    sim.client(b"b")
    sim.worker(b"w", credit=1)
    submit_many(sim, b"a", range(1, 5))
    submit_many(sim, b"b", range(1, 5))
    order = []
    for _ in range(8):
        [gid] = sim.state.workers["w1"].tasks
        t = sim.state.tasks[gid]
        order.append((t.client, t.cid))
        sim.msg(b"w", "done", [b"r"], items=[[gid, 0, "ok", 1, {}]], ready=1)
    assert order == [(b"a", 1), (b"b", 1), (b"a", 2), (b"b", 2), (b"a", 3), (b"b", 3),
                     (b"a", 4), (b"b", 4)]


def test_a_client_with_fewer_running_goes_first_even_behind_a_given_back_task():
    """Fair share counts tasks on workers (prefetched ones too): the worker that is free
    serves the client that has fewer there."""
    sim = Sim()
    sim.client(b"a")
    sim.client(b"b")
    sim.worker(b"w0", credit=3)
    submit_many(sim, b"a", range(6))
    sim.worker(b"w1", credit=0)
    submit_many(sim, b"b", range(2))
    out = sim.msg(b"w1", "ready", n=2)
    assert [owner(sim, g) for _, g, _ in runs(out)] == [b"b", b"b"]   # a has 3 running, b 0
    out = sim.msg(b"w0", "giveback", keep=1)   # a's two prefetched tasks go back, first
    out = sim.msg(b"w1", "done", [b"r"], items=[[7, 0, "ok", 1, {}]], ready=1)
    [(_, gid, attempt)] = runs(out)
    assert (owner(sim, gid), gid, attempt) == (b"a", 2, 1)   # a: 1 running, b: 1 running


def test_within_a_client_a_lost_task_goes_before_older_fresh_ones():
    sim = Sim()
    sim.client(b"a")
    sim.worker(b"wa", labels=["a"], credit=0)
    sim.worker(b"wb", credit=0)
    sim.msg(b"a", "submit", [b"f", b"f"], tasks=[[1, 1, ["a"], None, 0], [2, 1, [], None, 0]])
    assert runs(sim.msg(b"wb", "ready", n=1)) == [(b"wb", 2, 0)]   # task 1 is not for wb
    sim.msg(b"wb", "bye")                                           # task 2 is queued again
    assert runs(sim.msg(b"wa", "ready", n=2)) == [(b"wa", 2, 1), (b"wa", 1, 0)]


def test_label_queues_are_removed_when_empty_and_dispatch_looks_only_at_served_ones():
    """10,000 label sets no worker has, queued then cancelled: no queue is left, and while
    they wait a worker's look-up visits only the queues it can serve."""
    sim = Sim(audit=False)
    sim.client(b"a")
    sim.worker(b"w", labels=["gpu"], credit=0)
    for start in range(0, 10_000, 1000):
        sim.msg(b"a", "submit", [b"f"] * 1000,
                tasks=[[i, 1, [f"l{i}"], None, 0] for i in range(start, start + 1000)])
    queue = sim.state.queue
    assert len(queue.by_key) == 10_000 and queue.classes[(frozenset({"gpu"}), "h")].keys == set()
    status = sim.state.status(sim.now)
    assert (status["queued"], status["label_sets_waiting"]) == (10_000, 10_000)
    assert len(status["waiting_for_labels"]) == 100   # listed up to a bound, all counted
    sim.msg(b"a", "submit", [b"f"], tasks=[[10_000, 1, ["gpu"], None, 0]])
    visited = []
    first_for = queue._first_for
    queue._first_for = lambda lq, heard: (visited.append(lq.key), first_for(lq, heard))[1]
    assert len(runs(sim.msg(b"w", "ready", n=5))) == 1
    assert set(visited) == {(frozenset({"gpu"}), None)}
    for start in range(0, 10_000, 1000):
        sim.msg(b"a", "cancel", ids=list(range(start, start + 1000)))
    assert not queue.by_key and not sim.state.clients[b"a"].queues
    assert sim.state.status(sim.now)["waiting_for_labels"] == {}


def test_a_dropped_client_leaves_in_slices_while_others_are_served():
    sim = Sim(audit=False)
    sim.client(b"a")
    sim.client(b"b")
    sim.worker(b"w", credit=0)
    submit_many(sim, b"a", range(20_000))
    sim.msg(b"a", "bye")
    assert b"a" not in sim.state.clients and len(sim.state.tasks) == 20_000   # not yet freed
    assert sim.state.next_deadline() == 0   # the loop ticks at once while there is garbage
    submit_many(sim, b"b", [1])
    out = sim.msg(b"w", "ready", n=1)
    assert [owner(sim, g) for _, g, _ in runs(out)] == [b"b"]   # none of a's, none waits
    ticks = 0
    while sim.state.sweeping:
        before = len(sim.state.tasks)
        sim.state.tick(sim.now)
        assert before - len(sim.state.tasks) <= 2000   # a bounded slice each time
        ticks += 1
    assert len(sim.state.tasks) == 1 and ticks >= 10
    sim.state.check_invariants()


def test_a_queue_of_many_cancelled_tasks_is_cleaned_by_sweep_and_its_task_still_goes():
    """A pop drops a bounded number of dead gids; past that it leaves the queue to the
    sweep, which hands the task out once it reaches it."""
    sim = Sim(audit=False)
    sim.client(b"a")
    sim.worker(b"w", credit=0)
    submit_many(sim, b"a", range(6001))
    for start in range(0, 6000, 1000):
        sim.msg(b"a", "cancel", ids=list(range(start, start + 1000)))
    assert runs(sim.msg(b"w", "ready", n=1)) == []    # 6,000 dead gids: left to the sweep
    assert sim.state.queue.dirty
    out = sim.tick(0, alive=())
    assert [(g, a) for _, g, a in runs(out)] == [(6001, 0)]


def test_status_counts_match_a_recount():
    sim = Sim()
    sim.client(b"a")
    sim.client(b"b")
    sim.worker(b"w", credit=2)
    submit_many(sim, b"a", range(5))
    submit_many(sim, b"b", range(3), labels=["x"])
    status = sim.state.status(sim.now)
    assert (status["queued"], status["running"]) == (6, 2)
    assert [(c["queued"], c["running"]) for c in status["client_tasks"]] == [(3, 2), (3, 0)]
    assert status["waiting_for_labels"] == {"x": 3}


STEPS = ["submit", "ready", "done", "err", "tick", "bye", "hello", "cancel", "cbye",
         "giveback", "pinned"]
LABELS = [[], ["a"], ["b"], ["a", "b"]]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(STEPS), st.integers(0, 5), st.integers(0, 7)),
                max_size=80))
def test_random_sequences_keep_fair_share_and_fifo(steps):
    """Three clients, workers with label sets, tasks asking for some, pinned ones, give
    backs, losses and cancels: every task handed out is checked against a recount (fair
    share, FIFO within a client, pinned first, never one the worker may not take), the
    invariants (live counts, the index, per-client counts) after every step, and every
    result reaches its client at most once."""
    sim = Sim(max_lost=2)
    clients = [b"c0", b"c1", b"c2"]
    for c in clients:
        sim.client(c)
    for i, w in enumerate((b"w0", b"w1")):
        sim.worker(w, labels=LABELS[i + 1], credit=0)   # work waits: clients contend
    next_cid = 1
    for kind, who, n in steps:
        client, worker = clients[who % 3], b"w%d" % (who % 4)
        wid = sim.state.worker_by_identity.get(worker)
        try:
            if kind == "submit":
                k = 1 + n % 4
                sim.msg(client, "submit", [b"f"] * k, tasks=[
                    [next_cid + j, 1, LABELS[(n + j) % 4], None, n % 2] for j in range(k)])
                next_cid += k
            elif kind == "pinned" and wid:
                sim.msg(client, "submit", [b"f"], tasks=[[next_cid, 1, [], wid, 0]])
                next_cid += 1
            elif kind == "ready":
                sim.msg(worker, "ready", n=n % 4)
            elif kind in ("done", "err") and wid and sim.state.workers[wid].tasks:
                t = sim.state.tasks[min(sim.state.workers[wid].tasks)]
                sim.msg(worker, "done", [b"r"], items=[
                    [t.gid, t.attempt, "ok" if kind == "done" else "err", 1, {}]], ready=1)
            elif kind == "giveback" and wid and sim.state.workers[wid].tasks:
                sim.msg(worker, "giveback", keep=min(sim.state.workers[wid].tasks))
                sim.msg(worker, "ready", n=1)
            elif kind == "tick":
                sim.tick(n * 500, alive=[*clients, b"w0", b"w1"] if who % 2 else clients)
            elif kind == "bye":
                sim.msg(worker, "bye")
            elif kind == "hello":
                sim.worker(worker, labels=LABELS[n % 4], credit=n % 3)
            elif kind == "cancel":
                sim.msg(client, "cancel", ids=[n, n + 1, next_cid - 1])
            elif kind == "cbye":
                sim.msg(client, "bye")
                sim.client(client)
        except ProtocolError:
            pass
    delivered = [(s.identity, item[0]) for s in sim.sent if s.header["t"] == "results"
                 for item in s.header["items"]]
    assert len(delivered) == len(set(delivered))


def test_one_task_among_200_idle_workers_costs_one_look_up():
    """dispatch_all takes the least loaded worker from a heap and stops once nothing queued
    can be served: a task among 200 idle workers is one look-up, not 200."""
    sim = Sim(audit=False)
    sim.client(b"a")
    for i in range(200):
        sim.worker(b"w%d" % i, credit=1)
    calls = []
    pop = sim.state.queue.pop_for
    sim.state.queue.pop_for = lambda *a: calls.append(a[0].id) or pop(*a)
    out = submit_many(sim, b"a", [1]) or sim.sent[-1:]
    assert len(runs(out)) == 1 and len(calls) == 1
    calls.clear()
    sim.msg(b"a", "submit", [b"f"] * 3, tasks=[[i, 1, [], None, 0] for i in (2, 3, 4)])
    assert len(calls) == 3 and len(set(calls)) == 3   # spread, least loaded first
