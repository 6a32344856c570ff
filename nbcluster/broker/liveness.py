"""Who is alive: heartbeats out, silent peers found, and our own stalls forgiven.

    every heartbeat_ms  ──► hb to each supervisor, client and unsupervised worker
    every SUPERVISED_HEARTBEATS of them ──► hb to each supervised worker
    silent expiry_ms    ──► a worker is lost (unless its supervisor vouches for it)
    silent client_expiry_ms ──► a client is forgotten: the last resort, for one whose
                                connection stays up (a client whose connection closes is
                                dropped at once: peers.drop_gone, fed by broker.router)
    we were stalled     ──► the stall is added to everyone's last_seen: nobody is expired
                            for a silence that was ours

A worker is heard from by its own messages or by its supervisor's vouch (see supervisors):
a task holding the worker's GIL stops the former, not the latter. Since its supervisor
vouches for it every heartbeat, a worker whose supervisor is registered when it says hello
and the broker heartbeat each other only every SUPERVISED_HEARTBEATS heartbeats (`sparse`;
its welcome tells it so): with 200 workers, their heartbeats were most of an idle broker's
messages. Dropping the silent peers is `peers`' job; this module only says who they are.
"""

from __future__ import annotations

from collections import Counter

from .records import Client, Send, Worker
from .supervisors import Supervisors

__all__ = ["Liveness"]

QUIET_HEARTBEATS = 1.5   # one silent longer may be dead: tasks wait until it speaks again
SUPERVISED_HEARTBEATS = 3   # a supervised worker's heartbeats are this many times sparser


class Liveness:
    """The broker's clock as its peers see it: when each was last heard from, and when we
    last were awake to hear them.

    Args:
        heartbeat_ms, liveness, client_expiry_ms: see `BrokerState`.
        workers, clients, supervisors: the broker's peers (read and, on a stall, forgiven
            here; owned by `BrokerState`).
    """

    def __init__(self, heartbeat_ms: int, liveness: int, client_expiry_ms: int,
                 workers: dict[str, Worker], clients: dict[bytes, Client],
                 supervisors: Supervisors) -> None:
        self.heartbeat_ms = heartbeat_ms
        self.expiry_ms = heartbeat_ms * liveness
        self.client_expiry_ms = max(self.expiry_ms, client_expiry_ms)
        self.workers, self.clients, self.supervisors = workers, clients, supervisors
        self.next_heartbeat = 0
        self.beats = 0                     # heartbeats sent so far
        self.awake_at: int | None = None   # when we last handled a message or ticked

    def forgive_stall(self, now: int) -> None:
        """Silence counts only while we were awake. We tick every heartbeat; a longer gap
        since we last ticked or handled a message means we were stopped (SIGSTOP) or
        starved, and what peers sent meanwhile is still waiting for us, unread: that gap is
        added to every peer's last_seen (and supervisor's vouch), so no peer is expired for
        our own stall."""
        if self.awake_at is not None:
            stall = now - self.awake_at - self.heartbeat_ms
            if stall > 0:
                peers: list[Worker | Client] = [*self.workers.values(), *self.clients.values()]
                for peer in peers:
                    peer.last_seen = min(now, peer.last_seen + stall)
                self.supervisors.forgive(stall, now)
        self.awake_at = max(now, self.awake_at or now)

    def heard(self, w: Worker) -> int:
        """When w was last known alive: its own message or its supervisor's vouch."""
        return max(w.last_seen, self.supervisors.vouched_at(w.supervisor, w.pid))

    def worker_heartbeat_ms(self, sparse: bool) -> int:
        """How often a worker heartbeats (told in its welcome), and hears from us."""
        return self.heartbeat_ms * (SUPERVISED_HEARTBEATS if sparse else 1)

    def silent(self, w: Worker, limit: int) -> bool:
        """Neither w's own heartbeats nor its supervisor's vouch arrived since limit (its
        own, sparser when supervised, are given as many more heartbeats)."""
        own_limit = limit - (SUPERVISED_HEARTBEATS - 1) * self.expiry_ms if w.sparse else limit
        return w.last_seen < own_limit and \
            self.supervisors.vouched_at(w.supervisor, w.pid) < limit

    def quiet_since(self) -> int:
        """A worker silent since before this may be dead: no task is handed to it (it gets
        work when it speaks again), or the task would be charged a loss it never had."""
        return (self.awake_at or 0) - int(self.heartbeat_ms * QUIET_HEARTBEATS)

    def lost_workers(self, now: int) -> list[Worker]:
        limit = now - self.expiry_ms
        return [w for w in self.workers.values() if self.silent(w, limit)]

    def lost_clients(self, now: int) -> list[Client]:
        return [c for c in self.clients.values() if c.last_seen < now - self.client_expiry_ms]

    def heartbeats(self, now: int) -> list[Send]:
        """A heartbeat to every peer, if one is due."""
        if now < self.next_heartbeat:
            return []
        self.next_heartbeat = now + self.heartbeat_ms
        self.beats += 1
        sparse_turn = self.beats % SUPERVISED_HEARTBEATS == 0
        out = [Send(w.ctl, {"t": "hb"}) for w in self.workers.values()
               if sparse_turn or not w.sparse]
        out += [Send(i, {"t": "hb"}) for i in self.supervisors.by_identity]
        hosts = Counter(w.host for w in self.workers.values())   # `here`: see the client
        out += [Send(c.identity, {"t": "hb", "workers": len(self.workers),
                                  "here": hosts[c.host]}) for c in self.clients.values()]
        return out
