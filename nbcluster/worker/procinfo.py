"""What a supervisor reads about its workers from /proc, and memory sizes as people write them.

    rss(pid)            resident memory in bytes, from /proc/<pid>/statm (None once it is gone)
    is_running(pid)     alive and not stopped: state in /proc/<pid>/stat not T, t, Z or X
    parse_bytes("2GiB") 2147483648; format_bytes(2147483648) "2.0 GiB"
    exit_reason(status) "killed by SIGKILL", "exited with status 0" (a Popen returncode)
"""

from __future__ import annotations

import os
import re
import signal
from typing import overload

__all__ = ["rss", "is_running", "parse_bytes", "memory_arg", "format_bytes", "exit_reason"]

_PAGE = os.sysconf("SC_PAGE_SIZE")
_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9,
          "gb": 10**9, "t": 10**12, "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30,
          "tib": 2**40}
_STOPPED = set("TtZX")   # stopped (SIGSTOP), traced, zombie, dead


def rss(pid: int) -> int | None:
    """Resident memory of process pid in bytes, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        return None


def is_running(pid: int) -> bool:
    """True if pid exists and is neither stopped (SIGSTOP, a debugger) nor a zombie: the
    process can answer, even if its Python code holds the GIL."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return False
    # The command name (2nd field) is in parentheses and may hold spaces or ')'.
    state = stat[stat.rfind(")") + 2:stat.rfind(")") + 3]
    return bool(state) and state not in _STOPPED


def group_members(pgid: int) -> list[int]:
    """Pids of the live processes in process group pgid (from /proc)."""
    members = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    stat = f.read()
            except OSError:
                continue
            fields = stat[stat.rfind(")") + 2:].split()   # state, ppid, pgrp, ...
            if len(fields) > 2 and fields[2] == str(pgid):
                members.append(int(name))
    return members


@overload
def parse_bytes(size: None) -> None: ...


@overload
def parse_bytes(size: int | float | str) -> int: ...


def parse_bytes(size: int | float | str | None) -> int | None:
    """A memory size: a number of bytes, or a string like "2GiB", "500 MB", "1.5g".

    Raises:
        ValueError: not a size, or not positive.
    """
    if size is None:
        return None
    if isinstance(size, (int, float)) and not isinstance(size, bool):
        value = int(size)
    else:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(size))
        unit = m.group(2).lower() if m else ""
        if not m or unit not in _UNITS:
            raise ValueError(f"not a memory size: {size!r} (write e.g. 2GiB, 500MB or a "
                             "number of bytes)")
        value = int(float(m.group(1)) * _UNITS[unit])
    if value <= 0:
        raise ValueError(f"a memory limit must be positive, not {size!r}")
    return value


def memory_arg(text: str) -> int:
    """parse_bytes for argparse: a bad size is a usage error."""
    import argparse
    try:
        return parse_bytes(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def format_bytes(n: int) -> str:
    """2147483648 -> "2.0 GiB", 1536 -> "1.5 KiB"."""
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def exit_reason(returncode: int) -> str:
    """How a process ended, from its Popen returncode (negative: the signal that killed it)."""
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exited with status {returncode}"
