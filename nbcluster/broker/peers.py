"""Peers coming and going: a hello registers a client or worker, and peers are dropped.

    hello (client) ─────────────────────────► a new Client; one of its identities' old
                                              sessions is over (forget)
    hello (worker) ── same sockets, resume
                      names this broker ────► resume: the registration goes on, tasks,
                                              credit and all
                   ── otherwise ────────────► a new Worker; the old registration is dropped
                                              and the tasks its hello says it still runs
                                              are taken back, uncharged (take_back)
    bye, expiry, supervisor's exit ─────────► drop_workers / drop_client
    connection closed (gone) ───────────────► drop_gone

A task runs twice only if its worker was really lost: a worker that registers again keeps
its registration (resume), or the task it still runs (take_back). Workers dropped together
go together: all leave before any of their tasks is queued again, so none of those tasks is
handed to a worker that is going too.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..errors import ProtocolError
from . import debug_messages
from .dispatch import dispatch_all, finish, release
from .records import Client, Header, Peer, Send, Worker, field, label_set
from .sessions import new_nonce

if TYPE_CHECKING:
    from .state import BrokerState

__all__ = ["hello", "touch", "drop_workers", "drop_client", "drop_gone"]


def hello(state: BrokerState, identity: bytes, h: Header, now: int) -> list[Send]:
    """Register a peer. A worker may receive tasks on a second socket (`task_identity`)."""
    role = field(h, "role", str)
    host, pid = field(h, "host", str, ""), field(h, "pid", int, 0)
    other = h.get("task_identity", identity) if role == "worker" else identity
    if not isinstance(other, bytes) or not 0 < len(other) <= 255:
        raise ProtocolError("a second identity must be 1 to 255 bytes")
    clock = state.liveness
    nonce = new_nonce()   # every later message of this registration carries it (sessions)
    supervisor = field(h, "supervisor", str, "") if role == "worker" else ""
    sparse = supervisor in state.supervisors.by_token   # it vouches: see liveness
    welcome = {"t": "welcome", "heartbeat_ms": clock.worker_heartbeat_ms(sparse), "liveness":
               clock.expiry_ms // clock.heartbeat_ms, "broker": state.info, "epoch": state.epoch,
               "nonce": nonce}
    if role == "supervisor":
        state.supervisors.hello(identity, h, now).nonce = nonce
        return [Send(identity, welcome)]
    if role not in ("client", "worker"):
        raise ProtocolError(f"unknown role {role!r}")
    # The worker's `session` numbers its hellos: echoed in the welcome and in every run, it
    # lets the worker tell a run sent after its latest hello from an older one.
    session = field(h, "session", int, 0) if role == "worker" else 0
    resume, running = h.get("resume"), field(h, "running", list, [])
    labels, slots = label_set(h.get("labels", [])), field(h, "slots", int, 1)   # checked first
    old = state.workers.get(state.worker_by_identity.get(identity, ""))
    if old is not None and (old.ctl, old.identity) == (identity, other) and \
            isinstance(resume, list) and len(resume) == 2 and resume[1] == state.epoch:
        old.sparse = sparse
        return [Send(identity, _resume(state, old, resume[0], session, now, welcome))]
    out, dropped = _forget(state, {identity, other})
    if role == "client":
        state.clients[identity] = Client(identity, host, pid, now, nonce=nonce)
        return out + dispatch_all(state) + [Send(identity, welcome)]
    w = Worker(id=f"w{next(state.fresh_worker_numbers)}", identity=other, ctl=identity,
               host=host, pid=pid, labels=labels, slots=slots, joined=now, last_seen=now,
               session=session, ledger=session, supervisor=supervisor,
               sparse=sparse, nonce=nonce)
    state.workers[w.id] = w
    state.worker_by_identity[identity] = state.worker_by_identity[other] = w.id
    state.queue.add_worker(w)
    known = resume[0] if isinstance(resume, list) and resume else None
    lost_here = {*dropped, *([known] if isinstance(known, str) else [])}
    kept = _take_back(state, w, running, lost_here)
    return out + dispatch_all(state) + [Send(identity, {
        **welcome, "id": w.id, "session": w.session, "ledger": w.ledger, "kept": kept})]


def _resume(state: BrokerState, w: Worker, known: object, session: int, now: int,
            welcome: Header) -> Header:
    """The worker process of registration w (same sockets) says hello again, naming a
    registration of ours (`known`): it heard nothing for a while (we were stalled, or
    the link was). w goes on, tasks, credit and all. If w is not the one it knows (it
    said hello twice before reading the welcome that made w), it learns w's ledger and
    the tasks w holds (`kept`), as from a new registration's welcome."""
    w.session, w.last_seen = session, now
    welcome = {**welcome, "id": w.id, "session": session, "ledger": w.ledger,
               "resumed": True, "nonce": w.nonce}   # what it sent meanwhile is still valid
    if known != w.id:
        welcome["kept"] = [[gid, state.tasks[gid].attempt] for gid in sorted(w.tasks)]
    return welcome


def _forget(state: BrokerState, identities: set[bytes]) -> tuple[list[Send], list[str]]:
    """A peer says hello again on identities we know: their old sessions are over. Returns
    the messages to send and the ids of the workers dropped (their tasks queued again,
    not yet dispatched: the new registration may take some back)."""
    out = [s for i in identities if i in state.clients
           for s in drop_client(state, state.clients[i])]
    gone = [state.workers[wid] for wid in {state.worker_by_identity.get(i) for i in identities}
            if wid]
    return out + drop_workers(state, gone, lost=True, dispatch=False), [w.id for w in gone]


def _take_back(state: BrokerState, w: Worker, running: list[Any],
               lost_here: set[str]) -> list[list[int]]:
    """Tasks the worker's hello says it is running, dropped with its earlier registration
    and still queued (no other worker has them): the new registration keeps them, at
    the attempt it runs, and the loss is not charged. Without this a broker stall or a
    cut link would run them twice. Returns them as [gid, attempt]."""
    kept = []
    for item in running:
        gid, attempt = item if isinstance(item, list) and len(item) == 2 else (None, None)
        t = state.tasks.get(gid) if isinstance(gid, int) else None
        if t is None or t.worker is not None or t.target is not None or t.owner.gone \
                or not isinstance(attempt, int) or t.attempt != attempt + 1 \
                or not t.labels <= w.labels or t.host not in (None, w.host):
            continue   # done, running elsewhere (or was), or not this worker's to run
        if t.lost_on and t.lost_on[-1] in lost_here:
            t.lost_on, t.lost_pids = t.lost_on[:-1], t.lost_pids[:-1]
        t.attempt = attempt   # its gid stays in its queue, dead: pop_for skips held tasks
        state.queue.unqueue(t)
        t.worker = w.id
        w.tasks.add(t.gid)
        t.owner.running.add(t.gid)
        kept.append([t.gid, attempt])
    return kept


def touch(state: BrokerState, identity: bytes, now: int) -> Peer | None:
    """The client or worker on this socket, now heard from; None if we know none."""
    wid = state.worker_by_identity.get(identity)
    peer: Peer | None = state.workers[wid] if wid else state.clients.get(identity)
    if peer is not None:
        peer.last_seen = now
    return peer


def drop_workers(state: BrokerState, workers: list[Worker], lost: bool,
                 dispatch: bool = True) -> list[Send]:
    """Forget these workers. All go first, then their tasks are queued again (or fail),
    so none is handed to a worker that is going too: a task is charged only for the
    workers it was really lost on. Then the queues are dispatched once."""
    for w in workers:
        del state.workers[w.id]
        state.worker_by_identity.pop(w.identity, None)
        state.worker_by_identity.pop(w.ctl, None)
    out: list[Send] = debug_messages.workers_dropped(state, workers)
    held = sorted(((gid, w) for w in workers for gid in w.tasks), key=lambda x: x[0])
    for gid, w in reversed(held):   # queued at the front: oldest ends first
        t = state.tasks[gid]
        release(t)
        if lost:
            t.lost_on, t.lost_pids = (*t.lost_on, w.id), (*t.lost_pids, w.pid)
            t.lost_at = state.liveness.awake_at or 0
        if t.target is not None or len(t.lost_on) > state.max_lost:
            out += finish(state, t, "lost", {"lost_on": list(t.lost_on),
                                             "pids": list(t.lost_pids)})
        else:
            t.attempt += 1
            state.queue.enqueue(t, front=True)
    for w in workers:
        for gid in state.queue.remove_worker(w):
            pinned = state.tasks.get(gid)
            if pinned is not None and pinned.worker is None and not pinned.owner.gone:
                out += finish(state, pinned, "lost", {"lost_on": [w.id], "pids": [w.pid]})
    return (out + dispatch_all(state)) if dispatch and workers else out


def drop_client(state: BrokerState, c: Client) -> list[Send]:
    """Forget the client and its tasks; the workers running them are told to cancel them.
    Its running tasks go at once (a worker's credit bounds them); its queues are detached
    at once, and its queued tasks leave the tables a slice at a time (`BrokerState.sweep`),
    so a client with a million queued tasks costs no long message."""
    del state.clients[c.identity]
    c.gone = True
    cancels: dict[str, list[int]] = {}
    for gid in sorted(c.running):
        t = state.tasks.pop(gid)
        del c.tasks[t.cid]
        state.functions.unref(t.fn)
        assert t.worker is not None
        state.workers[t.worker].tasks.discard(gid)
        cancels.setdefault(t.worker, []).append(gid)
    c.running.clear()
    state.queue.drop_client(c)
    state.forget_tasks(c)
    return [Send(state.workers[wid].ctl, {"t": "cancel", "ids": gids})
            for wid, gids in cancels.items()] + debug_messages.client_dropped(state, c)


def drop_gone(state: BrokerState, identities: set[bytes]) -> list[Send]:
    """Peers whose connection closed: the process died, or libzmq's pings found it frozen or
    cut off. A client is dropped: our socket named that connection, so the identity never
    comes back (a live client connects anew, is told to `reconnect`, and resubmits). Workers
    are left to their supervisor, which says how one ended (the reason its tasks' WorkerLost
    gives, the memory limit that fails its task), and to their expiry; supervisors and
    strangers to their expiry."""
    return [s for i in identities if i in state.clients
            for s in drop_client(state, state.clients[i])]
