"""Mirror workers: copies of this very process, forked now, serving the cluster (DMirror's idea).

    m = nbcluster.mirror(4)             # 4 workers that already hold everything defined here
    m.map(score, candidates)            # big globals score() uses are not pickled
    parallel(xs, client=m).map(f).to_list()
    m.refresh()                         # after changing state: drop them and fork again

A Mirror is a Client whose tasks go only to its own forked workers, and whose pickles refer
to this process's __main__ objects by name wherever they are still the objects the workers
were forked with; an object rebound since is sent by value. (An object changed in place
since the fork is not seen by the workers: call `refresh()`.)

Forking a process with threads is safe here because the child never touches what the
threads owned: it opens its own ZeroMQ context, its stdout/stderr are the process's real
ones, and it leaves with os._exit (no atexit handlers, no finalizers of the parent's
objects). The child watches a pipe from the parent and exits when the parent is gone.
"""

from __future__ import annotations

import os
import signal
import sys
import time
import warnings
from collections.abc import Callable, Iterable
from typing import Generic, TypeVar

from ..client.client import Client
from ..errors import NBClusterError
from ..wire import pickling
from .collections import parallel
from .session import current_client

__all__ = ["Mirror", "mirror"]

T = TypeVar("T")

JOIN_TIMEOUT_S = 30.0
_pipes_to_children: set[int] = set()   # write ends held for every live mirror worker


class Mirror(Client):
    """A client served by workers forked from this process (see the module doc).

    Args:
        n_workers: how many to fork (default: one per core).
        client: a client of the cluster they join (default: `current_client()`).
        labels: extra labels the forked workers carry.
    """

    def __init__(self, n_workers: int | None = None, client: Client | None = None,
                 labels: Iterable[str] = ()):
        if not hasattr(os, "fork"):
            raise NBClusterError("mirror workers need os.fork, which this platform lacks "
                                 "(Windows): use LocalCluster workers instead")
        base = current_client(client)
        self._base_endpoint, self._key, self._curve = base.endpoint, base._key, base._curve
        self._extra_labels = sorted(labels)
        self.n_target = n_workers or os.cpu_count() or 1
        self.pids: list[int] = []
        self._pipes: list[int] = []
        self.generation = os.urandom(4).hex()
        super().__init__(self._base_endpoint, self._key, labels=[self._label], remember=False,
                         curve=self._curve)
        self.exit_reason = base.exit_reason
        self._fork_all()

    @property
    def _label(self) -> str:
        return f"mirror-{self.generation}"

    def map(self, fn: Callable[..., T], *iterables: Iterable[object],
            chunksize: int | None = None, labels: Iterable[str] | None = None,
            retries: int = 0) -> list[T]:
        """`[fn(*args) for args in zip(*iterables)]` on the mirror workers, in order."""
        return parallel(zip(*iterables, strict=False), self, chunksize=chunksize, labels=labels,
                        retries=retries, progress=False).map(_Star(fn)).to_list()

    # ---- forking --------------------------------------------------------------------------
    def _fork_all(self) -> None:
        self._refs = pickling.MainRefs()
        labels = [self._label, "mirror", *self._extra_labels]
        for _ in range(self.n_target):
            self._fork_one(labels)
        deadline = time.monotonic() + JOIN_TIMEOUT_S
        while self._count_joined() < self.n_target:
            if time.monotonic() > deadline:
                raise NBClusterError(f"only {self._count_joined()} of {self.n_target} mirror "
                                     f"workers joined within {JOIN_TIMEOUT_S} s")
            time.sleep(0.01)

    def _count_joined(self) -> int:
        return sum(1 for w in self.workers() if self._label in w.get("labels", ()))

    def _fork_one(self, labels: list[str]) -> None:
        read_end, write_end = os.pipe()
        sys.stdout.flush()
        sys.stderr.flush()
        with warnings.catch_warnings():   # 3.12+ warns about fork with threads: see module doc
            warnings.simplefilter("ignore", DeprecationWarning)
            pid = os.fork()
        if pid == 0:   # the child: never returns
            code = 1
            try:
                os.close(write_end)
                for fd in _pipes_to_children:   # so siblings see their parent go, not us
                    os.close(fd)
                os.dup2(read_end, 0)
                os.close(read_end)
                code = _serve(self._base_endpoint, self._key, labels, self._curve)
            except BaseException:   # noqa: BLE001
                import traceback
                traceback.print_exc(file=sys.__stderr__)
            finally:
                os._exit(code)
        os.close(read_end)
        self.pids.append(pid)
        self._pipes.append(write_end)
        _pipes_to_children.add(write_end)

    def _stop_workers(self) -> None:
        for fd in self._pipes:   # closing the pipe makes each child leave at once
            _pipes_to_children.discard(fd)
            os.close(fd)
        deadline = time.monotonic() + 3.0
        for pid in self.pids:
            while True:
                try:
                    done, _ = os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:
                    break
                if done:
                    break
                if time.monotonic() > deadline:
                    os.kill(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)
                    break
                time.sleep(0.01)
        self.pids, self._pipes = [], []

    def refresh(self) -> None:
        """Drop the mirror workers and fork new ones from this process as it is now."""
        self._stop_workers()
        self.generation = os.urandom(4).hex()
        self.labels = [self._label]
        self._fork_all()

    def close(self) -> None:
        """Stop the mirror workers and close the client."""
        if not self.closed:
            self._stop_workers()
        super().close()

    def __repr__(self) -> str:
        return f"<nbcluster.Mirror {len(self.pids)} forked workers at {self.endpoint}>"


class _Star(Generic[T]):
    def __init__(self, fn: Callable[..., T]) -> None:
        self.fn = fn

    def __call__(self, args: tuple[object, ...]) -> T:
        return self.fn(*args)


def _serve(endpoint: str, key: bytes, labels: list[str], curve=None) -> int:
    """The forked child's life: a worker with its own context, on the real stdout/stderr."""
    from ..worker.loop import Worker
    sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__
    signal.signal(signal.SIGINT, signal.default_int_handler)
    worker = Worker(endpoint, key, labels, watch_stdin=True, curve=curve)
    signal.signal(signal.SIGTERM, lambda *_: worker.leave())
    try:
        worker.run()
    except KeyboardInterrupt:
        worker.leave()
        time.sleep(5)
    return 0


def mirror(n_workers: int | None = None, client: Client | None = None,
           labels: Iterable[str] = ()) -> Mirror:
    """Fork n_workers mirror workers from this process now; see `Mirror`."""
    return Mirror(n_workers, client, labels)
