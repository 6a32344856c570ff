"""`connect`: a Client for a running cluster, from its connection file or a URL."""

from __future__ import annotations

from ..wire.connection import ConnectionInfo
from .broker_silence import DEFAULT_BROKER_TIMEOUT_S
from .client import CONNECT_TIMEOUT_S, Client

__all__ = ["connect"]


def connect(path_or_url: str = "~/.nbcluster/cluster.json", key: bytes | str | None = None,
            timeout: float = CONNECT_TIMEOUT_S,
            broker_timeout: float = DEFAULT_BROKER_TIMEOUT_S) -> Client:
    """A Client for a running cluster, from its connection file or a tcp:// / ipc:// URL.

    Args:
        path_or_url: a connection file, or the broker's endpoint (then `key` is required).
        key: the cluster key (bytes or hex); overrides the connection file's.
        broker_timeout: see `Client`.

    Raises:
        FileNotFoundError: no connection file there.
        NBClusterError: the file is not a connection file, its cluster is gone (said at
            once), or no broker answered within `timeout`.
    """
    curve = None
    if "://" in path_or_url:
        if key is None:
            raise ValueError("connecting to a URL needs the cluster key: connect(url, key=...)")
        endpoint = path_or_url
    else:
        info = ConnectionInfo.read(path_or_url)
        info.check_running(path_or_url)   # a cluster that is gone: say so now, not after timeout
        endpoint, key = info.best_endpoint(), key if key is not None else info.key
        curve = info.curve
    if isinstance(key, str):
        key = bytes.fromhex(key)
    return Client(endpoint, key, timeout=timeout, curve=curve, broker_timeout=broker_timeout)
