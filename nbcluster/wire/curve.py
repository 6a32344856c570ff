"""CurveZMQ for clusters reachable beyond loopback: encryption and who may connect at all.

    connection file: server_public, client_public, client_secret   (owner-only, copied to hosts)
    broker:  CURVE server (its own secret key never leaves it) + a ZAP handler that admits
             only client_public; HMAC signing stays on top of it
    clients, workers: CURVE clients with the cluster's key pair

ZAP lets connections through when no handler answers, so a socket that serves CURVE is only
set up once its authenticator thread runs (fail closed). A NULL-mechanism peer cannot talk to
a CURVE server at all: the handshake fails before any message is read.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlparse

import zmq

from ..errors import NBClusterError
from .transport import read_line

if TYPE_CHECKING:
    from zmq.auth.thread import ThreadAuthenticator

__all__ = ["CurveKeys", "is_loopback", "read_server_keys", "serve", "server_keys_line"]

ZAP_DOMAIN = b"nbcluster"


@dataclass(frozen=True)
class CurveKeys:
    """A cluster's public Curve keys and the key pair its clients and workers share (Z85)."""

    server_public: bytes
    client_public: bytes
    client_secret: bytes

    @classmethod
    def generate(cls) -> tuple[CurveKeys, bytes]:
        """New keys, and the server's secret key (for the broker only)."""
        server_public, server_secret = zmq.curve_keypair()
        client_public, client_secret = zmq.curve_keypair()
        return cls(server_public, client_public, client_secret), server_secret

    def to_json(self) -> dict[str, str]:
        return {"server_public": self.server_public.decode(),
                "client_public": self.client_public.decode(),
                "client_secret": self.client_secret.decode()}

    @classmethod
    def from_json(cls, data: dict[str, str]) -> CurveKeys:
        return cls(*(data[k].encode() for k in ("server_public", "client_public",
                                                "client_secret")))

    def connect_as_client(self, sock: zmq.Socket[bytes],
                          server_public: bytes | None = None) -> None:
        """Make sock (before it connects) a CURVE client of the broker, or of another
        server holding server_public."""
        sock.curve_serverkey = server_public or self.server_public
        sock.curve_publickey = self.client_public
        sock.curve_secretkey = self.client_secret


def server_keys_line(keys: CurveKeys, server_secret: bytes) -> bytes:
    """The broker's Curve keys, secret included, as one line for its stdin (a pipe from the
    process that keeps them, so a restarted broker serves the same keys; never argv or a file)."""
    return json.dumps({**keys.to_json(), "server_secret": server_secret.decode()}).encode() + b"\n"


def read_server_keys(fd: int) -> tuple[CurveKeys, bytes]:
    """The (keys, server secret) of `server_keys_line` from fd, read byte by byte so nothing
    after the line is consumed.

    Raises:
        NBClusterError: no such line on fd.
    """
    try:
        data = json.loads(read_line(fd))
        return CurveKeys.from_json(data), data["server_secret"].encode()
    except (ValueError, KeyError, TypeError, AttributeError):
        raise NBClusterError("expected the Curve keys as a JSON line on stdin") from None


class _Admit:
    """ZAP credentials: only the cluster's client key."""

    def __init__(self, client_public: bytes):
        self.client_public = client_public

    def callback(self, domain: str, key: bytes) -> bool:   # key: Z85, as pyzmq passes it
        return key == self.client_public


def serve(ctx: zmq.Context[zmq.Socket[bytes]], sock: zmq.Socket[bytes], public: bytes,
          secret: bytes, client_public: bytes) -> ThreadAuthenticator:
    """Make sock (before it binds) a CURVE server admitting only client_public; returns the
    running authenticator (stop it when the socket closes).

    Raises:
        NBClusterError: the authenticator did not start (the socket is left unusable).
    """
    from zmq.auth.thread import ThreadAuthenticator

    auth = ThreadAuthenticator(ctx)
    auth.start()
    auth.configure_curve_callback(ZAP_DOMAIN.decode(),
                                  credentials_provider=_Admit(client_public))
    if not auth.is_alive():
        raise NBClusterError("the ZAP authenticator did not start: refusing to listen "
                             "(without it, ZeroMQ would let any peer in)")
    sock.zap_domain = ZAP_DOMAIN
    sock.curve_server = True
    sock.curve_publickey = public
    sock.curve_secretkey = secret
    return auth


def is_loopback(endpoint: str) -> bool:
    """Is endpoint reachable from this host only (ipc://, inproc://, tcp on 127.0.0.0/8 or ::1)?"""
    url = urlparse(endpoint)
    if url.scheme in ("ipc", "inproc"):
        return True
    host = (url.hostname or "").strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False   # a name or "*": could be anything
