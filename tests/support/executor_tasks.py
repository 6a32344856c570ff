"""What the executor tests run on workers: module-level, so ProcessPoolExecutor's workers
and nbcluster's find them by reference."""

from __future__ import annotations

import os
import time
from pathlib import Path

GATE_TIMEOUT_S = 60


def open_gate(path: str) -> None:
    Path(path).touch()


def echo(*args, **kwargs):
    return args, kwargs


def gated(path: str, value=None):
    """Wait until the file `path` exists, then return value."""
    deadline = time.monotonic() + GATE_TIMEOUT_S
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"gate {path} never opened")
        time.sleep(0.01)
    return value


def rendezvous(folder: str, n: int) -> int:
    """Wait until n tasks are in here at once (so n workers exist); return our pid."""
    Path(folder, str(os.getpid())).touch()
    gated_count(folder, n)
    return os.getpid()


def gated_count(folder: str, n: int) -> None:
    deadline = time.monotonic() + GATE_TIMEOUT_S
    while len(os.listdir(folder)) < n:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {len(os.listdir(folder))} of {n} tasks ran at once")
        time.sleep(0.01)


def divide(a, b):
    return a // b


def raise_key_error(key):
    raise KeyError(key)


def raise_value_error(*args):
    raise ValueError(*args)


_INIT = None


def init_record(path: str, marker: str) -> None:
    global _INIT
    _INIT = marker
    with open(path, "a") as f:
        f.write(f"{os.getpid()}\n")


def init_fail() -> None:
    raise ValueError("init failed on purpose")


def initialized() -> tuple[int, str | None]:
    return os.getpid(), _INIT


def initialized_with(_) -> tuple[int, str | None]:
    return initialized()


class Box:
    """A result that can be weakly referenced."""

    def __init__(self, value):
        self.value = value


def box(value) -> Box:
    return Box(value)
