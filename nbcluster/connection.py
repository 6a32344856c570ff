"""Connection files: where a cluster's broker listens and the key to talk to it.

A connection file is JSON, readable by its owner only::

    {"version": 1, "endpoints": ["ipc:///tmp/nbc-x/broker", "tcp://127.0.0.1:5555"],
     "key": "<64 hex digits>", "host": "node1", "created": 1763859600.0,
     "curve": {"server_public": "<Z85>", "client_public": "<Z85>", "client_secret": "<Z85>"}}

"curve" is there when the broker listens beyond loopback (see nbcluster.curve).
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from .curve import CurveKeys

__all__ = ["ConnectionInfo", "key_from_env", "KEY_ENV"]

KEY_ENV = "NBCLUSTER_KEY"


@dataclass
class ConnectionInfo:
    """Endpoints of a broker and the cluster key."""

    endpoints: list[str]
    key: bytes
    host: str = field(default_factory=socket.gethostname)
    curve: CurveKeys | None = None   # set when the broker listens beyond loopback

    def write(self, path: str | os.PathLike) -> Path:
        """Write atomically with owner-only permissions (0600)."""
        path = Path(path).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(self.to_json())
        os.replace(tmp, path)
        return path

    def to_json(self) -> str:
        """The connection file's content, on one line."""
        data = {"version": 1, "endpoints": self.endpoints, "key": self.key.hex(),
                "host": self.host, "created": time.time()}
        if self.curve is not None:
            data["curve"] = self.curve.to_json()
        return json.dumps(data)

    @classmethod
    def read(cls, path: str | os.PathLike) -> "ConnectionInfo":
        with open(Path(path).expanduser()) as f:
            return cls.from_json(f.read())

    @classmethod
    def from_json(cls, text: str) -> "ConnectionInfo":
        data = json.loads(text)
        return cls(endpoints=list(data["endpoints"]), key=bytes.fromhex(data["key"]),
                   host=data.get("host", ""),
                   curve=CurveKeys.from_json(data["curve"]) if data.get("curve") else None)

    def best_endpoint(self) -> str:
        """ipc:// when the broker is on this host (fastest), then loopback tcp://; from
        another host its first tcp:// endpoint beyond loopback."""
        from .curve import is_loopback
        tcp = [ep for ep in self.endpoints if not ep.startswith("ipc://")]
        if self.host == socket.gethostname():
            for ep in self.endpoints:
                if ep.startswith("ipc://") and os.path.exists(ep[len("ipc://"):]):
                    return ep
            tcp.sort(key=lambda ep: not is_loopback(ep))
        else:
            tcp.sort(key=is_loopback)
        return tcp[0] if tcp else self.endpoints[0]


def advertised(endpoints: list[str]) -> list[str]:
    """endpoints with a wildcard address (tcp://0.0.0.0:PORT, tcp://*:PORT) replaced by one
    endpoint per address of this host, loopback first: what to put in a connection file."""
    out: list[str] = []
    for ep in endpoints:
        url = urlparse(ep)
        if url.scheme == "tcp" and url.hostname in ("0.0.0.0", "*", None):
            out += [f"tcp://{ip}:{url.port}" for ip in ["127.0.0.1", *host_addresses()]]
        else:
            out.append(ep)
    return list(dict.fromkeys(out))


def host_addresses() -> list[str]:
    """The IPv4 addresses of this host's interfaces other than loopback (Linux)."""
    import fcntl
    import struct
    found = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for _, name in socket.if_nameindex():
            try:
                packed = fcntl.ioctl(s.fileno(), 0x8915,   # SIOCGIFADDR
                                     struct.pack("256s", name.encode()[:15]))
            except OSError:   # no IPv4 address on it
                continue
            ip = socket.inet_ntoa(packed[20:24])
            if not ip.startswith("127."):
                found.append(ip)
    return found


def key_from_env() -> bytes:
    """The cluster key from $NBCLUSTER_KEY (hex), as set by whoever started this process."""
    value = os.environ.get(KEY_ENV)
    if not value:
        raise SystemExit(f"{KEY_ENV} is not set: pass the cluster key (hex) in it")
    return bytes.fromhex(value)
