"""Parallel collections: chains of map/filter/... over any iterable, run fused on the workers.

    parallel(words).map(str.lower).reject(is_stopword).group_by(len)
    pmap(f, xs)    pfilter(pred, xs)    pany(pred, xs)    ...

Nothing runs until a terminal step (`to_list`, iteration, `group_by`, `any`, `all`, `none`,
`count`). Then the input is read lazily and cut into chunks of adaptive size (see
chunked_run); each chunk runs every step for each of its elements in one pass on a worker
(see pipeline), and results come back in input order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any, Generic, TypedDict, TypeVar, Unpack

from ..client.client import Client
from . import pipeline as pl
from .chunked_run import ChunkedRun, RunStats

__all__ = ["Parallel", "parallel", "pmap", "pmap_indexed", "pfilter", "preject",
           "pflat_map", "pgroup_by", "pany", "pall", "pnone", "RunOptions", "ParallelOptions"]

T = TypeVar("T")   # the elements a chain gives (its input's, until a map)
U = TypeVar("U")   # the elements after a step
K = TypeVar("K")   # group_by's keys


class RunOptions(TypedDict, total=False):
    """How a chain runs: keywords of `Parallel` (see there), passed on by `parallel` and
    the p* functions."""
    labels: Iterable[str] | None
    retries: int
    progress: bool


class ParallelOptions(RunOptions, total=False):
    chunksize: int | None


class Parallel(Generic[T]):
    """A lazy, chainable parallel collection over `iterable` (see the module doc).

    Args:
        iterable: any iterable; read lazily, chunk by chunk, once a terminal step runs.
        client: the cluster to run on (default: `session.current_client()`).
        chunksize: elements per task (default: adaptive).
        labels: run only on workers with all these labels.
        retries: times to re-run a chunk whose task raised outside the elements.
        progress: show a progress bar for runs longer than half a second.

    Attributes:
        stats: a `RunStats` for the last terminal step run.
    """

    def __init__(self, iterable: Iterable[T], client: Client | None = None, *,
                 chunksize: int | None = None, labels: Iterable[str] | None = None,
                 retries: int = 0, progress: bool = True,
                 _steps: tuple[tuple[str, Callable[..., object]], ...] = ()) -> None:
        if chunksize is not None and chunksize < 1:
            raise ValueError(f"chunksize must be at least 1, not {chunksize}")
        self.iterable: Iterable[object] = iterable   # the input, before any step
        self.client, self.chunksize = client, chunksize
        self.labels = sorted(labels or ())
        self.retries, self.progress, self.steps = retries, progress, _steps
        self.stats: RunStats | None = None

    def _then(self, kind: str, fn: Callable[..., object]) -> Parallel[Any]:
        # Any: the elements after the step are what the public method says (Parallel[U])
        if not callable(fn):
            raise TypeError(f"{kind} needs a callable, not {type(fn).__name__}")
        return Parallel(self.iterable, self.client, chunksize=self.chunksize, labels=self.labels,
                        retries=self.retries, progress=self.progress,
                        _steps=(*self.steps, (kind, fn)))

    # ---- steps (lazy) ---------------------------------------------------------------------
    def map(self, fn: Callable[[T], U]) -> Parallel[U]:
        """fn(x) for each element."""
        return self._then(pl.MAP, fn)

    def map_indexed(self, fn: Callable[[T, int], U]) -> Parallel[U]:
        """fn(x, i) for each element, i being its index in the input."""
        return self._then(pl.MAP_INDEXED, fn)

    def filter(self, pred: Callable[[T], object] = bool) -> Parallel[T]:
        """The elements for which pred(x) is true."""
        return self._then(pl.FILTER, pred)

    def reject(self, pred: Callable[[T], object] = bool) -> Parallel[T]:
        """The elements for which pred(x) is false."""
        return self._then(pl.REJECT, pred)

    def flat_map(self, fn: Callable[[T], Iterable[U]]) -> Parallel[U]:
        """Each value of the iterable fn(x) returns, for each element, in order."""
        return self._then(pl.FLAT_MAP, fn)

    # ---- terminal steps -------------------------------------------------------------------
    def _run(self, terminal: tuple[str, Any], desc: str) -> ChunkedRun:
        run = ChunkedRun(self, terminal, desc)
        self.stats = run.stats
        return run

    def __iter__(self) -> Iterator[T]:
        """The results, in input order, as they arrive.

        Raises:
            RemoteErrorGroup: after the last result, if any element failed.
        """
        run = self._run((pl.COLLECT, None), self._desc())
        for outcome in run.outcomes():
            yield from outcome.values
        run.raise_errors()

    def to_list(self) -> list[T]:
        """All results in input order.

        Raises:
            RemoteErrorGroup: some elements failed; one error per element (`.index`, `.item`,
                remote traceback), naming every worker involved.
        """
        run = self._run((pl.COLLECT, None), self._desc())
        results: list[T] = []
        for outcome in run.outcomes():
            results.extend(outcome.values)
        run.raise_errors()
        return results

    def count(self) -> int:
        """How many elements come out of the chain."""
        return sum(1 for _ in self)

    def group_by(self, key: Callable[[T], K]) -> dict[K, list[T]]:
        """{key(x): [x, ...]}, groups in first-seen order, elements in input order."""
        if not callable(key):
            raise TypeError(f"group_by needs a callable key, not {type(key).__name__}")
        groups: dict[K, list[T]] = {}
        run = self._run((pl.GROUP, key), self._desc("group_by"))
        for outcome in run.outcomes():
            for k, v in outcome.values:
                groups.setdefault(k, []).append(v)
        run.raise_errors()
        return groups

    def any(self, pred: Callable[[T], object] | None = None) -> bool:
        """Is pred(x) (or x) true for some element? Stops and cancels the rest once known."""
        return self._decide(pl.ANY, pred, if_decided=True)

    def all(self, pred: Callable[[T], object] | None = None) -> bool:
        """Is pred(x) (or x) true for every element? Stops and cancels the rest once known."""
        return self._decide(pl.ALL, pred, if_decided=False)

    def none(self, pred: Callable[[T], object] | None = None) -> bool:
        """Is pred(x) (or x) false for every element? Stops and cancels the rest once known."""
        return self._decide(pl.NONE, pred, if_decided=False)

    def _decide(self, kind: str, pred: Callable[[T], object] | None, if_decided: bool) -> bool:
        """An element that decides the answer wins even if other elements failed; without
        one, failures raise (the answer is unknown)."""
        run = self._run((kind, pred), self._desc(kind))
        for outcome in run.outcomes(stop_early=True):
            if outcome.values:
                return if_decided
        run.raise_errors()
        return not if_decided

    def _desc(self, terminal: str = "") -> str:
        steps = [k for k, _ in self.steps] + ([terminal] if terminal else [])
        return " → ".join(steps) or "collect"

    def __repr__(self) -> str:
        return f"<Parallel {self._desc()} over {type(self.iterable).__name__}>"


def parallel(iterable: Iterable[T], client: Client | None = None,
             **options: Unpack[ParallelOptions]) -> Parallel[T]:
    """A lazy parallel collection over iterable: chain map/filter/reject/flat_map/map_indexed,
    then run with to_list()/iteration/group_by/any/all/none/count. See `Parallel`."""
    return Parallel(iterable, client, **options)


def pmap(fn: Callable[[T], U], iterable: Iterable[T], *, client: Client | None = None,
         **options: Unpack[ParallelOptions]) -> list[U]:
    """[fn(x) for x in iterable], on the cluster, in order."""
    return parallel(iterable, client, **options).map(fn).to_list()


def pmap_indexed(fn: Callable[[T, int], U], iterable: Iterable[T], *,
                 client: Client | None = None, chunksize: int | None = 1,
                 **options: Unpack[RunOptions]) -> list[U]:
    """[fn(x, i) for i, x in enumerate(iterable)]; by default one task per element."""
    return parallel(iterable, client, chunksize=chunksize, **options).map_indexed(fn).to_list()


def pfilter(pred: Callable[[T], object], iterable: Iterable[T], *, client: Client | None = None,
            **options: Unpack[ParallelOptions]) -> list[T]:
    """[x for x in iterable if pred(x)], on the cluster, in order."""
    return parallel(iterable, client, **options).filter(pred).to_list()


def preject(pred: Callable[[T], object], iterable: Iterable[T], *, client: Client | None = None,
            **options: Unpack[ParallelOptions]) -> list[T]:
    """[x for x in iterable if not pred(x)], on the cluster, in order."""
    return parallel(iterable, client, **options).reject(pred).to_list()


def pflat_map(fn: Callable[[T], Iterable[U]], iterable: Iterable[T], *,
              client: Client | None = None, **options: Unpack[ParallelOptions]) -> list[U]:
    """[y for x in iterable for y in fn(x)], on the cluster, in order."""
    return parallel(iterable, client, **options).flat_map(fn).to_list()


def pgroup_by(key: Callable[[T], K], iterable: Iterable[T], *, client: Client | None = None,
              **options: Unpack[ParallelOptions]) -> dict[K, list[T]]:
    """{key(x): [x, ...]} in first-seen order, keys computed on the cluster."""
    return parallel(iterable, client, **options).group_by(key)


def pany(pred: Callable[[T], object] | None, iterable: Iterable[T], *,
         client: Client | None = None, **options: Unpack[ParallelOptions]) -> bool:
    """any(pred(x) for x in iterable), stopping early."""
    return parallel(iterable, client, **options).any(pred)


def pall(pred: Callable[[T], object] | None, iterable: Iterable[T], *,
         client: Client | None = None, **options: Unpack[ParallelOptions]) -> bool:
    """all(pred(x) for x in iterable), stopping early."""
    return parallel(iterable, client, **options).all(pred)


def pnone(pred: Callable[[T], object] | None, iterable: Iterable[T], *,
          client: Client | None = None, **options: Unpack[ParallelOptions]) -> bool:
    """not any(pred(x) for x in iterable), stopping early."""
    return parallel(iterable, client, **options).none(pred)
