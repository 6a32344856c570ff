"""The broker's side of supervisors: who vouches for which worker, and how workers ended.

    supervisor ── hello {role: supervisor, token} ──► welcome
               ── hb {alive: [pids]} ─────────────► each listed worker is vouched for, now
               ── exited {pid, reason, memory, left} ► that worker is dropped at once

A worker started by a supervisor carries its token in its hello. The broker counts that
worker silent only when neither its own heartbeats nor its supervisor's vouch arrived
within the expiry: a task holding the worker's GIL (C code, a catastrophic regex) stops the
former but not the latter, while a frozen (SIGSTOP) or dead worker loses both, since the
supervisor lists only processes that are alive and not stopped.

When a supervisor reports that a worker ended, the worker is dropped without waiting for
the expiry, and the reason ("killed by SIGKILL", "memory limit 2.0 GiB exceeded (rss 2.3
GiB)") is remembered by worker id so a task that fails as lost names it (`reasons` in the
lost info). A worker killed for its memory fails the task it had started with that reason
(`memory` in the lost info: the client raises MemoryLimitExceeded); the tasks it held but
had not started are queued again, not charged. A worker that left on purpose (asked to, or
after max_tasks_per_child) charges nothing either.

Pure bookkeeping like `BrokerState` (no sockets, no clock): `handle` returns the Sends.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import ProtocolError
from .dispatch import finish, release
from .peers import drop_workers
from .records import NEVER, Header, Send, Task, Worker

if TYPE_CHECKING:
    from .state import BrokerState

__all__ = ["Supervisors", "SupervisorPeer"]

MAX_REASONS = 10_000     # exit reasons remembered (by worker id), oldest forgotten first


@dataclass
class SupervisorPeer:
    identity: bytes
    token: str
    host: str
    pid: int
    last_seen: int
    alive: frozenset[int] = frozenset()   # pids it last said are alive and not stopped...
    vouched: int = NEVER                  # ...at this time
    nonce: bytes = b""                    # its session nonce, the last seq seen (sessions)
    seq: dict[bytes, int] = field(default_factory=dict)


class Supervisors:
    """Registered supervisors, by socket identity and by token, and the exit reasons they
    reported."""

    def __init__(self) -> None:
        self.by_identity: dict[bytes, SupervisorPeer] = {}
        self.by_token: dict[str, SupervisorPeer] = {}
        self.reasons: OrderedDict[str, str] = OrderedDict()   # worker id -> how it ended

    def hello(self, identity: bytes, h: Header, now: int) -> SupervisorPeer:
        token, host, pid = h.get("token"), h.get("host", ""), h.get("pid", 0)
        if not (isinstance(token, str) and 0 < len(token) <= 64 and isinstance(host, str)
                and isinstance(pid, int)):
            raise ProtocolError("a supervisor's hello needs a token (1 to 64 characters)")
        old = self.by_token.get(token)
        self.forget(identity)
        sup = SupervisorPeer(identity, token, host, pid, now)
        if old is not None:   # the same supervisor again: its vouches still hold
            self.forget(old.identity)
            sup.alive, sup.vouched = old.alive, old.vouched
        self.by_identity[identity] = self.by_token[token] = sup
        return sup

    def forget(self, identity: bytes) -> None:
        sup = self.by_identity.pop(identity, None)
        if sup is not None and self.by_token.get(sup.token) is sup:
            del self.by_token[sup.token]

    def touch(self, identity: bytes, now: int) -> SupervisorPeer | None:
        sup = self.by_identity.get(identity)
        if sup is not None:
            sup.last_seen = now
        return sup

    def vouched_at(self, token: str | None, pid: int) -> int:
        """When the supervisor of `token` last said worker `pid` is alive (NEVER if not)."""
        sup = self.by_token.get(token) if token else None
        return sup.vouched if sup is not None and pid in sup.alive else NEVER

    def forgive(self, stall: int, now: int) -> None:
        """The broker was stalled this long: their silence meanwhile is not theirs."""
        for sup in self.by_identity.values():
            sup.last_seen = min(now, sup.last_seen + stall)
            if sup.vouched != NEVER:
                sup.vouched = min(now, sup.vouched + stall)

    def expire(self, limit: int) -> None:
        """Forget supervisors silent since before limit (their vouches are void anyway)."""
        for sup in [s for s in self.by_identity.values() if s.last_seen < limit]:
            self.forget(sup.identity)

    def explain(self, info: dict[str, Any]) -> dict[str, Any]:
        """A lost task's info, with how each worker it was lost on ended, where known."""
        lost_on = info.get("lost_on") or []
        reasons = [self.reasons.get(wid) for wid in lost_on]
        return {**info, "reasons": reasons} if any(reasons) else info

    def remember(self, wid: str, reason: str) -> None:
        self.reasons[wid] = reason
        while len(self.reasons) > MAX_REASONS:
            self.reasons.popitem(last=False)

    def status(self) -> list[dict[str, Any]]:
        return [{"host": s.host, "pid": s.pid, "alive": sorted(s.alive)}
                for s in self.by_identity.values()]

    # ---- messages ---------------------------------------------------------------------------
    def handle(self, state: BrokerState, sup: SupervisorPeer, h: Header, now: int) -> list[Send]:
        kind = h["t"]
        if kind == "hb":
            alive = h.get("alive", [])
            if not isinstance(alive, list) or not all(isinstance(p, int) for p in alive):
                raise ProtocolError("a supervisor's alive is a list of pids")
            sup.alive, sup.vouched = frozenset(alive), now
            return []
        if kind == "exited":
            return self._exited(state, sup, h, now)
        if kind == "bye":
            self.forget(sup.identity)
            return []
        raise ProtocolError(f"unexpected {kind!r} message from a supervisor")

    def _exited(self, state: BrokerState, sup: SupervisorPeer, h: Header, now: int) -> list[Send]:
        pid, reason = h.get("pid"), h.get("reason")
        if not isinstance(pid, int) or not isinstance(reason, str):
            raise ProtocolError("exited needs a pid and a reason")
        sup.alive = sup.alive - {pid}
        w = next((w for w in state.workers.values()
                  if w.supervisor == sup.token and w.pid == pid), None)
        if w is None:   # it said bye already, or was expired: nothing of ours is left there
            return []
        self.remember(w.id, reason)
        if h.get("left") is True:
            return drop_workers(state, [w], lost=False)
        out: list[Send] = []
        if h.get("memory") is True:
            t = _running_task(state, w)
            if t is not None:   # its task fails with the reason; the others go back, uncharged
                w.tasks.discard(t.gid)
                release(t)
                out += finish(state, t, "lost", {"lost_on": [w.id], "pids": [w.pid],
                                                 "memory": reason})
            return out + drop_workers(state, [w], lost=False)
        return drop_workers(state, [w], lost=True)


def _running_task(state: BrokerState, w: Worker) -> Task | None:
    """The task w was running: one it reported as started, else the oldest it holds (a
    worker runs its tasks in the order it got them, and a long task is reported as started
    within milliseconds)."""
    held = [state.tasks[g] for g in sorted(w.tasks)]
    started = [t for t in held if t.started == t.attempt]
    return (started or held)[0] if held else None
