"""Which received messages the broker checks at all: its defence against peers without the key.

Checking a signature reads the whole message (HMAC-SHA256, about a millisecond a megabyte),
so a peer without the key could keep the broker hashing garbage while its users wait. Two
rules make garbage cheap, without reading it:

    a stranger (no registered peer on that connection) ── message over STRANGER_MAX_BYTES
        ──► dropped unread: a stranger's first message is a small hello, and any other
            gets only `reconnect` (a forgotten peer's next heartbeat gets that anyway);
            one over the size limit gets TOO_BIG, also unread
    a peer whose message had a bad signature ── for IGNORE_MS ──► its messages dropped
        unread (it still gets DENIED at most once a second: a client with the wrong key
        fails fast with a clear error)

What a flooder costs then is a receive and a dictionary lookup per message, and libzmq's
backpressure (see router.RCVHWM) keeps it from queueing more than the broker reads.
"""

from __future__ import annotations

__all__ = ["Gate", "STRANGER_MAX_BYTES", "IGNORE_MS"]

STRANGER_MAX_BYTES = 64 * 1024   # a hello is a header of a few hundred bytes
IGNORE_MS = 2_000                # short: a peer that gets the key right is heard again soon
MAX_IGNORED = 10_000             # peers remembered at once (each connection is one)


class Gate:
    """Remembers the peers that sent a bad signature; says which messages to check."""

    def __init__(self) -> None:
        self.ignored_until: dict[bytes, int] = {}
        self.dropped = 0   # messages dropped unread, for the log

    def ignores(self, identity: bytes, now: int) -> bool:
        """A recent bad signature from this peer: drop its message unread."""
        until = self.ignored_until.get(identity)
        if until is None:
            return False
        if now < until:
            self.dropped += 1
            return True
        del self.ignored_until[identity]
        return False

    def too_big_for_a_stranger(self, nbytes: int) -> bool:
        """Over what a peer that has not registered may send: drop it unread."""
        if nbytes > STRANGER_MAX_BYTES:
            self.dropped += 1
            return True
        return False

    def bad_signature(self, identity: bytes, now: int) -> None:
        if len(self.ignored_until) >= MAX_IGNORED:
            self.ignored_until = {i: t for i, t in self.ignored_until.items() if t > now}
            if len(self.ignored_until) >= MAX_IGNORED:
                self.ignored_until.clear()
        self.ignored_until[identity] = now + IGNORE_MS
