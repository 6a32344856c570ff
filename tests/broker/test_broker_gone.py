"""Peers whose connection closed (`BrokerState.gone`, fed by the loop when a send finds no
route), and the gate that keeps garbage from peers without the key cheap. Fake clock, ms."""

from nbcluster.broker.gate import IGNORE_MS, STRANGER_MAX_BYTES, Gate

from ..support.broker_sim import HB, Sim, results, runs


def test_a_client_whose_connection_closed_is_dropped_at_once():
    """No waiting for the silence expiry: queued tasks never start, running ones are
    cancelled on their workers."""
    sim = Sim()
    sim.client()
    sim.worker(b"w")
    [(_, running, _)] = runs(sim.submit(1))
    sim.submit(2)
    out = sim.state.gone({b"c"})
    sim.state.check_invariants()
    assert [(s.identity, s.header) for s in out] == [(b"w", {"t": "cancel", "ids": [running]})]
    assert not sim.state.clients and not sim.state.tasks
    assert runs(sim.msg(b"w", "ready", n=1)) == []        # task 2 never starts


def test_a_worker_whose_connection_closed_is_left_to_its_supervisor_and_expiry():
    """Its supervisor says how it ended (the reason a WorkerLost gives, a memory limit that
    fails its task): dropping it first would lose that. Silent, it expires as before."""
    sim = Sim()
    sim.client()
    sim.worker(b"w1")
    [(_, gid, _)] = runs(sim.submit(1))
    assert sim.state.gone({b"w1"}) == [] and len(sim.state.workers) == 1
    sim.worker(b"w2")
    out = sim.tick(3 * HB + 100, alive=[b"c", b"w2"])
    assert runs(out) == [(b"w2", gid, 1)]                 # expired: queued again, at attempt 1
    assert results(out) == []


def test_a_connection_nobody_registered_on_changes_nothing():
    sim = Sim()
    sim.client()
    assert sim.state.gone({b"stranger"}) == [] and list(sim.state.clients) == [b"c"]


def test_a_peer_with_a_bad_signature_is_ignored_for_a_while():
    gate = Gate()
    assert not gate.ignores(b"p", 0)
    gate.bad_signature(b"p", 0)
    assert gate.ignores(b"p", IGNORE_MS - 1) and not gate.ignores(b"q", 1)
    assert not gate.ignores(b"p", IGNORE_MS)              # heard again: maybe it has the key now
    assert gate.dropped == 1


def test_a_stranger_may_send_only_small_messages():
    gate = Gate()
    assert not gate.too_big_for_a_stranger(STRANGER_MAX_BYTES)
    assert gate.too_big_for_a_stranger(STRANGER_MAX_BYTES + 1)
    assert gate.dropped == 1


def test_the_ignored_peers_are_bounded():
    gate = Gate()
    for i in range(20_000):
        gate.bad_signature(b"%d" % i, 0)
    assert len(gate.ignored_until) <= 10_000
