"""What user threads queue for the broker, and the bookkeeping that goes with it.

    submit/map ──► _submit_frames: future, pending task, callback ─┐
    cancel     ──► _cancel_remote: forget the task, queue "cancel" ├─► _outbox + _wake()
    status/stop──► _request: a reply future, queue the request    ─┘     (io_thread.py sends)

Everything a result or reply needs is registered, under `_lock`, before its message is
queued, so no answer can arrive before the client knows what it answers. `_pending` keeps
every task the client has no result for, as a `PendingTask` (spec, argument frames,
function): what it submits again when a restarted broker asks it to reconnect (inbox.py).
The outbox holds the same tuples (and control messages, as header dicts), and the I/O
thread is woken only when the outbox was empty: a loop of submits costs one wake-up per
batch, not one per task.

A mixin of `Client`: the state it shares with the rest of the client is declared below.
"""

from __future__ import annotations

import collections
import concurrent.futures
import itertools
import threading
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, cast

from ..errors import MessageTooLarge, NBClusterError, PicklingError
from ..wire import functions, message_limit, pickling, serialize
from .futures import TaskFuture

if TYPE_CHECKING:
    from ..wire.shm import SharedMemory
    from .broker_silence import BrokerSilence
    from .callbacks import ResultCallbacks
    from .client import Client

__all__ = ["Outbox", "PendingTask", "OutboxItem", "MAX_IDS_PER_MESSAGE"]

MAX_IDS_PER_MESSAGE = 500    # task ids per cancel message: each is handled in well under 10 ms
LABEL_SETS_KEPT = 1024       # label sets remembered, so tasks asking the same share one tuple

# A task the client has no result for: (spec, argument frames, function payload). The spec
# is the task's entry of a "submit" message (docs/protocol.md): (key, number of frames,
# labels, target worker, retries, host its shared-memory data is on, function digest).
PendingTask = tuple[tuple, tuple, functions.Prepared]
# What the I/O thread sends: a task, or a control message (a header dict).
OutboxItem = PendingTask | dict[str, Any]


class Outbox:
    """Queueing tasks, cancels and requests for the I/O thread (a mixin of `Client`)."""

    # Set up by Client.__init__; _lock guards the outbox and the bookkeeping dicts.
    labels: list[str]
    host: str
    local: bool
    max_message_bytes: int
    expiry_s: float
    _refs: pickling.MainRefs | None
    _keys: itertools.count[int]
    _lock: threading.Lock
    _outbox: collections.deque[OutboxItem]
    _futures: dict[int, TaskFuture]
    _pending: dict[int, PendingTask]
    _label_sets: dict[tuple[tuple[str, ...], tuple[str, ...]], tuple[str, ...]]
    _result_callbacks: dict[int, Callable[[Any], object]]
    _replies: dict[int, concurrent.futures.Future]
    _cancelling: set[int]
    _callbacks: ResultCallbacks
    _closed: bool
    _broken: NBClusterError | None
    _silence: BrokerSilence
    _shm: SharedMemory | None
    _shm_files: dict[int, list[str]]
    _workers_here: int | None
    # A method of the IOThread (io_thread.py).
    _wake: Callable[[], None]

    def _submit_call(self, fn: Callable[..., object] | functions.Prepared, args: tuple,
                     kwargs: dict[str, Any], labels: Iterable[str] | None = None,
                     retries: int = 0, callback: Callable[[Any], object] | None = None
                     ) -> TaskFuture:
        prepared, arg_frames = functions.dumps_call(fn, args, kwargs, self._local_shm, self._refs)
        return self._submit_frames(prepared, arg_frames, self._labels(labels), None, retries,
                                   callback)

    def _labels(self, labels: Iterable[str] | None) -> tuple[str, ...]:
        """The sorted labels a task asks for (the client's and its own), one tuple shared by
        every task that asks for the same."""
        key = (tuple(labels) if labels else (), tuple(self.labels))
        shared = self._label_sets.get(key)
        if shared is None:
            if len(self._label_sets) >= LABEL_SETS_KEPT:
                self._label_sets.clear()
            shared = self._label_sets[key] = tuple(sorted({*key[0], *key[1]}))
        return shared

    def _submit_frames(self, fn: functions.Prepared, frames: list, labels: tuple[str, ...],
                       target: str | None, retries: int,
                       callback: Callable[[Any], object] | None = None) -> TaskFuture:
        """Queue a task: fn's payload (sent once per session) and the argument frames. A
        `callback` is registered before the task can be sent, so no result can beat it."""
        if self._closed:
            raise RuntimeError("this client is closed")
        self._raise_if_broken()
        shm_files = serialize.shm_names(frames) if len(frames) > 1 else None
        try:
            nbytes = self._check_fits(fn, frames)
        except MessageTooLarge:
            for name in shm_files or ():
                assert self._shm is not None   # files exist only where shared memory is on
                self._shm.remove(name)
            raise
        key = next(self._keys)
        fut: TaskFuture[Any] = TaskFuture(cast("Client", self), key, nbytes)   # Outbox: of Client
        # A task whose data is in this host's shared memory must run on this host.
        # Tuples (of bytes, numbers, strings): the garbage collector stops looking at them.
        task: PendingTask = ((key, len(frames), labels, target, int(retries),
                              self.host if shm_files else None, fn.digest), tuple(frames), fn)
        if callback is not None:
            self._callbacks.start()
        with self._lock:
            if shm_files:
                self._shm_files[key] = shm_files
            if callback is not None:
                self._result_callbacks[key] = callback
            self._futures[key] = fut
            self._pending[key] = task
            wake = not self._outbox   # else a wake-up is on its way, and takes this along
            self._outbox.append(task)
        if wake:
            self._wake()
        return fut

    def _check_fits(self, fn: functions.Prepared, frames: list) -> int:
        """The arguments' size; MessageTooLarge if a task (with its function, which goes
        along with the first task that needs it) is over the broker's limit: sent, it
        would be dropped."""
        nbytes = serialize.nbytes(frames)
        if nbytes + fn.nbytes + message_limit.HEADROOM_BYTES > self.max_message_bytes:
            message_limit.check(f"a task of {fn.name} (arguments {nbytes:,} bytes, function "
                                f"{fn.nbytes:,} bytes)", nbytes + fn.nbytes,
                                self.max_message_bytes)
        return nbytes

    def _raise_if_broken(self) -> None:
        if self._broken is not None:
            raise NBClusterError(self._broken.args[0]) from self._broken.__cause__

    def _cancel_remote(self, keys: list[int]) -> None:
        with self._lock:
            # Many cancels in a row (a map's): few messages, each of a bounded size.
            last = self._outbox[-1] if self._outbox else None
            ids = last["ids"] if isinstance(last, dict) and last["t"] == "cancel" else None
            for k in keys:
                self._pending.pop(k, None)
                if self._futures.pop(k, None) is not None:
                    self._cancelling.add(k)
                self._result_callbacks.pop(k, None)
                self._release_shm(k)
                if ids is None or len(ids) >= MAX_IDS_PER_MESSAGE:
                    ids = []
                    self._outbox.append({"t": "cancel", "ids": ids})
                ids.append(k)
        self._wake()

    def _request(self, header: dict[str, Any], timeout: float | None) -> Any:
        """The broker's reply; BrokerTimeout if none comes within timeout (or, with timeout
        None, once the broker has been silent longer than broker_timeout)."""
        self._raise_if_broken()
        reply: concurrent.futures.Future = concurrent.futures.Future()
        with self._lock:
            rid = next(self._keys)
            self._replies[rid] = reply
            self._outbox.append({**header, "rid": rid})
        self._wake()
        start = time.monotonic()
        try:
            return reply.result(timeout)
        except TimeoutError:   # ours, or the I/O thread's once broker_timeout is over
            self._replies.pop(rid, None)
            now = time.monotonic()
            what = {"query": "a status query", "stop": "a stop request"}.get(header["t"], "")
            raise self._silence.timeout_error(what or repr(header["t"]), now - start, now,
                                              self.expiry_s) from None

    def _release_shm(self, key: int) -> None:
        """Remove the shared-memory files of a task's arguments (it is over)."""
        for name in self._shm_files.pop(key, ()):
            assert self._shm is not None   # files exist only where shared memory is on
            self._shm.remove(name)

    def _dumps_chunks(self, items: list[tuple[object, ...]], chunksize: int) -> list[list[Any]]:
        """The argument frames of each chunk of a map, all pickled before any is sent: an
        element that cannot be pickled sends nothing (a PicklingError names it)."""
        chunks: list[list[Any]] = []
        for start in range(0, len(items), chunksize):
            chunk = items[start:start + chunksize]
            try:
                chunks.append(serialize.dumps(((chunk, start), {}), self._local_shm))
            except Exception as e:
                self._remove_chunk_files(chunks)
                culprit = next((i for i, x in enumerate(chunk, start) if not _picklable(x)), start)
                raise PicklingError(f"cannot pickle element {culprit} "
                                    f"({serialize.describe(items[culprit])}): {e}") from e
        return chunks

    def _remove_chunk_files(self, chunks: list[list[Any]]) -> None:
        """Remove the shared-memory files of chunks that will not be sent."""
        for name in (n for frames in chunks for n in serialize.shm_names(frames)):
            assert self._shm is not None   # files exist only where shared memory is on
            self._shm.remove(name)

    @property
    def _local_shm(self) -> SharedMemory | None:
        """Shared memory for arguments, when the broker is on this host, unless it said no
        worker is (a task whose data is in shm waits for a worker on this host)."""
        return self._shm if self.local and self._workers_here != 0 else None


def _picklable(obj: object) -> bool:
    try:
        serialize.dumps(obj)
        return True
    except Exception:   # noqa: BLE001 - whatever pickling raises, obj is the culprit
        return False
