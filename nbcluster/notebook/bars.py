"""The progress bar of long operations in a notebook: an ipywidgets bar with counts, rate,
ETA, overhead and a Cancel button.

Updates reach the front end at most every UPDATE_S (a 100k-task map sends ~10 messages a
second, not 100k), and the widgets are made only once an operation has run SHOW_AFTER_S, so
quick operations pay for one empty display and nothing else.
"""

from __future__ import annotations

import html
import threading
import time
from collections.abc import Callable

import ipywidgets as widgets
from IPython.display import display

from ..client.bars import SHOW_AFTER_S

__all__ = ["WidgetBar"]

UPDATE_S = 0.1


class WidgetBar:
    """A ProgressBar (see nbcluster.bars) drawn with ipywidgets."""

    def __init__(self, total: int | None, desc: str, cancel: Callable[[], None] | None = None):
        self.total, self.desc, self._cancel = total, desc, cancel
        self.done = self.failed = 0
        self.running: int | None = None
        self.overhead: float | None = None
        self.started = time.monotonic()
        self._pushed_at = 0.0
        self._lock = threading.Lock()
        self.box: widgets.HBox | None = None   # made only once the operation turns out long
        self.closed = False
        # A placeholder displayed now, from the cell's own thread: the widget that replaces
        # it later (from a timer thread) lands under this cell whatever runs meanwhile.
        self._handle = display({"text/plain": ""}, raw=True, display_id=True)
        self._timer = threading.Timer(SHOW_AFTER_S, self._show)
        self._timer.daemon = True
        self._timer.start()

    def _build(self) -> widgets.HBox:
        self.bar = widgets.IntProgress(value=0, min=0, max=max(1, self.total or 1),
                                       layout=widgets.Layout(width="40%"))
        self.label = widgets.HTML()
        self.button = widgets.Button(description="Cancel", button_style="warning",
                                     layout=widgets.Layout(width="auto"),
                                     tooltip="cancel the tasks not done yet")
        self.button.on_click(self._on_cancel)
        self.button.layout.display = None if self._cancel is not None else "none"
        box = widgets.HBox([widgets.HTML(f"<b>{html.escape(self.desc)}</b>&nbsp;"), self.bar,
                            self.label, self.button])
        box.add_class("nbcluster-progress")
        return box

    def _show(self) -> None:
        with self._lock:
            if not self.closed:
                self.box = self._build()
                self._push()
                self._handle.update(self.box)

    def _on_cancel(self, _button=None) -> None:
        self.button.disabled = True
        self.button.description = "Cancelling"
        if self._cancel is not None:
            self._cancel()

    def update(self, done: int = 0, failed: int = 0, running: int | None = None,
               overhead: float | None = None) -> None:
        with self._lock:
            self.done += done
            self.failed += failed
            if running is not None:
                self.running = running
            if overhead is not None:
                self.overhead = overhead
            if self.box is not None and time.monotonic() - self._pushed_at >= UPDATE_S:
                self._push()

    def set_description(self, text: str) -> None:
        self.desc = text

    def _push(self) -> None:
        self._pushed_at = now = time.monotonic()
        finished = self.done + self.failed
        elapsed = max(now - self.started, 1e-9)
        rate = finished / elapsed
        parts = [f"{finished:,}/{self.total:,}" if self.total else f"{finished:,}"]
        parts.append(f"{self.done:,} done")
        if self.running:
            parts.append(f"{self.running:,} running")
        if self.failed:
            parts.append(f"<span style='color:#c00'>{self.failed:,} failed</span>")
        parts.append(f"{rate:,.1f}/s")
        if self.total and rate > 0 and finished < self.total:
            parts.append(f"ETA {_duration((self.total - finished) / rate)}")
        else:
            parts.append(_duration(elapsed))
        if self.overhead is not None:
            parts.append(f"overhead {self.overhead:.0%}")
        assert self.box is not None   # built before the first push
        with self.box.hold_sync():
            self.bar.value = min(finished, self.bar.max)
            self.bar.bar_style = "danger" if self.failed else ""
            self.label.value = " · ".join(parts)

    def close(self) -> None:
        with self._lock:
            if self.closed:
                return
            self.closed = True
            self._timer.cancel()
            if self.box is None:   # quick: never shown, nothing to finish
                return
            self._push()
            self.bar.bar_style = "danger" if self.failed else "success"
            self.button.layout.display = "none"


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, s = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {s:02d} s"
    return f"{minutes // 60} h {minutes % 60:02d} min"

