"""The broker's side of supervisors (nbcluster/broker_supervisors.py), with a fake clock:
vouches keep a silent worker, `exited` drops it at once and names the cause."""

import pytest

from nbcluster.errors import ProtocolError

from ..support.broker_sim import HB, Sim, results, runs

TOKEN = "tok"


def supervised(sim, identity, pid, credit=1, token=TOKEN):
    out = sim.msg(identity, "hello", role="worker", labels=[], host="h", pid=pid,
                  supervisor=token)
    if credit:
        sim.msg(identity, "ready", n=credit)
    return out[-1].header["id"]


def setup(n_workers=1, credit=1):
    sim = Sim()
    sim.client()
    assert sim.msg(b"s", "hello", role="supervisor", token=TOKEN, host="h", pid=9,
                   workers=n_workers)[0].header["t"] == "welcome"
    wids = [supervised(sim, f"w{i}".encode(), 100 + i, credit) for i in range(n_workers)]
    return sim, wids


def test_a_silent_worker_vouched_for_by_its_supervisor_is_kept():
    sim, [wid] = setup()
    sim.submit(1)
    for _ in range(30):   # 30 heartbeats without a word from the worker (its GIL is held)
        sim.msg(b"s", "hb", alive=[100])
        sim.tick(HB)
    assert wid in sim.state.workers and sim.state.tasks[1].attempt == 0
    sim.tick(HB)          # the supervisor no longer vouches for it (stopped, or gone)...
    sim.tick(HB)
    sim.tick(HB)
    sim.tick(HB)
    assert wid not in sim.state.workers   # ...so it expires like any silent worker


def test_a_vouch_counts_only_for_the_pids_listed_and_the_supervisors_own_workers():
    sim, [wid] = setup()
    stranger = supervised(sim, b"x", 100, token="other")   # same pid, another supervisor
    for _ in range(5):
        sim.msg(b"s", "hb", alive=[100, 555])
        sim.tick(HB)
    assert wid in sim.state.workers and stranger not in sim.state.workers


def test_exited_drops_the_worker_at_once_and_the_lost_task_names_why():
    sim, [wid] = setup()
    sim.state.max_lost = 0
    sim.submit(1)
    out = sim.msg(b"s", "exited", pid=100, reason="killed by SIGKILL", memory=False, left=False)
    assert wid not in sim.state.workers
    [item] = [i for s in out if s.header["t"] == "results" for i in s.header["items"]]
    assert item[1] == "lost" and item[3]["reasons"] == ["killed by SIGKILL"]


def test_a_memory_exit_fails_the_started_task_and_requeues_the_others_uncharged():
    sim, [wid] = setup(credit=3)
    for cid in (1, 2, 3):
        sim.submit(cid)
    held = sorted(sim.state.workers[wid].tasks)
    assert len(held) == 3
    sim.msg(b"w0", "started", items=[[held[0], 0]])
    out = sim.msg(b"s", "exited", pid=100, reason="memory limit 1.0 GiB exceeded (rss 1.1 GiB)",
                  memory=True, left=False)
    lost = [i for s in out if s.header["t"] == "results" for i in s.header["items"]]
    assert [(i[0], i[1]) for i in lost] == [(1, "lost")]
    assert lost[0][3]["memory"].startswith("memory limit 1.0 GiB")
    for gid in held[1:]:
        t = sim.state.tasks[gid]
        assert t.worker is None and t.lost_on == () and t.attempt == 1
    supervised(sim, b"w9", 200, credit=2)     # the replacement runs them
    assert sorted(g for _, g, _ in runs(sim.sent, b"w9")) == held[1:]


def test_a_worker_that_left_on_purpose_charges_nothing():
    sim, [_wid] = setup()
    sim.submit(1)
    sim.msg(b"s", "exited", pid=100, reason="replaced after 3 tasks (max_tasks_per_child)",
            memory=False, left=True)
    assert sim.state.tasks[1].lost_on == () and sim.state.tasks[1].worker is None


def test_exited_for_an_unknown_pid_and_bad_fields():
    sim, [wid] = setup()
    assert sim.msg(b"s", "exited", pid=4242, reason="exited with status 0") == []
    assert wid in sim.state.workers
    with pytest.raises(ProtocolError):
        sim.msg(b"s", "exited", pid="100", reason="x")
    with pytest.raises(ProtocolError):
        sim.msg(b"s", "hb", alive=["100"])
    with pytest.raises(ProtocolError):
        sim.msg(b"s2", "hello", role="supervisor", host="h", pid=1)   # no token


def test_a_silent_supervisor_is_forgotten_and_answered_with_reconnect():
    sim, [_wid] = setup()
    sim.tick(4 * HB, alive=[b"c", b"w0"])
    assert sim.state.status(sim.now)["supervisors"] == []
    assert [s.header["t"] for s in sim.msg(b"s", "hb", alive=[100])] == ["reconnect"]
    assert results(sim.sent) == []


def test_supervisors_get_heartbeats_and_a_hello_again_keeps_their_vouches():
    sim, [wid] = setup()
    assert b"s" in [s.identity for s in sim.tick(HB) if s.header["t"] == "hb"]
    sim.tick(HB)
    sim.msg(b"s", "hb", alive=[100])     # a vouch at 2 s
    sim.tick(HB)
    sim.msg(b"s", "hello", role="supervisor", token=TOKEN, host="h", pid=9, workers=1)
    sim.tick(HB + HB // 2)   # the worker silent 4.5 s, vouched for 2.5 s ago: kept
    assert wid in sim.state.workers


def test_workers_reported_dead_one_by_one_cost_their_task_one_loss_and_it_waits_for_a_live_one():
    """8 workers SIGKILLed at once are reported one `exited` at a time: the task of the first
    must not be handed to the next (dead, not yet reported), charged a loss each time; it
    goes to a worker heard from after the loss (issue 12: `lost 4 time(s)`)."""
    sim, wids = setup(n_workers=9, credit=0)
    live = wids[0]
    sim.msg(b"w1", "ready", n=1)
    sim.submit(1)
    [gid] = sim.state.workers[wids[1]].tasks
    for i in range(2, 9):   # the others of the 8 wait with credit, as idle workers do
        sim.msg(f"w{i}".encode(), "ready", n=1)
    sim.msg(b"w0", "ready", n=1)     # the live one, heard before the deaths
    sim.sent.clear()
    sim.now += 1
    for i in range(1, 9):
        sim.msg(b"s", "exited", pid=100 + i, reason="killed by SIGKILL", memory=False, left=False)
    t = sim.state.tasks[gid]
    assert t.lost_on == (wids[1],) and t.worker is None, "charged only for the worker it ran on"
    assert not runs(sim.sent)
    sim.now += 1
    out = sim.msg(b"w0", "hb")      # the live one speaks: it gets the task
    assert [g for _, g, _ in runs(out, b"w0")] == [gid] and t.worker == live


def heartbeats_to(sends, identity):
    return sum(1 for s in sends if s.identity == identity and s.header["t"] == "hb")


def test_a_worker_whose_supervisor_vouches_heartbeats_a_third_as_often():
    """Its supervisor vouches for it every heartbeat, so the worker and the broker heartbeat
    each other every third one (told in its welcome); a worker without a registered
    supervisor keeps the full rate."""
    sim, _ = setup()
    welcome = sim.msg(b"v", "hello", role="worker", labels=[], host="h", pid=7,
                      supervisor=TOKEN)[-1].header
    plain = sim.msg(b"p", "hello", role="worker", labels=[], host="h", pid=8)[-1].header
    orphan = sim.msg(b"o", "hello", role="worker", labels=[], host="h", pid=9,
                     supervisor="nobody registered this token")[-1].header
    assert (welcome["heartbeat_ms"], plain["heartbeat_ms"], orphan["heartbeat_ms"]) == \
        (3 * HB, HB, HB)
    assert welcome["liveness"] == plain["liveness"] == 3
    sends = []
    for _ in range(9):
        sim.msg(b"s", "hb", alive=[100, 7])
        sends += sim.tick(HB, alive=[b"c", b"p", b"o"])
    assert (heartbeats_to(sends, b"v"), heartbeats_to(sends, b"w0")) == (3, 3)
    assert (heartbeats_to(sends, b"p"), heartbeats_to(sends, b"o"), heartbeats_to(sends, b"s")) \
        == (9, 9, 9)


def test_a_sparse_worker_lives_on_its_own_heartbeats_when_nobody_vouches():
    """Its supervisor gone silent, a sparse worker that heartbeats every third heartbeat is
    kept; silent for three of its own heartbeats, it is lost."""
    sim, [wid] = setup()
    for _ in range(4):   # no vouch (the supervisor expires), its own hb every 3 heartbeats
        sim.msg(b"w0", "hb")
        sim.tick(3 * HB)
    assert wid in sim.state.workers
    assert sim.state.status(sim.now)["supervisors"] == []
    sim.tick(5 * HB)     # its own last heartbeat 8 s ago: kept
    assert wid in sim.state.workers
    sim.tick(2 * HB)     # 10 s ago, past three of its heartbeats: lost
    assert wid not in sim.state.workers
