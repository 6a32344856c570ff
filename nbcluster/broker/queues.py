"""The tasks waiting for a worker, and which of them a given worker takes next.

    submit ──► by_key[(labels, host)].clients[client] ──┐ (a queue per client and key)
               pinned[worker id] (target) ──────────────┴─► pop_for(worker, heard)

    pop_for: its pinned task first; else, among the clients with a task it can take, the
    one with the fewest tasks on workers (ties: the one served least recently), and that
    client's oldest task it can take (first in first out within a client)

Fair share: every worker with credit serves the client with the fewest tasks running, so
clients share the workers that can serve them equally, whatever their queue lengths.

Cost: a queue exists only while it holds a queued task (`live` counts them), and each
worker class (its labels and host) knows the keys in use it can serve (`WorkerClass.keys`,
kept when a key appears or goes and when a class appears): pop_for looks only at those,
never at label sets no longer in use. A worker with L labels can serve at most 2^(L+1)
keys, so its look-up is bounded by its own labels.

A queue holds gids in the order they are to go: new tasks at the back, tasks given back or
lost at the front. Gids of tasks cancelled or taken back stay in their queue until a pop
reaches them (it drops them; past SKIP_BUDGET it leaves the rest to `sweep`), or until the
queue's last live task leaves and the whole queue goes. Structures detached at once (a
dropped client's queues, a queue of dead gids) are freed a bounded slice at a time by
`sweep`, so no message costs their size.

The tasks themselves are in `BrokerState.tasks`; these queues only order their gids.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Iterator
from typing import Any

from .records import Client, Task, Worker
from .table import Table

__all__ = ["TaskQueues", "LabelQueue", "WorkerClass", "Key"]

Key = tuple[frozenset[str], str | None]   # (labels, host) a task asks for, or a worker has
SKIP_BUDGET = 4096   # dead gids one pop drops; more are left to sweep (bounded handle())


class LabelQueue:
    """One client's queued gids of one key, and how many of them are live (queued)."""

    __slots__ = ("gids", "live", "owner", "key")

    def __init__(self, owner: Client, key: Key) -> None:
        self.gids: deque[int] = deque()
        self.live = 0
        self.owner, self.key = owner, key


class KeyQueues:
    """The queues of one key in use: one per client with a task of it."""

    __slots__ = ("key", "clients", "servers")

    def __init__(self, key: Key) -> None:
        self.key = key   # the one (labels, host) object its tasks share (interned)
        self.clients: dict[bytes, LabelQueue] = {}
        self.servers = 0   # worker classes that can serve it


class WorkerClass:
    """Workers of one (labels, host): how many, and the keys in use they can serve."""

    __slots__ = ("key", "members", "keys")

    def __init__(self, key: Key) -> None:
        self.key, self.members = key, 0
        self.keys: set[Key] = set()

    def serves(self, key: Key) -> bool:
        return key[0] <= self.key[0] and key[1] in (None, self.key[1])


class TaskQueues:
    """Gids of queued tasks: per client by the labels and host they ask for, or by the
    worker they target.

    Args:
        tasks: the broker's tasks by gid (read here, owned by `BrokerState`).
    """

    def __init__(self, tasks: Table[Task]) -> None:
        self.tasks = tasks
        self.by_key: dict[Key, KeyQueues] = {}
        self.pinned: dict[str, deque[int]] = {}   # worker id -> gids targeting it
        self.pinned_gids = 0   # in all pinned queues (dead ones too): 0 means none to hand out
        # keys in use that no worker class serves, in the order they appeared (for status)
        self.unserved: dict[Key, None] = {}
        self.classes: dict[Key, WorkerClass] = {}
        self.dirty: set[LabelQueue] = set()   # queues whose head a pop left to sweep
        self.garbage: deque[Any] = deque()    # detached deques and dicts, freed by sweep
        self.stamps = itertools.count(1)

    # ---- workers -------------------------------------------------------------------------
    def add_worker(self, w: Worker) -> None:
        self.pinned[w.id] = deque()
        key = (w.labels, w.host)
        cls = self.classes.get(key)
        if cls is None:
            cls = self.classes[key] = WorkerClass(key)
            if 1 << min(len(w.labels) + 1, 62) < len(self.by_key):   # fewer subsets than keys
                candidates: Iterator[Key] = (
                    (frozenset(sub), host) for n in range(len(w.labels) + 1)
                    for sub in itertools.combinations(sorted(w.labels), n)
                    for host in (None, w.host))
                cls.keys = {k for k in candidates if k in self.by_key}
            else:
                cls.keys = {k for k in self.by_key if cls.serves(k)}
            for k in cls.keys:
                self._served(k, +1)
        cls.members += 1

    def remove_worker(self, w: Worker) -> deque[int]:
        """Forget the worker's queue; returns the gids that were in it (some may be over)."""
        key = (w.labels, w.host)
        cls = self.classes[key]
        cls.members -= 1
        if cls.members == 0:
            del self.classes[key]
            for k in cls.keys:
                self._served(k, -1)
        q = self.pinned.pop(w.id)
        self.pinned_gids -= len(q)
        return q

    def _served(self, key: Key, change: int) -> None:
        entry = self.by_key[key]
        entry.servers += change
        if entry.servers:
            self.unserved.pop(key, None)
        else:
            self.unserved[key] = None

    # ---- tasks in and out ----------------------------------------------------------------
    def intern(self, labels: frozenset[str], host: str | None) -> Key:
        """The (labels, host) object of a key in use, so its tasks share one."""
        entry = self.by_key.get((labels, host))
        return entry.key if entry is not None else (labels, host)

    def enqueue(self, t: Task, front: bool = False) -> None:
        """t is queued (new, or back from a worker: then at the front)."""
        if t.target is not None:
            q = self.pinned[t.target]
            q.appendleft(t.gid) if front else q.append(t.gid)
            self.pinned_gids += 1
            return
        key = (t.labels, t.host)
        entry = self.by_key.get(key)
        if entry is None:
            entry = self.by_key[key] = KeyQueues(key)
            for cls in self.classes.values():
                if cls.serves(key):
                    cls.keys.add(key)
                    entry.servers += 1
            if not entry.servers:
                self.unserved[key] = None
        lq = entry.clients.get(t.owner.identity)
        if lq is None:
            lq = entry.clients[t.owner.identity] = LabelQueue(t.owner, entry.key)
            t.owner.queues[entry.key] = lq
        lq.gids.appendleft(t.gid) if front else lq.gids.append(t.gid)
        lq.live += 1

    def unqueue(self, t: Task) -> None:
        """Queued t leaves without a pop (cancelled, taken back): its gid stays, dead."""
        if t.target is None:
            self._spent(t.owner.queues[(t.labels, t.host)])

    def _spent(self, lq: LabelQueue) -> None:
        lq.live -= 1
        if lq.live == 0:
            self._drop(lq)

    def _drop(self, lq: LabelQueue) -> None:
        """The queue holds no live task: it goes, its dead gids with it (freed by sweep)."""
        owner = lq.owner
        del owner.queues[lq.key]
        if not owner.queues:
            owner.queues = {}   # a dict keeps its size when emptied: a new one is small
        entry = self.by_key[lq.key]
        del entry.clients[lq.owner.identity]
        self.dirty.discard(lq)
        if len(lq.gids) > 64:
            self.garbage.append(lq.gids)
        if not entry.clients:
            del self.by_key[lq.key]
            self.unserved.pop(lq.key, None)
            for cls in self.classes.values():
                cls.keys.discard(lq.key)
                if not cls.keys:
                    cls.keys = set()
            if not self.by_key:   # the last label queue went: start small again
                self.by_key, self.unserved = {}, {}

    def drop_client(self, c: Client) -> None:
        """Detach all of c's queues at once (O(its keys)); sweep frees their gids."""
        for lq in list(c.queues.values()):
            lq.live = 0
            self._drop(lq)

    # ---- the next task for a worker ------------------------------------------------------
    def pop_for(self, w: Worker, clients: dict[bytes, Client], heard: int) -> Task | None:
        """The next task for w, last heard from at `heard`: one targeting it, else the
        oldest one it can take of the client with the fewest tasks on workers."""
        pinned = self.pinned[w.id]
        at = self._first_pinned(pinned, heard)
        if at >= 0:
            gid = pinned[at]
            del pinned[at]
            self.pinned_gids -= 1
            return self.tasks[gid]
        best: LabelQueue | None = None
        rank: tuple[int, int, bool, int] = (0, 0, False, 0)
        for key in self.classes[(w.labels, w.host)].keys:
            for lq in self.by_key[key].clients.values():
                i, t = self._first_for(lq, heard)
                if t is None:
                    continue
                c = lq.owner
                # fewest running, then least recently served; within the client, tasks
                # given back or lost first, then the oldest
                r = (len(c.running), c.served, t.attempt == 0, t.gid)
                if best is None or r < rank:
                    best, rank, at = lq, r, i
        if best is None:
            return None
        del best.gids[at]
        best.owner.served = next(self.stamps)
        self._spent(best)
        return self.tasks[rank[3]]

    def _first_for(self, lq: LabelQueue, heard: int) -> tuple[int, Task | None]:
        """The index in lq of the first task a worker last heard from at `heard` may take,
        and that task, or (-1, None). Dead gids at the head are dropped (up to SKIP_BUDGET:
        then the queue is left to sweep for now). A task lost after `heard` is not for that
        worker: workers that die together (SIGKILL of a process group, a host going down)
        are reported or expire one by one, and a task handed to one not yet known dead
        would be charged a loss it never had. It waits for a worker that has spoken since
        (every live worker does within a heartbeat). Lost tasks are queued at the front, so
        the scan stops after the few lost just now."""
        q = lq.gids
        for _ in range(SKIP_BUDGET):
            if not q or self._is_queued(q[0]):
                break
            q.popleft()
        else:
            self.dirty.add(lq)
            return -1, None
        for i, gid in enumerate(itertools.islice(q, SKIP_BUDGET)):
            t = self.tasks.get(gid)
            if t is not None and t.worker is None and t.lost_at <= heard and t.owner is lq.owner:
                return i, t
        return -1, None

    def _first_pinned(self, q: deque[int], heard: int) -> int:
        while q and not self._is_queued(q[0]):
            q.popleft()
            self.pinned_gids -= 1
        for i, gid in enumerate(q):
            t = self.tasks.get(gid)
            if t is not None and t.worker is None and not t.owner.gone and t.lost_at <= heard:
                return i
        return -1

    def _is_queued(self, gid: int) -> bool:
        t = self.tasks.get(gid)
        return t is not None and t.worker is None and not t.owner.gone

    def empty(self) -> bool:
        """Is no task queued that a worker of ours could take?"""
        return len(self.by_key) == len(self.unserved) and not self.pinned_gids

    def has_work_for(self, w: Worker) -> bool:
        """Might pop_for find a task for w? (False: it surely finds none.)"""
        return bool(self.pinned[w.id]) or bool(self.classes[(w.labels, w.host)].keys)

    # ---- freeing in slices ---------------------------------------------------------------
    def sweep(self, budget: int) -> tuple[int, bool]:
        """Free up to `budget` entries of detached structures, and drop dead heads of the
        queues a pop left; returns (entries freed, whether a queue got a live head back:
        then dispatch again)."""
        done, woke = 0, False
        while self.garbage and done < budget:
            box = self.garbage[0]
            n = min(len(box), budget - done)
            pop = box.popitem if isinstance(box, dict) else box.pop
            for _ in range(n):
                pop()
            done += n
            if not box:
                self.garbage.popleft()
        for lq in list(self.dirty):
            if done >= budget:
                break
            q = lq.gids
            while q and done < budget and not self._is_queued(q[0]):
                q.popleft()
                done += 1
            if not q or self._is_queued(q[0]):
                self.dirty.discard(lq)
                woke = True
        return done, woke

    @property
    def sweeping(self) -> bool:
        return bool(self.garbage or self.dirty)

    # ---- inspection ----------------------------------------------------------------------
    def gids(self) -> set[int]:
        """Every gid in a queue (used by the invariants)."""
        return {gid for e in self.by_key.values() for lq in e.clients.values() for gid in lq.gids} \
            | {gid for q in self.pinned.values() for gid in q}

    def check_invariants(self, clients: dict[bytes, Client]) -> None:
        """Live counts, the per-client and per-key views, and the class index add up."""
        for key, entry in self.by_key.items():
            assert entry.key == key and entry.clients, key
            for ident, lq in entry.clients.items():
                c = clients[ident]
                assert lq.owner is c and c.queues[key] is lq and lq.key is entry.key
                live = {g for g in lq.gids if (t := self.tasks.get(g)) is not None
                        and t.worker is None and t.owner is c and t.target is None}
                assert lq.live == len(live) > 0, (key, lq.live, len(live))
        for c in clients.values():
            for key, lq in c.queues.items():
                assert self.by_key[key].clients[c.identity] is lq
        for key, cls in self.classes.items():
            assert cls.keys == {k for k in self.by_key if cls.serves(k)}, key
            assert cls.members > 0
        for key, entry in self.by_key.items():
            assert entry.servers == sum(key in cls.keys for cls in self.classes.values())
        assert set(self.unserved) == {k for k, e in self.by_key.items() if not e.servers}
        assert self.pinned_gids == sum(len(q) for q in self.pinned.values())
