"""Handing queued tasks to workers with credit, and ending tasks.

    worker ── ready n ──► credit += n
    queues ── pop_for ──► assign (credit - 1) ──► run: small tasks batched, the function
                                                  payloads the worker lacks first
    finish(task, status) ──► results to its client (if it is still here)

Workers pull: each task handed over spends one credit. `dispatch` fills one worker's credit
(it asked for work); `dispatch_all` spreads what is queued over every worker with credit,
least loaded first, after anything that may have freed a task or a worker.
"""

from __future__ import annotations

import heapq
from typing import TYPE_CHECKING, Any

from .records import NEVER, Header, Send, Task, Worker

if TYPE_CHECKING:
    from .state import BrokerState

__all__ = ["dispatch", "dispatch_all", "finish", "release", "stuck"]

BATCH_BYTES = 64 * 1024  # tasks smaller than this are sent to a worker several per message


def dispatch(state: BrokerState, w: Worker) -> list[Send]:
    """Hand w as many tasks as its credit allows."""
    taken = []
    while w.credit > 0 and not stuck(w) and (t := state.queue.pop_for(
            w, state.clients, state.liveness.heard(w))) is not None:
        _assign(t, w)
        taken.append(t)
    return _run_messages(state, w, taken)


def dispatch_all(state: BrokerState) -> list[Send]:
    """Hand queued tasks out one at a time, each to the least loaded worker that can take
    it, so a burst of tasks is spread evenly instead of filling the first worker's credit.
    The least loaded comes from a heap (O(log workers) a task, not O(workers))."""
    # Not to a worker quiet for a while: it may be dead, and a task handed to it would be
    # charged a loss it never had (it gets work when it speaks again, see heartbeat).
    queue = state.queue
    if queue.empty():
        return []
    quiet = state.liveness.quiet_since()
    # (load, order, worker) of those with credit; the dearer checks are made at the top
    hungry = [(len(w.tasks), i, w) for i, w in enumerate(state.workers.values())
              if w.credit > 0 and not w.stopping]
    heapq.heapify(hungry)
    taken: dict[str, list[Task]] = {}
    # worker class -> the latest `heard` at which a worker of it found nothing: one of the
    # same class heard no later finds nothing either (unless a task is pinned to it)
    found_none: dict[tuple[frozenset[str], str], int] = {}
    while hungry and not queue.empty():
        _, i, w = hungry[0]
        heard, cls = state.liveness.heard(w), (w.labels, w.host)
        t = None
        if (heard > found_none.get(cls, NEVER) or queue.pinned[w.id]) \
                and queue.has_work_for(w) and not state.liveness.silent(w, quiet) \
                and not stuck(w):
            t = queue.pop_for(w, state.clients, heard)
            if t is None and not queue.pinned[w.id]:
                found_none[cls] = max(heard, found_none.get(cls, NEVER))
        if t is None:
            heapq.heappop(hungry)
            continue
        _assign(t, w)
        taken.setdefault(w.id, []).append(t)
        if w.credit == 0:
            heapq.heappop(hungry)
        else:
            heapq.heapreplace(hungry, (len(w.tasks), i, w))
    return [s for wid, tasks in taken.items()
            for s in _run_messages(state, state.workers[wid], tasks)]


def finish(state: BrokerState, t: Task, status: str, info: dict[str, Any]) -> list[Send]:
    """The task, off any worker and queue, ends with `status` and no result (it was lost):
    its client is told."""
    if status == "lost":   # how the workers it was lost on ended, where a supervisor said
        info = state.supervisors.explain(info)
    del state.tasks[t.gid]
    state.functions.unref(t.fn)
    client = t.owner
    client.running.discard(t.gid)
    if client.gone:   # its tasks are being swept: this one is gone already
        client.tasks.pop(t.cid, None)
        return []
    del client.tasks[t.cid]
    return [Send(client.identity, {"t": "results", "items": [[t.cid, status, 0, info]]})]


def release(t: Task) -> None:
    """t is off its worker (the caller forgets it there): queue it again, or finish it."""
    t.owner.running.discard(t.gid)
    t.worker = None


def _local(state: BrokerState, t: Task, w: Worker) -> bool:
    """Is the task's client on the worker's host (so results may go through shm)?"""
    client = t.owner
    return not client.gone and bool(client.host) and client.host == w.host


def stuck(w: Worker) -> bool:
    """w gave back its tasks behind a long one: a task sent to it would wait behind that one.
    Credit it asked for before the giveback (a `ready` may reach us after it: they come on
    different sockets) waits until that task's result comes (see done), or the task leaves
    w (cancelled, lost, queued again)."""
    return w.stuck_on is not None and w.stuck_on in w.tasks


def _assign(t: Task, w: Worker) -> None:
    w.credit -= 1
    t.worker = w.id
    w.tasks.add(t.gid)
    t.owner.running.add(t.gid)


def _run_messages(state: BrokerState, w: Worker, tasks: list[Task]) -> list[Send]:
    """Small tasks go together in one message; a large one alone, re-signed without
    reading its payload again. Function payloads the worker lacks go first in the message
    of the first task that needs them."""
    out, small = [], []
    for t in tasks:
        if t.size >= BATCH_BYTES:
            fns, frames = state.functions.deliver(w.fns, [t.fn])
            out.append(Send(w.identity, _run_header(state, w, [t], fns), [*frames, *t.payload],
                            None if fns else t.mac))
        else:
            small.append(t)
    if small:
        fns, frames = state.functions.deliver(w.fns, [t.fn for t in small])
        out.append(Send(w.identity, _run_header(state, w, small, fns),
                        [*frames, *(f for t in small for f in t.payload)]))
    return out


def _run_header(state: BrokerState, w: Worker, tasks: list[Task],
                fns: list[list[bytes | int]]) -> Header:
    header: Header = {"t": "run", "w": w.id, "e": state.epoch, "s": w.session, "tasks": [
        [t.gid, t.attempt, len(t.payload), _local(state, t, w), t.fn] for t in tasks]}
    if fns:
        header["fns"] = fns
    return header
