"""Output of a `%%cluster` cell, live, under the cell that ran it.

    worker ──output items──► client I/O thread ──► future.output (append only)
    flusher thread, every FLUSH_S: new items ──► per-worker block ──► update_display(display_id)

Each worker gets one display (a collapsible block) made when the cell starts, in the cell's
own thread; later updates name its display id, so they land under that cell even after the
user has moved on to others. Updates are rate-limited (FLUSH_S) and each block keeps at most
MAX_TEXT characters and MAX_RICH rich outputs, so a worker printing in a tight loop cannot
freeze the browser. In terminal IPython (no front end for displays) lines are printed as
they come, prefixed with the worker.
"""

from __future__ import annotations

import html
import json
import sys
import threading
from collections.abc import Mapping
from typing import Any

from IPython.display import display

from ..client.debugging import wait_attending
from ..client.futures import TaskFuture

__all__ = ["WorkerOutputs"]

FLUSH_S = 0.2
MAX_TEXT = 200_000      # characters of stdout/stderr kept per worker (the most recent)
MAX_RICH = 50           # rich outputs kept per worker (the most recent)


class _Block:
    def __init__(self, worker: Mapping[str, Any], handle):
        self.worker, self.handle = worker, handle
        self.items: list[tuple[str, Any]] = []   # ("stdout"|"stderr", text) or ("rich", bundle)
        self.text_chars = 0
        self.dropped = 0
        self.state = "running"
        self.dirty = True

    def add(self, stream: str, text: str) -> None:
        if stream in ("stdout", "stderr"):
            if self.items and self.items[-1][0] == stream:
                self.items[-1] = (stream, self.items[-1][1] + text)
            else:
                self.items.append((stream, text))
            self.text_chars += len(text)
            while self.text_chars > MAX_TEXT and self.items:
                self._drop_oldest_text()
        elif stream == "display":
            self.items.append(("rich", json.loads(text)))
            rich = [i for i, (kind, _) in enumerate(self.items) if kind == "rich"]
            if len(rich) > MAX_RICH:
                del self.items[rich[0]]
                self.dropped += 1
        elif stream == "clear":
            self.items, self.text_chars = [], 0
        self.dirty = True

    def _drop_oldest_text(self) -> None:
        for i, (kind, text) in enumerate(self.items):
            if kind in ("stdout", "stderr"):
                cut = min(len(text), self.text_chars - MAX_TEXT + 1)
                self.dropped += cut
                self.text_chars -= cut
                if cut == len(text):
                    del self.items[i]
                else:
                    self.items[i] = (kind, text[cut:])
                return
        self.text_chars = 0

    def bundle(self) -> dict:
        w = self.worker
        where = f"{w.get('host', '?')}:{w.get('pid', '?')}"
        state = {"running": "⏳ running", "ok": "✓ done", "error": "✗ failed",
                 "cancelled": "cancelled"}.get(self.state, self.state)
        parts, plain = [], [f"[{w['id']}] {state}"]
        if self.dropped:
            parts.append(f"<div style='color:#888'>… {self.dropped:,} earlier characters or "
                         "outputs not shown</div>")
        for kind, value in self.items:
            if kind == "rich":
                parts.append(_rich_html(value))
                plain.append(value.get("data", {}).get("text/plain", ""))
            else:
                style = "color:#b00;" if kind == "stderr" else ""
                parts.append(f"<pre style='margin:0;{style}'>{html.escape(value)}</pre>")
                plain.append(value.rstrip("\n"))
        summary = (f"<summary><b>{html.escape(w['id'])}</b> <span style='color:#666'>"
                   f"{html.escape(where)}</span> — {state}</summary>")
        body = "".join(parts) or "<div style='color:#888'>(no output)</div>"
        return {"text/html": f"<details open class='nbcluster-worker-output' "
                             f"data-worker='{html.escape(w['id'])}'>{summary}{body}</details>",
                "text/plain": "\n".join(plain)}


def _rich_html(bundle: dict) -> str:
    data = bundle.get("data", {})
    prefix = ""
    if bundle.get("execute_result") is not None:
        prefix = f"<span style='color:#a00'>Out[{bundle['execute_result']}]:</span> "
    if "text/html" in data:
        body = data["text/html"]
    elif "image/png" in data:
        body = f"<img src='data:image/png;base64,{data['image/png']}'/>"
    elif "image/svg+xml" in data:
        body = data["image/svg+xml"]
    else:
        body = f"<pre style='margin:0'>{html.escape(data.get('text/plain', ''))}</pre>"
    return f"<div>{prefix}{body}</div>"


class WorkerOutputs:
    """The live output blocks of one cell run on some workers.

    Args:
        futures: {worker id: the future of the cell on that worker}.
        workers: {worker id: its description (host, pid, ...)}.
        rich: display blocks (a notebook front end) or print lines (terminal IPython).
    """

    def __init__(self, futures: dict[str, TaskFuture], workers: Mapping[str, Mapping[str, Any]],
                 rich: bool):
        self.futures, self.rich = futures, rich
        self.blocks: dict[str, _Block] = {}
        self.seen = dict.fromkeys(futures, 0)   # output items taken from each future so far
        for wid in futures:
            handle = display({"text/plain": f"[{wid}] starting"}, raw=True,
                             display_id=True) if rich else None
            self.blocks[wid] = _Block(workers.get(wid, {"id": wid}), handle)
        self._wake = threading.Event()
        for fut in futures.values():
            fut.add_done_callback(lambda f: self._wake.set())
        self._thread = threading.Thread(target=self._flush_loop, name="nbcluster-live-output",
                                        daemon=True)
        self._thread.start()

    def _flush_loop(self) -> None:
        # Futures only ever append to .output, so reading them from here needs no lock.
        while True:
            self._wake.wait(FLUSH_S)
            self._wake.clear()
            finished = all(f.done() for f in self.futures.values())
            self._take_output()
            if self.rich:
                for b in self.blocks.values():
                    if b.dirty:
                        b.dirty = False
                        b.handle.update(b.bundle(), raw=True)
            if finished:
                return

    def _take_output(self) -> None:
        for wid, fut in self.futures.items():
            block, new = self.blocks[wid], fut.output[self.seen[wid]:]
            self.seen[wid] += len(new)
            for stream, text, _ in new:
                if self.rich:
                    block.add(stream, text)
                else:
                    _print(wid, stream, text)
            if fut.done() and block.state == "running":
                block.state = "cancelled" if fut.cancelled() else \
                    "error" if fut.exception() is not None else "ok"
                block.dirty = True

    def wait(self) -> None:
        """Until every worker is done and its last output is shown (a task paused at a
        breakpoint meanwhile gets its prompt here)."""
        def joined(seconds: float | None) -> bool:
            self._thread.join(seconds)
            return not self._thread.is_alive()

        wait_attending(joined, None)


def _print(worker: str, stream: str, text: str) -> None:
    """Terminal IPython: output as lines prefixed with the worker."""
    if stream in ("stdout", "stderr"):
        out = sys.stdout if stream == "stdout" else sys.stderr
        for line in text.splitlines(keepends=True):
            out.write(f"[{worker}] {line}")
        if not text.endswith("\n"):
            out.write("\n")
        out.flush()
    elif stream == "display":
        print(f"[{worker}] {json.loads(text).get('data', {}).get('text/plain', '')}")
