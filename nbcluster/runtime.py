"""What a running task can know about the worker process it runs in.

The worker fills this in; code that runs inside tasks (the MapReduce shuffle, a user's
function) reads it. It imports nothing from nbcluster, so any layer may use it.
"""

from __future__ import annotations

__all__ = ["WORKER", "worker_key", "broker_endpoint", "in_worker", "emit"]

WORKER: dict = {}   # id, host and pid of this process once it is a worker
_KEY: list[bytes] = []
_BROKER: list[str] = []
_CURVE: list = []   # the cluster's CurveKeys, or None
_EMIT: list = []    # the worker's callable(stream, text) that sends output of the running task


def set_worker(key: bytes, endpoint: str, curve=None) -> None:
    """Called by the worker when it starts (curve: the cluster's CurveKeys, if any)."""
    _KEY[:], _BROKER[:], _CURVE[:] = [key], [endpoint], [curve]


def curve_keys():
    """The cluster's CurveKeys when it runs with Curve, else None."""
    return _CURVE[0] if _CURVE else None


def set_emitter(emit) -> None:
    """Called by the worker: emit(stream, text) sends output tagged with the running task."""
    _EMIT[:] = [emit]


def emit(stream: str, text: str) -> None:
    """Send output of the running task to its client as `stream` (e.g. "display", with a
    JSON mimebundle as text); outside a worker it goes nowhere."""
    if _EMIT:
        _EMIT[0](stream, text)


def in_worker() -> bool:
    """Is this process an nbcluster worker?"""
    return bool(_KEY)


def worker_key() -> bytes:
    """The cluster key of this worker (for peer-to-peer messages between workers)."""
    if not _KEY:
        raise RuntimeError("this code must run inside an nbcluster task")
    return _KEY[0]


def broker_endpoint() -> str:
    """The endpoint this worker reached its broker at."""
    if not _BROKER:
        raise RuntimeError("this code must run inside an nbcluster task")
    return _BROKER[0]
