"""Tasks for named workers: one run of a function on each worker (`broadcast`) or on the
workers given (`submit_to`). Such a task does not move: if its worker is gone, it fails with
WorkerLost.

A mixin of `Client`: the state it shares with the rest of the client is declared below.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, ParamSpec, TypeVar, overload

from ..errors import RemoteErrorGroup
from ..report import summarize_failures
from ..wire import functions
from .bars import progress
from .futures import TaskFuture
from .waiting import cancel_on_error

if TYPE_CHECKING:
    from .status import WorkerInfo

__all__ = ["Targeted"]

R = TypeVar("R")
P = ParamSpec("P")


class Targeted:
    """broadcast and submit_to (a mixin of `Client`)."""

    labels: list[str]
    # Methods of the Client (client.py) and of the Outbox (outbox.py).
    workers: Callable[[], list[WorkerInfo]]
    _submit_frames: Callable[..., TaskFuture]

    def broadcast(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs
                  ) -> dict[str, R]:
        """Run `fn(*args, **kwargs)` once on every worker; returns {worker_id: result}.

        Raises:
            RemoteErrorGroup: it failed on some workers (one error per worker).
        """
        futures = self.broadcast_futures(fn, *args, **kwargs)
        with cancel_on_error(futures.values()):
            progress(futures.values(), desc="broadcast", wait=True)
        errors = [e for f in futures.values() if isinstance(e := f.exception(), Exception)]
        if errors:
            raise RemoteErrorGroup(summarize_failures(errors, len(futures), "workers"), errors)
        return {wid: f.result() for wid, f in futures.items()}

    @overload
    def broadcast_futures(self, fn: Callable[P, R], /, *args: P.args,
                          **kwargs: P.kwargs) -> dict[str, TaskFuture[R]]: ...

    @overload
    def broadcast_futures(self, fn: functions.Prepared, /, *args: object,
                          **kwargs: object) -> dict[str, TaskFuture[object]]: ...

    def broadcast_futures(self, fn: Callable[..., R] | functions.Prepared, /,
                          *args: object, **kwargs: object) -> dict[str, TaskFuture[R]]:
        """Like `broadcast`, without waiting: {worker_id: future} for every worker there now
        that has this client's labels."""
        ids = [w["id"] for w in self.workers() if set(self.labels) <= set(w.get("labels", ()))]
        return self._submit_each(ids, fn, args, kwargs)

    @overload
    def submit_to(self, worker_ids: Iterable[str], fn: Callable[P, R], /, *args: P.args,
                  **kwargs: P.kwargs) -> dict[str, TaskFuture[R]]: ...

    @overload
    def submit_to(self, worker_ids: Iterable[str], fn: functions.Prepared, /, *args: object,
                  **kwargs: object) -> dict[str, TaskFuture[object]]: ...

    def submit_to(self, worker_ids: Iterable[str], fn: Callable[..., R] | functions.Prepared,
                  /, *args: object, **kwargs: object) -> dict[str, TaskFuture[R]]:
        """Run `fn(*args, **kwargs)` once on each of these workers: {worker_id: future}. A task
        whose worker is gone fails with WorkerLost (it does not move to another worker).

        Raises:
            PicklingError: fn or an argument cannot be pickled (nothing was sent).
        """
        return self._submit_each(worker_ids, fn, args, kwargs)

    def _submit_each(self, worker_ids: Iterable[str], fn: Callable[..., R] | functions.Prepared,
                     args: tuple[object, ...], kwargs: dict[str, object]
                     ) -> dict[str, TaskFuture[R]]:
        prepared, arg_frames = functions.dumps_call(fn, args, kwargs)
        return {wid: self._submit_frames(prepared, arg_frames, (), wid, 0)
                for wid in worker_ids}
