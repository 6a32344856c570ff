"""The broker's function payloads: each function travels once, not once per task.

A client pickles a function once (its pickle and out-of-band buffers: the "payload") and names
it by a hash of those frames. It sends the payload once per broker session, in the `fns`
field of a `submit`; its tasks then carry only the hash. The broker keeps each payload while a
queued or running task needs it, and afterwards up to IDLE_BYTES of idle ones (the least
recently used go first). It sends a payload to a worker with the first task of that hash the
worker gets. Whoever is missing a payload says so (`refetch`) and gets it again: the broker
asks a client whose task names a payload it dropped; a worker that dropped one from its cache
hands the task back, and the broker re-sends it with the payload.

Payloads are opaque here, like every payload: the broker never hashes or unpickles them (every
peer holds the cluster key, so a peer's hash is trusted as its task is).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TypeGuard

from ..errors import ProtocolError
from .records import Frames, Header

__all__ = ["FunctionStore"]

IDLE_BYTES = 256 << 20   # payloads no task needs are kept up to this much (for the next tasks)
MAX_DIGEST_BYTES = 64


@dataclass
class _Payload:
    digest: bytes        # the one digest object its tasks share (see intern)
    frames: Frames
    nbytes: int
    refs: int = 0        # queued or running tasks that need it


class FunctionStore:
    """Function payloads by digest, reference-counted by the tasks that need them."""

    def __init__(self, idle_bytes: int = IDLE_BYTES):
        self.idle_limit = idle_bytes
        self.payloads: dict[bytes, _Payload] = {}
        self.idle: OrderedDict[bytes, None] = OrderedDict()   # payloads with no task, oldest first
        self.idle_bytes = 0
        self.stats: dict[str, int] = {"received": 0, "received_bytes": 0,
                                      "sent": 0, "sent_bytes": 0}

    def receive(self, header: Header, payload: Frames) -> int:
        """Keep the payloads a `submit` carries (its `fns`: [[digest, nframes]], their frames
        first in the message); returns how many frames they took."""
        fns = header.get("fns", [])
        if not isinstance(fns, list):
            raise ProtocolError("fns must be a list of [digest, nframes]")
        pos = 0
        for item in fns:
            if not (isinstance(item, list) and len(item) == 2 and is_digest(item[0])
                    and isinstance(item[1], int) and not isinstance(item[1], bool)
                    and 0 < item[1] <= len(payload) - pos):
                raise ProtocolError("bad function payload entry in fns")
            digest, n = item
            frames = payload[pos:pos + n]
            pos += n
            if digest in self.payloads:
                continue   # the same function from another client, or sent again: keep ours
            # small frames copied: one received without copy pins its whole receive buffer
            frames = [memoryview(f).tobytes() if memoryview(f).nbytes < 16384 else f
                      for f in frames]
            p = _Payload(digest, frames, sum(memoryview(f).nbytes for f in frames))
            self.payloads[digest] = p
            self._make_idle(digest, p)
            self.stats["received"] += 1
            self.stats["received_bytes"] += p.nbytes
        return pos

    def __contains__(self, digest: bytes | None) -> bool:
        return digest is None or digest in self.payloads

    def intern(self, digest: bytes | None) -> bytes | None:
        """The digest object of a payload we hold, so its tasks share one (None: none)."""
        return None if digest is None else self.payloads[digest].digest

    def ref(self, digest: bytes | None) -> None:
        """A task that needs this payload was queued."""
        if digest is None:
            return
        p = self.payloads[digest]
        if p.refs == 0:
            del self.idle[digest]
            self.idle_bytes -= p.nbytes
        p.refs += 1

    def unref(self, digest: bytes | None) -> None:
        """A task that needed this payload is over (done, cancelled, failed or dropped)."""
        if digest is None:
            return
        p = self.payloads[digest]
        p.refs -= 1
        if p.refs == 0:
            self._make_idle(digest, p)
            self.trim()

    def _make_idle(self, digest: bytes, p: _Payload) -> None:
        self.idle[digest] = None
        self.idle_bytes += p.nbytes

    def trim(self) -> None:
        """Drop the oldest idle payloads beyond the idle limit."""
        while self.idle_bytes > self.idle_limit and self.idle:
            digest, _ = self.idle.popitem(last=False)
            self.idle_bytes -= self.payloads.pop(digest).nbytes

    def deliver(self, has: set[bytes],
                digests: Iterable[bytes | None]) -> tuple[list[list[bytes | int]], Frames]:
        """(fns entries, frames) of the payloads among digests that a worker, which has the
        payloads in `has`, lacks; they are then counted as its own."""
        fns: list[list[bytes | int]] = []
        frames: Frames = []
        for digest in digests:
            if digest is None or digest in has:
                continue
            has.add(digest)
            p = self.payloads[digest]
            fns.append([digest, len(p.frames)])
            frames += p.frames
            self.stats["sent"] += 1
            self.stats["sent_bytes"] += p.nbytes
        return fns, frames

    def status(self) -> dict[str, int]:
        return {"held": len(self.payloads),
                "held_bytes": sum(p.nbytes for p in self.payloads.values()), **self.stats}

    def check_invariants(self, needed: Iterable[bytes | None]) -> None:
        """Every payload's count is the number of tasks that need it; idle bookkeeping adds up."""
        counts: dict[bytes, int] = {}
        for digest in needed:
            if digest is not None:
                assert digest in self.payloads, "a task needs a payload the broker dropped"
                counts[digest] = counts.get(digest, 0) + 1
        for digest, p in self.payloads.items():
            assert p.refs == counts.get(digest, 0), (digest.hex(), p.refs, counts.get(digest))
            assert (p.refs == 0) == (digest in self.idle)
        assert self.idle_bytes == sum(self.payloads[d].nbytes for d in self.idle)


def is_digest(value: object) -> TypeGuard[bytes]:
    """Is value a function payload's name (the bytes of a hash)?"""
    return isinstance(value, bytes) and 0 < len(value) <= MAX_DIGEST_BYTES
