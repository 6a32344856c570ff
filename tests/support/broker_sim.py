"""The broker's state machine driven message by message with a fake clock (milliseconds):
what the tests of tests/broker/ and the worker model (worker_model.py) drive it with."""

import os

from nbcluster.broker.state import BrokerState

HB = 1000


def stamp(state, identity, header, now=0):
    """The header as a peer sends it (replay protection, broker/sessions.py): a hello with
    the peer's clock and a fresh hello nonce; a later message from a registered socket with
    its registration's session nonce and the next sequence number. The test's fields win."""
    if header["t"] == "hello":
        return {"ts": now + state.wall_offset_ms, "hello_nonce": os.urandom(16), **header}
    peer = state.peer(identity)
    return header if peer is None else {"nonce": peer.nonce, "seq": next_seq(state, identity),
                                        **header}


def next_seq(state, identity):
    """The sequence number a peer's next message on this socket carries (one more than the
    broker saw last: a function of the state, so the fuzzers' runs are reproducible)."""
    peer = state.peer(identity)
    return (peer.seq.get(identity, 0) if peer is not None else 0) + 1


class Sim:
    """A BrokerState plus a clock; checks the invariants after every step, and (audit) every
    choice of the queues against a recount (see audit_pops)."""

    def __init__(self, audit=True, **kw):
        kw.setdefault("first_gid", 1)   # readable gids; the random default is tested apart
        self.state = BrokerState(heartbeat_ms=HB, liveness=3, **kw)
        self.now = 0
        self.sent = []
        if audit:
            audit_pops(self.state)

    def msg(self, identity, t, payload=(), **header):
        if t == "done":
            header.setdefault("e", self.state.epoch)   # a worker echoes the run's epoch
        header = stamp(self.state, identity, {"t": t, **header}, self.now)
        out = self.state.handle(identity, header, list(payload), None, self.now)
        self.state.check_invariants()
        self.sent += out
        return out

    def tick(self, ms=0, alive=(b"c",)):
        """Advance the clock by ms, ticking at least every heartbeat as the broker does (a
        longer gap is a broker stall, see test_a_broker_stall_expires_nobody); the peers in
        `alive` send a heartbeat before each tick."""
        out = []
        for step in [HB] * (ms // HB) + [ms % HB] if ms else [0]:
            self.now += step
            for identity in alive:
                if identity in self.state.clients or identity in self.state.worker_by_identity:
                    self.msg(identity, "hb")
            out += self.state.tick(self.now)
            self.state.check_invariants()
        self.sent += out
        return out

    def worker(self, identity, labels=(), credit=1, ctl=None):
        extra = {"task_identity": identity} if ctl else {}
        out = self.msg(ctl or identity, "hello", role="worker", labels=list(labels), host="h",
                       pid=1, **extra)
        wid = out[-1].header["id"]
        if credit:
            self.msg(identity, "ready", n=credit)
        return wid

    def client(self, identity=b"c"):
        self.msg(identity, "hello", role="client", host="h", pid=2)

    def submit(self, cid, identity=b"c", labels=(), target=None, retries=0,
               payload=(b"fn", b"args")):
        return self.msg(identity, "submit", payload,
                        tasks=[[cid, len(payload), list(labels), target, retries]])


def runs(out, identity=None):
    return [(s.identity, g, a) for s in out if s.header["t"] == "run"
            for g, a, *_ in s.header["tasks"] if identity in (None, s.identity)]


def results(out):
    return [(s.identity, item[0], item[1]) for s in out if s.header["t"] == "results"
            for item in s.header["items"]]


def eligible_for(state, w, heard):
    """The queued tasks worker w (last heard at `heard`) may take, by a scan of every task."""
    return [t for t in state.tasks.values()
            if t.worker is None and not t.owner.gone and t.lost_at <= heard
            and (t.target == w.id or (t.target is None and t.labels <= w.labels
                                      and t.host in (None, w.host)))]


def audit_pops(state):
    """Check each task the queues hand a worker against a recount of every queued task:
    its own (pinned) tasks first; else one of the client with the fewest tasks on workers
    among those with a task it may take (fair share); within that client a task given back
    or lost first, else its oldest (first in first out); and a task whenever one is there."""
    queue = state.queue
    pop = queue.pop_for

    def checked_pop(w, clients, heard):
        eligible = eligible_for(state, w, heard)
        t = pop(w, clients, heard)
        if not eligible:
            assert t is None, f"{w.id} was handed task {t.gid}, which it may not take"
            return t
        assert t is not None and any(t is e for e in eligible), \
            f"{w.id} got {t and t.gid}, though it may take {[e.gid for e in eligible]}"
        if any(e.target == w.id for e in eligible):
            assert t.target == w.id, f"{w.id} got task {t.gid} before the ones pinned to it"
            return t
        fewest = min(len(e.owner.running) for e in eligible)
        assert len(t.owner.running) == fewest, \
            f"fair share: {w.id} got a task of a client with {len(t.owner.running)} running " \
            f"while another with {fewest} running had one it could take"
        mine = [e for e in eligible if e.owner is t.owner]
        if t.attempt == 0:
            assert not any(e.attempt > 0 for e in mine), "a task given back or lost goes first"
            assert t.gid == min(e.gid for e in mine), f"FIFO: {t.gid} went before an older one"
        return t

    queue.pop_for = checked_pop
