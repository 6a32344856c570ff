"""Expiry, broker stalls and re-registration in the broker's state machine (fake clock, ms).

Issue 12: a task must be charged only for workers it was really lost on, a stall of the broker
itself must expire nobody, and a worker that registers again keeps the tasks it runs.
"""

from nbcluster.broker.state import BrokerState

from ..support.broker_sim import HB, Sim, results, runs, stamp


def hello(sim, ctl, session, resume=None, running=(), task=None):
    """A worker's hello on its control socket `ctl` (tasks on `task`); returns the welcome."""
    extra = {"resume": resume} if resume is not None else {}
    out = sim.msg(ctl, "hello", role="worker", labels=[], host="h", pid=1, session=session,
                  task_identity=task or ctl + b"/t", running=[list(r) for r in running], **extra)
    return [s for s in out if s.header["t"] == "welcome"][-1].header


def test_workers_expiring_in_one_tick_are_not_handed_each_others_tasks():
    """Eight workers go silent at once, one runs a task; a live worker waits. The old expiry
    pass dropped them one by one and handed the task to the next one about to go: lost four
    times in one tick, it failed though it ran once."""
    sim = Sim()
    sim.client()
    doomed = [sim.worker(b"d%d" % i) for i in range(8)]
    [(runner, gid, _)] = runs(sim.submit(1))
    ran_on = sim.state.worker_by_identity[runner]
    live = sim.worker(b"live", credit=1)
    sim.tick(3 * HB + 100, alive=[b"c", b"live"])
    assert not set(doomed) & set(sim.state.workers)
    t = sim.state.tasks[gid]
    assert (t.worker, t.attempt, list(t.lost_on)) == (live, 1, [ran_on])
    assert runs(sim.sent, b"live") == [(b"live", gid, 1)]
    out = sim.msg(b"live", "done", [b"r"], items=[[gid, 1, "ok", 1, {}]], ready=1)
    assert results(out) == [(b"c", 1, "ok")] and results(sim.sent) == [(b"c", 1, "ok")]


def test_a_task_lost_on_workers_expiring_together_is_charged_once_each():
    """Three workers each running a task expire together with no live worker: every task is
    charged exactly one loss (its own worker's) and waits in the queue."""
    sim = Sim(max_lost=1)
    sim.client()
    wids = [sim.worker(b"d%d" % i) for i in range(3)]
    for cid in range(3):
        sim.submit(cid)
    sim.tick(3 * HB + 100)
    assert not sim.state.workers and results(sim.sent) == []
    assert sorted(len(t.lost_on) for t in sim.state.tasks.values()) == [1, 1, 1]
    assert sorted(t.lost_on[0] for t in sim.state.tasks.values()) == sorted(wids)


def test_a_broker_stall_expires_nobody():
    """The broker was stopped 10 s: the peers' heartbeats of that time wait unread, so it
    must not take their silence for death. Silence counts only while it was awake."""
    sim = Sim()
    sim.client()
    wid = sim.worker(b"w")
    [(_, gid, _)] = runs(sim.submit(1))
    sim.tick(HB, alive=[b"c", b"w"])
    sim.now += 10_000                          # SIGSTOP: no tick, no message read
    sim.sent += sim.state.tick(sim.now)
    sim.state.check_invariants()
    assert wid in sim.state.workers and sim.state.tasks[gid].worker == wid
    assert sim.state.clients
    sim.tick(HB, alive=[b"c", b"w"])           # its queued heartbeats are read now
    out = sim.msg(b"w", "done", [b"r"], items=[[gid, 0, "ok", 1, {}]], ready=1)
    assert results(out) == [(b"c", 1, "ok")]


def test_after_a_stall_a_really_silent_worker_still_expires():
    sim = Sim()
    sim.client()
    wid = sim.worker(b"w")
    sim.tick()
    sim.now += 10_000
    sim.state.tick(sim.now)
    assert wid in sim.state.workers
    sim.tick(3 * HB + 100)                     # awake and still nothing from it
    assert wid not in sim.state.workers


def test_the_stall_rule_is_measured_from_the_last_tick():
    """A broker ticking every heartbeat forgives nothing: a worker silent 3.1 s of awake time
    is lost, whatever the gaps between messages."""
    state = BrokerState(heartbeat_ms=HB, liveness=3)
    state.handle(b"w", stamp(state, b"w", {"t": "hello", "role": "worker"}), [], None, 0)
    for now in range(0, 3001, HB):
        state.tick(now)
    assert state.workers
    state.tick(3100)
    assert not state.workers


def registered(sim, ctl=b"wc", session=1):
    welcome = hello(sim, ctl, session)
    sim.msg(ctl + b"/t", "ready", n=1, l=session)
    return welcome["id"], welcome["epoch"]


def test_a_worker_that_registers_again_while_registered_is_resumed():
    """A worker that heard nothing for its expiry (we were stalled) says hello again: the
    registration goes on, its task is not queued again nor charged, its credit stands."""
    sim = Sim()
    sim.client()
    wid, epoch = registered(sim)
    [(_, gid, _)] = runs(sim.submit(1))
    sim.msg(b"wc/t", "ready", n=2, l=1)
    welcome = hello(sim, b"wc", 2, resume=[wid, epoch], running=[(gid, 0)])
    assert welcome["resumed"] is True and welcome["id"] == wid and welcome["session"] == 2
    w = sim.state.workers[wid]
    assert w.tasks == {gid} and w.credit == 2 and sim.state.tasks[gid].lost_on == ()
    sim.msg(b"wc/t", "ready", n=1, l=1)        # its ledger goes on: credit still counts
    assert w.credit == 3
    [(_, gid2, _)] = runs(sim.submit(2))
    assert [s.header["s"] for s in sim.sent if s.header["t"] == "run"][-1] == 2
    out = sim.msg(b"wc/t", "done", [b"r"], items=[[gid, 0, "ok", 1, {}]], ready=1, l=1)
    assert results(out) == [(b"c", 1, "ok")] and gid2


def test_a_worker_dropped_meanwhile_takes_back_the_task_it_still_runs():
    """Dropped (frozen past its expiry) while its task stayed queued, the worker registers
    again saying what it runs: the new registration keeps it at the same attempt, and the
    loss is not charged."""
    sim = Sim()
    sim.client()
    wid, epoch = registered(sim)
    sim.worker(b"busy", credit=0)
    [(_, gid, _)] = runs(sim.submit(1))
    sim.tick(3 * HB + 100, alive=[b"c", b"busy"])
    assert wid not in sim.state.workers and sim.state.tasks[gid].attempt == 1
    welcome = hello(sim, b"wc", 2, resume=[wid, epoch], running=[(gid, 0)])
    assert "resumed" not in welcome and welcome["kept"] == [[gid, 0]]
    new = sim.state.workers[welcome["id"]]
    t = sim.state.tasks[gid]
    assert (t.worker, t.attempt, list(t.lost_on)) == (new.id, 0, []) and new.credit == 0
    sim.msg(b"busy", "ready", n=1)             # the queue no longer hands it out
    assert runs(sim.sent, b"busy") == []
    out = sim.msg(b"wc/t", "done", [b"r"], items=[[gid, 0, "ok", 1, {}]], ready=1, l=2)
    assert results(out) == [(b"c", 1, "ok")] and new.credit == 1


def test_a_task_run_elsewhere_meanwhile_is_not_taken_back():
    sim = Sim()
    sim.client()
    wid, epoch = registered(sim)
    [(_, gid, _)] = runs(sim.submit(1))
    sim.worker(b"other")
    sim.tick(3 * HB + 100, alive=[b"c", b"other"])
    assert sim.state.tasks[gid].worker != wid   # re-run on the other worker
    welcome = hello(sim, b"wc", 2, resume=[wid, epoch], running=[(gid, 0)])
    assert welcome["kept"] == []
    out = sim.msg(b"wc/t", "done", [b"late"], items=[[gid, 0, "ok", 1, {}]], l=2)
    assert results(out) == []                  # its late result is dropped


def test_credit_of_an_earlier_registration_does_not_count():
    """A `ready` the worker sent before registering again may arrive after: it belongs to the
    old ledger (`l`), and crediting the new registration with it would skew the new one."""
    sim = Sim()
    sim.client()
    wid, epoch = registered(sim)
    sim.tick(3 * HB + 100)                     # dropped
    welcome = hello(sim, b"wc", 2, resume=[wid, epoch])
    new = sim.state.workers[welcome["id"]]
    sim.msg(b"wc/t", "ready", n=3, l=1)
    sim.msg(b"wc/t", "done", [], items=[], ready=2, l=1)
    assert new.credit == 0
    sim.msg(b"wc/t", "ready", n=3, l=2)
    assert new.credit == 3


def test_a_hello_that_does_not_name_the_live_registration_replaces_it():
    """No `resume` (a fresh process on the same identity, or another implementation): the
    old registration is over and its tasks are lost on it, as before."""
    sim = Sim()
    sim.client()
    wid, _ = registered(sim)
    [(_, gid, _)] = runs(sim.submit(1))
    welcome = hello(sim, b"wc", 2)
    assert welcome["id"] != wid and sim.state.tasks[gid].lost_on == (wid,)


def test_a_registration_whose_welcome_the_worker_never_read_is_resumed_with_its_ledger():
    """The worker said hello twice before reading the first welcome (the broker answered
    late): its second hello names the registration it knows, which we dropped. The live one
    the first hello made is resumed, not dropped (that would charge its task a loss and run
    it again), and the welcome gives its ledger and the tasks it holds."""
    sim = Sim()
    sim.client()
    wid, epoch = registered(sim)
    sim.worker(b"busy", credit=0)
    [(_, gid, _)] = runs(sim.submit(1))
    sim.tick(3 * HB + 100, alive=[b"c", b"busy"])            # wid dropped, the task queued
    first = hello(sim, b"wc", 2, resume=[wid, epoch], running=[(gid, 0)])
    assert first["kept"] == [[gid, 0]] and first["ledger"] == 2
    second = hello(sim, b"wc", 3, resume=[wid, epoch], running=[(gid, 0)])
    assert second["resumed"] is True and second["id"] == first["id"]
    assert second["ledger"] == 2 and second["kept"] == [[gid, 0]] and second["session"] == 3
    t = sim.state.tasks[gid]
    assert (t.worker, t.attempt, list(t.lost_on)) == (first["id"], 0, [])


def test_a_lost_task_is_not_handed_to_a_worker_that_went_quiet_with_it():
    """Workers killed together stop heartbeating a little apart, so they expire over two
    ticks: the task of the first must not go to one that is about to expire (it would be
    charged a loss there too), but to the live worker."""
    sim = Sim()
    sim.client()
    sim.worker(b"d0")
    [(_, gid, _)] = runs(sim.submit(1))
    late = [sim.worker(b"d%d" % i) for i in range(1, 8)]
    live = sim.worker(b"live", credit=1)
    sim.tick(900, alive=[b"c", b"live", *(b"d%d" % i for i in range(1, 8))])  # their last word
    sim.tick(2300, alive=[b"c", b"live"])      # d0 silent 3.2 s: lost; the others 2.3 s
    assert "w1" not in sim.state.workers and all(wid in sim.state.workers for wid in late)
    t = sim.state.tasks[gid]
    assert (t.worker, list(t.lost_on)) == (live, ["w1"])
    sim.tick(1000, alive=[b"c", b"live"])      # the others expire now
    assert not set(late) & set(sim.state.workers) and sim.state.tasks[gid].lost_on == ("w1",)


def test_a_quiet_worker_gets_work_again_once_it_speaks():
    sim = Sim()
    sim.client()
    wid = sim.worker(b"w")
    sim.tick(2000, alive=[b"c"])               # quiet 2 s (a loaded machine), not lost
    assert runs(sim.submit(1)) == []
    out = sim.msg(b"w", "hb")
    assert runs(out) == [(b"w", 1, 0)] and sim.state.tasks[1].worker == wid
