"""Who may debug what: a debugger's messages pass only between a task's client and the
worker that ran (or runs) the task.

    result naming kept failures n ──► kept[(worker, n)] = its client
    client: debug open (w, n, sid) ──► its own (w, n)? session (w, sid) made, on to w;
                                       else it is told why not (released, not its own)
    client: debug line/eof/close/release ──► only within its own session or failure
    worker: debug_out (sid, g) ──► session (w, sid)'s client; for a breakpoint, the client
                                   of task g running on w (the session is made then)
    end in a debug_out; a client or worker dropped ──► its sessions are forgotten, and the
                                   other side is told (a paused task resumes)

Bounded: the newest MAX_KEPT_PER_WORKER failures a worker keeps are routed (a worker keeps
fewer: postmortem.py), and at most MAX_SESSIONS_PER_CLIENT sessions per client are open.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass

__all__ = ["DebugRoutes", "Route"]

MAX_KEPT_PER_WORKER = 64
MAX_SESSIONS_PER_CLIENT = 64


@dataclass(frozen=True, slots=True)
class Route:
    client: bytes   # the client's identity
    gid: int
    cid: int        # the task's id within its client


class DebugRoutes:
    """The broker's debugger routes (see the module doc)."""

    def __init__(self) -> None:
        self.kept: dict[tuple[str, int], Route] = {}
        self._kept_order: dict[str, collections.deque[int]] = {}
        self.sessions: dict[tuple[str, str], Route] = {}

    def add_kept(self, worker: str, numbers: list[int], route: Route) -> None:
        order = self._kept_order.setdefault(worker, collections.deque())
        for n in numbers:
            self.kept[(worker, n)] = route
            order.append(n)
        while len(order) > MAX_KEPT_PER_WORKER:
            self.kept.pop((worker, order.popleft()), None)

    def open(self, worker: str, sid: str, route: Route) -> str | None:
        """Make session (worker, sid) for route's client; why not, if it cannot be."""
        if (worker, sid) in self.sessions:
            return "that session id is in use"
        if sum(r.client == route.client for r in self.sessions.values()) >= \
                MAX_SESSIONS_PER_CLIENT:
            return f"{MAX_SESSIONS_PER_CLIENT} debugger sessions are open already"
        self.sessions[(worker, sid)] = route
        return None

    def forget_worker(self, worker: str) -> list[tuple[str, Route]]:
        """Forget a worker's routes; its open sessions, (sid, route), to be told."""
        for n in self._kept_order.pop(worker, ()):
            self.kept.pop((worker, n), None)
        gone = [(sid, r) for (w, sid), r in self.sessions.items() if w == worker]
        for sid, _ in gone:
            del self.sessions[(worker, sid)]
        return gone

    def forget_client(self, client: bytes) -> list[tuple[str, str, Route]]:
        """Forget a client's routes; its open sessions, (worker, sid, route), to be closed."""
        for key in [k for k, r in self.kept.items() if r.client == client]:
            del self.kept[key]
        gone = [(w, sid, r) for (w, sid), r in self.sessions.items() if r.client == client]
        for w, sid, _ in gone:
            del self.sessions[(w, sid)]
        return gone
