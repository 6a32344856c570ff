"""Capturing a running task's output: what it prints (and displays) is kept, tagged with the
task, until a thread of the worker sends it to the client.

`TaskStream` stands in for sys.stdout/sys.stderr in a worker; `OutputBuffer` holds what it
caught, bounded so a task printing in a tight loop cannot fill the worker's memory.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from .state import WorkerState

__all__ = ["OutputBuffer", "TaskStream"]

OUTPUT_CHUNK_MAX = 256 * 1024
_TEXT_STREAMS = ("stdout", "stderr")   # consecutive text of one stream is sent as one item


class OutputBuffer:
    """Captured task output waiting to be sent: [gid, attempt, stream, text] items. At most
    OUTPUT_CHUNK_MAX characters wait: past that the oldest items go (a task printing in a
    tight loop shows its latest output, and a note of how much was dropped)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.items: list[list[Any]] = []
        self.size = 0
        self.dropped = 0

    def add(self, tag: tuple[int, int], stream: str, text: str) -> None:
        with self.lock:
            while self.items and self.size + len(text) > OUTPUT_CHUNK_MAX:
                self.dropped += len(self.items.pop(0)[3])
                self.size = sum(len(item[3]) for item in self.items)
            if self.items and self.items[-1][:3] == [*tag, stream] and stream in _TEXT_STREAMS:
                self.items[-1][3] += text
            else:
                self.items.append([*tag, stream, text])
            self.size += len(text)

    def take(self) -> list[list[Any]]:
        with self.lock:
            items, self.items, self.size = self.items, [], 0
            if self.dropped and items:
                note = f"[nbcluster: {self.dropped} characters of earlier output dropped]\n"
                items.insert(0, [*items[0][:2], "stderr", note])
                self.dropped = 0
            return items


class TaskStream:
    """sys.stdout/sys.stderr while a task runs: text goes to the client, tagged with the task."""

    def __init__(self, worker: WorkerState, name: str, real: TextIO):
        self._worker, self._name, self._real = worker, name, real
        self.encoding = getattr(real, "encoding", "utf-8")

    def write(self, text: str) -> int:
        tag = self._worker.current_tag
        if tag is None:
            return self._real.write(text)
        self._worker.output.add(tag, self._name, str(text))
        return len(text)

    def flush(self) -> None:
        if self._worker.current_tag is None:
            self._real.flush()

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        return self._real.fileno()
