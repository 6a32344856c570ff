"""A broker played by the test itself (a ROUTER speaking the protocol), so the order of its
messages is exact, and a real worker process connected to it."""

import os
import subprocess
import sys
import time

import zmq

from nbcluster.wire import functions, protocol, serialize
from nbcluster.wire.connection import KEY_ENV

EPOCH = 12345


class FakeBroker:
    """A ROUTER on loopback: receives and sends signed messages, nothing else."""

    def __init__(self, key: bytes):
        self.signer = protocol.Signer(key)
        self.ctx = zmq.Context()
        self.router = self.ctx.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.LINGER, 0)
        self.port = self.router.bind_to_random_port("tcp://127.0.0.1")

    def recv(self, timeout: float) -> tuple[bytes, dict]:
        if not self.router.poll(timeout * 1000):
            raise TimeoutError(f"no message from the worker in {timeout} s")
        identity, *body = self.router.recv_multipart()
        header, _ = protocol.decode(self.signer, body)
        return identity, header

    def send(self, identity: bytes, header: dict, payload: list = ()) -> None:
        self.router.send_multipart([identity, *protocol.encode(self.signer, header, payload)])

    def close(self) -> None:
        self.router.close()
        self.ctx.term()


def beat(broker: FakeBroker, ctl: bytes, seconds: float) -> None:
    """Wait, heartbeating as a broker does (a worker that hears nothing says hello again)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        broker.send(ctl, {"t": "hb"})
        time.sleep(0.1)


def welcome(wid: str, session) -> dict:
    return {"t": "welcome", "heartbeat_ms": 1000, "liveness": 60, "broker": {}, "epoch": EPOCH,
            "id": wid, "session": session}


def fake_broker_and_worker() -> tuple:
    """The test's broker, and a real worker process connected to it (stop it by pid)."""
    key = protocol.new_key()
    broker = FakeBroker(key)
    worker = subprocess.Popen(
        [sys.executable, "-m", "nbcluster.worker", "--connect", f"tcp://127.0.0.1:{broker.port}"],
        env={**os.environ, KEY_ENV: key.hex()}, stderr=subprocess.DEVNULL)
    return broker, worker


def task_run(fn, gid: int, *args) -> tuple:
    """A run message's task entry, its function and its frames for fn(*args)."""
    prepared = functions.prepare(fn)
    frames = serialize.dumps((args, {}))
    return [gid, 0, len(frames), False, prepared.digest], prepared, frames


def run_message(wid: str, session: int, tasks: list) -> tuple[dict, list]:
    """A `run` of several task_run()s for registration wid of hello `session`: the
    functions' payloads first, then the tasks' frames."""
    fns = {t[1].digest: t[1] for t in tasks}
    header = {"t": "run", "w": wid, "e": EPOCH, "s": session, "tasks": [t[0] for t in tasks],
              "fns": [[d, len(fn.frames)] for d, fn in fns.items()]}
    return header, [*(f for fn in fns.values() for f in fn.frames),
                    *(f for t in tasks for f in t[2])]
