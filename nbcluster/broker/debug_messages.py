"""What the broker does with a debugger's messages (routes and checks: debug_routes.py).

    client  debug {w, sid, op: open n | eval n frame line | line | eof | close | release n}
            ──► worker w: debug {g, sid, op, n?, line?, frame?}
    worker  debug_out {sid, g, text, prompt, bp, end?}
            ──► client: debug_out {w, k, sid, text, prompt, bp, end?}
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .debug_routes import Route
from .records import Client, Frames, Header, Mac, Send, Worker

if TYPE_CHECKING:
    from .state import BrokerState

__all__ = ["from_client", "from_worker", "client_dropped", "workers_dropped"]


def from_client(state: BrokerState, c: Client, h: Header, payload: Frames, mac: Mac,
                now: int) -> list[Send]:
    wid, sid, op = h["w"], h["sid"], h["op"]
    routes = state.debug
    w = state.workers.get(wid)
    if op in ("open", "eval", "release"):
        route = routes.kept.get((wid, h.get("n", 0)))
        if route is None or route.client != c.identity or w is None:
            return [] if op == "release" else [_end(c, wid, sid, (
                "this failure cannot be debugged any more: its worker is gone, or it keeps "
                "only its latest failures" if route is None or route.client == c.identity
                else "this failure is not one of this client's tasks"))]
        if op == "release":
            del routes.kept[(wid, h["n"])]
            return [Send(w.ctl, {"t": "debug", "g": route.gid, "sid": sid, "op": "release",
                                 "n": h["n"]})]
        why = routes.open(wid, sid, route)
        if why is not None:
            return [_end(c, wid, sid, why)]
        opened: dict[str, Any] = {"t": "debug", "g": route.gid, "sid": sid, "op": op,
                                  "n": h["n"]}
        if op == "eval":
            opened.update(line=h.get("line", ""), frame=h.get("frame", -1))
        return [Send(w.ctl, opened)]
    route = routes.sessions.get((wid, sid))
    if route is None or route.client != c.identity or w is None:
        return [_end(c, wid, sid, "no such debugger session")] if op != "close" else []
    forward: dict[str, Any] = {"t": "debug", "g": route.gid, "sid": sid, "op": op}
    if op == "line":
        forward["line"] = h.get("line", "")
    return [Send(w.ctl, forward)]


def from_worker(state: BrokerState, w: Worker, h: Header, payload: Frames, mac: Mac,
                now: int) -> list[Send]:
    sid, gid = h["sid"], h["g"]
    routes = state.debug
    route = routes.sessions.get((w.id, sid))
    if route is None and h.get("bp") and "end" not in h:   # a task paused at a breakpoint
        t = state.tasks.get(gid)
        if t is not None and t.worker == w.id and \
                routes.open(w.id, sid, Route(t.client, gid, t.cid)) is None:
            route = routes.sessions[(w.id, sid)]
    if route is None or route.gid != gid:
        # Nobody to talk to (the client went, or a stale session): the debugger ends
        # (a paused task resumes), rather than wait for its timeout.
        return [] if "end" in h else [Send(w.ctl, {"t": "debug", "g": gid, "sid": sid,
                                                   "op": "close"})]
    out = {"t": "debug_out", "w": w.id, "k": route.cid, "sid": sid, "text": h["text"],
           "prompt": h["prompt"], "bp": bool(h.get("bp"))}
    if "end" in h:
        out["end"] = h["end"]
        del routes.sessions[(w.id, sid)]
    return [Send(route.client, out)]


def client_dropped(state: BrokerState, c: Client) -> list[Send]:
    """The client's debugger sessions close (a task it paused resumes)."""
    return [Send(state.workers[wid].ctl, {"t": "debug", "g": r.gid, "sid": sid, "op": "close"})
            for wid, sid, r in state.debug.forget_client(c.identity) if wid in state.workers]


def workers_dropped(state: BrokerState, workers: list[Worker]) -> list[Send]:
    """Their sessions' clients are told the debugger is gone with its worker."""
    return [Send(r.client, {"t": "debug_out", "w": w.id, "k": r.cid, "sid": sid, "text": "",
                            "prompt": False, "bp": False,
                            "end": f"the worker {w.id} is gone"})
            for w in workers for sid, r in state.debug.forget_worker(w.id)]


def _end(c: Client, wid: str, sid: str, why: str) -> Send:
    return Send(c.identity, {"t": "debug_out", "w": wid, "k": -1, "sid": sid, "text": "",
                             "prompt": False, "bp": False, "end": why})
