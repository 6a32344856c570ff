"""A worker's task thread (its main thread): runs the tasks of each `run` and sends results.

    broker ──run──────────────────────► task socket ─► fn(*args, **kwargs)
    broker ◄─done/ready/final output─── task socket ◄─┘

The thread that receives tasks runs them and sends their results itself, so a task costs no
thread hand-off. Results of short tasks go back in batches (at least every RESULT_BATCH_S),
each with the credit that keeps our window full; a task's captured output goes just before
its result. A task is checked as it comes up: still ours (not cancelled, not given back, not
of a registration the broker has dropped), its function at hand. After max_tasks_per_child
tasks, or asked to leave, the worker finishes the running task and says bye on this socket.
"""

from __future__ import annotations

import logging
import os
import time
from types import FrameType
from typing import Any

from ..errors import ProtocolError
from ..wire import message_limit, protocol, serialize, tracebacks
from .state import EXIT_MAX_TASKS, WorkerState

__all__ = ["TaskThread"]

log = logging.getLogger("nbcluster.worker")

BIG_RESULT_BYTES = 64 * 1024
RESULT_BATCH_S = 0.002      # results of tiny tasks are sent together at least this often


class TaskThread(WorkerState):
    """What a worker's main thread does with the tasks it receives (see the module doc)."""

    def _emit(self, stream: str, text: str) -> None:
        tag = self.current_tag
        if tag is not None:
            self.output.add(tag, stream, text)

    def _on_task_message(self, frames: list[Any]) -> None:
        try:
            header, payload = protocol.decode(self.signer, frames, max_bytes=None)
        except ProtocolError as e:
            log.warning("dropped a message: %s", e)
            return
        # A `reconnect` here is not acted on: it answers a message sent on this socket, maybe
        # before our latest hello, and would end the registration that hello made (its tasks
        # counted as lost on us). Our heartbeats on the control socket, ordered with our
        # hellos, get a reconnect there within a heartbeat if the broker forgot us.
        if header["t"] == "run":   # each task is checked as it comes up: see _ours
            self._run_batch(header["tasks"], payload, header.get("fns", []),
                            (header.get("w"), header.get("e"), header.get("s")))

    def _on_sigint(self, signum: int, frame: FrameType | None) -> None:
        """SIGINT: a real Ctrl-C, or the I/O thread interrupting a cancelled task. The latter
        is ignored if its task has ended meanwhile: it must not break the loop between tasks
        (the rest of the batch and its credit would be lost). One that lands after its task
        became current but before the task's `try` (see _run_one) is raised there: raised
        here, it would escape the task, and the batch, its result and credit would be lost."""
        target, self.interrupt_tag = self.interrupt_tag, None
        if target is None or (target == self.current_tag and self.in_task):
            raise KeyboardInterrupt
        if target == self.current_tag:
            self.interrupt_due = target

    def _ours(self, batch: tuple[Any, Any, Any]) -> bool | None:
        """Is a task of a run for `batch` (its w, e, s) ours to run (call under the lock)?
        None: not known until the welcome of our latest hello is read (resumed or not)."""
        wid, epoch, session = batch
        if session == self.session:
            # Sent after the broker read our latest hello: ours, even if that hello's welcome
            # (on the other socket) is not read yet; dropped, the task would be held here
            # for good.
            return not self.registered or self.registration == (wid, epoch)
        if self.registration != (wid, epoch):
            return False   # an earlier registration's: the broker has queued it again
        return True if self.registered else None

    def _run_batch(self, tasks: list[Any], payload: list[Any], fns: list[Any],
                   batch: tuple[Any, Any, Any]) -> None:
        """Run the tasks of one `run` message; results go back in batches of at least
        RESULT_BATCH_S worth of work, and at the end. The message starts with the payloads of
        functions we did not have (`fns`); they are kept before any task runs, so a task that
        is skipped (cancelled, given back) does not lose the function of the ones after it."""
        pos, epoch = 0, batch[1]
        for digest, n in fns:
            self.functions.put(digest, payload[pos:pos + n])
            pos += n
        last_sent = time.monotonic()
        for i, (gid, attempt, nframes, local, *fn) in enumerate(tasks):
            if self.draining:   # leaving: the tasks not started go back to the broker
                self._send_done(epoch)
                self._leave_now()
            result = self._run_one(gid, attempt, fn[0] if fn else None,
                                   payload[pos:pos + nframes], local, batch)
            pos += nframes
            self._count_task(result)
            nbytes = 0 if result is None else sum(memoryview(f).nbytes for f in result[1])
            with self.lock:
                over = bool(self.held_items) and self.held_bytes + nbytes + \
                    message_limit.HEADROOM_BYTES > self.max_message_bytes
            if over:   # together they would be over the broker's limit
                self._send_done(epoch)
            with self.lock:
                if result is not None:
                    self.held_items.append(result[0])
                    self.held_frames += result[1]
                    self.held_bytes += nbytes
                    self.held_epoch = epoch
                big = self.held_bytes >= BIG_RESULT_BYTES
            if i == len(tasks) - 1 or big or time.monotonic() - last_sent >= RESULT_BATCH_S:
                self._send_done(epoch)
                last_sent = time.monotonic()
        self.functions.trim()
        if self.draining and self.leave_status == EXIT_MAX_TASKS:
            self._leave_now()

    def _count_task(self, result: tuple[list[Any], list[Any]] | None) -> None:
        """After max_tasks tasks run (not skipped), leave: our supervisor starts a fresh worker."""
        if result is None or self.max_tasks is None:
            return
        self.tasks_run += 1
        if self.tasks_run >= self.max_tasks:
            with self.lock:
                if not self.draining:   # asked to leave already: not to be replaced
                    self.draining, self.leave_status = True, EXIT_MAX_TASKS

    def _run_one(self, gid: int, attempt: int, fn_digest: bytes | None, frames: list[Any],
                 local: bool, batch: tuple[Any, Any, Any]) -> tuple[list[Any], list[Any]] | None:
        """Run one task of a run for `batch`; its result goes through shared memory if its
        client is `local`. fn_digest names its function; without one, the function is the
        task's first frame. The task counts in our ledger as finished once it ends (or is
        skipped), if it counts in it still (see _welcome)."""
        if fn_digest is None:   # an inline function pickle: the task's first frame
            fn_digest, frames = bytes(frames[0]), frames[1:]
            self.functions.put(fn_digest, [fn_digest])
        missing = fn_digest not in self.functions
        with self.lock:
            # Wait for the `given` (see __init__: else a task could run here and elsewhere),
            # and for our welcome if only it can say whether the task is still ours.
            while ((ours := self._ours(batch)) is None or (ours and self.awaiting_given)) \
                    and not self.draining:
                self.given_arrived.wait(1.0)
            if not ours or self.draining:   # leaving: our `bye` queues it again
                return None   # not run, not counted: that registration and its ledger are over
            wake = False
            if (gid, attempt) in self.cancelled:
                self.cancelled.discard((gid, attempt))
                self.done += 1
                return None
            if missing:
                self.done += 1
            else:
                self.running_ledger = self.ledger
                self.current_tag = (gid, attempt)
                self.started_at = time.monotonic()
                wake, self.io_sleeping = self.io_sleeping, False
        if missing:
            # Our cache dropped its function: the broker queues it again, with the function.
            self._send(self.task_sock, {"t": "refetch", "tasks": [[gid, attempt]]})
            return None
        if wake:   # once per idle-to-busy change, so a long task is reported in time
            os.write(self._wake_w, b"s")
        status, payload = "ok", []
        start = time.perf_counter()
        try:
            try:
                # From here a cancel's SIGINT is this task's result; one that landed since
                # the task became current was kept for here (see _on_sigint).
                self.in_task = True
                due, self.interrupt_due = self.interrupt_due, None
                if due == (gid, attempt):
                    raise KeyboardInterrupt
                self.kept.begin(gid)
                fn = self.functions.get(fn_digest)
                args, kwargs = serialize.loads(frames, self.shm)
                result = fn(*args, **kwargs)
            finally:
                # No lock: a cancel's SIGINT could land while waiting for it, and _on_sigint
                # ignores one whose task is no longer current.
                self.current_tag = None   # first: an interrupt for it is ignored from here
                self.in_task = False
            try:
                payload = serialize.dumps(result, self.shm if local else None)
            except Exception as e:
                raise TypeError(f"the result ({serialize.describe(result)}) cannot be pickled: "
                                f"{e}") from e
            self._check_size(payload, result)
        except BaseException as e:  # noqa: BLE001 - any failure of user code is the task's result
            status = "err"
            payload = serialize.dumps(tracebacks.capture(e, skip=1))
        # Again: the interrupt may have landed in the `finally` above, before it cleared them.
        self.current_tag = None
        self.in_task = False
        kept = self.kept.end()
        self.debug.task_ended(gid)
        elapsed = time.perf_counter() - start
        t = self.task_time
        self.task_time = elapsed if t is None else 0.8 * t + 0.2 * elapsed
        with self.lock:   # a cancel's SIGINT no longer lands here: the task is not current
            if self.running_ledger == self.ledger:
                self.done += 1
        info: dict[str, Any] = {"s": elapsed, "kept": kept} if kept else {"s": elapsed}
        return [gid, attempt, status, len(payload), info], payload

    def _check_size(self, payload: list[Any], result: Any) -> None:
        """A result over the broker's limit would be dropped on the way, its task never
        answered: it fails the task instead (its shared-memory files go)."""
        nbytes = sum(memoryview(f).nbytes for f in payload)
        if nbytes + message_limit.HEADROOM_BYTES <= self.max_message_bytes:
            return
        for name in serialize.shm_names(payload):
            assert self.shm is not None   # files exist only where shared memory is on
            self.shm.remove(name)
        what = f"the result ({_describe_big(result)})"
        # The error's traceback shows this frame's locals: not the GiB of them.
        del payload, result
        message_limit.check(what, nbytes, self.max_message_bytes)

    def _leave_now(self) -> None:
        """Say bye on the task socket, after the results sent on it (so they arrive first);
        the broker queues our unstarted tasks again."""
        self._send(self.task_sock, {"t": "bye"})
        time.sleep(0.2)   # let ZeroMQ's I/O thread put it on the wire
        os._exit(self.leave_status)

    def _send_done(self, epoch: int) -> None:
        """Send the held results (on the task socket) and ask for credit."""
        if self.shm is not None and self.shm.created:
            self.shm.remove_orphans()
        with self.lock:
            items, frames, _ = self._take_held()
        output = self.output.take()      # a task's output goes before its result
        if output:
            self._send(self.task_sock, {"t": "output", "items": output})
        # `e`: the epoch of the broker that sent these tasks; another broker drops the items.
        n, ledger = self._top_up()
        header = {"t": "done", "e": epoch, "items": items, "ready": n, "l": ledger}
        if items or n:
            self._send(self.task_sock, header, frames)



def _describe_big(result: Any) -> str:
    """A short description of a result too big to send (whose full repr could take seconds)."""
    if isinstance(result, memoryview):
        return f"a memoryview of {result.nbytes:,} bytes"
    if isinstance(result, (bytes, bytearray, str)):
        return f"{serialize.describe(result[:40])}..."
    if isinstance(result, (list, tuple, dict, set, frozenset)):
        return f"a {type(result).__name__} of {len(result):,} items"
    return serialize.describe(result, 60)

