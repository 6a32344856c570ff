"""The broker's bookkeeping as a pure state machine: no sockets, no clock, no threads.

`BrokerState.handle(identity, header, payload, mac, now)` takes one checked message and
returns the messages to send; `tick(now)` sends heartbeats and expires silent peers. Times
are integers in milliseconds, so tests drive it with a fake clock and check
`check_invariants()` after every step. Payloads are opaque: they are stored and forwarded,
never looked into. A peer's header is untrusted: it is held to its type's schema
(wire.schema) and must be fresh (sessions: no replay) before anything reads it; a header
that fails raises ProtocolError, which the broker loop logs and drops.

    handle(message, now) ─┬─ hello ───────────────► peers: register, resume, forget
                          ├─ from a supervisor ───► supervisors: vouches, exits
                          ├─ from a client ───────► client_messages: submit, cancel, query...
                          ├─ from a worker ───────► worker_messages: ready, done, output...
                          └─ from a stranger ─────► reconnect (it was forgotten: say hello)
    tick(now) ── liveness: our stalls forgiven, silent peers dropped (peers), heartbeats out,
                 detached tables freed a slice at a time (sweep), then, after a big
                 release, the freed heap handed back (housekeep)

    the handlers ──► queues: tasks waiting, by labels or target worker
                 ──► dispatch: queued tasks to workers with credit; a task lost for good
    status, check_invariants ──► inspection

`BrokerState` owns the tables every job reads (tasks, workers, clients); each job is a
module of functions of (state, ...), and the parts with one owner are small classes it
holds: `TaskQueues`, `Liveness`, `FunctionStore`, `Supervisors`.

Tasks: a client submits tasks; each waits in its client's queue keyed by the labels it asks
for (or in the queue of the one worker it targets) until a worker holding those labels has
credit. Clients share the workers fairly: a worker with credit takes a task of the client
with the fewest tasks on workers, first in first out within a client (see queues). What a
message detaches at once (a dropped client's million queued tasks) is freed a slice at a
time by `sweep`, which `tick` runs (and `next_deadline` asks for at once while any is left),
so no message or tick costs more than milliseconds. Once the task table is at half its peak
or less, however the tasks left (cancelled, dropped, done), the next tick hands the freed
heap back to the system.
Workers pull: `ready n` grants n credit, each task handed over spends one. A worker that has
been silent for `liveness` heartbeats is lost: its tasks are queued again with attempt + 1,
unless they were lost `max_lost` times already, which fails them with "lost". Silence is
counted only while we are awake (a stall of ours expires nobody), workers lost together go
together (a task is never handed to one of them), and a worker that registers again keeps
its registration, or the task it still runs (see `peers.hello`): a task runs twice only if
its worker was really lost. Results are accepted only from the worker holding the task at
the current attempt, so a late result of a task that was re-run elsewhere is dropped: each
result reaches its client at most once.

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
from collections import deque
from collections.abc import Callable
from typing import Any

from ..errors import ProtocolError
from ..wire import schema
from . import client_messages, inspection, sessions, worker_messages
from .debug_routes import DebugRoutes
from .dispatch import dispatch_all
from .functions import FunctionStore
from .liveness import Liveness
from .peers import drop_client, drop_gone, drop_workers, hello, touch
from .queues import TaskQueues
from .records import Client, Frames, Header, Mac, Peer, Send, Task, Worker
from .supervisors import SupervisorPeer, Supervisors
from .table import Table

__all__ = ["BrokerState"]

HEARTBEAT_MS = 1000      # peers and broker send a heartbeat this often
LIVENESS = 3             # a worker silent for this many heartbeats is dead
# A client whose connection closes is dropped at once (`gone`); this silence expiry is the
# last resort for one whose connection stays up (libzmq answers its pings) but which never
# speaks: a kernel holding the GIL that long. Long, since forgetting a live client costs all
# its work (it resubmits when it wakes up), while keeping a hung one costs only its share.
CLIENT_EXPIRY_MS = 3_600_000
MAX_LOST = 3             # a task may lose this many workers; the next loss fails it
SWEEP_BUDGET = 2000      # entries freed per sweep (a few ms): see sweep
SWEEP_AT_ONCE = 1000     # a dropped client with fewer queued tasks is swept at once
# Memory is handed back once the task table fell by this many tasks, and to half its peak
# or less (see _hand_back_memory)
TRIM_AFTER = 2_000
TRIM_AFTER_SWEPT = 100_000   # or sweep freed this many entries (gids: about 1 MB)
HOUSEKEEPING_MS = 10_000   # how often housekeep is called anyway


class BrokerState:
    """Queues, in-flight tasks, credits and liveness of every peer."""

    def __init__(self, heartbeat_ms: int = HEARTBEAT_MS, liveness: int = LIVENESS,
                 max_lost: int = MAX_LOST, info: dict[str, Any] | None = None,
                 client_expiry_ms: int = CLIENT_EXPIRY_MS, first_gid: int | None = None,
                 housekeep: Callable[[int, bool], None] | None = None):
        self.max_lost = max_lost
        self.info = info or {}
        self.workers: dict[str, Worker] = {}
        self.worker_by_identity: dict[bytes, str] = {}
        self.clients: dict[bytes, Client] = {}
        self.tasks: Table[Task] = Table()
        self.queue = TaskQueues(self.tasks)
        self.functions = FunctionStore()
        self.supervisors = Supervisors()
        self.debug = DebugRoutes()   # who may debug which task's failures (debug_routes.py)
        self.liveness = Liveness(heartbeat_ms, liveness, client_expiry_ms,
                                 self.workers, self.clients, self.supervisors)
        # Random per broker start, so ids of an earlier broker never match ours (see above).
        self.epoch = secrets.randbits(62) + 1
        self.fresh_gids = itertools.count(first_gid or secrets.randbits(62) + 1)
        self.fresh_worker_numbers = itertools.count(1)
        self.shutdown_requested = False   # a client asked the whole cluster to stop
        self.hellos = sessions.Hellos()   # hellos taken lately: each is taken once
        # Our wall clock is now + this (ms); the broker loop keeps it up to date. Hellos carry
        # their peer's wall clock (see sessions).
        self.wall_offset_ms = 0
        # Dropped clients whose queued tasks are still in `tasks`, freed by sweep.
        self.orphans: deque[Client] = deque()
        self.swept = 0   # entries of detached queues freed by sweep since the last hand-back
        # housekeep(tasks held, a big release happened): the process's memory upkeep (see
        # memory.housekeep), called on ticks so the loop stays the only impure part.
        self.housekeep = housekeep or (lambda tasks, released: None)
        self.next_housekeeping = 0

    def handle(self, identity: bytes, header: Header, payload: Frames, mac: Mac,
               now: int) -> list[Send]:
        """The messages to send in answer to one checked message from `identity`.

        Raises:
            ProtocolError: the message is not one this peer may send, a field of its header
                does not hold to its type's schema (wire.schema), or it is not fresh (a
                replay, see sessions).
        """
        self.liveness.forgive_stall(now)
        schema.check(header)   # every field checked here: handlers read only checked values
        kind = header["t"]
        if kind == "hello":
            try:
                self.hellos.admit(header, now, now + self.wall_offset_ms)   # once, fresh
            except sessions.ClockSkew as e:   # a replay, or a clock far off: say which
                return [Send(identity, {"t": "refused", "why": str(e)})]
            return hello(self, identity, header, now)
        known = self.peer(identity)
        if known is not None:   # a replay, or a message of an earlier registration: dropped
            sessions.check(known, identity, header)
        supervisor = self.supervisors.touch(identity, now)
        if supervisor is not None:
            return self.supervisors.handle(self, supervisor, header, now)
        peer = touch(self, identity, now)
        if peer is None:
            # Unknown or expired peer (e.g. a worker resumed after SIGSTOP): ask it to re-register.
            return [Send(identity, {"t": "reconnect"})] if kind != "bye" else []
        if isinstance(peer, Worker):
            on_worker = worker_messages.HANDLERS.get(kind)
            if on_worker is not None:
                return on_worker(self, peer, header, payload, mac, now)
        else:
            on_client = client_messages.HANDLERS.get(kind)
            if on_client is not None:
                return on_client(self, peer, header, payload, mac, now)
        raise ProtocolError(f"unexpected {kind!r} message from a {type(peer).__name__}")

    def peer(self, identity: bytes) -> Peer | SupervisorPeer | None:
        """The registered peer on this socket, if any (as `handle` looks it up)."""
        sup = self.supervisors.by_identity.get(identity)
        if sup is not None:
            return sup
        wid = self.worker_by_identity.get(identity)
        return self.workers[wid] if wid else self.clients.get(identity)

    def tick(self, now: int) -> list[Send]:
        """Heartbeats out and expiry of silent peers; call at least every heartbeat."""
        self.liveness.forgive_stall(now)
        out = drop_workers(self, self.liveness.lost_workers(now), lost=True)
        self.supervisors.expire(now - self.liveness.expiry_ms)
        for c in self.liveness.lost_clients(now):
            out += drop_client(self, c)
        out += self.liveness.heartbeats(now) + self.sweep()
        if now >= self.next_housekeeping:
            self.next_housekeeping = now + HOUSEKEEPING_MS
            self.housekeep(len(self.tasks), False)
        return out

    def gone(self, identities: set[bytes]) -> list[Send]:
        """These peers' connections closed (a send to them found none): see `drop_gone`."""
        return drop_gone(self, identities)

    def next_deadline(self) -> int:
        """When `tick` is next due: at once while there is memory to free or to hand back
        (see sweep)."""
        return 0 if self.sweeping or self._released() else self.liveness.next_heartbeat

    @property
    def sweeping(self) -> bool:
        return bool(self.orphans) or self.queue.sweeping

    def forget_tasks(self, c: Client) -> None:
        """Dropped client c's queued tasks leave `tasks`: at once if few, else by sweep."""
        if c.tasks:
            self.orphans.append(c)
            if len(c.tasks) <= SWEEP_AT_ONCE:
                self._free_orphans(SWEEP_AT_ONCE)

    def sweep(self, budget: int = SWEEP_BUDGET) -> list[Send]:
        """Free up to `budget` entries of what was detached at once (a dropped client's
        tasks, dead queues) so that no message pays for its size, and hand memory back to
        the system after a big release. Returns the messages of a dispatch, if a queue got
        work back."""
        freed = self._free_orphans(budget)
        n, woke = self.queue.sweep(budget - freed)
        self.swept += n
        self._hand_back_memory()
        return dispatch_all(self) if woke else []

    def _hand_back_memory(self) -> None:
        """After a big release, once what it detached is swept, hand the freed heap back to
        the system (housekeep: malloc_trim, a few ms). It is judged on the task table, not
        on a path: a cancel of 100,000 tasks with a label set each was never counted, and
        left 60 MB free in the heap (the RSS at 3.4x baseline)."""
        if self._released() and not self.sweeping:
            self.tasks.peak, self.swept = len(self.tasks), 0
            self.housekeep(len(self.tasks), True)

    def _released(self) -> bool:
        """A big release: the task table fell by TRIM_AFTER tasks since its peak and to half
        of it or less (what the heap keeps is then at most what is held), however the tasks
        left (cancelled, dropped with their client, done); or sweep freed TRIM_AFTER_SWEPT
        entries of queues detached after their tasks had left (a million cancelled gids)."""
        held, peak = len(self.tasks), self.tasks.peak
        return (peak - held >= TRIM_AFTER and 2 * held <= peak) \
            or self.swept >= TRIM_AFTER_SWEPT

    def _free_orphans(self, budget: int) -> int:
        freed = 0
        while self.orphans and freed < budget:
            c = self.orphans[0]
            n = min(len(c.tasks), budget - freed)
            for _ in range(n):
                t = self.tasks.pop(c.tasks.popitem()[1])
                self.functions.unref(t.fn)
            freed += n
            if not c.tasks:
                self.orphans.popleft()
        return freed

    def status(self, now: int) -> dict[str, Any]:
        """Workers, queue lengths, and the label sets that no live worker can serve."""
        return inspection.status(self, now)

    def check_invariants(self, workers: dict[str, tuple[int, int, bool]] | None = None) -> None:
        """Raise AssertionError if the bookkeeping is inconsistent (used by the tests); see
        `inspection.check_invariants` for `workers`."""
        inspection.check_invariants(self, workers)

