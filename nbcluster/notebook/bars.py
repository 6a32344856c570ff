"""The progress bar of long operations in a notebook: an ipywidgets bar with counts, rate,
ETA, overhead and a Cancel button.

Updates reach the front end at most every UPDATE_S (a 100k-task map sends ~10 messages a
second, not 100k), and the bar appears only once an operation has run SHOW_AFTER_S.
"""

from __future__ import annotations

import threading
import time
from typing import Callable

import ipywidgets as widgets
from IPython.display import display

from ..bars import SHOW_AFTER_S

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
        self.bar = widgets.IntProgress(value=0, min=0, max=max(1, total or 1),
                                       layout=widgets.Layout(width="40%"))
        self.label = widgets.HTML()
        self.button = widgets.Button(description="Cancel", button_style="warning",
                                     layout=widgets.Layout(width="auto"),
                                     tooltip="cancel the tasks not done yet")
        self.button.on_click(self._on_cancel)
        self.button.layout.display = None if cancel is not None else "none"
        self.box = widgets.HBox([widgets.HTML(f"<b>{_escape(desc)}</b>&nbsp;"), self.bar,
                                 self.label, self.button],
                                layout=widgets.Layout(display="none"))
        self.box.add_class("nbcluster-progress")
        # hidden until the operation turns out long; displayed from the cell's own thread
        self._handle = display(self.box, display_id=True)
        self._timer = threading.Timer(SHOW_AFTER_S, self._show)
        self._timer.daemon = True
        self._timer.start()
        self.closed = False

    def _show(self) -> None:
        with self._lock:
            if not self.closed:
                self._push()
                self.box.layout.display = "flex"

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
            if time.monotonic() - self._pushed_at >= UPDATE_S and self.box.layout.display != "none":
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
            if self.box.layout.display == "none":   # quick: never shown, leave nothing
                self._handle.update({"text/plain": ""}, raw=True)
                self.box.close()
                return
            self._push()
            self.bar.bar_style = "danger" if self.failed else "success"
            self.button.layout.display = "none"


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, s = divmod(int(seconds), 60)
    return f"{minutes} min {s:02d} s" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"


def _escape(text: str) -> str:
    import html
    return html.escape(text)
