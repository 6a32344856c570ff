"""Replay protection in the broker's state machine (broker/sessions.py): a hello is taken
once and only while fresh; every later message must carry its registration's session nonce
and a sequence number above the last one seen on its socket. A message that fails has no
effect at all."""

import pytest

from nbcluster.broker.sessions import HELLO_WINDOW_MS
from nbcluster.errors import ProtocolError

from ..support.broker_sim import HB, Sim, results, runs, stamp


def recorded(sim, identity, t, **header):
    """A header as the peer on identity would send it now (what a recording captures)."""
    return stamp(sim.state, identity, {"t": t, **header}, sim.now)


def send(sim, identity, header, payload=()):
    out = sim.state.handle(identity, dict(header), list(payload), None, sim.now)
    sim.state.check_invariants()
    sim.sent += out
    return out


def test_a_hello_is_taken_once_from_any_socket():
    sim = Sim()
    hello = recorded(sim, b"c", "hello", role="client", host="h", pid=2)
    [welcome] = send(sim, b"c", hello)
    assert welcome.header["t"] == "welcome" and len(welcome.header["nonce"]) == 16
    for identity in (b"replayer", b"c"):
        with pytest.raises(ProtocolError, match="seen before"):
            send(sim, identity, hello)
    assert list(sim.state.clients) == [b"c"]


@pytest.mark.parametrize("skew", [HELLO_WINDOW_MS + 1, -HELLO_WINDOW_MS - 1])
def test_a_hello_outside_the_window_is_refused_and_one_inside_taken(skew):
    sim = Sim()
    sim.now = 10 * HELLO_WINDOW_MS
    sim.state.wall_offset_ms = 1_700_000_000_000   # the broker's wall clock, in ms
    wall = sim.now + sim.state.wall_offset_ms
    [refused] = sim.msg(b"c", "hello", role="client", ts=wall + skew)   # it is told why
    assert refused.header["t"] == "refused" and "clock" in refused.header["why"]
    assert not sim.state.clients
    sim.msg(b"c", "hello", role="client", ts=wall + (HELLO_WINDOW_MS if skew > 0
                                                     else -HELLO_WINDOW_MS))
    assert b"c" in sim.state.clients


def test_hello_nonces_are_remembered_two_windows_then_the_clock_refuses_the_hello():
    sim = Sim()
    hello = recorded(sim, b"c", "hello", role="client")
    send(sim, b"c", hello)
    for _ in range(3):
        sim.msg(b"c2", "hello", role="client")
    assert len(sim.state.hellos.seen) == 4
    sim.now += 2 * HELLO_WINDOW_MS + 1
    sim.msg(b"c3", "hello", role="client")
    assert len(sim.state.hellos.seen) == 1            # the old ones are forgotten...
    [refused] = send(sim, b"replayer", hello)         # ...and their hellos are too old
    assert refused.header["t"] == "refused" and "in the past" in refused.header["why"]
    assert b"replayer" not in sim.state.clients


def test_a_recorded_submit_runs_once_whoever_sends_it_again():
    sim = Sim()
    sim.client(b"c")
    sim.worker(b"w", credit=5)
    submit = recorded(sim, b"c", "submit", tasks=[[1, 1, [], None, 0]])
    assert len(runs(send(sim, b"c", submit, [b"f"]))) == 1
    assert results(sim.msg(b"w", "done", [b"r"], items=[[1, 0, "ok", 1, {}]])) == \
        [(b"c", 1, "ok")]
    with pytest.raises(ProtocolError, match="seq"):      # on its own socket
        send(sim, b"c", submit, [b"f"])
    out = send(sim, b"replayer", submit, [b"f"])        # from another: say hello first
    assert [s.header["t"] for s in out] == ["reconnect"]
    assert not sim.state.tasks and len(runs(sim.sent)) == 1


def test_a_replayed_heartbeat_keeps_no_dead_worker_alive():
    sim = Sim()
    sim.client(b"c")
    wid = sim.worker(b"w", credit=0)
    beat = recorded(sim, b"w", "hb")
    send(sim, b"w", beat)
    for _ in range(5):   # the worker is gone; someone sends its heartbeat again and again
        sim.tick(HB)
        if wid in sim.state.workers:
            with pytest.raises(ProtocolError, match="seq"):
                send(sim, b"w", beat)
    assert wid not in sim.state.workers


def test_messages_of_an_earlier_registration_or_without_a_nonce_are_dropped():
    sim = Sim()
    sim.client(b"c")
    old = sim.state.clients[b"c"].nonce
    sim.client(b"c")                                    # registers again: a new session
    new = sim.state.clients[b"c"].nonce
    assert old != new
    tasks = [[1, 0, [], None, 0]]
    for header in ({"t": "submit", "nonce": old, "seq": 1 << 40, "tasks": tasks},   # stale
                   {"t": "submit", "tasks": tasks},                        # not stamped
                   {"t": "submit", "nonce": new, "tasks": tasks}):         # no seq
        with pytest.raises(ProtocolError, match=r"nonce|seq"):
            send(sim, b"c", header)
    assert not sim.state.tasks
    sim.submit(1)
    assert len(sim.state.tasks) == 1


def test_a_resumed_worker_keeps_its_nonce_and_what_it_sent_meanwhile_counts():
    sim = Sim()
    sim.client(b"c")
    out = sim.msg(b"ctl", "hello", role="worker", task_identity=b"task", session=1)
    welcome = out[-1].header
    sim.msg(b"task", "ready", n=1)
    sim.submit(1)
    # It says hello again (it heard nothing for a while) and, before reading the welcome,
    # sends the result on its task socket, stamped with the nonce it knows.
    done = recorded(sim, b"task", "done", e=sim.state.epoch, items=[[1, 0, "ok", 1, {}]])
    again = sim.msg(b"ctl", "hello", role="worker", task_identity=b"task", session=2,
                    resume=[welcome["id"], sim.state.epoch])[-1].header
    assert again["resumed"] and again["nonce"] == welcome["nonce"]
    assert results(send(sim, b"task", done, [b"r"])) == [(b"c", 1, "ok")]


def test_each_socket_of_a_worker_has_its_own_sequence():
    sim = Sim()
    sim.client(b"c")
    sim.worker(b"task", ctl=b"ctl", credit=0)
    nonce = sim.state.peer(b"ctl").nonce
    send(sim, b"ctl", {"t": "hb", "nonce": nonce, "seq": 10})
    send(sim, b"task", {"t": "ready", "n": 1, "nonce": nonce, "seq": 5})   # its own count
    with pytest.raises(ProtocolError, match="seq"):
        send(sim, b"task", {"t": "ready", "n": 1, "nonce": nonce, "seq": 5})
    with pytest.raises(ProtocolError, match="seq"):
        send(sim, b"ctl", {"t": "hb", "nonce": nonce, "seq": 9})
    assert sim.state.workers["w1"].credit == 1


def test_a_supervisors_recorded_exit_is_not_taken_twice():
    sim = Sim()
    sim.client(b"c")
    sim.msg(b"s", "hello", role="supervisor", token="tok", host="h", pid=9)
    exited = recorded(sim, b"s", "exited", pid=1, reason="killed by SIGKILL")
    send(sim, b"s", exited)
    wid = sim.worker(b"w", credit=0)
    sim.state.workers[wid].supervisor = "tok"
    with pytest.raises(ProtocolError, match="seq"):
        send(sim, b"s", exited)
    assert wid in sim.state.workers
