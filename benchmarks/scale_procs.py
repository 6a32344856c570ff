"""Processes that bench_scale starts, and how it watches them: every one is stopped by pid.

    bench_scale ── Popen (a session of its own) ──► agent / dask scheduler / dask worker
                ◄── one JSON line per command ───── (agents: scale_agent.py)

`Procs` keeps every process started, and `stop_all` kills each one's process group (its own
session: the group id is its pid) and waits for it, also on failure or Ctrl-C. `Agent` is a
client process driven by lines on its stdin (see scale_agent.py); it exits when its stdin
closes, so even a SIGKILLed bench leaves none behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import psutil

from nbcluster.testing import wait_for

HERE = Path(__file__).resolve().parent
AGENT = HERE / "scale_agent.py"


class Procs:
    """Every process this run started, stopped by pid (its own process group) at the end."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []

    def spawn(self, args: list[str], env: dict | None = None, **kw) -> subprocess.Popen:
        proc = subprocess.Popen(args, env=env, start_new_session=True, **kw)
        self.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen, timeout: float = 10.0) -> None:
        self.stop_many([proc], timeout)

    def stop_many(self, procs: list[subprocess.Popen], timeout: float = 10.0) -> None:
        """Close their stdins (agents leave), give them timeout seconds after a SIGTERM to
        their process groups, then SIGKILL the groups; wait for each."""
        for proc in procs:
            if proc.stdin is not None:
                with contextlib.suppress(OSError):
                    proc.stdin.close()
        deadline = time.monotonic() + (timeout if any(p.stdin for p in procs) else 0)
        while time.monotonic() < deadline and any(p.poll() is None for p in procs):
            time.sleep(0.05)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for proc in procs:
                if proc.poll() is None:
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        # its session: pgid == pid, reserved while it is not reaped
                        os.killpg(proc.pid, sig)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and any(p.poll() is None for p in procs):
                time.sleep(0.05)
        for proc in procs:
            proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
            if proc in self.procs:
                self.procs.remove(proc)

    def stop_all(self) -> None:
        self.stop_many(list(self.procs), timeout=5)


class Agent:
    """A client in a process of its own (scale_agent.py), one JSON reply per command."""

    def __init__(self, procs: Procs, peer: str, address: str, env: dict | None = None):
        self.procs = procs
        self.proc = procs.spawn([sys.executable, str(AGENT), peer, address], env=env,
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.pid = self.proc.pid
        self.ask({"do": "hello"}, timeout=120)

    def ask(self, command: dict, timeout: float) -> dict:
        """Send a command, wait (bounded) for its reply; raise TimeoutError past timeout."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write((json.dumps(command) + "\n").encode())
        self.proc.stdin.flush()
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            if not sel.select(timeout):
                raise TimeoutError(f"agent {command['do']}: no reply within {timeout:.0f} s")
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"agent {command['do']}: it exited ({self.proc.poll()})")
        reply = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"agent {command['do']}: {reply['error']}")
        return reply

    def rss(self) -> int:
        return rss(self.pid)

    def close(self) -> None:
        self.procs.stop(self.proc)


def rss(pid: int) -> int:
    try:
        return psutil.Process(pid).memory_info().rss
    except psutil.Error:
        return 0


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process."""
    t = psutil.Process(pid).cpu_times()
    return t.user + t.system


def percentiles(samples_s: list[float]) -> tuple[float, float, float]:
    """(median, p95, max) of durations in seconds, as milliseconds."""
    s = sorted(samples_s)
    return (statistics.median(s) * 1e3, s[min(len(s) - 1, int(len(s) * 0.95))] * 1e3,
            s[-1] * 1e3)


def wait_until(condition, timeout: float, what: str, interval: float = 0.2):
    """Poll condition() until truthy (its value), or raise TimeoutError naming what."""
    return wait_for(condition, timeout, interval, what)


def mb(n_bytes: float) -> str:
    return f"{n_bytes / 2**20:,.0f} MB"
