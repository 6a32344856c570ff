"""The client or cluster made last: what operations given no client use.

A Client remembers itself when made (unless `remember=False`), and so does a LocalCluster;
`nbcluster.patterns.session.current_client` and the notebook magics ask `latest()`. Only a
weak reference is kept: a client nobody holds any more is not kept alive by being the last.
"""

from __future__ import annotations

import weakref
from typing import Any

__all__ = ["remember_latest", "latest"]

_latest: list[weakref.ref] = []


def remember_latest(obj: Any) -> None:
    """Record the client (or cluster) made last: operations given no client use it."""
    _latest[:] = [weakref.ref(obj)]


def latest() -> Any:
    """The client or cluster made last that is still open (a Client or a LocalCluster), or
    None."""
    obj = _latest[0]() if _latest else None
    return obj if obj is not None and not obj.closed else None
