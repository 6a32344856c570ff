"""The broker's bookkeeping as a pure state machine: no sockets, no clock, no threads.

`BrokerState.handle(identity, header, payload, mac, now)` takes one checked message and
returns the messages to send; `tick(now)` sends heartbeats and expires silent peers. Times
are integers in milliseconds, so tests drive it with a fake clock and check
`check_invariants()` after every step. Payloads are opaque: they are stored and forwarded,
never looked into. A peer's header is untrusted: a field of the wrong type raises
ProtocolError, which the broker loop logs and drops.

Tasks: a client submits tasks; each waits in a queue keyed by the labels it asks for (or in
the queue of the one worker it targets) until a worker holding those labels has credit.
Workers pull: `ready n` grants n credit, each task handed over spends one. A worker that has
been silent for `liveness` heartbeats is lost: its tasks are queued again with attempt + 1,
unless they were lost `max_lost` times already, which fails them with "lost". Silence is
counted only while we are awake (a stall of ours expires nobody), workers lost together go
together (a task is never handed to one of them), and a worker that registers again keeps
its registration, or the task it still runs (see `_hello`): a task runs twice only if its
worker was really lost. Results are
accepted only from the worker holding the task at the current attempt, so a late result of
a task that was re-run elsewhere is dropped: each result reaches its client at most once.

Ids are never reused across broker lifetimes: each BrokerState draws a random `epoch`, sent
in every `welcome` and `run` and echoed in every `done`, and starts its task ids (gids) at a
random point of a 62-bit range. A worker or a result left over from an earlier broker on the
same address can therefore never be taken for one of ours.

Credit: the worker's ledger and ours must agree. A worker keeps `granted` (credit it asked
for, less what a `given` voided) and `done` (tasks it finished or skipped); once no message
is in flight, its `granted - done` equals our `credit` plus the tasks it holds, and an idle
worker's credit covers its whole window (its slots plus prefetch): a worker with free slots
and no credit would never get work again. `check_invariants(workers=...)` asserts both.
"""

from __future__ import annotations

import itertools
import secrets
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from .functions import FunctionStore, is_digest
from .supervisors import NEVER, Supervisors
from ..errors import ProtocolError

__all__ = ["BrokerState", "Send"]

HEARTBEAT_MS = 1000      # peers and broker send a heartbeat this often
LIVENESS = 3             # a worker silent for this many heartbeats is dead
QUIET_HEARTBEATS = 1.5   # one silent longer may be dead: tasks wait until it speaks again
CLIENT_EXPIRY_MS = 30_000  # a client may be silent longer: a notebook kernel can hold the GIL
MAX_LOST = 3             # a task may lose this many workers; the next loss fails it
BATCH_BYTES = 64 * 1024  # tasks smaller than this are sent to a worker several per message


class Send(NamedTuple):
    """A message to send: to `identity`, with `header`, `payload` and maybe a payload mac."""

    identity: bytes
    header: dict
    payload: list = []
    mac: Any = None


@dataclass
class Task:
    gid: int
    client: bytes
    cid: int
    labels: frozenset
    target: str | None
    host: str | None         # only a worker on this host may run it (its data is in shm)
    payload: list
    mac: Any
    retries: int
    size: int
    attempt: int = 0
    worker: str | None = None
    lost_on: list = field(default_factory=list)     # ids of the workers it was lost on
    lost_pids: list = field(default_factory=list)   # and their process ids
    lost_at: int = NEVER     # when it was last lost: it goes only to a worker heard since
    fn: bytes | None = None  # digest of its function's payload (see broker_functions)
    started: int = -1        # the attempt its worker reported as started


@dataclass
class Worker:
    id: str
    identity: bytes          # its task socket: `run` goes here
    ctl: bytes               # its control socket: welcome, heartbeats, cancel
    host: str
    pid: int
    labels: frozenset
    slots: int
    joined: int
    last_seen: int
    credit: int = 0
    tasks: set = field(default_factory=set)
    done: int = 0
    info: dict = field(default_factory=dict)
    stopping: bool = False   # asked to leave: finishes its task, gets no new ones
    fns: set = field(default_factory=set)   # digests of the function payloads sent to it
    session: Any = None      # its latest hello's `session`, echoed in welcome and run
    ledger: int = 0          # the session of the hello that made it: its credit carries it (`l`)
    supervisor: str = ""     # the token of the supervisor that vouches for it (see broker_supervisors)


@dataclass
class Client:
    identity: bytes
    host: str
    pid: int
    last_seen: int
    tasks: dict = field(default_factory=dict)   # client task id -> gid


def _field(header: dict, name: str, kind, default=None):
    value = header.get(name, default)
    if not isinstance(value, kind) or isinstance(value, bool) and kind is int:
        raise ProtocolError(f"field {name!r} of a {header.get('t')!r} message is not {kind}")
    return value


def _labels(value) -> frozenset:
    if not isinstance(value, (list, tuple)) or not all(isinstance(x, str) for x in value):
        raise ProtocolError("labels must be a list of strings")
    return frozenset(value)


class BrokerState:
    """Queues, in-flight tasks, credits and liveness of every peer."""

    def __init__(self, heartbeat_ms: int = HEARTBEAT_MS, liveness: int = LIVENESS,
                 max_lost: int = MAX_LOST, info: dict | None = None,
                 client_expiry_ms: int = CLIENT_EXPIRY_MS, first_gid: int | None = None):
        self.heartbeat_ms = heartbeat_ms
        self.expiry_ms = heartbeat_ms * liveness
        self.client_expiry_ms = max(self.expiry_ms, client_expiry_ms)
        self.max_lost = max_lost
        self.info = info or {}
        self.workers: dict[str, Worker] = {}
        self.worker_by_identity: dict[bytes, str] = {}
        self.clients: dict[bytes, Client] = {}
        self.tasks: dict[int, Task] = {}
        self.queues: dict[frozenset, deque] = {}     # labels -> gids waiting
        self.pinned: dict[str, deque] = {}           # worker id -> gids targeting it
        # Random per broker start, so ids of an earlier broker never match ours (see above).
        self.epoch = secrets.randbits(62) + 1
        self._gids = itertools.count(first_gid or secrets.randbits(62) + 1)
        self._wids = itertools.count(1)
        self.next_heartbeat = 0
        self.awake_at: int | None = None   # when we last handled a message or ticked
        self.shutdown_requested = False   # a client asked the whole cluster to stop
        self.functions = FunctionStore()
        self.supervisors = Supervisors()

    # ---- entry points -------------------------------------------------------------------
    def handle(self, identity: bytes, header: dict, payload: list, mac, now: int) -> list[Send]:
        self._forgive_stall(now)
        kind = header["t"]
        if kind == "hello":
            return self._hello(identity, header, now)
        supervisor = self.supervisors.touch(identity, now)
        if supervisor is not None:
            return self.supervisors.handle(self, supervisor, header, now)
        peer = self._touch(identity, now)
        if peer is None:
            # Unknown or expired peer (e.g. a worker resumed after SIGSTOP): ask it to re-register.
            return [Send(identity, {"t": "reconnect"})] if kind != "bye" else []
        handler = _HANDLERS.get((type(peer).__name__, kind))
        if handler is None:
            raise ProtocolError(f"unexpected {kind!r} message from a {type(peer).__name__}")
        return handler(self, peer, header, payload, mac, now)

    def tick(self, now: int) -> list[Send]:
        """Heartbeats out and expiry of silent peers; call at least every heartbeat."""
        self._forgive_stall(now)
        limit = now - self.expiry_ms
        out = self._drop_workers([w for w in self.workers.values() if self._silent(w, limit)],
                                 lost=True)
        self.supervisors.expire(limit)
        for c in [c for c in self.clients.values()
                  if c.last_seen < now - self.client_expiry_ms]:
            out += self._drop_client(c)
        if now >= self.next_heartbeat:
            self.next_heartbeat = now + self.heartbeat_ms
            out += [Send(w.ctl, {"t": "hb"}) for w in self.workers.values()]
            out += [Send(i, {"t": "hb"}) for i in self.supervisors.by_identity]
            hosts = Counter(w.host for w in self.workers.values())   # `here`: see the client
            out += [Send(c.identity, {"t": "hb", "workers": len(self.workers),
                                      "here": hosts[c.host]}) for c in self.clients.values()]
        return out

    def _silent(self, w: Worker, limit: int) -> bool:
        """Neither w's own heartbeats nor its supervisor's vouch arrived since limit."""
        return w.last_seen < limit and self.supervisors.vouched_at(w.supervisor, w.pid) < limit

    def _forgive_stall(self, now: int) -> None:
        """Silence counts only while we were awake. We tick every heartbeat; a longer gap
        since we last ticked or handled a message means we were stopped (SIGSTOP) or
        starved, and what peers sent meanwhile is still waiting for us, unread: that gap is
        added to every peer's last_seen (and supervisor's vouch), so no peer is expired for
        our own stall."""
        if self.awake_at is not None:
            stall = now - self.awake_at - self.heartbeat_ms
            if stall > 0:
                for peer in [*self.workers.values(), *self.clients.values()]:
                    peer.last_seen = min(now, peer.last_seen + stall)
                self.supervisors.forgive(stall, now)
        self.awake_at = max(now, self.awake_at or now)

    def next_deadline(self) -> int:
        return self.next_heartbeat

    # ---- registration and liveness --------------------------------------------------------
    def _hello(self, identity: bytes, h: dict, now: int) -> list[Send]:
        """Register a peer. A worker may receive tasks on a second socket (`task_identity`)."""
        role = _field(h, "role", str)
        host, pid = _field(h, "host", str, ""), _field(h, "pid", int, 0)
        other = h.get("task_identity", identity) if role == "worker" else identity
        if not isinstance(other, bytes) or not 0 < len(other) <= 255:
            raise ProtocolError("a second identity must be 1 to 255 bytes")
        welcome = {"t": "welcome", "heartbeat_ms": self.heartbeat_ms, "liveness":
                   self.expiry_ms // self.heartbeat_ms, "broker": self.info, "epoch": self.epoch}
        if role == "supervisor":
            self.supervisors.hello(identity, h, now)
            return [Send(identity, welcome)]
        if role not in ("client", "worker"):
            raise ProtocolError(f"unknown role {role!r}")
        # The worker's `session` numbers its hellos: echoed in the welcome and in every run, it
        # lets the worker tell a run sent after its latest hello from an older one.
        session = _field(h, "session", int, 0) if role == "worker" else 0
        resume, running = h.get("resume"), _field(h, "running", list, [])
        labels, slots = _labels(h.get("labels", [])), _field(h, "slots", int, 1)   # checked first
        old = self.workers.get(self.worker_by_identity.get(identity, ""))
        if old is not None and (old.ctl, old.identity) == (identity, other) and \
                isinstance(resume, list) and len(resume) == 2 and resume[1] == self.epoch:
            return [Send(identity, self._resume(old, resume[0], session, now, welcome))]
        out, dropped = self._forget({identity, other})
        if role == "client":
            self.clients[identity] = Client(identity, host, pid, now)
            return out + self._dispatch_all() + [Send(identity, welcome)]
        w = Worker(id=f"w{next(self._wids)}", identity=other, ctl=identity, host=host, pid=pid,
                   labels=labels, slots=slots, joined=now, last_seen=now, session=session,
                   ledger=session, supervisor=_field(h, "supervisor", str, ""))
        self.workers[w.id] = w
        self.worker_by_identity[identity] = self.worker_by_identity[other] = w.id
        self.pinned[w.id] = deque()
        known = resume[0] if isinstance(resume, list) and resume else None
        lost_here = {*dropped, *([known] if isinstance(known, str) else [])}
        kept = self._take_back(w, running, lost_here)
        return out + self._dispatch_all() + [Send(identity, {
            **welcome, "id": w.id, "session": w.session, "ledger": w.ledger, "kept": kept})]

    def _resume(self, w: Worker, known: str, session: int, now: int, welcome: dict) -> dict:
        """The worker process of registration w (same sockets) says hello again, naming a
        registration of ours (`known`): it heard nothing for a while (we were stalled, or
        the link was). w goes on, tasks, credit and all. If w is not the one it knows (it
        said hello twice before reading the welcome that made w), it learns w's ledger and
        the tasks w holds (`kept`), as from a new registration's welcome."""
        w.session, w.last_seen = session, now
        welcome = {**welcome, "id": w.id, "session": session, "ledger": w.ledger,
                   "resumed": True}
        if known != w.id:
            welcome["kept"] = [[gid, self.tasks[gid].attempt] for gid in sorted(w.tasks)]
        return welcome

    def _forget(self, identities: set) -> tuple[list[Send], list[str]]:
        """A peer says hello again on identities we know: their old sessions are over. Returns
        the messages to send and the ids of the workers dropped (their tasks queued again,
        not yet dispatched: the new registration may take some back)."""
        out = [s for i in identities if i in self.clients
               for s in self._drop_client(self.clients[i])]
        gone = [self.workers[wid] for wid in {self.worker_by_identity.get(i) for i in identities}
                if wid]
        return out + self._drop_workers(gone, lost=True, dispatch=False), [w.id for w in gone]

    def _take_back(self, w: Worker, running: list, lost_here: set) -> list:
        """Tasks the worker's hello says it is running, dropped with its earlier registration
        and still queued (no other worker has them): the new registration keeps them, at
        the attempt it runs, and the loss is not charged. Without this a broker stall or a
        cut link would run them twice. Returns them as [gid, attempt]."""
        kept = []
        for item in running:
            gid, attempt = item if isinstance(item, list) and len(item) == 2 else (None, None)
            t = self.tasks.get(gid) if isinstance(gid, int) else None
            if t is None or t.worker is not None or t.target is not None \
                    or not isinstance(attempt, int) or t.attempt != attempt + 1 \
                    or not t.labels <= w.labels or t.host not in (None, w.host):
                continue   # done, running elsewhere (or was), or not this worker's to run
            if t.lost_on and t.lost_on[-1] in lost_here:
                t.lost_on.pop()
                t.lost_pids.pop()
            t.attempt = attempt   # its gid stays in its queue: _pop_for skips held tasks
            t.worker = w.id
            w.tasks.add(gid)
            kept.append([gid, attempt])
        return kept

    def _touch(self, identity: bytes, now: int):
        wid = self.worker_by_identity.get(identity)
        peer = self.workers[wid] if wid else self.clients.get(identity)
        if peer is not None:
            peer.last_seen = now
        return peer

    def _drop_workers(self, workers: list[Worker], lost: bool, dispatch: bool = True) -> list[Send]:
        """Forget these workers. All go first, then their tasks are queued again (or fail),
        so none is handed to a worker that is going too: a task is charged only for the
        workers it was really lost on. Then the queues are dispatched once."""
        for w in workers:
            del self.workers[w.id]
            self.worker_by_identity.pop(w.identity, None)
            self.worker_by_identity.pop(w.ctl, None)
        out: list[Send] = []
        held = sorted(((gid, w) for w in workers for gid in w.tasks), key=lambda x: x[0])
        for gid, w in reversed(held):   # queued at the front: oldest ends first
            t = self.tasks[gid]
            t.worker = None
            if lost:
                t.lost_on.append(w.id)
                t.lost_pids.append(w.pid)
                t.lost_at = self.awake_at or 0
            if t.target is not None or len(t.lost_on) > self.max_lost:
                out += self._finish(t, "lost", {"lost_on": t.lost_on, "pids": t.lost_pids})
            else:
                t.attempt += 1
                self._enqueue(t, front=True)
        for w in workers:
            for gid in self.pinned.pop(w.id):
                if gid in self.tasks:
                    out += self._finish(self.tasks[gid], "lost",
                                        {"lost_on": [w.id], "pids": [w.pid]})
        return (out + self._dispatch_all()) if dispatch and workers else out

    def _drop_client(self, c: Client) -> list[Send]:
        del self.clients[c.identity]
        cancels: dict[str, list] = {}
        for gid in c.tasks.values():
            t = self.tasks.pop(gid)
            self.functions.unref(t.fn)
            if t.worker is not None:
                self.workers[t.worker].tasks.discard(gid)
                cancels.setdefault(t.worker, []).append(gid)
        # Queued gids of this client stay in the deques until popped; _pop skips them.
        return [Send(self.workers[wid].ctl, {"t": "cancel", "ids": gids})
                for wid, gids in cancels.items()]

    # ---- clients ------------------------------------------------------------------------
    def _submit(self, c: Client, h: dict, payload: list, mac, now: int) -> list[Send]:
        specs = _field(h, "tasks", list)
        pos, out, refetch = self.functions.receive(h, payload), [], []
        for spec in specs:
            if not isinstance(spec, list) or len(spec) not in (5, 6, 7):
                raise ProtocolError(
                    "a task spec is [cid, nframes, labels, target, retries, host, fn]")
            cid, nframes, labels, target, retries, host, fn = [*spec, None, None][:7]
            if not (isinstance(cid, int) and isinstance(nframes, int) and 0 <= nframes
                    and isinstance(retries, int) and (target is None or isinstance(target, str))
                    and (host is None or isinstance(host, str)) and (fn is None or is_digest(fn))):
                raise ProtocolError("bad task spec")
            if pos + nframes > len(payload):
                raise ProtocolError("task specs name more frames than the message has")
            frames = payload[pos:pos + nframes]
            pos += nframes
            if cid in c.tasks:
                continue  # a resubmission of a task we hold: keep the one we have
            if fn not in self.functions:   # we dropped its function: the client sends it again
                refetch.append(cid)
                continue
            t = Task(gid=next(self._gids), client=c.identity, cid=cid, labels=_labels(labels),
                     target=target, host=host, payload=frames, mac=mac if nframes == len(payload) else None,
                     retries=max(0, retries), size=sum(memoryview(f).nbytes for f in frames), fn=fn)
            if target is not None and target not in self.workers:
                out.append(Send(c.identity, {"t": "results", "items": [
                    [cid, "lost", 0, {"lost_on": [target], "why": "no such worker"}]]}))
                continue
            self.tasks[t.gid] = t
            c.tasks[cid] = t.gid
            self.functions.ref(fn)
            self._enqueue(t)
        self.functions.trim()
        if refetch:
            out.append(Send(c.identity, {"t": "refetch", "ids": refetch}))
        return out + self._dispatch_all()

    def _cancel(self, c: Client, h: dict, payload, mac, now: int) -> list[Send]:
        out, items, cancels = [], [], {}
        for cid in _field(h, "ids", list):
            gid = c.tasks.pop(cid, None) if isinstance(cid, int) else None
            if gid is None:
                continue
            t = self.tasks.pop(gid)
            self.functions.unref(t.fn)
            if t.worker is not None:
                self.workers[t.worker].tasks.discard(gid)
                cancels.setdefault(t.worker, []).append(gid)
            items.append([cid, "cancelled", 0, {}])
        if items:
            out.append(Send(c.identity, {"t": "results", "items": items}))
        out += [Send(self.workers[wid].ctl, {"t": "cancel", "ids": gids})
                for wid, gids in cancels.items()]
        return out

    def _query(self, c: Client, h: dict, payload, mac, now: int) -> list[Send]:
        return [Send(c.identity, {"t": "reply", "rid": h.get("rid"), "data": self.status(now)})]

    def _stop(self, c: Client, h: dict, payload, mac, now: int) -> list[Send]:
        """Ask workers (given ids, else all; with "broker": the whole cluster) to leave once
        their running task is done; they get no new tasks meanwhile."""
        ids = h.get("workers")
        if ids is not None and not (isinstance(ids, list) and all(isinstance(i, str) for i in ids)):
            raise ProtocolError("stop: workers must be a list of worker ids")
        chosen = [w for w in self.workers.values() if ids is None or w.id in ids]
        for w in chosen:
            w.stopping = True
        if h.get("broker"):
            self.shutdown_requested = True
        reply = {"t": "reply", "rid": h.get("rid"),
                 "data": {"stopping": [w.id for w in chosen],
                          "unknown": sorted(set(ids or ()) - {w.id for w in chosen})}}
        return [Send(c.identity, reply)] + [Send(w.ctl, {"t": "stop"}) for w in chosen]

    def _client_bye(self, c: Client, h, payload, mac, now: int) -> list[Send]:
        return self._drop_client(c)

    def _heartbeat(self, peer, h: dict, payload, mac, now: int) -> list[Send]:
        info = h.get("info")
        if isinstance(peer, Worker) and isinstance(info, dict):
            peer.info = {k: v for k, v in info.items() if isinstance(v, (int, float, str))}
        # A worker that was quiet got no tasks meanwhile (see _dispatch_all): now it may.
        if isinstance(peer, Worker) and peer.credit and not peer.stopping:
            return self._dispatch(peer)
        return []

    # ---- workers ------------------------------------------------------------------------
    def _ready(self, w: Worker, h: dict, payload, mac, now: int) -> list[Send]:
        n = _field(h, "n", int, 0)
        if self._credit_is_ours(w, h):
            w.credit = max(0, min(w.credit + n, 1 << 20))
        return self._dispatch(w)

    def _credit_is_ours(self, w: Worker, h: dict) -> bool:
        """Credit a worker asked for before it registered again (`l`, its ledger, is that of
        an earlier registration) is not this registration's: its ledger starts afresh."""
        return h.get("l", w.ledger) == w.ledger

    def _done(self, w: Worker, h: dict, payload: list, mac, now: int) -> list[Send]:
        items = _field(h, "items", list)
        if h.get("e") != self.epoch:
            items = []   # results of tasks an earlier broker sent: not ours, whatever their gid
        pos, out, by_client = 0, [], {}
        for item in items:
            if not isinstance(item, list) or len(item) != 5:
                raise ProtocolError("a result is [gid, attempt, status, nframes, info]")
            gid, attempt, status, nframes, info = item
            if not (isinstance(gid, int) and isinstance(nframes, int) and nframes >= 0
                    and status in ("ok", "err") and isinstance(info, dict)):
                raise ProtocolError("bad result item")
            frames = payload[pos:pos + nframes]
            pos += nframes
            t = self.tasks.get(gid)
            if t is None or t.worker != w.id or t.attempt != attempt:
                continue  # cancelled, or a late result of a task that was re-run: drop it
            w.tasks.discard(gid)
            w.done += 1
            if status == "err" and t.retries > 0:
                t.retries -= 1
                t.attempt += 1
                t.worker = None
                self._enqueue(t, front=True)
                continue
            del self.tasks[gid]
            self.functions.unref(t.fn)
            del self.clients[t.client].tasks[t.cid]
            info = {**info, "worker": w.id}
            by_client.setdefault(t.client, []).append(
                ([t.cid, status, nframes, info], frames, mac if nframes == len(payload) else None))
        for identity, results in by_client.items():
            header = {"t": "results", "items": [r[0] for r in results]}
            frames = [f for r in results for f in r[1]]
            out.append(Send(identity, header, frames, results[0][2] if len(results) == 1 else None))
        n = h.get("ready", 0)
        if isinstance(n, int) and n > 0 and self._credit_is_ours(w, h):
            w.credit = min(w.credit + n, 1 << 20)
        return out + self._dispatch(w)

    def _output(self, w: Worker, h: dict, payload, mac, now: int) -> list[Send]:
        by_client: dict[bytes, list] = {}
        for item in _field(h, "items", list):
            if not isinstance(item, list) or len(item) != 4:
                raise ProtocolError("an output item is [gid, attempt, stream, text]")
            t = self.tasks.get(item[0]) if isinstance(item[0], int) else None
            if t is not None and t.worker == w.id and t.attempt == item[1]:
                by_client.setdefault(t.client, []).append([t.cid, item[2], item[3], w.id])
        return [Send(c, {"t": "output", "items": items}) for c, items in by_client.items()]

    def _started(self, w: Worker, h: dict, payload, mac, now: int) -> list[Send]:
        """Tasks w started (and still runs): their clients mark the futures RUNNING. Checked
        like output: only for the worker holding the task at that attempt."""
        by_client: dict[bytes, list] = {}
        for item in _field(h, "items", list):
            if not isinstance(item, list) or len(item) != 2:
                raise ProtocolError("a started item is [gid, attempt]")
            t = self.tasks.get(item[0]) if isinstance(item[0], int) else None
            if t is not None and t.worker == w.id and t.attempt == item[1]:
                t.started = t.attempt
                by_client.setdefault(t.client, []).append([t.cid, w.id])
        return [Send(c, {"t": "started", "items": items}) for c, items in by_client.items()]

    def _giveback(self, w: Worker, h: dict, payload, mac, now: int) -> list[Send]:
        """The worker is stuck on a long task (`keep`): the tasks it holds besides that one are
        queued again under a new attempt, and it is told which, so it skips them, and how much
        of its credit was dropped."""
        keep = h.get("keep")
        given = []
        for gid in sorted(w.tasks - {keep}, reverse=True):
            t = self.tasks[gid]
            given.append([gid, t.attempt])
            w.tasks.discard(gid)
            t.worker = None
            t.attempt += 1
            self._enqueue(t, front=True)
        # It is stuck: the credit it had left is void too, or the tasks would come straight back.
        dropped, w.credit = w.credit, 0
        return [Send(w.ctl, {"t": "given", "ids": given[::-1], "dropped": dropped})] + \
            self._dispatch_all()

    def _worker_bye(self, w: Worker, h, payload, mac, now: int) -> list[Send]:
        return self._drop_workers([w], lost=False)

    # ---- queues and dispatch ----------------------------------------------------------------
    def _enqueue(self, t: Task, front: bool = False) -> None:
        q = self.pinned[t.target] if t.target is not None else \
            self.queues.setdefault((t.labels, t.host), deque())
        q.appendleft(t.gid) if front else q.append(t.gid)

    def _pop_for(self, w: Worker) -> Task | None:
        """The next task for w: one targeting it, else the oldest whose labels it has."""
        heard = self._heard(w)
        best = self.pinned[w.id]
        at = self._first_for(best, heard)
        if at < 0:
            best = None
            for (labels, host), q in self.queues.items():
                if labels <= w.labels and host in (None, w.host):
                    i = self._first_for(q, heard)
                    if i >= 0 and (best is None or q[i] < best[at]):
                        best, at = q, i
        if best is None:
            return None
        gid = best[at]
        del best[at]
        return self.tasks[gid]

    def _first_for(self, q: deque, heard: int) -> int:
        """The index in q of the first task a worker last heard from at `heard` may take, or
        -1. Gids of cancelled or finished tasks at the head are dropped. A task lost after
        `heard` is not for that worker: workers that die together (SIGKILL of a process
        group, a host going down) are reported or expire one by one, and a task handed to
        one not yet known dead would be charged a loss it never had. It waits for a worker
        that has spoken since (every live worker does within a heartbeat). Lost tasks are
        queued at the front, so the scan stops after the few lost just now."""
        while q and not self._is_queued(q[0]):
            q.popleft()
        for i, gid in enumerate(q):
            t = self.tasks.get(gid)
            if t is not None and t.worker is None and t.lost_at <= heard:
                return i
        return -1

    def _heard(self, w: Worker) -> int:
        """When w was last known alive: its own message or its supervisor's vouch."""
        return max(w.last_seen, self.supervisors.vouched_at(w.supervisor, w.pid))

    def _is_queued(self, gid: int) -> bool:
        t = self.tasks.get(gid)
        return t is not None and t.worker is None

    def _dispatch(self, w: Worker) -> list[Send]:
        """Hand w as many tasks as its credit allows."""
        taken = []
        while w.credit > 0 and (t := self._pop_for(w)) is not None:
            self._assign(t, w)
            taken.append(t)
        return self._run_messages(w, taken)

    def _dispatch_all(self) -> list[Send]:
        """Hand queued tasks out one at a time, each to the least loaded worker that can take
        it, so a burst of tasks is spread evenly instead of filling the first worker's credit."""
        # Not to a worker quiet for a while: it may be dead, and a task handed to it would be
        # charged a loss it never had (it gets work when it speaks again, see _heartbeat).
        quiet = (self.awake_at or 0) - int(self.heartbeat_ms * QUIET_HEARTBEATS)
        hungry = [w for w in self.workers.values()
                  if w.credit > 0 and not w.stopping and not self._silent(w, quiet)]
        taken: dict[str, list[Task]] = {}
        while hungry:
            w = min(hungry, key=lambda w: len(w.tasks))
            t = self._pop_for(w)
            if t is None:
                hungry.remove(w)
                continue
            self._assign(t, w)
            taken.setdefault(w.id, []).append(t)
            if w.credit == 0:
                hungry.remove(w)
        return [s for wid, tasks in taken.items() for s in self._run_messages(self.workers[wid], tasks)]

    def _local(self, t: Task, w: Worker) -> bool:
        """Is the task's client on the worker's host (so results may go through shm)?"""
        client = self.clients.get(t.client)
        return client is not None and bool(client.host) and client.host == w.host

    def _assign(self, t: Task, w: Worker) -> None:
        w.credit -= 1
        t.worker = w.id
        w.tasks.add(t.gid)

    def _run_messages(self, w: Worker, tasks: list[Task]) -> list[Send]:
        """Small tasks go together in one message; a large one alone, re-signed without
        reading its payload again. Function payloads the worker lacks go first in the message
        of the first task that needs them."""
        out, small = [], []
        for t in tasks:
            if t.size >= BATCH_BYTES:
                fns, frames = self.functions.deliver(w.fns, [t.fn])
                out.append(Send(w.identity, self._run_header(w, [t], fns), [*frames, *t.payload],
                                None if fns else t.mac))
            else:
                small.append(t)
        if small:
            fns, frames = self.functions.deliver(w.fns, [t.fn for t in small])
            out.append(Send(w.identity, self._run_header(w, small, fns),
                            [*frames, *(f for t in small for f in t.payload)]))
        return out

    def _run_header(self, w: Worker, tasks: list[Task], fns: list) -> dict:
        header = {"t": "run", "w": w.id, "e": self.epoch, "s": w.session, "tasks": [
            [t.gid, t.attempt, len(t.payload), self._local(t, w), t.fn] for t in tasks]}
        if fns:
            header["fns"] = fns
        return header

    def _refetch(self, w: Worker, h: dict, payload, mac, now: int) -> list[Send]:
        """The worker no longer has these tasks' functions (its cache dropped them): it did
        not run them, so they are queued again and go out with their function payload."""
        for item in _field(h, "tasks", list):
            gid, attempt = item if isinstance(item, list) and len(item) == 2 else (None, None)
            t = self.tasks.get(gid) if isinstance(gid, int) else None
            if t is None or t.worker != w.id or t.attempt != attempt:
                continue
            w.fns.discard(t.fn)
            w.tasks.discard(gid)
            t.worker = None
            t.attempt += 1
            self._enqueue(t, front=True)
        return self._dispatch_all()

    def _finish(self, t: Task, status: str, info: dict) -> list[Send]:
        if status == "lost":   # how the workers it was lost on ended, where a supervisor said
            info = self.supervisors.explain(info)
        del self.tasks[t.gid]
        self.functions.unref(t.fn)
        client = self.clients.get(t.client)
        if client is None:
            return []
        del client.tasks[t.cid]
        return [Send(t.client, {"t": "results", "items": [[t.cid, status, 0, info]]})]

    # ---- inspection ---------------------------------------------------------------------
    def status(self, now: int) -> dict:
        """Workers, queue lengths, and the label sets that no live worker can serve."""
        workers = [{"id": w.id, "host": w.host, "pid": w.pid, "labels": sorted(w.labels),
                    "slots": w.slots, "running": len(w.tasks), "done": w.done,
                    "state": "busy" if w.tasks else "idle", "info": w.info,
                    "age_s": (now - w.joined) / 1000,
                    # its tasks as [client pid, the client's task id], oldest first
                    "tasks": [[self.clients[t.client].pid if t.client in self.clients else 0,
                               t.cid] for t in (self.tasks[g] for g in sorted(w.tasks))]}
                   for w in self.workers.values()]
        queued = [t for t in self.tasks.values() if t.worker is None]
        waiting: dict[str, int] = {}
        for t in queued:
            if t.target is None and not any(t.labels <= w.labels and t.host in (None, w.host)
                                            for w in self.workers.values()):
                key = ",".join(sorted(t.labels) + ([f"host={t.host}"] if t.host else []))
                waiting[key] = waiting.get(key, 0) + 1
        return {"workers": workers, "queued": len(queued), "running": len(self.tasks) - len(queued),
                "clients": len(self.clients), "waiting_for_labels": waiting,
                "client_tasks": [{"host": c.host, "pid": c.pid,
                                  "queued": sum(1 for g in c.tasks.values()
                                                if self.tasks[g].worker is None),
                                  "running": sum(1 for g in c.tasks.values()
                                                 if self.tasks[g].worker is not None)}
                                 for c in self.clients.values()],
                "functions": self.functions.status(), "broker": self.info,
                "supervisors": self.supervisors.status()}

    def check_invariants(self, workers: dict | None = None) -> None:
        """Raise AssertionError if the bookkeeping is inconsistent (used by the tests).

        Args:
            workers: each worker's own ledger, worker id -> (expected credit, window, idle).
                The expected credit is what its ledger leaves for us: `granted - done`, less
                the credit in its `ready`s still on the way to us, less credit we voided that
                it has not yet heard of, less the tasks we sent it that it has not finished.
                Our credit must be exactly that, and an idle worker (nothing in flight, no
                task) must have at least its whole window as credit (more, when its window
                shrank because its tasks got longer): else it waits for work forever.
        """
        for wid, (expected, window, idle) in (workers or {}).items():
            w = self.workers[wid]
            assert w.credit == expected, f"{wid}: our credit {w.credit}, its ledger says {expected}"
            assert not idle or (not w.tasks and w.credit >= window), \
                f"{wid} is idle with credit {w.credit} and {len(w.tasks)} tasks; its window is {window}"
        held = {}
        for w in self.workers.values():
            assert self.worker_by_identity[w.identity] == self.worker_by_identity[w.ctl] == w.id
            assert w.credit >= 0
            for gid in w.tasks:
                assert self.tasks[gid].worker == w.id, (gid, w.id)
                assert gid not in held
                held[gid] = w.id
        assert len(self.worker_by_identity) == sum(len({w.identity, w.ctl})
                                                  for w in self.workers.values())
        owned = set()
        for c in self.clients.values():
            for cid, gid in c.tasks.items():
                t = self.tasks[gid]
                assert (t.client, t.cid) == (c.identity, cid)
                owned.add(gid)
        assert owned == set(self.tasks), "every task belongs to a live client"
        queued = {gid for q in [*self.queues.values(), *self.pinned.values()] for gid in q}
        for t in self.tasks.values():
            if t.worker is None:
                assert t.gid in queued, f"task {t.gid} is neither queued nor held"
            else:
                assert held.get(t.gid) == t.worker
        assert set(self.pinned) == set(self.workers)
        self.functions.check_invariants(t.fn for t in self.tasks.values())


_HANDLERS = {
    ("Client", "submit"): BrokerState._submit,
    ("Client", "cancel"): BrokerState._cancel,
    ("Client", "query"): BrokerState._query,
    ("Client", "stop"): BrokerState._stop,
    ("Client", "bye"): BrokerState._client_bye,
    ("Client", "hb"): BrokerState._heartbeat,
    ("Worker", "ready"): BrokerState._ready,
    ("Worker", "done"): BrokerState._done,
    ("Worker", "output"): BrokerState._output,
    ("Worker", "bye"): BrokerState._worker_bye,
    ("Worker", "giveback"): BrokerState._giveback,
    ("Worker", "refetch"): BrokerState._refetch,
    ("Worker", "started"): BrokerState._started,
    ("Worker", "hb"): BrokerState._heartbeat,
}
