"""The wire format: frames, message types, protocol version and HMAC signing.

Every message between a peer (client or worker, a ZeroMQ DEALER) and the broker (a ROUTER)
is a multipart message::

    frame 0  b"NBC" + version byte      protocol magic and version
    frame 1  signature                  32 bytes, HMAC-SHA256 with the cluster key
    frame 2  header                     msgpack map; "t" names the message type
    frame 3+ payload                    opaque bytes (pickles and out-of-band buffers)

The signature covers, in this order, each payload frame and then the header, each preceded
by its length as 8 big-endian bytes, and finally frame 0. Putting the header last lets the
broker verify a message and sign the one it forwards with a new header while reading the
(possibly large) payload only once. See docs/protocol.md for the message types.

This module does no I/O and never unpickles: the broker imports it and nothing else.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections.abc import Sequence
from typing import Any, Literal, overload

import msgpack

from ..errors import ProtocolError

__all__ = ["VERSION", "MAGIC", "DENIED", "TOO_BIG", "is_denied", "Signer", "encode", "decode",
           "new_key", "Header"]

VERSION = 3
MAGIC = b"NBC" + bytes([VERSION])
SIGNATURE_SIZE = 32
MAX_HEADER_BYTES = 1 << 20          # a header is control data; payloads go in frames
MAX_FRAMES = 1 << 16
HEADER_BUFFER_BYTES = 512           # what msgpack starts packing a header in (see pack_header)
# What crosses the socket: on one host, buffers of 1 MiB or more go through shared memory
# (wire.shm), so a message is a pickle and small buffers; across hosts, the data itself. A
# cluster that sends more in one message raises it (max_message_bytes, --max-message-bytes).
DEFAULT_MAX_MESSAGE_BYTES = 256 << 20

# The broker's answer to a message whose signature is wrong. It cannot be signed (the peer
# does not hold the key), so it is a fixed, unsigned message that carries nothing.
DENIED = [MAGIC, b"", b"denied"]
# Its answer to a message over its size limit (it does not read, so cannot check, such a
# message's signature): the sender learns, in its log, why the message had no effect.
TOO_BIG = [MAGIC, b"", b"too big"]

_LEN = struct.Struct(">Q")


def is_denied(frames: Sequence[Frame]) -> bool:
    """Is this the broker's DENIED reply? (Checked before decoding: it is unsigned.)"""
    return len(frames) == 3 and [bytes(f) for f in frames] == DENIED

Frame = Any  # bytes, memoryview or zmq.Frame: anything with the buffer protocol
# A message's control part: a msgpack map with string keys, "t" its type (docs/protocol.md).
Header = dict[str, Any]


def new_key() -> bytes:
    """A fresh random cluster key (32 bytes)."""
    import secrets
    return secrets.token_bytes(32)


class Signer:
    """HMAC-SHA256 over a message's frames with the cluster key."""

    def __init__(self, key: bytes):
        if not isinstance(key, (bytes, bytearray)) or len(key) < 16:
            raise ValueError("the cluster key must be at least 16 bytes")
        self._mac = hmac.new(bytes(key), digestmod=hashlib.sha256)

    def payload_mac(self, payload: Sequence[Frame]) -> hmac.HMAC:
        """An HMAC that has read the payload frames; finish it with `finish`."""
        mac = self._mac.copy()
        for frame in payload:
            view = memoryview(frame)
            mac.update(_LEN.pack(view.nbytes))
            mac.update(view)
        return mac

    @staticmethod
    def finish(payload_mac: hmac.HMAC, header: bytes) -> bytes:
        mac = payload_mac.copy()
        mac.update(_LEN.pack(len(header)))
        mac.update(header)
        mac.update(MAGIC)
        return mac.digest()

    def sign(self, header: bytes, payload: Sequence[Frame]) -> bytes:
        return self.finish(self.payload_mac(payload), header)


def pack_header(header: Header) -> bytes:
    # msgpack's packer starts with a 256 KiB buffer: in the broker, which maps every buffer
    # of 128 KiB or more alone (broker.memory), that was an mmap, a munmap and page faults
    # per message sent (a fifth of a no-op round trip's broker CPU). It grows as needed.
    packed: bytes = msgpack.packb(header, use_bin_type=True, buf_size=HEADER_BUFFER_BYTES)
    return packed


def encode(signer: Signer, header: Header, payload: Sequence[Frame] = (),
           mac: hmac.HMAC | None = None) -> list[Frame]:
    """The frames of a signed message. `mac`: a `payload_mac` already computed for payload."""
    head = pack_header(header)
    sig = signer.finish(mac if mac is not None else signer.payload_mac(payload), head)
    return [MAGIC, sig, head, *payload]


@overload
def decode(signer: Signer, frames: Sequence[Frame],
           max_bytes: int | None = DEFAULT_MAX_MESSAGE_BYTES, keep_mac: Literal[False] = False
           ) -> tuple[Header, list[Frame]]: ...


@overload
def decode(signer: Signer, frames: Sequence[Frame],
           max_bytes: int | None = DEFAULT_MAX_MESSAGE_BYTES, *, keep_mac: Literal[True]
           ) -> tuple[Header, list[Frame], hmac.HMAC]: ...


def decode(signer: Signer, frames: Sequence[Frame],
           max_bytes: int | None = DEFAULT_MAX_MESSAGE_BYTES, keep_mac: bool = False
           ) -> tuple[Header, list[Frame]] | tuple[Header, list[Frame], hmac.HMAC]:
    """Check and parse a received message; max_bytes None: of any size (what a peer hears
    from its broker, which enforces its own limit on what it takes in).

    Returns (header, payload) or, with keep_mac, (header, payload, payload_mac) so the
    caller can sign a forwarded message without reading the payload again.

    Raises:
        ProtocolError: the message is truncated, oversized, of another protocol version,
            unsigned, badly signed, or its header is not a msgpack map with a string "t".
    """
    if len(frames) < 3:
        raise ProtocolError(f"truncated message: {len(frames)} frames, at least 3 expected")
    if len(frames) > MAX_FRAMES:
        raise ProtocolError(f"too many frames: {len(frames)}")
    magic = bytes(frames[0])
    if len(frames) == 3 and [magic, *(bytes(f) for f in frames[1:])] == TOO_BIG:
        raise ProtocolError("the broker refused a message of ours as larger than its limit "
                            "(max_message_bytes): that message had no effect")
    if magic != MAGIC:
        if len(magic) == 4 and magic[:3] == MAGIC[:3]:
            raise ProtocolError(f"protocol version {magic[3]} (this peer speaks {VERSION})")
        raise ProtocolError("not an nbcluster message (bad magic frame)")
    total = sum(memoryview(f).nbytes for f in frames)
    if max_bytes is not None and total > max_bytes:
        raise ProtocolError(f"oversized message: {total} bytes, limit {max_bytes}")
    sig, head = bytes(frames[1]), bytes(frames[2])
    if len(head) > MAX_HEADER_BYTES:
        raise ProtocolError(f"oversized header: {len(head)} bytes")
    payload = list(frames[3:])
    mac = signer.payload_mac(payload)
    if len(sig) != SIGNATURE_SIZE or not hmac.compare_digest(sig, signer.finish(mac, head)):
        raise ProtocolError("bad signature (unsigned, or signed with another key)")
    try:
        header = msgpack.unpackb(head, raw=False, strict_map_key=True)
    except Exception as e:  # noqa: BLE001 - msgpack raises many types on bad input
        raise ProtocolError(f"header is not valid msgpack: {e}") from None
    if not isinstance(header, dict) or not isinstance(header.get("t"), str):
        raise ProtocolError("header is not a map with a string 't'")
    return (header, payload, mac) if keep_mac else (header, payload)
