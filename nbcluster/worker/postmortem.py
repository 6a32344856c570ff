"""Failures kept alive on their worker, so their client can debug the failed frames live.

    task fails ──► tracebacks.capture ──► keep(exc, tb) ──► number n (in the captured data,
                                                             and in the result's info: "kept")
    client: err.debug() ──► broker ──► worker: get(gid, n) ──► a debugger on tb (debugger.py)

A kept failure holds its exception, and so its traceback, its frames and every object they
hold: bounded by count (the newest `max_kept`), age (`keep_s`) and the process's memory
(over `max_rss` bytes, the oldest go first), and released early when its client says so.
Released, its frames are cleared so their objects go at once.

Settings come from the environment (a worker's own, or its LocalCluster's):
NBCLUSTER_DEBUG_KEEP (failures kept, default 5; 0 keeps none), NBCLUSTER_DEBUG_KEEP_S
(seconds, default 600), NBCLUSTER_DEBUG_KEEP_MB (RSS above which they go, default 4096; a
supervisor with a memory limit lowers it to half the limit, so kept frames go before the
limit would kill the worker).
"""

from __future__ import annotations

import itertools
import os
import threading
import time
import traceback
from dataclasses import dataclass
from types import TracebackType

__all__ = ["KeptFailures", "Kept"]

MAX_KEPT = 5
KEEP_S = 600.0
MAX_RSS_MB = 4096
KEEP_MB_ENV = "NBCLUSTER_DEBUG_KEEP_MB"   # a supervisor with a memory limit sets half of it


@dataclass
class Kept:
    gid: int                 # the task it failed in
    exc: BaseException
    tb: TracebackType        # where the user's frames start (the worker's own skipped)
    at: float                # time.monotonic() when kept
    in_use: int = 0          # debugger sessions open on it (its frames are not cleared)


class KeptFailures:
    """The failures this worker keeps (see the module doc). `begin`/`end` bracket each task
    on the main thread; the I/O thread calls `expire` now and then and `get` for a debugger."""

    def __init__(self, max_kept: int | None = None, keep_s: float | None = None,
                 max_rss_mb: float | None = None) -> None:
        env = os.environ.get
        self.max_kept = int(env("NBCLUSTER_DEBUG_KEEP", MAX_KEPT)) if max_kept is None \
            else max_kept
        self.keep_s = float(env("NBCLUSTER_DEBUG_KEEP_S", KEEP_S)) if keep_s is None else keep_s
        mb = float(env(KEEP_MB_ENV, MAX_RSS_MB)) if max_rss_mb is None \
            else max_rss_mb
        self.max_rss = int(mb * 1024 * 1024)
        self._numbers = itertools.count(1)
        self._items: dict[int, Kept] = {}       # oldest first
        self._lock = threading.Lock()
        self._gid: int | None = None            # the running task (main thread only)
        self._kept_now: list[int] = []

    def begin(self, gid: int) -> None:
        self._gid, self._kept_now = gid, []

    def end(self) -> list[int]:
        """The numbers kept during the task that ended."""
        kept, self._gid, self._kept_now = self._kept_now, None, []
        return kept

    def keep(self, exc: BaseException, tb: TracebackType | None) -> int | None:
        """Keep a failure of the running task; its number, or None if none is kept (outside
        a task, keeping disabled, or not an Exception: a cancel's KeyboardInterrupt)."""
        if self.max_kept <= 0 or self._gid is None or tb is None or \
                not isinstance(exc, Exception):
            return None
        n = next(self._numbers)
        with self._lock:
            self._items[n] = Kept(self._gid, exc, tb, time.monotonic())
            dropped = self._trim(self.max_kept)
        _clear(dropped)
        self._kept_now.append(n)
        return n

    def get(self, gid: int, n: int) -> Kept | None:
        """Failure n, if still kept and of task gid (a client names only its own tasks)."""
        with self._lock:
            kept = self._items.get(n)
        return kept if kept is not None and kept.gid == gid else None

    def release(self, gid: int, n: int) -> bool:
        with self._lock:
            kept = self._items.get(n)
            if kept is None or kept.gid != gid:
                return False
            del self._items[n]
        _clear([kept])
        return True

    def expire(self, now: float, rss: int | None) -> None:
        """Drop failures older than keep_s, and the oldest while rss is over max_rss."""
        with self._lock:
            old = [n for n, k in self._items.items() if now - k.at > self.keep_s]
            dropped = [self._items.pop(n) for n in old]
            if rss is not None and rss > self.max_rss and self._items:
                dropped += self._trim(len(self._items) - 1)
        _clear(dropped)

    def __len__(self) -> int:
        return len(self._items)

    def _trim(self, keep: int) -> list[Kept]:
        dropped = []
        while len(self._items) > max(keep, 0):
            dropped.append(self._items.pop(next(iter(self._items))))
        return dropped


def _clear(dropped: list[Kept]) -> None:
    """Let the frames' objects go now, not whenever the exception is collected."""
    for kept in dropped:
        if not kept.in_use:   # a session looking at them keeps them until it ends
            traceback.clear_frames(kept.tb)
