"""What the broker does with each message a registered client sends.

    submit ──► tasks queued (their function payloads kept), then dispatched
    cancel ──► tasks dropped; `cancelled` results to the client, `cancel` to their workers
    query  ──► reply: the broker's status
    stop   ──► workers asked to leave once their task is done (with "broker": all of us)
    bye    ──► the client and its tasks are forgotten
    debug  ──► to the worker holding the failure or paused task (debug_messages.py)
    hb     ──► nothing more (being heard from is what counts)

`HANDLERS` maps each message type to its handler; any other type from a client is a
ProtocolError.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..errors import ProtocolError
from ..wire.protocol import Frame
from . import debug_messages
from .dispatch import BATCH_BYTES, dispatch_all
from .functions import is_digest
from .peers import drop_client
from .records import Client, Frames, Header, Mac, Send, Task, field, label_set

if TYPE_CHECKING:
    from .state import BrokerState

__all__ = ["HANDLERS"]

COPY_BELOW = 16 * 1024   # smaller payload frames are copied out of the receive buffer


def submit(state: BrokerState, c: Client, h: Header, payload: Frames, mac: Mac,
           now: int) -> list[Send]:
    specs = field(h, "tasks", list)
    pos, out, refetch = state.functions.receive(h, payload), [], []
    for spec in specs:
        if not isinstance(spec, list) or len(spec) not in (5, 6, 7):
            raise ProtocolError(
                "a task spec is [cid, nframes, labels, target, retries, host, fn]")
        cid, nframes, labels, target, retries, host, fn = [*spec, None, None][:7]
        if not (isinstance(cid, int) and isinstance(nframes, int) and nframes >= 0
                and isinstance(retries, int) and (target is None or isinstance(target, str))
                and (host is None or isinstance(host, str)) and (fn is None or is_digest(fn))):
            raise ProtocolError("bad task spec")
        if pos + nframes > len(payload):
            raise ProtocolError("task specs name more frames than the message has")
        frames = payload[pos:pos + nframes]
        pos += nframes
        labels = label_set(labels)
        if cid in c.tasks:
            continue  # a resubmission of a task we hold: keep the one we have
        if fn not in state.functions:   # we dropped its function: the client sends it again
            refetch.append(cid)
            continue
        if target is not None and target not in state.workers:
            out.append(Send(c.identity, {"t": "results", "items": [
                [cid, "lost", 0, {"lost_on": [target], "why": "no such worker"}]]}))
            continue
        labels, host = state.queue.intern(labels, host)
        kept = tuple(_kept(f) for f in frames)
        size = sum(memoryview(f).nbytes for f in kept)
        t = Task(gid=next(state.fresh_gids), owner=c, cid=cid, labels=labels, target=target,
                 host=host, data=kept[0] if len(kept) == 1 else kept, retries=max(0, retries),
                 fn=state.functions.intern(fn),
                 # a large task alone in its message is forwarded with the mac it came with
                 mac=mac if nframes == len(payload) and size >= BATCH_BYTES else None)
        state.tasks[t.gid] = t
        c.tasks[cid] = t.gid
        state.functions.ref(fn)
        state.queue.enqueue(t)
    state.functions.trim()
    if refetch:
        out.append(Send(c.identity, {"t": "refetch", "ids": refetch}))
    return out + dispatch_all(state)


def _kept(frame: Frame) -> Frame:
    """A small frame as bytes of its own: a zmq.Frame received without copy can pin the
    whole receive buffer it came in (and costs more than its bytes), for as long as the task
    waits. Large frames travel on as received."""
    view = memoryview(frame)
    return view.tobytes() if view.nbytes < COPY_BELOW else frame


def cancel(state: BrokerState, c: Client, h: Header, payload: Frames, mac: Mac,
           now: int) -> list[Send]:
    out: list[Send] = []
    items: list[list[Any]] = []
    cancels: dict[str, list[int]] = {}
    for cid in field(h, "ids", list):
        gid = c.tasks.pop(cid, None) if isinstance(cid, int) else None
        if gid is None:
            continue
        t = state.tasks.pop(gid)
        state.functions.unref(t.fn)
        if t.worker is not None:
            state.workers[t.worker].tasks.discard(gid)
            c.running.discard(gid)
            cancels.setdefault(t.worker, []).append(gid)
        else:
            state.queue.unqueue(t)
        items.append([cid, "cancelled", 0, {}])
    if items:
        out.append(Send(c.identity, {"t": "results", "items": items}))
    out += [Send(state.workers[wid].ctl, {"t": "cancel", "ids": gids})
            for wid, gids in cancels.items()]
    return out


def query(state: BrokerState, c: Client, h: Header, payload: Frames, mac: Mac,
          now: int) -> list[Send]:
    return [Send(c.identity, {"t": "reply", "rid": h.get("rid"), "data": state.status(now)})]


def stop(state: BrokerState, c: Client, h: Header, payload: Frames, mac: Mac,
         now: int) -> list[Send]:
    """Ask workers (given ids, else all; with "broker": the whole cluster) to leave once
    their running task is done; they get no new tasks meanwhile."""
    ids = h.get("workers")
    if ids is not None and not (isinstance(ids, list) and all(isinstance(i, str) for i in ids)):
        raise ProtocolError("stop: workers must be a list of worker ids")
    chosen = [w for w in state.workers.values() if ids is None or w.id in ids]
    for w in chosen:
        w.stopping = True
    if h.get("broker"):
        state.shutdown_requested = True
    reply = {"t": "reply", "rid": h.get("rid"),
             "data": {"stopping": [w.id for w in chosen],
                      "unknown": sorted(set(ids or ()) - {w.id for w in chosen})}}
    return [Send(c.identity, reply)] + [Send(w.ctl, {"t": "stop"}) for w in chosen]


def bye(state: BrokerState, c: Client, h: Header, payload: Frames, mac: Mac,
        now: int) -> list[Send]:
    return drop_client(state, c)


def heartbeat(state: BrokerState, c: Client, h: Header, payload: Frames, mac: Mac,
              now: int) -> list[Send]:
    return []


Handler = Callable[["BrokerState", Client, Header, Frames, Mac, int], list[Send]]

HANDLERS: dict[str, Handler] = {
    "submit": submit,
    "cancel": cancel,
    "query": query,
    "stop": stop,
    "bye": bye,
    "hb": heartbeat,
    "debug": debug_messages.from_client,
}
