"""Connection files: where a cluster's broker listens and the key to talk to it.

A connection file is JSON, readable by its owner only::

    {"version": 1, "endpoints": ["ipc:///tmp/nbc-x/broker", "tcp://127.0.0.1:5555"],
     "key": "<64 hex digits>", "host": "node1", "created": 1763859600.0,
     "curve": {"server_public": "<Z85>", "client_public": "<Z85>", "client_secret": "<Z85>"}}

"curve" is there when the broker listens beyond loopback (see nbcluster.curve). "pid" is the
broker's process: on its own machine a reader tells at once that the cluster is gone.
"keeper", when there, is the process that starts the broker again if it dies (LocalCluster,
`nbcluster start`, see nbcluster.broker_process): while it lives, the cluster is not gone,
even between a broker's death and its restart. A wildcard bind stays a wildcard in the file
(tcp://0.0.0.0:5555): readers pick the address (loopback on the broker's host, its host name
elsewhere), so the file never names an interface that may go away.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from ..errors import NBClusterError
from .curve import CurveKeys

__all__ = ["ConnectionInfo", "read_or_exit", "key_from_env", "KEY_ENV"]

KEY_ENV = "NBCLUSTER_KEY"
WILDCARDS = ("0.0.0.0", "*", "::", "")
PROBE_TIMEOUT_S = 0.5    # a broker on another host whose port refuses is gone; silence is not


@dataclass
class ConnectionInfo:
    """Endpoints of a broker and the cluster key."""

    endpoints: list[str]
    key: bytes
    host: str = field(default_factory=socket.gethostname)
    curve: CurveKeys | None = None   # set when the broker listens beyond loopback
    pid: int | None = None           # the broker's process id; write() records its own if None
    pid_space: int | None = field(default=None, compare=False)   # the broker's pid namespace
    keeper: int | None = None        # the process that restarts the broker (same machine)

    def write(self, path: str | os.PathLike[str]) -> Path:
        """Write atomically with owner-only permissions (0600). The writer is taken to be
        the broker (its pid goes in the file) unless `pid` is set (a pid of this machine)."""
        path = Path(path).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if self.pid is None:
            self.pid = os.getpid()
        if self.pid_space is None:
            self.pid_space = _pid_space()
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
        if self.pid is not None:
            data.update(pid=self.pid, pid_space=self.pid_space)
        if self.keeper is not None:
            data["keeper"] = self.keeper
        if self.curve is not None:
            data["curve"] = self.curve.to_json()
        return json.dumps(data)

    @classmethod
    def read(cls, path: str | os.PathLike[str]) -> ConnectionInfo:
        """The connection file at path.

        Raises:
            FileNotFoundError: there is no file at path.
            NBClusterError: the file is not an nbcluster connection file (says why).
        """
        path = Path(path).expanduser()
        with open(path) as f:
            text = f.read()
        try:
            return cls.from_json(text)
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            what = ("it is empty" if not text.strip() else
                    "it is not JSON" if isinstance(e, json.JSONDecodeError) else
                    f"no {e.args[0]!r} in it" if isinstance(e, KeyError) else
                    f"a bad value in it: {e}")
            raise NBClusterError(f"{path} is not an nbcluster connection file ({what})") \
                from None

    @classmethod
    def from_json(cls, text: str) -> ConnectionInfo:
        data = json.loads(text)
        return cls(endpoints=list(data["endpoints"]), key=bytes.fromhex(data["key"]),
                   host=data.get("host", ""),
                   curve=CurveKeys.from_json(data["curve"]) if data.get("curve") else None,
                   pid=data.get("pid"), pid_space=data.get("pid_space"),
                   keeper=data.get("keeper"))

    @property
    def on_this_machine(self) -> bool:
        """Does the broker run on this machine, with its pids visible to us?"""
        return self.host == socket.gethostname() and \
            (self.pid_space is None or self.pid_space == _pid_space())

    def reachable_endpoints(self) -> list[str]:
        """The endpoints with each wildcard bind (tcp://0.0.0.0:PORT) made an address a
        reader can reach: loopback on the broker's machine, its host name elsewhere."""
        here = self.on_this_machine
        out = []
        for ep in self.endpoints:
            url = urlparse(ep)
            if url.scheme == "tcp" and (url.hostname or "") in WILDCARDS:
                out.append(f"tcp://{'127.0.0.1' if here else self.host}:{url.port}")
            else:
                out.append(ep)
        return list(dict.fromkeys(out))

    def best_endpoint(self) -> str:
        """ipc:// when the broker is on this host (fastest), then loopback tcp://; from
        another host its first tcp:// endpoint beyond loopback."""
        from .curve import is_loopback
        endpoints = self.reachable_endpoints()
        tcp = [ep for ep in endpoints if not ep.startswith("ipc://")]
        if self.on_this_machine:
            for ep in endpoints:
                if ep.startswith("ipc://") and os.path.exists(ep[len("ipc://"):]):
                    return ep
            tcp.sort(key=lambda ep: not is_loopback(ep))
        else:
            tcp.sort(key=is_loopback)
        return tcp[0] if tcp else endpoints[0]

    def gone_reason(self, endpoint: str | None = None) -> str | None:
        """Why the cluster of this file is surely not running, found in well under a second
        (its broker's pid has exited, its socket file is gone, its port refuses); None when
        it may be running. `endpoint`: where the caller will reach it (default the best)."""
        if self.on_this_machine:
            if self.pid is not None:
                if _alive(self.pid) or (self.keeper is not None and _alive(self.keeper)):
                    return None   # running, or being restarted by its keeper
                return f"its broker (pid {self.pid}) has exited"
            ipc = [ep[len("ipc://"):] for ep in self.endpoints if ep.startswith("ipc://")]
            if ipc and not any(os.path.exists(p) for p in ipc):
                return f"its socket {ipc[0]} is gone"
        url = urlparse(endpoint or self.best_endpoint())
        if url.scheme == "tcp" and url.hostname and url.port:
            try:
                socket.create_connection((url.hostname, url.port), PROBE_TIMEOUT_S).close()
            except ConnectionRefusedError:
                return f"nothing listens at {url.hostname}:{url.port}"
            except OSError:   # silence, no route, unknown host: maybe a firewall; let it try
                pass
        return None

    def check_running(self, path: str | os.PathLike[str], endpoint: str | None = None) -> None:
        """Raise NBClusterError at once if the cluster of this file is surely gone."""
        reason = self.gone_reason(endpoint)
        if reason is not None:
            raise NBClusterError(f"the cluster of {path} is not running: {reason}; start one "
                                 "with `nbcluster start`")


def read_or_exit(path: str, who: str, endpoint: str | None = None) -> ConnectionInfo:
    """The connection file at path of a running cluster, or exit (status 2) with one line
    on stderr that says what is wrong (no file, not a connection file, the cluster gone)."""
    try:
        info = ConnectionInfo.read(path)
        info.check_running(path, endpoint)
        return info
    except FileNotFoundError:
        message = (f"no connection file at {path} (start a cluster with `nbcluster start`, "
                   "or pass the file it wrote)")
    except (NBClusterError, OSError) as e:
        message = str(e)
    print(f"{who}: {message}", file=sys.stderr)
    raise SystemExit(2)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:   # another user's process
        return True
    return True


def _pid_space() -> int | None:
    """This process's pid namespace (Linux), so a file read in another container, on a host
    of the same name, is not judged by pids that mean other processes there."""
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return None


def advertised(endpoints: list[str]) -> list[str]:
    """What to put in a connection file for the endpoints a broker bound: as bound, with a
    wildcard kept as one (tcp://0.0.0.0:PORT) for readers to resolve; see
    ConnectionInfo.reachable_endpoints. Interfaces that come and go never make it stale."""
    return list(dict.fromkeys(endpoints))


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
