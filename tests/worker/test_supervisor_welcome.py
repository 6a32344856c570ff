"""A supervisor's report of how a worker ended must reach the broker even when the worker
ended before the supervisor's own hello was welcomed: sent then, it carried no session
nonce and the broker dropped it, and the lost task named no reason ("stopped answering"
instead of "killed by SIGKILL"; 3 runs in 25 of a supervisor test on a fresh clone).
The broker is the test itself (a ROUTER speaking the protocol), so the welcome's delay is
exact; the supervisor and its worker are real processes."""

import os
import signal
import subprocess
import sys
import time

import pytest

from nbcluster.wire import protocol
from nbcluster.wire.connection import KEY_ENV

from ..support.fake_broker import FakeBroker

pytestmark = pytest.mark.timeout(90)

NONCE = b"n" * 16


def next_message(broker: FakeBroker, kinds: set[str], until: float) -> tuple[bytes, dict]:
    while True:
        identity, header = broker.recv(max(0.1, until - time.monotonic()))
        if header["t"] in kinds:
            return identity, header


def test_an_exit_before_the_supervisors_welcome_is_reported_once_welcomed():
    key = protocol.new_key()
    broker = FakeBroker(key)
    supervisor = subprocess.Popen(
        [sys.executable, "-m", "nbcluster.worker.supervisor_main", "-n", "1",
         "--connect", f"tcp://127.0.0.1:{broker.port}"],
        env={**os.environ, KEY_ENV: key.hex()}, stdin=subprocess.PIPE,
        stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        hellos: dict[str, tuple[bytes, dict]] = {}
        while len(hellos) < 2:   # the supervisor's and its first worker's; none is welcomed
            identity, hello = next_message(broker, {"hello"}, deadline)
            hellos[hello["role"]] = identity, hello
        worker_pid = hellos["worker"][1]["pid"]
        os.kill(worker_pid, signal.SIGKILL)   # ended before its supervisor is welcomed
        quiet_until = time.monotonic() + 2.0
        while time.monotonic() < quiet_until:   # what it sends meanwhile would be dropped
            try:
                _, header = broker.recv(0.1)
            except TimeoutError:
                continue
            # (the supervisor starts another worker: its hello may come)
            assert header["t"] in ("hello", "hb"), f"sent before its welcome: {header}"
            assert header["t"] == "hello" or "nonce" not in header
        sup_identity = hellos["supervisor"][0]
        broker.send(sup_identity, {"t": "welcome", "heartbeat_ms": 1000, "liveness": 3,
                                   "nonce": NONCE, "broker": {}, "epoch": 1})
        _, exited = next_message(broker, {"exited"}, time.monotonic() + 30)
        assert exited["pid"] == worker_pid and exited["reason"] == "killed by SIGKILL"
        assert exited["nonce"] == NONCE, "sent without its session's nonce: dropped"
    finally:
        os.killpg(supervisor.pid, signal.SIGKILL)   # its session: it and its worker
        supervisor.wait(10)
        broker.close()
