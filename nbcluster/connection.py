"""Connection files: where a cluster's broker listens and the key to talk to it.

A connection file is JSON, readable by its owner only::

    {"version": 1, "endpoints": ["ipc:///tmp/nbc-x/broker", "tcp://127.0.0.1:5555"],
     "key": "<64 hex digits>", "host": "node1", "created": 1763859600.0}
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["ConnectionInfo", "key_from_env", "KEY_ENV"]

KEY_ENV = "NBCLUSTER_KEY"


@dataclass
class ConnectionInfo:
    """Endpoints of a broker and the cluster key."""

    endpoints: list[str]
    key: bytes
    host: str = field(default_factory=socket.gethostname)

    def write(self, path: str | os.PathLike) -> Path:
        """Write atomically with owner-only permissions (0600)."""
        path = Path(path).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"version": 1, "endpoints": self.endpoints, "key": self.key.hex(),
                       "host": self.host, "created": time.time()}, f)
        os.replace(tmp, path)
        return path

    @classmethod
    def read(cls, path: str | os.PathLike) -> "ConnectionInfo":
        with open(Path(path).expanduser()) as f:
            data = json.load(f)
        return cls(endpoints=list(data["endpoints"]), key=bytes.fromhex(data["key"]),
                   host=data.get("host", ""))

    def best_endpoint(self) -> str:
        """ipc:// when the broker is on this host (faster), else its first tcp:// endpoint."""
        if self.host == socket.gethostname():
            for ep in self.endpoints:
                if ep.startswith("ipc://") and os.path.exists(ep[len("ipc://"):]):
                    return ep
        for ep in self.endpoints:
            if not ep.startswith("ipc://"):
                return ep
        return self.endpoints[0]


def key_from_env() -> bytes:
    """The cluster key from $NBCLUSTER_KEY (hex), as set by whoever started this process."""
    value = os.environ.get(KEY_ENV)
    if not value:
        raise SystemExit(f"{KEY_ENV} is not set: pass the cluster key (hex) in it")
    return bytes.fromhex(value)
