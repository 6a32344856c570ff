"""How nbcluster's processes reach each other: ZeroMQ sockets as its peers use them (clients
and workers; the broker has its own), and the one line on stdin through which a parent hands
a child process its secrets (a connection file's JSON, the broker's Curve keys)."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, cast

import zmq

if TYPE_CHECKING:
    from .curve import CurveKeys

__all__ = ["dealer", "pending_messages", "send_frames", "read_line", "PEER_PING_MS",
           "PEER_PING_TIMEOUT_MS"]

# libzmq's own (ZMTP) heartbeats, sent and answered by its C I/O thread, so they go on while
# Python holds the GIL. A peer whose broker answers no ping for this long (the broker's host
# froze, the link was cut) drops the connection and connects again. Long, because a broker
# stopped for a while (SIGSTOP) must not lose the connections it comes back to, and a pong
# may wait behind a big message on its way. (The broker pings too: see broker.loop.)
PEER_PING_MS = 5_000
PEER_PING_TIMEOUT_MS = 60_000


def dealer(ctx: zmq.Context[zmq.Socket[bytes]], endpoint: str, identity: bytes | None = None,
           curve: CurveKeys | None = None) -> zmq.Socket[bytes]:
    """A DEALER connected to the broker (as a CURVE client when the cluster has keys):
    unbounded queues (a result is never dropped by a high-water mark), no lingering, and
    libzmq heartbeats that drop a connection to a broker gone silent (then it reconnects)."""
    sock = ctx.socket(zmq.DEALER)
    for opt, value in ((zmq.LINGER, 0), (zmq.SNDHWM, 0), (zmq.RCVHWM, 0),
                       (zmq.HEARTBEAT_IVL, PEER_PING_MS),
                       (zmq.HEARTBEAT_TIMEOUT, PEER_PING_TIMEOUT_MS)):
        sock.setsockopt(opt, value)
    if identity is not None:
        sock.setsockopt(zmq.IDENTITY, identity)
    if curve is not None:
        curve.connect_as_client(sock)
    sock.connect(endpoint)
    return sock


# pyzmq's flags are enums: an `|` or `&` of them costs a microsecond or two in Python, paid per
# frame or per message on the paths below; their int values cost nothing.
_MORE, _EVENTS, _POLLIN, _NOBLOCK = (int(f) for f in (zmq.SNDMORE, zmq.EVENTS, zmq.POLLIN,
                                                      zmq.NOBLOCK))


def pending_messages(sock: zmq.Socket[bytes], limit: int = 1 << 30
                     ) -> Iterator[list[zmq.Frame]]:
    """The messages waiting on sock (zero-copy frames), without blocking and without the
    cost of an exception at the end."""
    for _ in range(limit):
        if not cast(int, sock.getsockopt(_EVENTS)) & _POLLIN:   # an int option
            return
        yield sock.recv_multipart(_NOBLOCK, copy=False)


def send_frames(sock: zmq.Socket[bytes], frames: Sequence[Any]) -> None:
    """sock.send_multipart(frames, copy=False) at a third of its cost per frame (it pays a
    Python enum `|` per frame): a submit message holds a thousand small frames."""
    send = sock.send
    for frame in frames[:-1]:
        send(frame, _MORE, copy=False)
    send(frames[-1], 0, copy=False)


def read_line(fd: int) -> str:
    """One line from fd, read byte by byte so nothing after it is buffered away (the rest
    of stdin may be the child's to read); at end of file, what came before it."""
    data = bytearray()
    while not data.endswith(b"\n"):
        chunk = os.read(fd, 1)
        if not chunk:
            break
        data += chunk
    return data.decode()
