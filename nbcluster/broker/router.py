"""The broker's ROUTER socket: how it is set up, and sending on it.

    a peer's process dies ── its kernel closes the connection ──────────────┐
    a peer freezes, or its link is cut ── libzmq pings it (ZMTP heartbeat)   ├─► connection
        every PING_MS; no answer for ping_timeout_ms ───────────────────────┘   closed
    a send to a closed connection ── EHOSTUNREACH (ROUTER_MANDATORY) ──► the peer is `gone`

Why connections and not heartbeats: a client's heartbeats come from a Python thread, so a
notebook whose kernel holds the GIL for a minute falls silent though it is alive. libzmq's
pings are answered by the peer's libzmq I/O thread, in C, without the GIL; and the kernel
closes a dead process's sockets at once (ipc and tcp). So a dead client is found within a
heartbeat (the broker sends each one a heartbeat every second: that send fails), a frozen or
unreachable one within the ping timeout, and a busy one never. libzmq 4.3 without its draft
API cannot tell us which connection closed; ROUTER_MANDATORY makes a send to it say so.

Size and backpressure: libzmq refuses a frame over max_message_bytes as soon as it reads the
frame's length (it closes that connection), before buffering it. It keeps at most RCVHWM
messages per connection that the broker has not read; past that it stops reading from that
connection, so a peer that floods waits (TCP backpressure) instead of filling our memory.
(libzmq hands over a message of many frames only once it is whole, so the total of a
multi-frame message is checked after it arrived: `protocol.decode`.)
"""

from __future__ import annotations

from collections.abc import Callable

import zmq

from ..wire import protocol
from ..wire.transport import send_frames
from .records import Send

__all__ = ["open_router", "send_all", "ping_timeout_ms", "PING_MS", "RCVHWM"]

PING_MS = 5_000             # libzmq pings each peer this often (as peers ping us)...
PING_TIMEOUT_MS = 20_000    # ...and closes a connection silent this long after a ping
# A pong may wait behind a big message on its way (libzmq counts a frame as traffic only once
# it has all of it): the timeout grows with the limit, at this many bytes a millisecond
# (100 MB/s, a loaded 1 Gbit/s link).
SLOW_LINK_BYTES_PER_MS = 100_000
RCVHWM = 64                 # unread messages kept per connection; then libzmq stops reading


def ping_timeout_ms(max_message_bytes: int) -> int:
    """How long a connection may stay silent after a ping before libzmq closes it."""
    return max(PING_TIMEOUT_MS, max_message_bytes // SLOW_LINK_BYTES_PER_MS)


def open_router(ctx: zmq.Context[zmq.Socket[bytes]], max_message_bytes: int
                ) -> zmq.Socket[bytes]:
    """The broker's ROUTER, not yet bound (see the module docstring for each option)."""
    router = ctx.socket(zmq.ROUTER)
    for opt, value in (
            (zmq.LINGER, 0),
            (zmq.SNDHWM, 0),   # never silently drop a result to a slow client
            (zmq.RCVHWM, RCVHWM),
            (zmq.MAXMSGSIZE, max_message_bytes),
            (zmq.ROUTER_MANDATORY, 1),
            (zmq.HEARTBEAT_IVL, PING_MS),
            (zmq.HEARTBEAT_TIMEOUT, ping_timeout_ms(max_message_bytes))):
        router.setsockopt(opt, value)
    return router


def send_all(router: zmq.Socket[bytes], signer: protocol.Signer, sends: list[Send],
             complain: Callable[[str], None]) -> set[bytes]:
    """Sign and send each message; returns the identities with no connection any more (their
    messages are not sent: the caller tells the state machine they are gone)."""
    gone: set[bytes] = set()
    for s in sends:
        if s.identity in gone:
            continue
        try:
            send_frames(router, [s.identity, *protocol.encode(signer, s.header, s.payload,
                                                               s.mac)])
        except zmq.ZMQError as e:
            if e.errno == zmq.EHOSTUNREACH:
                gone.add(s.identity)
            else:
                complain(f"could not send to {s.identity.hex()}: {e}")
    return gone


def send_raw(router: zmq.Socket[bytes], identity: bytes, frames: list[bytes]) -> bool:
    """Send fixed frames (DENIED, TOO_BIG); False if the peer has no connection any more."""
    try:
        router.send_multipart([identity, *frames])
    except zmq.ZMQError as e:
        if e.errno != zmq.EHOSTUNREACH:
            raise
        return False
    return True
