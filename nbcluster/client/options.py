"""Task options (labels, retries, callback), kept apart from the function's own keywords.

`submit(fn, /, *args, **kwargs)` passes every keyword to fn, so an option can never shadow
a user's keyword; options go through `client.options(...)`, as Ray's `.options()`:

    client.options(labels={"gpu"}, retries=2, callback=print).submit(train, data, labels=y)

A call written the old way, `client.submit(fn, x, labels={"gpu"})`, with an fn that takes no
`labels` keyword, is refused at once (it would otherwise fail on the worker, or, with a
callback, never call it), with a message that shows the new way.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, ParamSpec, TypeVar, overload

from ..wire.functions import Prepared
from ..wire.serialize import describe

if TYPE_CHECKING:
    from .client import Client
    from .futures import TaskFuture

__all__ = ["TaskOptions", "refuse_misplaced_options"]

OPTION_NAMES = ("labels", "retries", "callback")

T = TypeVar("T")
P = ParamSpec("P")


class TaskOptions:
    """Submit tasks with these options (made by `Client.options`).

    Args:
        labels: the task waits for a worker holding every one of these labels.
        retries: how many times to run the task again if it raises.
        callback: called on the client with the result when the task succeeds.
    """

    def __init__(self, client: Client, *, labels: Iterable[str] | None = None,
                 retries: int = 0, callback: Callable[[T], object] | None = None) -> None:
        if isinstance(labels, str):
            raise TypeError(f"labels must be a collection of strings, not the string {labels!r} "
                            f"(write labels={{{labels!r}}})")
        if not isinstance(retries, int) or retries < 0:
            raise ValueError(f"retries must be a whole number >= 0, not {retries!r}")
        if callback is not None and not callable(callback):
            raise TypeError(f"callback must be callable, not {describe(callback)}")
        self.client = client
        self.labels = sorted(labels or ())
        self.retries, self.callback = retries, callback

    @overload
    def submit(self, fn: Callable[P, T], /, *args: P.args,
               **kwargs: P.kwargs) -> TaskFuture[T]: ...

    @overload   # a function prepared once (Client.prepare): its result type is not known
    def submit(self, fn: Prepared, /, *args: object,
               **kwargs: object) -> TaskFuture[object]: ...

    def submit(self, fn: Callable[..., T] | Prepared, /, *args: object,
               **kwargs: object) -> TaskFuture[T]:
        """Run `fn(*args, **kwargs)` on a worker, with these options; every keyword goes to fn."""
        return self.client._submit_call(fn, args, kwargs, labels=self.labels,
                                        retries=self.retries, callback=self.callback)

    def __repr__(self) -> str:
        return (f"<TaskOptions labels={self.labels} retries={self.retries} "
                f"callback={self.callback!r}>")


def refuse_misplaced_options(fn: Callable[..., object] | Prepared, kwargs: dict) -> None:
    """Raise TypeError if kwargs holds an option name (labels=...) that fn does not take."""
    names = [n for n in OPTION_NAMES if n in kwargs]
    if names and not _takes_keywords(fn, names):
        name = names[0]
        raise TypeError(
            f"submit() passes every keyword argument to the function, and {describe(fn)} takes "
            f"no {name}= argument. nbcluster's task options go through options(): "
            f"client.options({name}=...).submit(fn, ...)")


def _takes_keywords(fn: Callable[..., object] | Prepared, names: list[str]) -> bool:
    """Does fn accept these keywords? True when its signature cannot be known."""
    if isinstance(fn, Prepared):
        return True
    import inspect
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return True
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return True
    return all(n in params and params[n].kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                                   inspect.Parameter.KEYWORD_ONLY)
               for n in names)
