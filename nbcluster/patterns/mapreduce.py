"""MapReduce on the cluster, in two shapes.

Teamtalk's: split the input into n pieces, map each on a worker, reduce the n results.

    job = MapReduce(split=..., map=count_words, reduce=merge_counts)
    job.run(paths, tasks=8, callback=print)          # a Future; the callback gets the result

Keyed, with the shuffle between workers:

    map_reduce(paths, mapper=words_of_file, reducer=sum, combiner=sum)   # {word: count}

    client ──records──► map tasks ──(key, value) pairs, combined into one bucket per worker
    client ◄──where each map output is
    client ──"reduce partition p; the buckets are at ..."──► reduce tasks ──fetch──► map workers
    client ◄──final {key: value} of each partition (streamed)

The client never holds the intermediate data. A map output whose worker is gone (found
before the reduce phase starts, or when a reduce task fails to fetch it) is computed again
from its records, which the client keeps; reduce tasks lost with their worker are re-run by
the broker.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import itertools
import os
import threading
from collections.abc import Callable, Generator, Hashable, Iterable, Iterator, Mapping, Sequence
from typing import Generic, Literal, TypeVar, cast, overload

from ..client.bars import progress_bar
from ..client.chunks import auto_chunksize
from ..client.client import Client
from ..client.futures import TaskFuture
from ..client.waiting import as_completed, wait  # interrupted, they cancel what is not done
from ..errors import NBClusterError, TaskCancelled, locate
from ..wire.remote import FailureTally
from . import shuffle
from .session import current_client

__all__ = ["MapReduce", "map_reduce"]

MAX_RECOMPUTES = 3      # times a map output may be lost and computed again

D = TypeVar("D")                    # the data MapReduce.run splits
Piece = TypeVar("Piece")            # one piece of it, what map gets
M = TypeVar("M")                    # what map returns
R = TypeVar("R")                    # the reduced result
Rec = TypeVar("Rec")                # a record of map_reduce
K = TypeVar("K", bound=Hashable)    # a key the mapper emits
V = TypeVar("V")                    # a value the mapper emits
E = TypeVar("E")                    # an element of a sequence

# What a mapper returns: (key, value) pairs, or a mapping {key: value}.
Mapper = Iterable[tuple[K, V]] | Mapping[K, V]


class MapReduce(Generic[D, Piece, M, R]):
    """Teamtalk's MapReduce: `split(data, n)` into pieces on the client, `map(piece)` on the
    workers, `reduce(results)` on the client.

    Args:
        map: called on each piece, on a worker.
        reduce: called on the client with the list of map results, in piece order.
        split: (data, n) -> n pieces; by default a sequence is cut into n contiguous slices.
    """

    def __init__(self, *, map: Callable[[Piece], M], reduce: Callable[[list[M]], R],
                 split: Callable[[D, int], Iterable[Piece]] | None = None) -> None:
        # the default split: D is a sequence and a Piece a slice of it
        self.split = split or cast(Callable[[D, int], Iterable[Piece]], split_evenly)
        self.map, self.reduce = map, reduce

    def run(self, data: D, tasks: int | None = None,
            callback: Callable[[R], object] | None = None, *, client: Client | None = None,
            labels: Iterable[str] | None = None) -> concurrent.futures.Future[R]:
        """Start the job; returns a Future of the reduced result (wait on it, or await it).

        Args:
            tasks: number of pieces (default: one per worker).
            callback: called with the result on the client when the job succeeds.

        The Future fails with a RemoteErrorGroup naming every piece that failed; cancelling
        it cancels the map tasks still queued or running.
        """
        client = current_client(client)
        tasks = tasks or client.n_workers or len(client.workers()) or 1
        pieces = list(self.split(data, tasks))
        fn = client.prepare(self.map)
        futures = [client.options(labels=labels).submit(fn, piece) for piece in pieces]
        job: _JobFuture[R] = _JobFuture(futures)
        threading.Thread(target=self._finish, args=(job, futures, callback, client),
                         name="nbcluster-mapreduce", daemon=True).start()
        return job

    def _finish(self, job: _JobFuture[R], futures: list[TaskFuture[object]],
                callback: Callable[[R], object] | None, client: Client) -> None:
        position: dict[concurrent.futures.Future[object], int] = {
            f: i for i, f in enumerate(futures)}
        tally, pending = FailureTally(), set(position)
        while pending and not tally.systematic:   # a repeated failure: the rest is cancelled
            done, pending = concurrent.futures.wait(
                pending, return_when=concurrent.futures.FIRST_COMPLETED)
            for f in done:
                e = None if f.cancelled() else f.exception()
                if e is not None:
                    locate(e, position[f])
                    tally.add(e)
        if pending:
            client.cancel([f for f in futures if f in pending])
        if job.cancelled():
            return
        try:
            if tally:
                raise tally.group(len(futures), "map tasks", len(pending))
            # what the map tasks returned: self.map's results, unpickled
            result = self.reduce(cast(list[M], [f.result() for f in futures]))
        except BaseException as e:   # noqa: BLE001 - the job's failure, for whoever waits
            if job.set_running_or_notify_cancel():
                job.set_exception(e)
            return
        if job.set_running_or_notify_cancel():
            job.set_result(result)
            if callback is not None:
                callback(result)


class _JobFuture(concurrent.futures.Future[R]):
    def __init__(self, tasks: list[TaskFuture[object]]) -> None:
        super().__init__()
        self._tasks = tasks

    def cancel(self) -> bool:
        for t in self._tasks:
            t.interrupt()   # queued or running: the job's tasks are not wanted any more
        return super().cancel()

    def __await__(self) -> Generator[object, None, R]:
        import asyncio
        return asyncio.wrap_future(self).__await__()


def split_evenly(data: Sequence[E] | Iterable[E], n: int) -> list[Sequence[E]]:
    """data cut into n contiguous slices of nearly equal length (fewer if data is shorter)."""
    if not (hasattr(data, "__getitem__") and hasattr(data, "__len__")):
        data = list(data)
    data = cast(Sequence[E], data)
    n = max(1, min(n, len(data)))
    bounds = [len(data) * i // n for i in range(n + 1)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


@overload
def map_reduce(records: Iterable[Rec], mapper: Callable[[Rec], Mapper[K, V]],
               reducer: Callable[[list[V]], R], combiner: Callable[[list[V]], V] | None = None,
               partitions: int | None = None, *, client: Client | None = None,
               chunksize: int | None = None, labels: Iterable[str] | None = None,
               progress: bool = True, stream: Literal[False] = False) -> dict[K, R]: ...


@overload
def map_reduce(records: Iterable[Rec], mapper: Callable[[Rec], Mapper[K, V]],
               reducer: Callable[[list[V]], R], combiner: Callable[[list[V]], V] | None = None,
               partitions: int | None = None, *, client: Client | None = None,
               chunksize: int | None = None, labels: Iterable[str] | None = None,
               progress: bool = True, stream: Literal[True]) -> Iterator[tuple[K, R]]: ...


def map_reduce(records: Iterable[Rec], mapper: Callable[[Rec], Mapper[K, V]],
               reducer: Callable[[list[V]], R], combiner: Callable[[list[V]], V] | None = None,
               partitions: int | None = None, *, client: Client | None = None,
               chunksize: int | None = None, labels: Iterable[str] | None = None,
               progress: bool = True, stream: bool = False
               ) -> dict[K, R] | Iterator[tuple[K, R]]:
    """Keyed MapReduce with the shuffle between workers (see the module doc).

    Args:
        mapper: record -> iterable of (key, value) pairs, or a mapping {key: value}.
        reducer: list of one key's values -> that key's result.
        combiner: list of values -> one value, applied on the map side to cut what is
            shuffled; like Hadoop's, it may run zero or more times on any subset of a key's
            values, so `reducer` must accept its outputs among the values.
        partitions: number of reduce tasks (default: one per worker).
        chunksize: records per map task (default: a few tasks per worker).
        stream: yield (key, result) pairs as each partition finishes instead of a dict.

    Returns:
        {key: reducer(values)}, partition by partition; values reach the reducer in no
        particular order.

    Raises:
        RemoteErrorGroup: a mapper raised on some records (then no reduce runs) or the
            reducer raised on some keys; each error names its record or key and worker.
    """
    job = _KeyedJob(list(records), mapper, reducer, combiner, partitions, current_client(client),
                    chunksize, labels, progress)
    if stream:
        return (pair for part in job.results() for pair in part.items())
    results: dict[K, R] = {}
    for part in job.results():
        results.update(part)
    return results


class _KeyedJob:
    def __init__(self, records: list, mapper, reducer, combiner, partitions: int | None,
                 client: Client, chunksize: int | None, labels, progress: bool):
        self.client, self.labels, self.progress = client, sorted(labels or ()), progress
        n_workers = client.n_workers or len(client.workers()) or 1
        self.partitions = partitions or n_workers
        size = chunksize or auto_chunksize(len(records), n_workers)
        self.chunks = [(start, records[start:start + size])
                       for start in range(0, len(records), size)]
        self.n_records = len(records)
        self.sid = os.urandom(8).hex()
        self.map_fn = client.prepare(shuffle.MapTask(self.sid, mapper, combiner, self.partitions))
        self.reduce_fn = client.prepare(shuffle.ReduceTask(self.sid, reducer))
        self.where: dict[int, shuffle.MapOutcome] = {}   # map index -> where its output is
        self.recomputes = 0   # map outputs computed again; each goes to a bucket of its own
        self.live: dict[TaskFuture, tuple[str, int]] = {}   # tasks in flight -> (kind, index)
        self.cancelled = False

    def cancel(self) -> None:
        """Stop the job (from another thread, e.g. a progress bar's button): the tasks in
        flight are cancelled and the job raises TaskCancelled."""
        self.cancelled = True
        self.client.cancel(list(self.live))

    def _check_cancelled(self) -> None:
        if self.cancelled:
            raise TaskCancelled("map_reduce was cancelled")

    def results(self) -> Iterator[dict]:
        """The final {key: result} of each partition, as each finishes."""
        live = self.live
        try:
            self._map_phase(live)
            yield from self._reduce_phase(live)
        finally:
            if live:
                self.client.cancel(list(live))
            # free the map outputs on every worker; nobody waits for it (and the client
            # may be closing)
            with contextlib.suppress(Exception):
                self.client.broadcast_futures(shuffle.drop, self.sid)

    def _submit_map(self, m: int, live: dict, bucket: int = 0) -> None:
        start, items = self.chunks[m]
        fut = self.client.options(labels=self.labels).submit(self.map_fn, m, bucket, start, items)
        live[fut] = ("map", m)

    def _map_phase(self, live: dict) -> None:
        bar = progress_bar(self.n_records, "map_reduce: map", self.progress, cancel=self.cancel)
        errors, ran = FailureTally(), 0
        try:
            for m in range(len(self.chunks)):
                self._submit_map(m, live)
            for fut in as_completed(live):
                _, m = live.pop(fut)
                n = len(self.chunks[m][1])
                try:
                    outcome: shuffle.MapOutcome = fut.result()
                except Exception as e:   # noqa: BLE001 - the whole map task failed
                    errors.add(e)
                    bar.update(failed=n)
                    continue
                self.where[m] = outcome
                errors.add_task(outcome.errors, outcome.counted, outcome.stopped,
                                getattr(fut, "_client", None))
                failed = len(outcome.errors) + sum(outcome.counted.values())
                ran += failed if outcome.stopped else n
                bar.update(done=n - failed, failed=failed)
                if errors.systematic:   # a mistake, not bad records: stop at once
                    break
        finally:
            bar.close()
        if errors:
            self._check_cancelled()
            raise errors.group(self.n_records, "records",
                               self.n_records - ran if errors.systematic else 0)

    def _sources(self) -> list[tuple[str, int, list[int]]]:
        """(endpoint, bucket, map indices in it) of every bucket holding map outputs."""
        buckets: dict[tuple[str, int], list[int]] = {}
        for m, o in sorted(self.where.items()):
            buckets.setdefault((o.endpoint, o.bucket), []).append(m)
        return [(endpoint, b, maps) for (endpoint, b), maps in buckets.items()]

    def _reduce_phase(self, live: dict) -> Iterator[dict]:
        # Map outputs on workers that left since are computed again before anyone fetches them.
        present = {w["id"] for w in self.client.workers()}
        lost = [m for m, o in self.where.items() if o.worker not in present]
        waiting: dict[int, set[int]] = {}   # reduce partition -> map outputs it waits for
        for m in lost:
            self._recompute(m, live)
        bar = progress_bar(self.partitions, "map_reduce: reduce", self.progress,
                           cancel=self.cancel)
        errors = FailureTally()
        try:
            for p in range(self.partitions):
                if lost:
                    waiting[p] = set(lost)
                else:
                    self._submit_reduce(p, live)
            while live and not errors.systematic:   # a repeated failure stops the job
                done, _ = wait(live, return_when=concurrent.futures.FIRST_COMPLETED)
                self._check_cancelled()
                for fut in done:
                    kind, n = live.pop(fut)
                    try:
                        outcome = fut.result()
                    except Exception as e:
                        if kind == "map":
                            raise NBClusterError(f"map task {n} failed when computed again: "
                                                 f"{e}") from e
                        errors.add(e)
                        bar.update(failed=1)
                        continue
                    if kind == "map":
                        self.where[n] = outcome
                        for p, needs in list(waiting.items()):
                            needs.discard(n)
                            if not needs:
                                del waiting[p]
                                self._submit_reduce(p, live)
                    elif isinstance(outcome, shuffle.Missing):
                        for m, place in outcome.where.items():
                            known = self.where.get(m)
                            if known is not None and (known.endpoint, known.bucket) == place:
                                self._recompute(m, live)   # else: already being recomputed
                        waiting[n] = set(outcome.where) - set(self.where)
                        if not waiting[n]:
                            del waiting[n]
                            self._submit_reduce(n, live)
                    else:
                        errors.add_task(outcome.errors, outcome.counted, outcome.stopped,
                                        fut._client)
                        bar.update(done=1)
                        yield outcome.results
        finally:
            bar.close()
        if errors:
            raise errors.group(None, "reduce keys or partitions", stopped=bool(live))

    def _submit_reduce(self, p: int, live: dict) -> None:
        fut = self.client.options(labels=self.labels).submit(self.reduce_fn, p, self._sources())
        live[fut] = ("reduce", p)

    def _recompute(self, m: int, live: dict) -> None:
        self.recomputes += 1
        if self.recomputes > MAX_RECOMPUTES * max(1, len(self.chunks)):
            raise NBClusterError("map outputs keep getting lost (workers keep leaving); "
                                 "giving up")
        self.where.pop(m, None)
        self._submit_map(m, live, bucket=self.recomputes)
