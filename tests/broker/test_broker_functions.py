"""Function payloads in the broker's state machine: kept while needed, sent once per worker,
asked for again when missing. Invariants are checked after every step."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nbcluster.broker.state import BrokerState
from nbcluster.errors import ProtocolError

from ..support.broker_sim import stamp

F, G = b"F" * 16, b"G" * 16
FRAMES = {F: [b"f-pickle", b"f-buffer"], G: [b"g-pickle"]}


class Sim:
    def __init__(self, idle_bytes=1 << 20):
        self.state = BrokerState(heartbeat_ms=1000, liveness=3)
        self.state.functions.idle_limit = idle_bytes
        self.now = 0

    def msg(self, identity, t, payload=(), **header):
        header = stamp(self.state, identity, {"t": t, **header}, self.now)
        out = self.state.handle(identity, header, list(payload), None, self.now)
        self.state.check_invariants()
        return out

    def client(self, identity=b"c"):
        self.msg(identity, "hello", role="client", host="h", pid=2)

    def worker(self, identity, credit=1):
        out = self.msg(identity, "hello", role="worker", labels=[], host="h", pid=1)
        wid = out[-1].header["id"]
        if credit:
            self.msg(identity, "ready", n=credit)
        return wid

    def submit(self, cids, fn, send_fn=True, identity=b"c"):
        fns = [[fn, len(FRAMES[fn])]] if send_fn else []
        payload = (FRAMES[fn] if send_fn else []) + [b"args-%d" % c for c in cids]
        return self.msg(identity, "submit", payload, fns=fns,
                        tasks=[[c, 1, [], None, 0, None, fn] for c in cids])

    def done(self, identity, gid, attempt=0, ready=1):
        return self.msg(identity, "done", [b"r"], items=[[gid, attempt, "ok", 1, {}]], ready=ready)


def runs(out):
    """[(worker identity, [task items], fns, payload)] of the run messages in out."""
    return [(s.identity, s.header["tasks"], s.header.get("fns", []), s.payload)
            for s in out if s.header["t"] == "run"]


def test_a_payload_goes_to_each_worker_with_its_first_task_only():
    sim = Sim()
    sim.client()
    sim.worker(b"w1")
    [(_, [task], fns, payload)] = runs(sim.submit([1], F))
    assert task[4] == F and fns == [[F, 2]] and payload == [*FRAMES[F], b"args-1"]
    [(_, [task], fns, payload)] = runs(sim.done(b"w1", task[0]) + sim.submit([2], F, send_fn=False))
    assert fns == [] and payload == [b"args-2"]           # w1 has F already
    sim.worker(b"w2")
    [(ident, [task], fns, payload)] = runs(sim.submit([3], F, send_fn=False))
    assert ident == b"w2" and fns == [[F, 2]] and payload == [*FRAMES[F], b"args-3"]
    assert sim.state.status(0)["functions"]["sent"] == 2
    assert sim.state.status(0)["functions"]["received"] == 1


def test_a_payload_is_kept_while_a_task_needs_it_then_idle_up_to_the_limit():
    sim = Sim(idle_bytes=0)
    sim.client()
    sim.submit([1, 2], F)                  # no worker yet: both queued
    sim.msg(b"c", "cancel", ids=[1])
    assert F in sim.state.functions.payloads     # task 2 still needs it
    sim.msg(b"c", "cancel", ids=[2])
    assert F not in sim.state.functions.payloads  # idle, and the limit keeps none


def test_a_task_naming_a_dropped_payload_is_asked_for_again():
    sim = Sim(idle_bytes=0)
    sim.client()
    sim.submit([1], F)
    sim.msg(b"c", "cancel", ids=[1])
    out = sim.submit([2, 3], F, send_fn=False)
    assert [(s.identity, s.header) for s in out] == [(b"c", {"t": "refetch", "ids": [2, 3]})]
    assert not sim.state.tasks
    sim.worker(b"w")
    [(_, [_task], fns, _)] = runs(sim.submit([2, 3], F))    # the client sends them again, with F
    assert fns == [[F, 2]] and len(sim.state.tasks) == 2


def test_a_worker_missing_a_payload_gets_the_task_again_with_it():
    sim = Sim()
    sim.client()
    sim.worker(b"w")
    [(_, [task], _, _)] = runs(sim.submit([1], F))
    sim.done(b"w", task[0], ready=0)
    [(_, [task], fns, _)] = runs(sim.submit([2], F, send_fn=False) + sim.msg(b"w", "ready", n=1))
    assert fns == []
    # The worker's cache dropped F: it hands the task back and frees its slot.
    out = sim.msg(b"w", "refetch", tasks=[[task[0], task[1]]]) + sim.msg(b"w", "ready", n=1)
    [(_, [again], fns, payload)] = runs(out)
    assert again[0] == task[0] and again[1] == task[1] + 1 and fns == [[F, 2]]
    assert payload == [*FRAMES[F], b"args-2"]
    # A refetch of a task it no longer holds (or of another attempt) changes nothing.
    assert sim.msg(b"w", "refetch", tasks=[[task[0], task[1]], [999, 0]]) == []
    with pytest.raises(ProtocolError, match=r"tasks\[1\]"):   # a malformed one: all refused
        sim.msg(b"w", "refetch", tasks=[[task[0], task[1] + 1], "junk"])


def test_payloads_are_released_when_their_tasks_end_in_any_way():
    sim = Sim(idle_bytes=0)
    sim.client(b"a")
    sim.client(b"b")
    w = b"w"
    sim.worker(w, credit=1)
    [(_, [_task], _, _)] = runs(sim.submit([1], F, identity=b"a"))
    sim.submit([1], G, identity=b"b")                   # queued
    sim.msg(b"b", "bye")                                # client gone: G released
    assert G not in sim.state.functions.payloads
    sim.msg(w, "bye")                                    # worker gone: task 1 queued again
    assert F in sim.state.functions.payloads
    sim.msg(b"a", "bye")
    assert not sim.state.functions.payloads


@pytest.mark.parametrize("fns", [["x"], [[F]], [[F, 0]], [[F, 99]], [[b"", 1]], [[b"x" * 65, 1]],
                                 [[F, True]], "F"])
def test_malformed_function_entries_are_refused(fns):
    sim = Sim()
    sim.client()
    with pytest.raises(ProtocolError):
        sim.msg(b"c", "submit", [b"a", b"b"], fns=fns, tasks=[[1, 1, [], None, 0, None, F]])
    with pytest.raises(ProtocolError):
        sim.msg(b"c", "submit", [b"a"], tasks=[[1, 1, [], None, 0, None, "not bytes"]])


OPS = st.lists(st.tuples(st.sampled_from(["submit", "submit-bare", "done", "cancel", "refetch",
                                          "lose", "join", "bye"]),
                         st.integers(0, 7), st.sampled_from([F, G])), max_size=60)


@settings(max_examples=150, deadline=None)
@given(OPS)
def test_random_sequences_keep_payload_counts_right(ops):
    """Counts stay right (check_invariants, every step), and every task reaches its worker
    with its payload or after it, also after the worker said it lost one (refetch)."""
    sim = Sim(idle_bytes=10)      # room for one idle payload: eviction happens often
    has: dict[bytes, set] = {}    # worker identity -> payloads it holds (a model of its cache)

    def step(identity, t, payload=(), **header):
        out = Sim.msg(sim, identity, t, payload, **header)
        for ident, tasks, fns, _ in runs(out):
            cache = has.setdefault(ident, set())
            cache.update(d for d, _ in fns)
            assert all(task[4] in cache for task in tasks)
        return out
    sim.msg = step
    sim.client()
    workers = [b"w0"]
    sim.worker(b"w0", credit=2)
    cid = 0
    for op, n, fn in ops:
        held = [(gid, t) for gid, t in sim.state.tasks.items() if t.worker is not None]
        if op in ("submit", "submit-bare"):
            cid += 1
            out = sim.submit([cid], fn, send_fn=op == "submit")
            if op == "submit-bare" and fn not in sim.state.functions.payloads:
                assert any(s.header["t"] == "refetch" for s in out)
        elif op == "done" and held:
            gid, t = held[n % len(held)]
            sim.done(sim.state.workers[t.worker].identity, gid, t.attempt)
        elif op == "refetch" and held:   # the worker's cache dropped the task's payload
            gid, t = held[n % len(held)]
            ident = sim.state.workers[t.worker].identity
            has.get(ident, set()).discard(t.fn)
            sim.msg(ident, "refetch", tasks=[[gid, t.attempt]])
        elif op == "cancel" and cid:
            sim.msg(b"c", "cancel", ids=[n % cid + 1])
        elif op == "lose" and workers:
            gone = workers.pop(n % len(workers))
            sim.msg(gone, "bye")
            has.pop(gone, None)
        elif op == "join":
            ident = b"w%d" % (len(workers) + 100 + n)
            if ident not in sim.state.worker_by_identity:
                workers.append(ident)
                sim.worker(ident, credit=1 + n % 3)
        elif op == "bye":
            sim.msg(b"c", "bye")
            sim.client()
