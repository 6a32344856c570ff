"""A debugger on a worker, driven by the client of the task it debugs (through the broker):
post-mortem on a kept failure (postmortem.py), or at a `breakpoint()` inside a running task.

    client ── debug open (g, n) ──► I/O thread: a thread of its own runs pdb on failure n
    client ── debug line ─────────► the session's queue ──► pdb's stdin.readline()
    pdb's output, sent at each prompt ──► outbox ──► I/O thread ──► debug_out ──► client
    breakpoint() in a task ──► pdb on the task's (main) thread, same streams:
                               `c` resumes the task, `q` fails it (bdb.BdbQuit)

pdb runs as it does in a terminal, with its stdin and stdout replaced (`Session`), so every
command works on the worker's real objects. The I/O thread never waits for a debugger:
heartbeats go on however long a session lasts. A paused task that nobody attends (no client
showed its prompt: `attend`) for `timeout` seconds (NBCLUSTER_DEBUG_TIMEOUT_S, default 300)
resumes, its breakpoints cleared; an attended session waits up to ATTENDED_TIMEOUT_S for
each line, then ends as if closed. End of input (Ctrl-D, a closed stdin) resumes a paused
task too, where pdb would quit: a leftover breakpoint() in a script run without a terminal
does not fail its task; it quits a post-mortem.
"""

from __future__ import annotations

import code
import itertools
import logging
import os
import pdb
import queue
import sys
import threading
import traceback
from collections.abc import Callable
from types import FrameType
from typing import IO, Any, cast

from ..wire import tracebacks
from .postmortem import Kept, KeptFailures

__all__ = ["Debugger", "Session", "RemotePdb"]

log = logging.getLogger("nbcluster.worker")

DEBUG_TIMEOUT_S = 300.0
ATTENDED_TIMEOUT_S = 3600.0   # for each line, once a person is at the prompt
MAX_TEXT_CHARS = 64 * 1024   # of output per message: a `p` of a huge object is cut
MAX_REPR_CHARS = 10_000      # of an evaluated expression's repr (the explorer's box)


class _EOF:
    """The client's end of input (Ctrl-D at its prompt)."""


class _Attended:
    """The client shows the prompt: a person may be reading it."""


class Session:
    """One debugger's stdin and stdout, as messages to and from its client.

    Args:
        sid: the session's id (the client's for a post-mortem, ours for a breakpoint).
        gid: the task debugged.
        breakpoint: a paused task (else a post-mortem).
        send: queues a header for the I/O thread to send.
        timeout: seconds to wait for a line before ending by itself.
    """

    def __init__(self, sid: str, gid: int, breakpoint: bool, send: Callable[[dict], None],
                 timeout: float) -> None:
        self.sid, self.gid, self.breakpoint = sid, gid, breakpoint
        self._send_header, self.timeout = send, timeout
        self.lines: queue.Queue[str | type[_EOF] | type[_Attended] | None] = queue.Queue()
        self._out: list[str] = []
        self.ended = False
        self.closing: str | None = None   # why the session is ending (timeout, closed)
        self.attended = not breakpoint   # a post-mortem is opened by the person at it
        self.debugger: RemotePdb | None = None

    # pdb's stdout
    def write(self, text: str) -> int:
        self._out.append(text)
        return len(text)

    def flush(self) -> None:
        pass

    # pdb's stdin
    def readline(self, console: bool = False) -> str:
        """Send what was written (ending with the prompt) and wait for the client's line
        (`console`: for `interact`, which end of input only leaves)."""
        if self.closing:
            return self._closing_command()
        self._send(prompt=True)
        while True:
            timeout = max(self.timeout, ATTENDED_TIMEOUT_S) if self.attended else self.timeout
            try:
                line = self.lines.get(timeout=timeout)
            except queue.Empty:
                self.closing = f"no input for {timeout:g} s"
                return self._closing_command()
            if line is not _Attended:
                break
            self.attended = True   # and the wait starts again, the longer one
        if line is None:
            self.closing = "closed by the client"
            return self._closing_command()
        if line is _EOF:
            if self.breakpoint and not console:   # see the module doc
                self.closing = "end of input"
                return self._closing_command()
            return ""   # pdb's EOF: it quits
        assert isinstance(line, str)
        return line + "\n"

    def _closing_command(self) -> str:
        if self.breakpoint and self.debugger is not None:
            self.debugger.clear_all_breaks()
            return "continue\n"   # the task goes on
        return "quit\n"

    def end(self, reason: str) -> None:
        """Tell the client this session is over (once)."""
        if not self.ended:
            self.ended = True
            self._send(end=f"{reason} ({self.closing})" if self.closing else reason)

    def _send(self, prompt: bool = False, end: str | None = None) -> None:
        text, self._out = "".join(self._out), []
        if len(text) > MAX_TEXT_CHARS:
            cut = len(text) - MAX_TEXT_CHARS
            text = f"{text[:MAX_TEXT_CHARS // 2]}\n... [{cut:,} characters cut] ...\n" \
                   f"{text[-MAX_TEXT_CHARS // 2:]}"
        header: dict[str, Any] = {"t": "debug_out", "sid": self.sid, "g": self.gid,
                                  "text": text, "prompt": prompt, "bp": self.breakpoint}
        if end is not None:
            header["end"] = end
        self._send_header(header)


class _Console(code.InteractiveConsole):
    """pdb's `interact`, on the session's streams; `exit()` or Ctrl-D leaves it."""

    def __init__(self, session: Session, namespace: dict[str, Any]) -> None:
        super().__init__(namespace)
        self.session, self.left = session, False

    def raw_input(self, prompt: str = "") -> str:
        if self.left or self.session.closing:
            raise EOFError
        self.session.write(prompt)
        line = self.session.readline(console=True)
        if not line or self.session.closing:
            raise EOFError
        return line.rstrip("\n")

    def write(self, data: str) -> None:
        self.session.write(data)

    def runcode(self, code_obj: Any) -> None:
        saved = sys.stdout
        sys.stdout = self.session
        try:
            exec(code_obj, self.locals)
        except SystemExit:
            self.left = True
        except BaseException:   # noqa: BLE001 - shown, as the interpreter does
            self.showtraceback()
        finally:
            sys.stdout = saved


class RemotePdb(pdb.Pdb):
    """pdb on a session's streams (see the module doc)."""

    def __init__(self, session: Session) -> None:
        streams = cast(IO[str], session)   # the two methods of each that pdb uses
        super().__init__(stdin=streams, stdout=streams, nosigint=True, readrc=False)
        self.session = session
        session.debugger = self
        self.use_rawinput = False

    def _cmdloop(self) -> None:
        # pdb's catches KeyboardInterrupt and prompts again; a cancel of the paused task
        # (the I/O thread's SIGINT) must end the task.
        self.cmdloop()

    def do_interact(self, arg: str) -> None:
        """interact
        An interactive interpreter in the current frame's names (exit() or Ctrl-D leaves)."""
        assert self.curframe is not None   # set up by interaction() before any command
        _Console(self.session, {**self.curframe.f_globals, **self.curframe_locals}).interact(
            "*interactive*", exitmsg="(back in the debugger)")

    def do_continue(self, arg: str) -> bool:
        stop = super().do_continue(arg)
        if self.session.breakpoint and not self.breaks:
            self.session.end("resumed")
        return bool(stop)

    do_c = do_cont = do_continue

    def do_quit(self, arg: str) -> bool:
        stop = super().do_quit(arg)
        if self.session.breakpoint:
            self.session.end("quit: the task fails with bdb.BdbQuit")
        return bool(stop)

    do_q = do_exit = do_quit


class Debugger:
    """A worker's debugger sessions (see the module doc).

    Args:
        kept: the failures this worker keeps.
        send: queues a header for the I/O thread to send (from any thread).
        running_gid: the task running now, if any.
    """

    def __init__(self, kept: KeptFailures, send: Callable[[dict], None],
                 running_gid: Callable[[], int | None]) -> None:
        self.kept, self._send, self._running_gid = kept, send, running_gid
        self.timeout = float(os.environ.get("NBCLUSTER_DEBUG_TIMEOUT_S", DEBUG_TIMEOUT_S))
        self.sessions: dict[str, Session] = {}
        self._lock = threading.Lock()
        self._breakpoints = itertools.count(1)

    def on_message(self, h: dict[str, Any]) -> None:
        """(I/O thread) A `debug` message from a task's client."""
        op, sid, gid = h.get("op"), h.get("sid"), h.get("g")
        if not isinstance(sid, str) or not isinstance(gid, int):
            return
        if op == "open":
            self._open_postmortem(sid, gid, h.get("n"))
            return
        if op == "eval":
            self._evaluate(sid, gid, h.get("n"), h.get("frame"), h.get("line"))
            return
        if op == "release":
            n = h.get("n")
            if isinstance(n, int):
                self.kept.release(gid, n)
            return
        with self._lock:
            session = self.sessions.get(sid)
        if session is None or session.gid != gid:
            if op in ("line", "eof", "attend"):   # it ended meanwhile: say so, or the client waits
                self._send({"t": "debug_out", "sid": sid, "g": gid, "text": "",
                            "prompt": False, "end": "the session has ended"})
            return
        if op == "attend":
            session.lines.put(_Attended)
        elif op == "line":
            line = h.get("line")
            session.lines.put(line if isinstance(line, str) else "")
        elif op == "eof":
            session.lines.put(_EOF)
        elif op == "close":
            session.lines.put(None)

    def _kept(self, sid: str, gid: int, n: object) -> Kept | None:
        """Failure n of task gid; if it is not kept, the client is told so."""
        kept = self.kept.get(gid, n) if isinstance(n, int) else None
        if kept is None:
            self._send({"t": "debug_out", "sid": sid, "g": gid, "text": "", "prompt": False,
                        "end": "released: this failure's frames are no longer kept on its "
                               "worker (see NBCLUSTER_DEBUG_KEEP and NBCLUSTER_DEBUG_KEEP_S)"})
        return kept

    def _evaluate(self, sid: str, gid: int, n: object, frame: object, expression: object
                  ) -> None:
        """An expression in one frame of failure n (the explorer's box): its repr, or the
        exception it raised, as one message that ends the session. On a thread of its own:
        the expression may take a while."""
        kept = self._kept(sid, gid, n)
        if kept is not None:
            threading.Thread(target=self._evaluate_in, args=(sid, kept, frame, expression),
                             name=f"nbcluster-eval-{sid}", daemon=True).start()

    def _evaluate_in(self, sid: str, kept: Kept, frame: object, expression: object) -> None:
        frames = [f for f, _ in traceback.walk_tb(kept.tb)][-tracebacks.MAX_FRAMES:]
        try:
            if not isinstance(frame, int) or not -len(frames) <= frame < len(frames):
                raise IndexError(f"no frame {frame} (it has {len(frames)})")
            f = frames[frame]
            value = eval(str(expression), f.f_globals, f.f_locals)
            text, end = repr(value), "evaluated"
        except BaseException as e:   # noqa: BLE001 - the user's expression: told, not raised
            text, end = "".join(traceback.format_exception_only(type(e), e)), "raised"
        if len(text) > MAX_REPR_CHARS:
            text = f"{text[:MAX_REPR_CHARS]}... [{len(text) - MAX_REPR_CHARS:,} more characters]"
        self._send({"t": "debug_out", "sid": sid, "g": kept.gid, "text": text,
                    "prompt": False, "end": end})

    def _open_postmortem(self, sid: str, gid: int, n: object) -> None:
        kept = self._kept(sid, gid, n)
        if kept is None:
            return
        session = Session(sid, gid, False, self._send, self.timeout)
        with self._lock:
            self.sessions[sid] = session
        kept.in_use += 1
        threading.Thread(target=self._postmortem, args=(session, kept),
                         name=f"nbcluster-debug-{sid}", daemon=True).start()

    def _postmortem(self, session: Session, kept: Kept) -> None:
        try:
            debugger = RemotePdb(session)
            debugger.reset()
            debugger.interaction(None, kept.tb)
            session.end("the debugger quit")
        except BaseException as e:   # the worker goes on; the client is told
            log.exception("a debugger session failed")
            session.end(f"the debugger failed: {type(e).__name__}: {e}")
        finally:
            kept.in_use -= 1
            with self._lock:
                self.sessions.pop(session.sid, None)

    def breakpoint(self, *args: object, **kwargs: object) -> None:
        """sys.breakpointhook in a worker: pause the running task for its client."""
        gid = self._running_gid()
        if gid is None or threading.current_thread() is not threading.main_thread():
            print("nbcluster: breakpoint() outside a task's thread is ignored", file=sys.stderr)
            return
        session = Session(f"b{os.getpid()}.{next(self._breakpoints)}", gid, True, self._send,
                          self.timeout)
        with self._lock:
            self.sessions[session.sid] = session
        frame: FrameType | None = sys._getframe(1)
        RemotePdb(session).set_trace(frame)

    def task_ended(self, gid: int) -> None:
        """(main thread) The task ended: its breakpoint sessions end too."""
        if not self.sessions:   # (after every task: no lock when there is none)
            return
        with self._lock:
            ended = [s for s in self.sessions.values() if s.gid == gid and s.breakpoint]
            for s in ended:
                del self.sessions[s.sid]
        for s in ended:
            s.end("the task ended")
