"""A peer's side of replay protection: what it adds to each header it sends the broker.

    hello ────────────► + ts (our wall clock, ms since the Unix epoch), hello_nonce (fresh)
    welcome ◄────────── nonce: our registration's session nonce (`welcomed`)
    any other message ► + nonce, seq (one more than the last one drawn: strictly increasing
                          on each socket, since each socket is used by one thread)

The broker refuses a hello outside its window or seen before, and a later message whose
nonce is not its registration's or whose seq is not above the last one seen on its socket
(see nbcluster/broker/sessions.py and docs/protocol.md, "Sessions"). Before its first
welcome a peer has no nonce and stamps nothing: the broker drops such a message from a
registered socket, and answers it with `reconnect` from an unknown one (how a peer learns
it must say hello again).
"""

from __future__ import annotations

import itertools
import secrets
import time
from typing import Any

__all__ = ["Freshness"]

HELLO_NONCE_BYTES = 16


def wall_ms() -> int:
    """This host's wall clock, in ms since the Unix epoch."""
    return int(time.time() * 1000)


class Freshness:
    """Stamps a peer's headers; one per peer process role, shared by its sockets."""

    def __init__(self) -> None:
        self.nonce: bytes | None = None
        self._seq = itertools.count(1)   # next() is atomic: threads may share it

    def stamp(self, header: dict[str, Any]) -> dict[str, Any]:
        """The header to send: with a hello's timestamp and nonce, or the session's."""
        if header["t"] == "hello":
            return {**header, "ts": wall_ms(),
                    "hello_nonce": secrets.token_bytes(HELLO_NONCE_BYTES)}
        if self.nonce is None:
            return header
        return {**header, "nonce": self.nonce, "seq": next(self._seq)}

    def welcomed(self, welcome: dict[str, Any]) -> None:
        """The broker's welcome of our latest hello: its session nonce is ours from now on."""
        nonce = welcome.get("nonce")
        if isinstance(nonce, bytes):
            self.nonce = nonce
