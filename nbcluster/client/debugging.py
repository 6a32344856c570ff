"""Debuggers on workers, from the client: a failure's frames post-mortem, or a task paused
at `breakpoint()` (the worker's side: worker/debugger.py; the routes: broker/debug_routes.py).

    err.debug() (report.py) ──► _debug_open(worker, n) ──► broker ──► the failure's worker
    DebugSession.run: the worker's output is printed; input(prompt) ──► debug line ──► ...
                      until the worker says the session ended
    a breakpoint's first output ──► ATTENTION ──► attended by the main thread while it waits
                      for a result (`TaskFuture.result`, map, collections, `%%cluster`), or
                      by `Client.debug()`

Input is the process's own `input()`: in a notebook, the notebook's stdin box (the kernel
asks the frontend); in a terminal or script, the terminal. A frontend that cannot take input
closes the session: a paused task resumes, a post-mortem ends.

A mixin of `Client`: the state it shares with the rest of the client is declared below.
"""

from __future__ import annotations

import builtins
import collections
import concurrent.futures
import queue
import secrets
import sys
import threading
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from .client import Client

__all__ = ["Debugging", "DebugSession", "ATTENTION", "wait_attending", "wait_futures"]

SLICE_S = 0.1   # a main thread waiting for a result looks for paused tasks this often


class DebugSession:
    """One conversation with a debugger on a worker (see the module doc).

    Attributes:
        worker: the worker's id.
        key: the task's id within its client (-1 if not known).
        breakpoint: a task paused at breakpoint() (else a post-mortem).
        ended: why the session ended, once it has.
    """

    def __init__(self, client: Client, worker: str, sid: str, key: int,
                 breakpoint: bool) -> None:
        self.client, self.worker, self.sid, self.key = client, worker, sid, key
        self.breakpoint = breakpoint
        self.inbox: queue.Queue[dict[str, Any]] = queue.Queue()
        self.ended: str | None = None

    def describe(self) -> str:
        task = f"task {self.key}" if self.key >= 0 else "the failed task"
        return f"{task} on worker {self.worker}"

    def run(self, input: Callable[[str], str] | None = None,
            write: Callable[[str], object] | None = None) -> str:
        """Converse until the debugger ends; returns why it ended. `input` and `write`
        default to the builtin input() and sys.stdout, looked up now (IPython replaces
        them while a cell runs)."""
        read = input or builtins.input
        out = write or (lambda text: sys.stdout.write(text))
        closing = False
        if self.breakpoint:
            self._send("attend")   # someone is at the prompt: the task waits for them
        while True:
            msg = self._next()
            text = msg.get("text", "")
            if "end" in msg:
                self.ended = str(msg["end"])
                out(f"{text}[debugger of {self.describe()}: {self.ended}]\n")
                return self.ended
            if not msg.get("prompt") or closing or not self.inbox.empty():
                out(text)   # (a prompt already answered by the worker's timeout: stale)
                continue
            head, newline, prompt = text.rpartition("\n")
            out(head + newline)
            sys.stdout.flush()   # (a kernel sends it before the input request, not after)
            try:
                line = read(prompt)
            except EOFError:
                self._send("eof")
                continue
            except KeyboardInterrupt:
                self._send("close")   # a paused task resumes, a post-mortem ends
                raise
            except Exception as e:   # noqa: BLE001 - e.g. IPython's StdinNotImplementedError
                out(f"[cannot read input here ({type(e).__name__}: {e}): closing the "
                    "debugger]\n")
                self._send("close")
                closing = True
                continue
            self._send("line", line)

    def answer(self, timeout: float) -> tuple[str, str]:
        """(why it ended, its text) of a one-message session (an evaluation)."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                msg = self.inbox.get(timeout=min(left, 1.0))
            except queue.Empty:
                if self.client.closed:
                    break
                continue
            if "end" in msg:
                self.ended = str(msg["end"])
                return self.ended, str(msg.get("text", ""))
        self._send("close")
        return f"no answer within {timeout:g} s", ""

    def _send(self, op: str, line: str | None = None) -> None:
        self.client._debug_send({"t": "debug", "w": self.worker, "sid": self.sid, "op": op,
                                 **({"line": line} if line is not None else {})})

    def _next(self) -> dict[str, Any]:
        while True:
            try:
                return self.inbox.get(timeout=1.0)
            except queue.Empty:
                if self.client.closed:
                    return {"text": "", "end": "the client is closed"}


class Attention:
    """Tasks paused at a breakpoint, from every client of this process, waiting for a
    prompt; the main thread attends them while it waits (`wait_attending`)."""

    def __init__(self) -> None:
        self.paused: collections.deque[DebugSession] = collections.deque()
        self._attending = False
        self._arrived = threading.Condition()

    def pause(self, session: DebugSession) -> None:
        with self._arrived:
            self.paused.append(session)
            self._arrived.notify_all()

    def attend(self, timeout: float | None = 0.0, input: Callable[[str], str] | None = None,
               write: Callable[[str], object] | None = None) -> int:
        """Run the paused tasks' debuggers in turn, waiting up to `timeout` seconds (None:
        for ever) for the first; returns how many were attended."""
        out = write or (lambda text: sys.stdout.write(text))
        if self._attending:   # a debugger's own wait: not again inside it
            return 0
        with self._arrived:
            self._arrived.wait_for(lambda: bool(self.paused), timeout)
        attended = 0
        self._attending = True
        try:
            while self.paused:
                session = self.paused.popleft()
                if session.client.closed:
                    continue
                out(f"[{session.describe()} is paused at a breakpoint; `c` resumes it, "
                    "`q` fails it]\n")
                session.run(input, write)
                attended += 1
        finally:
            self._attending = False
        return attended


ATTENTION = Attention()


def wait_attending(wait: Callable[[float | None], bool], timeout: float | None) -> bool:
    """wait(seconds) until it returns True or timeout passes; on the main thread, in slices,
    attending paused tasks between them (elsewhere, one wait)."""
    if threading.current_thread() is not threading.main_thread():
        return wait(timeout)
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        if wait(SLICE_S if left is None else min(SLICE_S, left)):
            return True
        if ATTENTION.paused:
            ATTENTION.attend()
        elif left is not None and left <= SLICE_S:
            return wait(0.0)


def wait_futures(futures: Iterable[concurrent.futures.Future], timeout: float | None = None,
                 return_when: str = concurrent.futures.ALL_COMPLETED
                 ) -> tuple[set[concurrent.futures.Future], set[concurrent.futures.Future]]:
    """concurrent.futures.wait, attending paused tasks meanwhile (see wait_attending)."""
    futures = list(futures)
    result: list[Any] = []

    def wait(seconds: float | None) -> bool:
        done, not_done = concurrent.futures.wait(futures, seconds, return_when)
        result[:] = [done, not_done]
        if return_when == concurrent.futures.FIRST_COMPLETED:
            return bool(done) or not not_done
        if return_when == concurrent.futures.FIRST_EXCEPTION:
            return not not_done or any(not f.cancelled() and f.exception() is not None
                                       for f in done)
        return not not_done

    wait_attending(wait, timeout)
    return result[0], result[1]


class Debugging:
    """The client's side of debugger sessions (a mixin of `Client`)."""

    _lock: threading.Lock
    _outbox: collections.deque
    _debug_sessions: dict[tuple[str, str], DebugSession]
    _debug_releases: collections.deque[dict[str, Any]]
    _wake: Callable[[], None]

    @property
    def closed(self) -> bool:   # the Client's
        raise NotImplementedError

    def debug(self, timeout: float | None = None, input: Callable[[str], str] | None = None,
              write: Callable[[str], object] | None = None) -> int:
        """Attend this process's tasks paused at `breakpoint()`: a debugger prompt for each
        in turn (waiting up to `timeout` seconds for the first, None: until one pauses).
        Returns how many were attended. A main thread waiting for a result attends them
        too, so this is only needed when nothing waits. `input`, `write`: see
        `DebugSession.run`."""
        return ATTENTION.attend(timeout, input, write)

    def _debug_open(self, worker: str, n: int, key: int = -1) -> DebugSession:
        """A post-mortem session on failure n kept by worker."""
        session = DebugSession(cast("Client", self), worker, secrets.token_hex(8), key,
                               breakpoint=False)
        with self._lock:
            self._debug_sessions[(worker, session.sid)] = session
        self._debug_send({"t": "debug", "w": worker, "sid": session.sid, "op": "open", "n": n})
        return session

    def _debug_eval(self, worker: str, n: int, frame: int, expression: str) -> DebugSession:
        """An expression evaluated in frame `frame` of failure n kept by worker."""
        session = DebugSession(cast("Client", self), worker, secrets.token_hex(8), -1,
                               breakpoint=False)
        with self._lock:
            self._debug_sessions[(worker, session.sid)] = session
        self._debug_send({"t": "debug", "w": worker, "sid": session.sid, "op": "eval", "n": n,
                          "frame": frame, "line": expression})
        return session

    def _debug_release(self, worker: str, n: int) -> None:
        """Failure n on worker is no longer wanted: its frames go."""
        # Lock-free: it runs when an error is collected, maybe on a thread holding _lock.
        if not self.closed:
            self._debug_releases.append({"t": "debug", "w": worker, "sid": "-",
                                         "op": "release", "n": n})
            self._wake()

    def _debug_send(self, header: dict[str, Any]) -> None:
        with self._lock:
            self._outbox.append(header)
        self._wake()

    def _end_debug_sessions(self, why: str) -> None:
        """(I/O thread) The broker restarted or is lost: no session's debugger can answer
        any more (the broker forgot its routes); each ends, rather than wait for ever."""
        with self._lock:
            sessions, self._debug_sessions = list(self._debug_sessions.values()), {}
        for session in sessions:
            session.inbox.put({"text": "", "end": why})

    def _on_debug_out(self, h: dict[str, Any]) -> None:
        """(I/O thread) A debugger's output, or a task paused at a breakpoint."""
        key = (str(h.get("w")), str(h.get("sid")))
        with self._lock:
            session = self._debug_sessions.get(key)
            if session is None and h.get("bp") and "end" not in h:
                session = DebugSession(cast("Client", self), key[0], key[1],
                                       int(h.get("k", -1)), breakpoint=True)
                self._debug_sessions[key] = session
                ATTENTION.pause(session)
            if "end" in h:
                self._debug_sessions.pop(key, None)
        if session is not None:
            session.inbox.put(h)
