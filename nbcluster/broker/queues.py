"""The tasks waiting for a worker, and which of them a given worker takes next.

    submit ──► by_labels[(labels, host)]  ──┐
               pinned[worker id] (target) ──┴─► pop_for(worker, heard): its pinned task,
                                                else the oldest whose labels and host it has

A queue holds gids in the order they are to go: new tasks at the back, tasks given back or
lost at the front (they go first). Gids of tasks cancelled, finished or taken back by a
worker that registered again stay in their queue until a scan reaches them (removing them
at once would cost a scan per cancel): a queue's head is cleaned as it is read.

The tasks themselves are in `BrokerState.tasks`; these queues only order their gids.
"""

from __future__ import annotations

from collections import deque

from .records import Task, Worker

__all__ = ["TaskQueues"]


class TaskQueues:
    """Gids of queued tasks: by the labels and host they ask for, or by the worker they target.

    Args:
        tasks: the broker's tasks by gid (read here, owned by `BrokerState`).
    """

    def __init__(self, tasks: dict[int, Task]) -> None:
        self.tasks = tasks
        self.by_labels: dict[tuple[frozenset[str], str | None], deque[int]] = {}
        self.pinned: dict[str, deque[int]] = {}   # worker id -> gids targeting it

    def add_worker(self, wid: str) -> None:
        self.pinned[wid] = deque()

    def remove_worker(self, wid: str) -> deque[int]:
        """Forget the worker's queue; returns the gids that were in it (some may be over)."""
        return self.pinned.pop(wid)

    def enqueue(self, t: Task, front: bool = False) -> None:
        q = self.pinned[t.target] if t.target is not None else \
            self.by_labels.setdefault((t.labels, t.host), deque())
        q.appendleft(t.gid) if front else q.append(t.gid)

    def pop_for(self, w: Worker, heard: int) -> Task | None:
        """The next task for w, last heard from at `heard`: one targeting it, else the
        oldest whose labels it has."""
        pinned = self.pinned[w.id]
        best: deque[int] | None = pinned
        at = self._first_for(pinned, heard)
        if at < 0:
            best = None
            for (labels, host), q in self.by_labels.items():
                if labels <= w.labels and host in (None, w.host):
                    i = self._first_for(q, heard)
                    if i >= 0 and (best is None or q[i] < best[at]):
                        best, at = q, i
        if best is None:
            return None
        gid = best[at]
        del best[at]
        return self.tasks[gid]

    def empty(self) -> bool:
        """No gid in any queue (gids of tasks no longer queued count until a scan drops them)."""
        return not any(self.by_labels.values()) and not any(self.pinned.values())

    def _first_for(self, q: deque[int], heard: int) -> int:
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

    def _is_queued(self, gid: int) -> bool:
        t = self.tasks.get(gid)
        return t is not None and t.worker is None

    def gids(self) -> set[int]:
        """Every gid in a queue (used by the invariants)."""
        return {gid for q in [*self.by_labels.values(), *self.pinned.values()] for gid in q}
