"""The worker side of parallel collections: a chain of steps run over one chunk, fused.

A chunk is a contiguous slice of the input, so an element's index is `start + position`.
An element that raises is reported with its index and value while the rest carry on.

Chains of map/filter/reject ending in a list or groups run step by step over the whole
chunk with the C-level `map` (a Python loop per element would cost several times more than
small functions themselves); others (flat_map, any/all/none, which stop early) send each
element through every step before the next element starts.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Any

from ..wire import tracebacks

__all__ = ["Pipeline", "ChunkOutcome", "MAP", "MAP_INDEXED", "FILTER", "REJECT", "FLAT_MAP",
           "COLLECT", "GROUP", "ANY", "ALL", "NONE"]

MAP, MAP_INDEXED, FILTER, REJECT, FLAT_MAP = "map", "map_indexed", "filter", "reject", "flat_map"
COLLECT, GROUP, ANY, ALL, NONE = "collect", "group", "any", "all", "none"


class ChunkOutcome:
    """What a chunk produced: its output values (for GROUP, (key, value) pairs; for ANY/ALL/
    NONE, [True] if the chunk decided the answer), the number of input elements, errors in
    full as (index, repr of the element, captured traceback), failures only counted as
    {signature: n}, and whether it stopped at a repeated failure (then without values)."""

    __slots__ = ("values", "n", "errors", "counted", "stopped")

    def __init__(self, values: list, n: int, errors: list[tuple[int, str, dict]],
                 counted: dict | None = None, stopped: bool = False):
        self.values, self.n, self.errors = values, n, errors
        self.counted, self.stopped = counted or {}, stopped

    def __reduce__(self):
        return ChunkOutcome, (self.values, self.n, self.errors, self.counted, self.stopped)


class _Decided(Exception):
    """Raised inside a chunk once an any/all/none answer is known."""


class _Stop(Exception):
    """Raised inside a chunk once a failure keeps repeating (see ElementFailures)."""


class Pipeline:
    """Steps [(kind, fn)] and a terminal (kind, fn) run over chunks of (start, items)."""

    def __init__(self, steps: tuple[tuple[str, Callable], ...], terminal: tuple[str, Any]):
        self.steps, self.terminal = steps, terminal

    def __call__(self, start: int, items: list) -> ChunkOutcome:
        failures = tracebacks.ElementFailures()
        try:
            if self.terminal[0] in (COLLECT, GROUP) and all(k != FLAT_MAP for k, _ in self.steps):
                outcome = self._by_step(start, items, failures)
            else:
                outcome = self._by_element(start, items, failures)
        except _Stop:
            outcome = ChunkOutcome([], len(items), [], stopped=True)
        outcome.errors = sorted(failures.detailed, key=lambda e: e[0])
        outcome.counted = failures.counted
        return outcome

    def _by_step(self, start: int, items: list, errors: tracebacks.ElementFailures
                 ) -> ChunkOutcome:
        values = items
        index: Sequence[int] = range(start, start + len(items))
        for kind, fn in self.steps:
            args = (values, index) if kind == MAP_INDEXED else (values,)
            out, failed = _map_each(fn, args, errors, items, start, index)
            if failed:   # drop the failed elements from the rest of the chain
                keep = [i not in failed for i in range(len(values))]
                values = list(itertools.compress(values, keep))
                index = list(itertools.compress(index, keep))
            if kind == FILTER:
                values, index = _select(values, index, out, True)
            elif kind == REJECT:
                values, index = _select(values, index, out, False)
            else:
                values = out
        kind, fn = self.terminal
        if kind == GROUP:
            keys, failed = _map_each(fn, (values,), errors, items, start, index)
            if failed:
                keep = [i not in failed for i in range(len(values))]
                values = list(itertools.compress(values, keep))
            values = list(zip(keys, values, strict=True))
        return ChunkOutcome(values if isinstance(values, list) else list(values), len(items), [])

    def _by_element(self, start: int, items: list, errors: tracebacks.ElementFailures
                    ) -> ChunkOutcome:
        kind, fn = self.terminal
        out: list = []
        sink = out.append
        if kind == GROUP:
            sink = lambda v: out.append((fn(v), v))   # noqa: E731 - the key is part of the step
        elif kind in (ANY, ALL, NONE):
            trigger = kind != ALL                     # any/none: a true element decides
            pred = fn or bool

            def sink(v):
                if bool(pred(v)) is trigger:
                    raise _Decided
        feed = self._feed
        for pos, item in enumerate(items):
            mark = len(out)
            try:
                feed(item, start + pos, 0, sink)
            except _Decided:
                return ChunkOutcome([True], pos + 1, [])
            except Exception as e:   # noqa: BLE001 - this element fails alone; its partial output goes
                del out[mark:]
                errors.add(start + pos, item, e, skip=2)
                if errors.should_stop:
                    raise _Stop from None
        return ChunkOutcome([] if kind in (ANY, ALL, NONE) else out, len(items), [])

    def _feed(self, value: Any, index: int, first: int, sink: Callable) -> None:
        steps = self.steps
        for j in range(first, len(steps)):
            kind, fn = steps[j]
            if kind == MAP:
                value = fn(value)
            elif kind == FILTER:
                if not fn(value):
                    return
            elif kind == REJECT:
                if fn(value):
                    return
            elif kind == MAP_INDEXED:
                value = fn(value, index)
            else:   # FLAT_MAP: the rest of the chain runs on each value it yields
                for sub in fn(value):
                    self._feed(sub, index, j + 1, sink)
                return
        sink(value)


def _map_each(fn: Callable, args: tuple, errors: tracebacks.ElementFailures, items: list,
              start: int, index) -> tuple[list, set[int]]:
    """list(map(fn, *args)) at C speed, except that an element that raises is recorded in
    errors (with its input index and repr) and left out; returns (results, failed positions)."""
    out: list = []
    failed: set[int] = set()
    pos = 0
    n = len(args[0])
    while pos < n:
        mark = len(out)
        try:
            out.extend(map(fn, *(itertools.islice(a, pos, None) for a in args)))
            bad = pos + len(out) - mark
            if bad == n:
                break
            # map() took a StopIteration from fn for the end of its input: call fn on that
            # element again, to raise it here rather than drop the rest silently
            out.append(fn(*(a[bad] for a in args)))
            pos = bad + 1
            continue
        except Exception as e:   # noqa: BLE001 - user code: that element's failure
            bad = pos + len(out) - mark
            i = index[bad]
            errors.add(i, items[i - start], e, skip=1)
            if errors.should_stop:
                raise _Stop from None
            failed.add(bad)
            pos = bad + 1
    return out, failed


def _select(values: list, index, verdicts: list, keep_if: bool) -> tuple[list, Any]:
    keep = [bool(v) is keep_if for v in verdicts]
    return list(itertools.compress(values, keep)), list(itertools.compress(index, keep))
