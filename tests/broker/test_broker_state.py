"""The broker's bookkeeping, driven message by message with a fake clock (milliseconds)."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nbcluster.broker.state import BrokerState
from nbcluster.errors import ProtocolError

from ..support.broker_sim import HB, Sim, results, runs, stamp


def test_submit_dispatch_result():
    sim = Sim()
    sim.client()
    sim.worker(b"w")
    out = sim.submit(7)
    [(ident, gid, attempt)] = runs(out)
    assert ident == b"w" and attempt == 0
    assert out[0].payload == [b"fn", b"args"]
    out = sim.msg(b"w", "done", [b"result"], items=[[gid, 0, "ok", 1, {}]], ready=1)
    assert results(out) == [(b"c", 7, "ok")]
    assert out[0].payload == [b"result"]
    assert not sim.state.tasks


def test_worker_pulls_only_with_credit():
    sim = Sim()
    sim.client()
    sim.worker(b"w", credit=0)
    assert runs(sim.submit(1)) == []
    assert runs(sim.msg(b"w", "ready", n=1)) == [(b"w", 1, 0)]


def test_labels_wait_then_served_when_a_labelled_worker_joins():
    sim = Sim()
    sim.client()
    sim.worker(b"cpu")
    assert runs(sim.submit(1, labels=["gpu"])) == []
    assert sim.state.status(sim.now)["waiting_for_labels"] == {"gpu": 1}
    sim.worker(b"gpu", labels=["gpu", "big"], credit=0)
    out = sim.msg(b"gpu", "ready", n=1)
    assert runs(out) == [(b"gpu", 1, 0)]
    assert sim.state.status(sim.now)["waiting_for_labels"] == {}


def test_fifo_across_label_queues():
    sim = Sim()
    sim.client()
    wid = sim.worker(b"w", labels=["a"], credit=0)
    sim.submit(1, labels=["a"])
    sim.submit(2)
    sim.submit(3, labels=["a"])
    out = sim.msg(b"w", "ready", n=3)
    assert [g for _, g, _ in runs(out)] == [1, 2, 3]
    assert wid


def test_lost_worker_requeues_and_late_result_is_dropped():
    sim = Sim()
    sim.client()
    sim.worker(b"w1")
    sim.submit(1)
    sim.tick(2500)
    sim.worker(b"w2", credit=0)
    sim.tick(600, alive=[b"c", b"w2"])        # w1 silent 3.1 s: lost
    out = sim.msg(b"w2", "ready", n=1)
    assert runs(out) == [(b"w2", 1, 1)]        # attempt 1 on w2
    late = sim.msg(b"w1", "done", [b"r"], items=[[1, 0, "ok", 1, {}]])
    assert [s.header["t"] for s in late] == ["reconnect"]
    out = sim.msg(b"w2", "done", [b"r"], items=[[1, 1, "ok", 1, {}]])
    assert results(out) == [(b"c", 1, "ok")]


def test_resumed_worker_reregisters_and_stale_attempt_is_dropped():
    sim = Sim()
    sim.client()
    sim.worker(b"w1")
    sim.worker(b"w2", credit=0)
    sim.submit(1)
    for _ in range(4):                         # w2 keeps talking, w1 is frozen
        sim.tick(1000, alive=[b"c", b"w2"])
    sim.msg(b"w2", "ready", n=1)
    sim.worker(b"w1")                          # w1 resumed, told to reconnect, says hello
    out = sim.msg(b"w1", "done", [b"r"], items=[[1, 0, "ok", 1, {}]])
    assert results(out) == []                  # its old attempt is dropped
    out = sim.msg(b"w2", "done", [b"r"], items=[[1, 1, "ok", 1, {}]])
    assert results(out) == [(b"c", 1, "ok")]


def test_task_fails_after_losing_max_lost_workers():
    sim = Sim(max_lost=1)
    sim.client()
    sim.worker(b"w1")
    sim.submit(1)
    sim.msg(b"w1", "bye")                      # a goodbye is not a loss: requeued
    assert sim.state.tasks[1].lost_on == ()
    for i in range(2):
        ident = f"x{i}".encode()
        sim.worker(ident)
        sim.tick(3100)                         # lost
    assert results(sim.sent) == [(b"c", 1, "lost")]
    lost = next(s for s in sim.sent if s.header["t"] == "results")
    assert lost.header["items"][0][3]["lost_on"] == ["w2", "w3"]


def test_error_with_retries_runs_again():
    sim = Sim()
    sim.client()
    sim.worker(b"w")
    sim.submit(1, retries=1)
    out = sim.msg(b"w", "done", [b"e"], items=[[1, 0, "err", 1, {}]], ready=1)
    assert results(out) == [] and runs(out) == [(b"w", 1, 1)]
    out = sim.msg(b"w", "done", [b"e"], items=[[1, 1, "err", 1, {}]], ready=1)
    assert results(out) == [(b"c", 1, "err")]


def test_results_go_only_to_their_client():
    sim = Sim()
    sim.client(b"a")
    sim.client(b"b")
    sim.worker(b"w", credit=2)
    sim.submit(1, identity=b"a")
    sim.submit(1, identity=b"b")
    out = sim.msg(b"w", "done", [b"ra", b"rb"], items=[[1, 0, "ok", 1, {}], [2, 0, "ok", 1, {}]])
    assert sorted(results(out)) == [(b"a", 1, "ok"), (b"b", 1, "ok")]
    by = {s.identity: s.payload for s in out if s.header["t"] == "results"}
    assert by == {b"a": [b"ra"], b"b": [b"rb"]}


def test_client_disconnect_drops_queued_and_cancels_running():
    sim = Sim()
    sim.client()
    sim.worker(b"w")
    sim.submit(1)
    sim.submit(2)
    out = sim.msg(b"c", "bye")
    assert [(s.identity, s.header) for s in out] == [(b"w", {"t": "cancel", "ids": [1]})]
    assert not sim.state.tasks and not sim.state.clients
    out = sim.msg(b"w", "done", [b"r"], items=[[1, 0, "ok", 1, {}]], ready=1)
    assert out == []                            # nothing left to run, nobody to tell


def test_silent_client_expires_after_the_client_timeout():
    sim = Sim(client_expiry_ms=10_000)
    sim.client()
    sim.worker(b"w", credit=0)
    sim.submit(1)
    for _ in range(9):                        # a busy notebook kernel: silent, not gone
        sim.tick(1000, alive=[b"w"])
    assert sim.state.clients and sim.state.tasks
    for _ in range(2):
        sim.tick(1000, alive=[b"w"])
    assert not sim.state.clients and not sim.state.tasks


def test_cancel_queued_and_running():
    sim = Sim()
    sim.client()
    sim.worker(b"w")
    sim.submit(1)
    sim.submit(2)
    out = sim.msg(b"c", "cancel", ids=[1, 2, 99])
    assert sorted(results(out)) == [(b"c", 1, "cancelled"), (b"c", 2, "cancelled")]
    assert [s.header for s in out if s.identity == b"w"] == [{"t": "cancel", "ids": [1]}]


def test_pinned_task_fails_when_its_worker_dies():
    sim = Sim()
    sim.client()
    wid = sim.worker(b"w")
    sim.worker(b"v", credit=0)
    sim.submit(1, target=wid)
    sim.submit(2, target="w99")
    assert results(sim.sent) == [(b"c", 2, "lost")]
    for _ in range(4):
        sim.tick(1000, alive=[b"c", b"v"])
    assert (b"c", 1, "lost") in results(sim.sent)


def test_heartbeats_go_out_every_interval():
    sim = Sim()
    sim.client()
    sim.worker(b"w")
    out = sim.tick(0, alive=())
    assert sorted(s.identity for s in out if s.header["t"] == "hb") == [b"c", b"w"]
    assert sim.tick(500, alive=()) == []
    assert len(sim.tick(500, alive=())) == 2


@pytest.mark.parametrize("header", [
    {"t": "submit", "tasks": "nope"},
    {"t": "submit", "tasks": [[1, 5, [], None, 0]]},      # more frames than sent
    {"t": "submit", "tasks": [["x", 1, [], None, 0]]},
    {"t": "submit", "tasks": [[1, 1, [3], None, 0]]},
    {"t": "ready", "n": "many"},
    {"t": "run"},
    {"t": "hello", "role": "king"},
    {"t": "hello", "role": "worker", "labels": "gpu"},
    {"t": "hello", "role": "worker", "running": 3},
])
def test_malformed_headers_raise_protocol_error_and_change_nothing(header):
    sim = Sim()
    sim.client()
    sim.worker(b"w", credit=0)
    identity = b"w" if header["t"] in ("ready", "run") else b"c"
    with pytest.raises(ProtocolError):
        sim.state.handle(identity, stamp(sim.state, identity, header, sim.now), [b"x"], None,
                         sim.now)
    sim.state.check_invariants()


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["submit", "ready", "done", "tick", "bye", "hello",
                                           "cancel", "cbye", "err"]),
                          st.integers(0, 3), st.integers(0, 5)), max_size=60))
def test_random_sequences_keep_the_invariants(steps):
    """A fuzzer drives the state machine; every result reaches its client at most once."""
    sim = Sim(max_lost=2)
    for c in (b"c0", b"c1"):
        sim.client(c)
    for w in (b"w0", b"w1"):
        sim.worker(w)
    delivered = []
    next_cid = 1
    for kind, who, n in steps:
        client, worker = f"c{who % 2}".encode(), f"w{who % 3}".encode()
        try:
            if kind == "submit":
                sim.submit(next_cid, identity=client, labels=["x"] if n == 5 else [], retries=n % 2)
                next_cid += 1
            elif kind == "ready":
                sim.msg(worker, "ready", n=n)
            elif kind in ("done", "err"):
                wid = sim.state.worker_by_identity.get(worker)
                held = sorted(sim.state.workers[wid].tasks) if wid else []
                if held:
                    t = sim.state.tasks[held[0]]
                    sim.msg(worker, "done", [b"r"], items=[[t.gid, t.attempt, "ok" if kind == "done"
                                                            else "err", 1, {}]], ready=1)
            elif kind == "tick":
                sim.tick(n * 700, alive=[b"c0", b"w0"] if who else ())
            elif kind == "bye":
                sim.msg(worker, "bye")
            elif kind == "hello":
                sim.worker(worker, labels=["x"] if n > 2 else [])
            elif kind == "cancel":
                sim.msg(client, "cancel", ids=[n])
            elif kind == "cbye":
                sim.msg(client, "bye")
                sim.client(client)
        except ProtocolError:
            pass
    for s in sim.sent:
        if s.header["t"] == "results":
            delivered += [(s.identity, item[0]) for item in s.header["items"]]
    assert len(delivered) == len(set(delivered))


def test_a_burst_is_spread_over_workers_with_credit():
    sim = Sim()
    sim.client()
    sim.worker(b"a", credit=10)
    sim.worker(b"b", credit=10)
    out = sim.msg(b"c", "submit", [b"f"] * 8, tasks=[[i, 1, [], None, 0] for i in range(8)])
    per_worker = {}
    for ident, _, _ in runs(out):
        per_worker[ident] = per_worker.get(ident, 0) + 1
    assert per_worker == {b"a": 4, b"b": 4}


def test_giveback_requeues_unstarted_tasks_under_a_new_attempt():
    sim = Sim()
    sim.client()
    sim.worker(b"a", credit=3)
    sim.worker(b"b", credit=0)
    for i in range(3):
        sim.submit(i)
    assert [g for _, g, _ in runs(sim.sent, b"a")] == [1, 2, 3]
    out = sim.msg(b"a", "giveback", keep=1)
    assert out[0].header == {"t": "given", "ids": [[2, 0], [3, 0]], "dropped": 0}
    out = sim.msg(b"b", "ready", n=2)
    assert runs(out) == [(b"b", 2, 1), (b"b", 3, 1)]
    # a result for the given-back attempt is dropped
    assert results(sim.msg(b"a", "done", [b"r"], items=[[2, 0, "ok", 1, {}]])) == []


def test_a_worker_receives_tasks_on_a_second_socket():
    sim = Sim()
    sim.client()
    sim.worker(b"task", ctl=b"ctl", credit=0)
    sim.msg(b"task", "ready", n=2)
    out = sim.submit(1)
    assert runs(out) == [(b"task", 1, 0)]
    out = sim.msg(b"task", "done", [b"r"], items=[[1, 0, "ok", 1, {}]])
    assert results(out) == [(b"c", 1, "ok")]
    sim.submit(2)
    out = sim.msg(b"c", "cancel", ids=[2])
    assert sorted(s.identity for s in out) == [b"c", b"ctl"]     # cancel goes to the control
    hb = sim.tick(1000, alive=[b"c", b"ctl"])
    assert sorted(s.identity for s in hb if s.header["t"] == "hb") == [b"c", b"ctl"]
    sim.msg(b"ctl", "bye")
    assert not sim.state.workers and not sim.state.worker_by_identity



def test_brokers_share_no_ids():
    """Each broker start draws its own epoch and first task id: nothing an earlier broker
    handed out names one of ours."""
    a, b = BrokerState(), BrokerState()
    assert a.epoch != b.epoch
    for state in (a, b):
        state.handle(b"c", stamp(state, b"c", {"t": "hello", "role": "client"}), [], None, 0)
        state.handle(b"c", stamp(state, b"c", {"t": "submit", "tasks": [[1, 1, [], None, 0]]}),
                     [b"f"], None, 0)
    [ga], [gb] = list(a.tasks), list(b.tasks)
    assert ga != gb and ga > 1 and gb > 1


def test_a_result_of_an_earlier_broker_is_dropped_even_if_its_gid_is_ours():
    sim = Sim()
    sim.client()
    sim.worker(b"w")
    [(_, gid, _)] = runs(sim.submit(1))
    out = sim.msg(b"w", "done", [b"old"], items=[[gid, 0, "ok", 1, {}]], ready=1,
                  e=sim.state.epoch + 1)
    assert results(out) == [] and sim.state.tasks[gid].worker is not None
    assert sim.state.workers["w1"].credit == 1     # its credit is for us, and counts
    out = sim.msg(b"w", "done", [b"new"], items=[[gid, 0, "ok", 1, {}]])
    assert results(out) == [(b"c", 1, "ok")] and out[0].payload == [b"new"]


def test_a_worker_that_gave_back_gets_no_task_until_its_long_one_ends():
    """Credit a worker asked for before its task turned out long can reach us after its
    giveback (they come on different sockets). Spent at once, it sent the task just given
    back straight back to wait behind the long one."""
    sim = Sim()
    sim.client()
    sim.worker(b"a", credit=2)
    sim.worker(b"b", credit=0)
    sim.submit(0)
    sim.submit(1)
    assert [g for _, g, _ in runs(sim.sent, b"a")] == [1, 2]
    assert sim.msg(b"a", "giveback", keep=1)[0].header["ids"] == [[2, 0]]
    assert runs(sim.msg(b"a", "ready", n=1)) == []   # late credit: a still runs task 1
    sim.tick(HB, alive=[b"c", b"a", b"b"])
    assert runs(sim.sent, b"a") == [(b"a", 1, 0), (b"a", 2, 0)]
    assert runs(sim.msg(b"b", "ready", n=1)) == [(b"b", 2, 1)]
    sim.submit(2)                                     # b is busy, a still stuck: it waits
    assert runs(sim.msg(b"a", "done", [b"r"], items=[[1, 0, "ok", 1, {}]])) == [(b"a", 3, 0)]


def test_a_dropped_result_of_the_kept_task_still_frees_its_worker():
    """Whatever the broker and the worker think of the kept task's attempt, its result
    (even one dropped as late) says the worker is free: it must not stay without work."""
    sim = Sim()
    sim.client()
    sim.worker(b"a", credit=2)
    sim.submit(0)
    sim.submit(1)
    sim.msg(b"a", "giveback", keep=1)
    sim.msg(b"a", "ready", n=1)
    assert runs(sim.msg(b"a", "done", [b"r"], items=[[1, 7, "ok", 1, {}]])) == [(b"a", 2, 1)]
