"""Running one terminal step of a parallel collection: chunks cut from the input as the run
goes, a few per worker in flight, their outcomes handed back in input order.

Chunk sizes adapt: the client measures how long an element takes on the workers and what
each task costs beyond that, and makes chunks long enough that this overhead stays near
OVERHEAD_TARGET (but never so few that workers go idle, and never more than MAX_CHUNK_BYTES
of pickled input). A failure that repeats stops the run at once; failures are raised
together, as one RemoteErrorGroup, once the run ends.
"""

from __future__ import annotations

import collections
import concurrent.futures
import itertools
import statistics
import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from ..client import waiting
from ..client.bars import progress_bar
from ..client.futures import TaskFuture
from ..errors import BrokerLost, TaskCancelled
from ..wire.remote import FailureTally
from . import pipeline as pl
from .session import current_client

if TYPE_CHECKING:
    from .collections import Parallel

__all__ = ["ChunkedRun", "ChunkSizer", "RunStats"]

OVERHEAD_TARGET = 0.03       # aim for per-task costs of ~3% of the work
FIRST_CHUNK = 1              # the first chunks measure; later ones grow to the right size
MAX_GROWTH = 16              # a chunk is at most this many times the previous one
MAX_CHUNK_S = 1.0            # ...and aims at no more than this many seconds of work
MAX_CHUNK_BYTES = 8 << 20    # ...and no more than this much pickled input: big items go alone
CHUNKS_IN_FLIGHT = 3         # per worker: one running, the next ones queued close by
DEFAULT_TASK_COST_S = 1e-3   # per-task overhead assumed until measured
MIN_TASK_COST_S = 1e-4       # what a task costs at least, however it measures


class RunStats:
    """How a run went: tasks, elements, final chunk size, the per-task cost measured, and the
    scheduling overhead (the share of worker time not spent on the work itself)."""

    def __init__(self) -> None:
        self.tasks = self.elements = self.chunksize = 0
        self.task_cost_s = DEFAULT_TASK_COST_S
        self.busy_s = self.wall_s = 0.0
        self.workers: set[str] = set()

    @property
    def overhead(self) -> float:
        """1 - (time workers spent computing) / (wall time x workers used), in [0, 1]."""
        capacity = self.wall_s * max(1, len(self.workers))
        return max(0.0, 1.0 - self.busy_s / capacity) if capacity else 0.0

    def __repr__(self) -> str:
        return (f"<RunStats {self.elements} elements in {self.tasks} tasks (chunks of up to "
                f"{self.chunksize}), {self.wall_s:.3f} s, overhead {self.overhead:.1%}>")


class ChunkSizer:
    """Chooses each chunk's size from what finished chunks took (see the module doc)."""

    def __init__(self, fixed: int | None, n_workers: int, total: int | None):
        self.fixed, self.n_workers, self.total = fixed, max(1, n_workers), total
        self.size = fixed or FIRST_CHUNK
        self.largest_done = 0
        self.work_s = self.work_n = 0.0   # decaying sums of chunk durations and sizes
        self.bytes_per_element: float | None = None
        self.costs: collections.deque[float] = collections.deque(maxlen=16)
        self.last_seen: dict[str, float] = {}

    def observe(self, fut: TaskFuture, n: int, arrived: float) -> None:
        if not n or fut.duration is None:
            return
        # Weighted by size: a tiny chunk's time is mostly fixed costs, not its elements.
        self.work_s = 0.8 * self.work_s + fut.duration
        self.work_n = 0.8 * self.work_n + n
        self.largest_done = max(self.largest_done, n)
        # A busy worker's results arrive one task's work plus the per-task cost apart.
        worker = fut.worker or "?"
        prev = self.last_seen.get(worker)
        self.last_seen[worker] = arrived
        if prev is not None:
            self.costs.append(max(MIN_TASK_COST_S, arrived - prev - fut.duration))

    @property
    def task_cost_s(self) -> float:
        # The median: results sent together arrive 0 s apart, idle spells make gaps long.
        return statistics.median(self.costs) if self.costs else DEFAULT_TASK_COST_S

    def next_size(self, sent: int) -> int:
        if self.fixed:
            return self.fixed
        if self.work_n:
            target_s = min(MAX_CHUNK_S, self.task_cost_s / OVERHEAD_TARGET)
            ideal = int(target_s / max(self.work_s / self.work_n, 1e-8))
            self.size = max(1, min(ideal, self.largest_done * MAX_GROWTH))
        if self.bytes_per_element:
            self.size = min(self.size, max(1, int(MAX_CHUNK_BYTES / self.bytes_per_element)))
        if self.total is not None:   # keep a few chunks per worker for the tail
            left = self.total - sent
            self.size = min(self.size, max(1, -(-left // (2 * self.n_workers))))
        return self.size


class ChunkedRun:
    """One terminal step: feeds chunks to the cluster and yields their outcomes in order."""

    def __init__(self, source: Parallel, terminal: tuple[str, Any], desc: str):
        self.client = current_client(source.client)
        self.stats = RunStats()
        self.runner = self.client.prepare(pl.Pipeline(tuple(source.steps), terminal))
        self.items = iter(source.iterable)
        self.total = _length(source.iterable)
        n_workers = self.client.n_workers or len(self.client.workers()) or 1
        self.sizer = ChunkSizer(source.chunksize, n_workers, self.total)
        self.window = CHUNKS_IN_FLIGHT * n_workers
        self.options = self.client.options(labels=source.labels, retries=source.retries)
        self.bar = progress_bar(self.total, desc, source.progress, cancel=self.cancel)
        self.failures = FailureTally()   # a failure that repeats stops the run at once
        self.completed = 0                 # elements that ran (succeeded or failed)
        self.inflight: dict[TaskFuture, tuple[int, int]] = {}   # future -> (chunk number, size)
        self.cancelled = False

    def cancel(self) -> None:
        """Stop the run (from another thread, e.g. a progress bar's button): the chunks in
        flight are cancelled and the terminal step raises TaskCancelled."""
        self.cancelled = True
        self.client.cancel(list(self.inflight))

    def outcomes(self, stop_early: bool = False) -> Iterator[pl.ChunkOutcome]:
        """Outcomes of all chunks in input order; with stop_early, ends at the first chunk
        that decided an any/all/none (in completion order) and cancels the rest."""
        inflight = self.inflight
        done: dict[int, pl.ChunkOutcome] = {}
        sent = next_chunk = next_out = 0
        exhausted = False
        started = time.perf_counter()
        try:
            while True:
                while not exhausted and not self.cancelled and len(inflight) < self.window:
                    size = self.sizer.next_size(sent)
                    chunk = list(itertools.islice(self.items, size))
                    if not chunk:
                        exhausted = True
                        break
                    fut = self.options.submit(self.runner, sent, chunk)
                    if self.sizer.bytes_per_element is None:
                        self.sizer.bytes_per_element = fut.input_bytes / len(chunk)
                    inflight[fut] = (next_chunk, len(chunk))
                    sent += len(chunk)
                    next_chunk += 1
                    self.stats.chunksize = max(self.stats.chunksize, len(chunk))
                if not inflight:
                    break
                finished, _ = waiting.wait(inflight, return_when=concurrent.futures.FIRST_COMPLETED)
                if self.cancelled:
                    raise TaskCancelled(f"cancelled after {self.stats.elements} of "
                                        f"{self.total if self.total is not None else '?'} "
                                        "elements")
                now = time.perf_counter()
                for fut in finished:
                    number, n = inflight.pop(fut)
                    outcome = self._outcome(fut, number, n, now)
                    if stop_early and outcome.values:
                        yield outcome
                        return
                    done[number] = outcome
                if self.failures.systematic:
                    self.raise_errors(stopped=True)
                while next_out in done:
                    yield done.pop(next_out)
                    next_out += 1
        finally:
            if inflight:   # stopped early, failed, or interrupted: the rest is not wanted
                self.client.cancel(list(inflight))
            self.stats.wall_s = time.perf_counter() - started
            self.stats.task_cost_s = self.sizer.task_cost_s
            self.bar.close()

    def _outcome(self, fut: TaskFuture, number: int, n: int, now: float) -> pl.ChunkOutcome:
        self.stats.tasks += 1
        self.stats.elements += n
        try:
            outcome = fut.result()
        except BrokerLost:   # not a failure of these elements: no other chunk can finish
            raise
        except Exception as e:   # noqa: BLE001 - the whole chunk failed (WorkerLost, cancelled,
            # unpickling, the user's code outside the elements): recorded, raised at the end
            self.failures.add(e)
            self.bar.update(failed=n)
            return pl.ChunkOutcome([], n, [])
        self.stats.busy_s += fut.duration or 0.0
        if fut.worker:
            self.stats.workers.add(fut.worker)
        self.sizer.observe(fut, n, now)
        self.failures.add_task(outcome.errors, outcome.counted, outcome.stopped, fut._client)
        failed = len(outcome.errors) + sum(outcome.counted.values())
        self.completed += failed if outcome.stopped else outcome.n
        cost = self.sizer.task_cost_s
        self.bar.update(done=0 if outcome.stopped else outcome.n - failed, failed=failed,
                        running=sum(size for f, (_, size) in self.inflight.items() if f.running()),
                        overhead=cost / (cost + (fut.duration or 0.0)))
        return outcome

    def raise_errors(self, stopped: bool = False) -> None:
        """A RemoteErrorGroup of the failures, if any; `stopped`: the run stops here, at a
        failure that repeats, and what is left is not run."""
        if self.failures:
            total = self.total if self.total is not None else self.stats.elements
            not_run = max(0, total - self.completed) if stopped else 0
            raise self.failures.group(total, "elements", not_run)


def _length(iterable: Iterable[Any]) -> int | None:
    try:
        return len(iterable)   # type: ignore[arg-type]
    except TypeError:
        return None
