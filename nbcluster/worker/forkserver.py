"""Starting a supervisor's workers by fork from a process that has imported them already.

    supervisor (a child subreaper) ──socketpair: worker argv + its stdin pipe──► fork server
       ▲                                                                           │ fork
       │ the worker's pid (once it has a session of its own)          intermediate ─┤ fork, exit
       └── waitpid: the worker is re-parented to us when the intermediate exits     ▼
                                                                                 worker

A fresh `python -m nbcluster.worker` costs about 0.2 s of CPU (the interpreter, zmq,
cloudpickle, nbcluster); 200 of them on 2 cores took 20 s. A fork costs milliseconds. The
fork server is forked from the supervisor before the supervisor opens its ZeroMQ context,
so it has no threads and no context: each fork is then safe, and the worker opens its own
context. The double fork and PR_SET_CHILD_SUBREAPER make every worker the supervisor's own
child, as if it had started it: it waits for it, gets its exit status, kills its process
group; the workers' own orphans come to it too, and `reap` collects them.

Where there is no subreaper (not Linux) or no fork, `spawn_process` starts a fresh
interpreter instead.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable

__all__ = ["ForkServer", "StartedProcess", "spawn_process", "become_subreaper", "reap"]

_PR_SET_CHILD_SUBREAPER = 36
_MAX_REQUEST = 1 << 16
_MAX_FDS = 200   # stdin pipes per request (the kernel passes at most 253 fds at once)
CLOSE_TIMEOUT_S = 2.0   # the server exits at once at EOF; one that does not is killed


class StartedProcess:
    """A worker we started: what the supervisor uses of a Popen (pid, stdin, poll, wait)."""

    def __init__(self, pid: int, stdin_fd: int) -> None:
        self.pid = pid
        self.stdin = os.fdopen(stdin_fd, "wb", buffering=0)
        self.returncode: int | None = None   # as Popen's: -N for killed by signal N

    def poll(self) -> int | None:
        return self.returncode

    def wait(self) -> int:
        """Block until it ends (it is our child); returns its returncode."""
        while self.returncode is None:
            try:
                _, status = os.waitpid(self.pid, 0)
            except ChildProcessError:   # reaped elsewhere, its status unknown
                self.returncode = 255 if self.returncode is None else self.returncode
                break
            self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)


def reap(processes: dict[int, StartedProcess]) -> None:
    """Collect every child that ended: ours get their returncode; others (the workers'
    orphans, re-parented to us as the subreaper; an intermediate) are just reaped."""
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        if pid in processes:
            processes[pid].returncode = os.waitstatus_to_exitcode(status)


def become_subreaper() -> bool:
    """Orphans among our descendants come to us, not to init (Linux); False elsewhere."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def spawn_process(cmd: list[str], env: dict[str, str]) -> StartedProcess:
    """A fresh interpreter running cmd, in a session of its own, its stdin a pipe from us."""
    read_end, write_end = os.pipe()
    try:
        pid = os.posix_spawn(cmd[0], cmd, env, setsid=True, file_actions=[
            (os.POSIX_SPAWN_DUP2, read_end, 0), (os.POSIX_SPAWN_CLOSE, write_end)])
    except BaseException:
        os.close(write_end)
        raise
    finally:
        os.close(read_end)
    return StartedProcess(pid, write_end)


class ForkServer:
    """A process forked from this one now, which forks workers running `run(argv)`.

    Call it before this process opens a ZeroMQ context or starts a thread. Workers
    inherit this process's imports, environment (plus `env`) and stdout/stderr.

    Args:
        run: the worker's main (it never returns into the server: whatever it does, the
            worker then leaves with os._exit).
        env: set in the server's environment, so in every worker's.
        close_fds: fds of ours the workers must not hold (e.g. a pipe to our parent).
    """

    def __init__(self, run: Callable[[list[str]], object], env: dict[str, str],
                 close_fds: tuple[int, ...] = ()) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:   # the server: never returns
            code = 1
            try:
                ours.close()
                for fd in close_fds:
                    with contextlib.suppress(OSError):
                        os.close(fd)
                null = os.open(os.devnull, os.O_RDONLY)
                os.dup2(null, 0)   # not our parent's pipe: EOF there is the supervisor's
                os.close(null)
                os.environ.update(env)
                signal.signal(signal.SIGINT, signal.SIG_IGN)   # Ctrl-C is the supervisor's
                _serve(theirs, run)
                code = 0
            except BaseException:   # noqa: BLE001
                import traceback
                traceback.print_exc(file=sys.__stderr__)
            finally:
                os._exit(code)
        theirs.close()
        self.pid, self._sock = pid, ours

    def start(self, argv: list[str], n: int = 1) -> list[StartedProcess]:
        """n workers running run(argv), each its stdin a pipe from us; fewer if the server
        could fork only some (the rest are to be tried again).

        Raises:
            OSError: the server is gone, or could fork none.
        """
        started: list[StartedProcess] = []
        for first in range(0, n, _MAX_FDS):
            k = min(_MAX_FDS, n - first)
            pipes = [os.pipe() for _ in range(k)]
            try:
                socket.send_fds(self._sock, [json.dumps(argv).encode()], [r for r, _ in pipes])
                reply = json.loads(self._sock.recv(_MAX_REQUEST) or b'{"error": "it is gone"}')
            except (OSError, ValueError) as e:
                reply = {"pids": [], "error": str(e)}
            finally:
                for r, _ in pipes:
                    os.close(r)
            pids = reply.get("pids", [])
            started += [StartedProcess(pid, w) for pid, (_, w) in zip(pids, pipes, strict=False)]
            for _, w in pipes[len(pids):]:
                os.close(w)
            if reply.get("error"):
                if not started:
                    raise OSError(f"the fork server could not start a worker: {reply['error']}")
                break
        return started

    def close(self, timeout: float = CLOSE_TIMEOUT_S) -> None:
        """Close the server's socket (it exits at EOF) and reap it: left to init, it would
        stay a zombie until init gets to it (seconds, where init is a container's agent)."""
        self._sock.close()
        deadline = time.monotonic() + timeout
        while True:
            try:
                if os.waitpid(self.pid, os.WNOHANG)[0]:
                    return
            except ChildProcessError:   # reaped already (see reap)
                return
            if time.monotonic() > deadline:   # stuck: it must not outlive us
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, signal.SIGKILL)
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(self.pid, 0)
                return
            time.sleep(0.002)


def _serve(sock: socket.socket, run: Callable[[list[str]], object]) -> None:
    while True:
        try:
            data, fds, _, _ = socket.recv_fds(sock, _MAX_REQUEST, _MAX_FDS)
        except ConnectionError:
            return
        if not data:   # the supervisor is gone
            return
        try:
            pids, error = _fork_workers(sock, json.loads(data), fds, run)
            sock.send(json.dumps({"pids": pids, "error": error}).encode())
        finally:
            for fd in fds:
                os.close(fd)


def _fork_workers(sock: socket.socket, argv: list[str], stdin_fds: list[int],
                  run: Callable[[list[str]], object]) -> tuple[list[int], str | None]:
    """A worker per stdin fd, each by a double fork: its parent exits at once, so the worker
    becomes the child of the nearest subreaper, the supervisor. Returns the workers' pids
    once each has called setsid (killing its process group from then on reaches it) and
    been re-parented, and what stopped us early, if anything. The forks go back to back
    and are collected after, so a batch costs little more than one on a loaded machine."""
    forked: list[tuple[int, int]] = []   # (intermediate pid, read end of its worker's pid)
    error = None
    for stdin_fd in stdin_fds:
        try:
            read_end, write_end = os.pipe()
            middle = os.fork()
        except OSError as e:   # e.g. no memory to fork: said, the supervisor retries later
            error = str(e)
            break
        if middle == 0:
            try:
                for fd in [read_end, *(r for _, r in forked), *(f for f in stdin_fds
                                                                 if f != stdin_fd)]:
                    os.close(fd)
                if os.fork() == 0:
                    _become_worker(sock, argv, stdin_fd, write_end, run)
            finally:
                os._exit(0)
        os.close(write_end)
        forked.append((middle, read_end))
    pids = []
    for middle, read_end in forked:
        try:
            os.waitpid(middle, 0)
            data = os.read(read_end, 64)   # written by the worker, after setsid
        finally:
            os.close(read_end)
        if not data.isdigit():   # its worker ended before it started
            error = error or "a worker ended before it started"
            break
        pids.append(int(data))
    return pids, error


def _become_worker(sock: socket.socket, argv: list[str], stdin_fd: int, ready_fd: int,
                   run: Callable[[list[str]], object]) -> None:
    code = 1
    try:
        os.setsid()
        os.write(ready_fd, str(os.getpid()).encode())
        os.close(ready_fd)
        sock.close()
        os.dup2(stdin_fd, 0)
        os.close(stdin_fd)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        logging.root.handlers.clear()   # the worker configures its own
        sys.argv = ["nbcluster-worker", *argv]
        run(argv)
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        if not isinstance(e.code, int | None):
            print(e.code, file=sys.__stderr__)
    except BaseException:   # noqa: BLE001
        import traceback
        traceback.print_exc(file=sys.__stderr__)
    finally:
        for stream in (sys.__stdout__, sys.__stderr__):
            with contextlib.suppress(Exception):
                if stream is not None:
                    stream.flush()
        os._exit(code)
