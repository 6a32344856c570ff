"""The client that operations use when none is given.

    parallel(xs).map(f).to_list()      # runs on current_client()

That is the client (or the cluster's client) made last and still open; if there is none, a
LocalCluster with one worker per core is started, announced on stderr, and stopped at exit.
"""

from __future__ import annotations

import atexit
import sys
import threading

from ..client.client import Client
from ..client.latest import latest as made_last

__all__ = ["default_client", "current_client"]

_lock = threading.Lock()


def current_client(client: Client | None = None) -> Client:
    """client if given, else the client operations use by default (see the module doc)."""
    if client is not None:
        return client
    with _lock:
        latest = made_last()
        if latest is None:
            from ..cluster.local import LocalCluster
            latest = LocalCluster()
            atexit.register(latest.close)
            print(f"nbcluster: started a local cluster of {latest.n_workers} workers "
                  "(create a LocalCluster or Client to choose)", file=sys.stderr)
        return latest if isinstance(latest, Client) else latest.default_client()


def default_client() -> Client:
    """The client that `parallel`, `pmap`, `map_reduce` and the magics use when given none:
    the Client (or LocalCluster) made last and still open; if there is none, a LocalCluster
    with one worker per core, started now and stopped at exit."""
    return current_client()
