"""What the broker does with each message a registered worker sends.

    ready n    ──► credit += n, then tasks up to its credit
    done       ──► results to their clients (only from the worker holding the task at that
                   attempt: a late result of a task re-run elsewhere is dropped); a failed
                   task with retries left is queued again; `ready` in it grants credit
    output     ──► forwarded to the task's client, checked like done
    started    ──► forwarded to the task's client (its future is RUNNING), checked like done
    giveback   ──► stuck on one task: the others it holds are queued again, its credit voided
    refetch    ──► it lacks these tasks' functions: they are queued again, to go with them
    bye        ──► it leaves; its tasks are queued again, uncharged
    hb         ──► its load and memory noted; tasks, if it was too quiet to get them before
    debug_out  ──► a debugger's output, to its task's client (debug_messages.py)

Credit: a worker's `ready` (and `done`'s `ready`) carry `l`, the ledger of its registration;
credit asked for under an earlier registration is not this one's (see `credit_is_ours`).
`HANDLERS` maps each message type to its handler; any other type from a worker is a
ProtocolError.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..errors import ProtocolError
from . import debug_messages
from .debug_routes import Route
from .dispatch import dispatch, dispatch_all, release
from .peers import drop_workers
from .records import Frames, Header, Mac, Send, Worker, field

if TYPE_CHECKING:
    from .state import BrokerState

__all__ = ["HANDLERS"]

def ready(state: BrokerState, w: Worker, h: Header, payload: Frames, mac: Mac,
          now: int) -> list[Send]:
    n = field(h, "n", int, 0)
    if credit_is_ours(w, h):
        w.credit = max(0, min(w.credit + n, 1 << 20))
    return dispatch(state, w)


def credit_is_ours(w: Worker, h: Header) -> bool:
    """Credit a worker asked for before it registered again (`l`, its ledger, is that of
    an earlier registration) is not this registration's: its ledger starts afresh."""
    return bool(h.get("l", w.ledger) == w.ledger)


def done(state: BrokerState, w: Worker, h: Header, payload: Frames, mac: Mac,
         now: int) -> list[Send]:
    items = field(h, "items", list)
    if h.get("e") != state.epoch:
        items = []   # results of tasks an earlier broker sent: not ours, whatever their gid
    pos, out = 0, []
    by_client: dict[bytes, list[tuple[list[Any], Frames, Mac]]] = {}
    for item in items:
        if not isinstance(item, list) or len(item) != 5:
            raise ProtocolError("a result is [gid, attempt, status, nframes, info]")
        gid, attempt, status, nframes, info = item
        if not (isinstance(gid, int) and isinstance(nframes, int) and nframes >= 0
                and status in ("ok", "err") and isinstance(info, dict)):
            raise ProtocolError("bad result item")
        frames = payload[pos:pos + nframes]
        pos += nframes
        if gid == w.stuck_on:   # the task it gave back behind has ended: work may come again,
            w.stuck_on = None   # even if we drop this result (a late attempt)
        t = state.tasks.get(gid)
        if t is None or t.worker != w.id or t.attempt != attempt:
            continue  # cancelled, or a late result of a task that was re-run: drop it
        w.tasks.discard(gid)
        w.done += 1
        release(t)
        if status == "err" and t.retries > 0:
            t.retries -= 1
            t.attempt += 1
            state.queue.enqueue(t, front=True)
            continue
        del state.tasks[gid]
        state.functions.unref(t.fn)
        del t.owner.tasks[t.cid]
        kept = info.pop("kept", None)   # failures its worker keeps, for the client to debug
        if isinstance(kept, list) and all(isinstance(n, int) for n in kept):
            state.debug.add_kept(w.id, kept, Route(t.client, gid, t.cid))
        info = {**info, "worker": w.id}
        by_client.setdefault(t.client, []).append(
            ([t.cid, status, nframes, info], frames, mac if nframes == len(payload) else None))
    for identity, results in by_client.items():
        header = {"t": "results", "items": [r[0] for r in results]}
        frames = [f for r in results for f in r[1]]
        out.append(Send(identity, header, frames, results[0][2] if len(results) == 1 else None))
    n = h.get("ready", 0)
    if isinstance(n, int) and n > 0 and credit_is_ours(w, h):
        w.credit = min(w.credit + n, 1 << 20)
    return out + dispatch(state, w)


def output(state: BrokerState, w: Worker, h: Header, payload: Frames, mac: Mac,
           now: int) -> list[Send]:
    by_client: dict[bytes, list[list[Any]]] = {}
    for item in field(h, "items", list):
        if not isinstance(item, list) or len(item) != 4:
            raise ProtocolError("an output item is [gid, attempt, stream, text]")
        t = state.tasks.get(item[0]) if isinstance(item[0], int) else None
        if t is not None and t.worker == w.id and t.attempt == item[1]:
            by_client.setdefault(t.client, []).append([t.cid, item[2], item[3], w.id])
    return [Send(c, {"t": "output", "items": items}) for c, items in by_client.items()]


def started(state: BrokerState, w: Worker, h: Header, payload: Frames, mac: Mac,
            now: int) -> list[Send]:
    """Tasks w started (and still runs): their clients mark the futures RUNNING. Checked
    like output: only for the worker holding the task at that attempt."""
    by_client: dict[bytes, list[list[int | str]]] = {}
    for item in field(h, "items", list):
        if not isinstance(item, list) or len(item) != 2:
            raise ProtocolError("a started item is [gid, attempt]")
        t = state.tasks.get(item[0]) if isinstance(item[0], int) else None
        if t is not None and t.worker == w.id and t.attempt == item[1]:
            t.started = t.attempt
            by_client.setdefault(t.client, []).append([t.cid, w.id])
    return [Send(c, {"t": "started", "items": items}) for c, items in by_client.items()]


def giveback(state: BrokerState, w: Worker, h: Header, payload: Frames, mac: Mac,
             now: int) -> list[Send]:
    """The worker is stuck on a long task (`keep`): the tasks it holds besides that one are
    queued again under a new attempt, and it is told which, so it skips them, and how much
    of its credit was dropped."""
    keep = h.get("keep")
    if isinstance(keep, int) and keep in w.tasks:
        w.stuck_on = keep
    given = []
    for gid in sorted(w.tasks - {keep}, reverse=True):
        t = state.tasks[gid]
        given.append([gid, t.attempt])
        w.tasks.discard(gid)
        release(t)
        t.attempt += 1
        state.queue.enqueue(t, front=True)
    # It is stuck: the credit it had left is void too, or the tasks would come straight back.
    dropped, w.credit = w.credit, 0
    return [Send(w.ctl, {"t": "given", "ids": given[::-1], "dropped": dropped}),
            *dispatch_all(state)]


def refetch(state: BrokerState, w: Worker, h: Header, payload: Frames, mac: Mac,
            now: int) -> list[Send]:
    """The worker no longer has these tasks' functions (its cache dropped them): it did
    not run them, so they are queued again and go out with their function payload."""
    for item in field(h, "tasks", list):
        gid, attempt = item if isinstance(item, list) and len(item) == 2 else (None, None)
        t = state.tasks.get(gid) if isinstance(gid, int) else None
        if t is None or t.worker != w.id or t.attempt != attempt:
            continue
        if t.fn is not None:
            w.fns.discard(t.fn)
        w.tasks.discard(gid)
        release(t)
        t.attempt += 1
        state.queue.enqueue(t, front=True)
    return dispatch_all(state)


def bye(state: BrokerState, w: Worker, h: Header, payload: Frames, mac: Mac,
        now: int) -> list[Send]:
    return drop_workers(state, [w], lost=False)


def heartbeat(state: BrokerState, w: Worker, h: Header, payload: Frames, mac: Mac,
              now: int) -> list[Send]:
    info = h.get("info")
    if isinstance(info, dict):
        w.info = {k: v for k, v in info.items() if isinstance(v, (int, float, str))}
    # A worker that was quiet got no tasks meanwhile (see dispatch_all): now it may.
    if w.credit and not w.stopping:
        return dispatch(state, w)
    return []


Handler = Callable[["BrokerState", Worker, Header, Frames, Mac, int], list[Send]]

HANDLERS: dict[str, Handler] = {
    "ready": ready,
    "done": done,
    "output": output,
    "bye": bye,
    "giveback": giveback,
    "refetch": refetch,
    "started": started,
    "hb": heartbeat,
    "debug_out": debug_messages.from_worker,
}
