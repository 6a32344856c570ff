"""Looking at the broker's state from outside: the status a `query` gets, and the invariants
the tests check after every step.

Both only read the state. `status` answers a client's `query` (`Client.status()`, `nbcluster
status`; its fields are listed in docs/protocol.md, under `reply`); `check_invariants` is how
the tests, property-based ones included, find bookkeeping that does not add up.
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .state import BrokerState

__all__ = ["status", "check_invariants"]


MAX_WAITING_LISTED = 100   # label sets no worker serves, listed in a status (the rest counted)


def status(state: BrokerState, now: int) -> dict[str, Any]:
    """Workers, queue lengths, and the label sets that no live worker can serve. Kept
    incrementally: O(workers + clients + label queues in use), whatever the queue length."""
    workers = [{"id": w.id, "host": w.host, "pid": w.pid, "labels": sorted(w.labels),
                "slots": w.slots, "running": len(w.tasks), "done": w.done,
                "state": "busy" if w.tasks else "idle", "info": w.info,
                "age_s": (now - w.joined) / 1000,
                # its tasks as [client pid, the client's task id], oldest first
                "tasks": [[0 if t.owner.gone else t.owner.pid, t.cid]
                          for t in (state.tasks[g] for g in sorted(w.tasks))]}
               for w in state.workers.values()]
    waiting: dict[str, int] = {}
    queue = state.queue
    for labels, host in itertools.islice(queue.unserved, MAX_WAITING_LISTED):
        key = ",".join(sorted(labels) + ([f"host={host}"] if host else []))
        waiting[key] = sum(lq.live for lq in queue.by_key[(labels, host)].clients.values())
    clients = state.clients.values()
    return {"workers": workers, "queued": sum(c.queued for c in clients),
            "running": sum(len(c.running) for c in clients),
            "clients": len(state.clients), "waiting_for_labels": waiting,
            "label_sets_waiting": len(queue.unserved), "label_queues": len(queue.by_key),
            "client_tasks": [{"host": c.host, "pid": c.pid, "queued": c.queued,
                              "running": len(c.running)} for c in clients],
            "functions": state.functions.status(), "broker": state.info,
            "supervisors": state.supervisors.status()}


def check_invariants(state: BrokerState,
                     workers: dict[str, tuple[int, int, bool]] | None = None) -> None:
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
        w = state.workers[wid]
        assert w.credit == expected, f"{wid}: our credit {w.credit}, its ledger says {expected}"
        assert not idle or (not w.tasks and w.credit >= window), \
            f"{wid} is idle with credit {w.credit} and {len(w.tasks)} tasks; its window is {window}"
    held = {}
    for w in state.workers.values():
        assert state.worker_by_identity[w.identity] == state.worker_by_identity[w.ctl] == w.id
        assert w.credit >= 0
        for gid in w.tasks:
            assert state.tasks[gid].worker == w.id, (gid, w.id)
            assert gid not in held
            held[gid] = w.id
    assert len(state.worker_by_identity) == sum(len({w.identity, w.ctl})
                                               for w in state.workers.values())
    owned = set()
    for c in state.clients.values():
        assert not c.gone
        for cid, gid in c.tasks.items():
            t = state.tasks[gid]
            assert t.owner is c and t.cid == cid
            owned.add(gid)
        assert c.running == {g for g in c.tasks.values() if state.tasks[g].worker is not None}
    orphans = {gid for c in state.orphans for gid in c.tasks.values()}
    assert all(c.gone and not c.running and not c.queues for c in state.orphans)
    assert owned | orphans == set(state.tasks) and not owned & orphans, \
        "every task belongs to a live client, or to a dropped one being swept"
    queued = state.queue.gids()
    for t in state.tasks.values():
        if t.gid in orphans:
            assert t.worker is None
        elif t.worker is None:
            assert t.gid in queued, f"task {t.gid} is neither queued nor held"
        else:
            assert held.get(t.gid) == t.worker
    assert set(state.queue.pinned) == set(state.workers)
    classes: dict[Any, int] = {}
    for w in state.workers.values():
        classes[(w.labels, w.host)] = classes.get((w.labels, w.host), 0) + 1
    assert classes == {k: c.members for k, c in state.queue.classes.items()}
    state.queue.check_invariants(state.clients)
    state.functions.check_invariants(t.fn for t in state.tasks.values())
    for (wid, _), route in [*state.debug.kept.items(), *state.debug.sessions.items()]:
        assert wid in state.workers and route.client in state.clients, \
            "a debugger route outlived its worker or client"
