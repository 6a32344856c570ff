"""A cancel's interrupt (SIGINT from the worker's I/O thread) must end the task it is aimed
at, and only that task, wherever in the worker's main thread it lands.

The worker's real state machine runs in this process: `_run_one` runs a task, and at each
line it reaches after the task became current, the I/O thread's real handling of a signed
`cancel` message (which sends the SIGINT) is run there. Whatever the line, `_run_one` must
return the task's result (interrupted or not) and count it done: an interrupt escaping it
would drop the rest of its batch, its result and its credit, and the worker would starve
(seen as test_starvation[cancel_by_executor_shutdown] failing under load).
"""

from __future__ import annotations

import os
import signal
import sys
import threading

import pytest

from nbcluster import runtime
from nbcluster.wire import functions, protocol
from nbcluster.worker.loop import Worker

from ..support.executor_tasks import echo

KEY = b"k" * 32
GID, ATTEMPT = 7, 0
BATCH = ("w1", 1, 1)   # (worker id, epoch, session) of the run message


@pytest.fixture
def worker():
    """A registered Worker's state, not connected to anything, with the real SIGINT
    handler installed in this (the main) thread; all undone afterwards."""
    assert threading.current_thread() is threading.main_thread()
    saved = runtime._KEY[:], runtime._BROKER[:], runtime._CURVE[:]
    w = Worker("tcp://127.0.0.1:1", KEY)
    w.ctl = w.task_sock   # what _on_control_message would answer on (it sends nothing here)
    w.registered, w.registration, w.session, w.ledger = True, BATCH[:2], BATCH[2], BATCH[2]
    previous = signal.signal(signal.SIGINT, w._on_sigint)
    try:
        yield w
    finally:
        signal.signal(signal.SIGINT, previous)
        runtime._KEY[:], runtime._BROKER[:], runtime._CURVE[:] = saved
        w.task_sock.close(linger=0)
        w.ctx.term()
        for fd in (w._wake_r, w._wake_w, w._registered_r, w._registered_w):
            os.close(fd)


def run_cancelled_at(w: Worker, nth: int) -> tuple[object, bool]:
    """Run one task; at the nth line event of _run_one after the task became current (with
    the lock free, as the I/O thread needs it), deliver a `cancel` of it as the broker sends
    one. Returns (what _run_one returned or raised, whether the cancel was delivered)."""
    prepared, arg_frames = functions.dumps_call(echo, (1,), {})
    w.functions.put(prepared.digest, prepared.frames)
    cancel = protocol.encode(w.signer, {"t": "cancel", "ids": [GID]})
    seen = [0]
    delivered = [False]

    def local(frame, event, arg):
        if event == "line" and w.current_tag == (GID, ATTEMPT) and not w.lock.locked() \
                and not delivered[0]:
            seen[0] += 1
            if seen[0] == nth:
                delivered[0] = True
                w._on_control_message(list(cancel))   # the I/O thread's handling, here
        return local

    def tracer(frame, event, arg):
        return local if frame.f_code is Worker._run_one.__code__ else None

    sys.settrace(tracer)
    try:
        out: object = w._run_one(GID, ATTEMPT, prepared.digest, arg_frames, False, BATCH)
    except BaseException as e:  # noqa: BLE001 - what the test is about
        out = e
    finally:
        sys.settrace(None)
    return out, delivered[0]


def test_a_cancel_landing_anywhere_in_a_starting_task_ends_that_task_only(worker):
    outcomes = set()
    for nth in range(1, 200):   # bounded: a task's run has far fewer lines
        done_before = worker.done
        out, delivered = run_cancelled_at(worker, nth)
        assert not isinstance(out, BaseException), \
            f"a cancel at line event {nth} of the running task escaped it: {out!r}"
        assert out is not None and out[0][:2] == [GID, ATTEMPT], out
        assert worker.done == done_before + 1, f"cancel at {nth}: the task was not counted done"
        assert worker.current_tag is None and not worker.in_task
        assert worker.interrupt_due is None and worker.interrupt_tag is None
        worker.cancelled.clear()   # a cancel that came after the task ended marks it skipped
        worker.interrupting = False   # (the main loop resets it after an interrupt)
        outcomes.add(out[0][2])
        if not delivered:   # past the task's last line: every point was tried
            break
    else:
        pytest.fail("the task never ran past the lines tried")
    assert outcomes == {"ok", "err"}, outcomes   # some cancels interrupted it, late ones not
