"""Progress bars for long operations: tqdm in a terminal; the notebook layer installs widgets.

An operation asks `progress_bar(total, desc)` for a bar and reports to it; which bar that is
depends on where we run, decided once by `set_progress_factory`.
"""

from __future__ import annotations

import sys
from typing import Callable, Protocol

__all__ = ["ProgressBar", "progress_bar", "set_progress_factory"]

SHOW_AFTER_S = 0.5      # operations quicker than this show no bar at all


class ProgressBar(Protocol):
    """What an operation reports to."""

    def update(self, done: int = 0, failed: int = 0) -> None: ...
    def set_description(self, text: str) -> None: ...
    def close(self) -> None: ...


class _Tqdm:
    def __init__(self, total: int | None, desc: str):
        from tqdm.auto import tqdm   # imported on first use: scripts that show no bar skip it
        self._bar = tqdm(total=total, desc=desc, unit="it", delay=SHOW_AFTER_S, file=sys.stderr,
                         dynamic_ncols=True, leave=False)
        self.failed = 0

    def update(self, done: int = 0, failed: int = 0) -> None:
        self.failed += failed
        if failed:
            self._bar.set_postfix(failed=self.failed, refresh=False)
        self._bar.update(done + failed)

    def set_description(self, text: str) -> None:
        self._bar.set_description(text, refresh=False)

    def close(self) -> None:
        self._bar.close()


class _NoBar:
    def update(self, done: int = 0, failed: int = 0) -> None:
        pass

    def set_description(self, text: str) -> None:
        pass

    def close(self) -> None:
        pass


_factory: list[Callable[[int | None, str], ProgressBar]] = [_Tqdm]


def set_progress_factory(factory: Callable[[int | None, str], ProgressBar]) -> None:
    """Make every later operation's bar with factory(total, description)."""
    _factory[0] = factory


def progress_bar(total: int | None, desc: str, enabled: bool = True) -> ProgressBar:
    """A bar for an operation of `total` items (None: unknown), or one that shows nothing."""
    return _factory[0](total, desc) if enabled else _NoBar()
