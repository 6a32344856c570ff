"""Replay protection: a message recorded on the wire and sent again has no effect.

Signatures prove a message was made by a key holder, not that it is fresh: without more, a
recorded hello and submit, sent again from any socket, register and run the task again (and
the result goes to whoever sent them). So each message is bound to one registration and
used once:

    hello ─── ts (the peer's clock) within HELLO_WINDOW_MS of ours, and a hello_nonce not
    │         seen within twice that ──────────────────────────────► registered (peers.hello);
    │         the welcome carries `nonce`, the registration's random session nonce
    │         (outside the window: `refused`, saying why; seen before: ProtocolError)
    └─ every later message on each of its sockets ─── `nonce` is its registration's, `seq`
              above the last `seq` seen on that socket ────────────► handled
              otherwise: ProtocolError (dropped, logged; nothing changes, not even the
              peer's last-seen time, so a replayed heartbeat keeps no dead peer alive)

The header, and so `nonce` and `seq`, is covered by the signature. A recorded message sent
from another socket names an identity we do not know (answered `reconnect`, nothing else);
from the same identity, its `seq` is not above the last; recorded under an earlier
registration, its `nonce` is that registration's. A resumed registration keeps its nonce:
what the worker sent while its hello was on the way (results, on its other socket) is
still its registration's. A new registration gets a new one; what the peer sent with the old
nonce after its hello is dropped: the client holds its messages until the welcome, and a
worker gives back (refetch) a kept task whose result may have been dropped so.

No I/O, no clock: `now` is the broker's monotonic milliseconds, and the wall clock the
hello's timestamp is held against is `now + wall_offset_ms` (set by the broker loop).
"""

from __future__ import annotations

import secrets
from typing import Any

from ..errors import ProtocolError

__all__ = ["HELLO_WINDOW_MS", "MAX_HELLOS_REMEMBERED", "Hellos", "ClockSkew", "new_nonce",
           "check"]

HELLO_WINDOW_MS = 120_000        # a hello's clock may differ from ours this much (skew, delay)
MAX_HELLOS_REMEMBERED = 1 << 20  # more hellos than this within 2 windows: refused (fail closed)
NONCE_BYTES = 16


class ClockSkew(ProtocolError):
    """A hello stamped outside the window. The broker tells the peer why (`refused`): a peer
    whose clock is far off would otherwise wait for a welcome that never comes."""


def new_nonce() -> bytes:
    """A registration's session nonce."""
    return secrets.token_bytes(NONCE_BYTES)


class Hellos:
    """The hellos of the last two windows, so that each is taken once: a hello as old as a
    window is refused by its timestamp, so one remembered for twice that (from when it came,
    by our clock) cannot come back unrecognised."""

    def __init__(self, window_ms: int = HELLO_WINDOW_MS):
        self.window_ms = window_ms
        self.seen: dict[bytes, int] = {}   # hello nonce -> when to forget it (oldest first)

    def admit(self, header: dict[str, Any], now: int, wall: int) -> None:
        """Take a (schema-checked) hello once, if its timestamp is within the window of
        `wall`, our wall clock in ms.

        Raises:
            ClockSkew: too old or too far ahead (a replay, or clocks set far apart).
            ProtocolError: its hello_nonce was seen before (a replay), or too many hellos.
        """
        skew = header["ts"] - wall
        if abs(skew) > self.window_ms:
            raise ClockSkew(
                f"refused a hello stamped {abs(skew) / 1000:.0f} s in the "
                f"{'future' if skew > 0 else 'past'} (more than {self.window_ms // 1000} s: "
                "a replay, or this host's clock and the peer's differ: sync them, e.g. NTP)")
        self._forget_before(now)
        hello_nonce = header["hello_nonce"]
        if hello_nonce in self.seen:
            raise ProtocolError("refused a hello seen before (a replay)")
        if len(self.seen) >= MAX_HELLOS_REMEMBERED:
            raise ProtocolError("refused a hello: too many hellos within the window")
        self.seen[hello_nonce] = now + 2 * self.window_ms

    def _forget_before(self, now: int) -> None:
        seen = self.seen
        while seen:
            oldest = next(iter(seen))
            if seen[oldest] > now:
                return
            del seen[oldest]


def check(peer: Any, identity: bytes, header: dict[str, Any]) -> None:
    """A (schema-checked) message from a registered peer's socket `identity` must carry the
    peer's session nonce and a sequence number above the last one seen on that socket
    (`peer.nonce`, `peer.seq`: a Client, Worker or SupervisorPeer).

    Raises:
        ProtocolError: it does not (the message is dropped; nothing else changes).
    """
    if header.get("nonce") != peer.nonce:
        raise ProtocolError(
            f"a {header['t']!r} message without this registration's session nonce "
            "(a replay, or sent before the welcome of a new registration)")
    seq, last = header.get("seq"), peer.seq.get(identity, 0)
    if seq is None or seq <= last:
        raise ProtocolError(f"a {header['t']!r} message whose seq {seq} is not above the "
                            f"last one seen on its socket ({last}): a replay")
    peer.seq[identity] = seq
