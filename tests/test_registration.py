"""A worker that registered twice in a row (its broker went silent, e.g. a cut link) must run
the tasks of its latest registration whatever order its two sockets deliver in.

The broker here is the test itself (a ROUTER speaking the protocol), so the order of its
messages is exact; the worker is a real process. The sequence is the one that left a task
pending forever in tests/test_across_hosts.py under load: the worker sent hello 1 and hello 2
while cut off; the broker answered both (welcome w1, then welcome w2, dropping w1); the worker
read welcome w1 and asked for work; the broker, its task socket now being w2's, sent a task
for w2 on the task socket, which arrived before welcome w2 on the control socket. The worker
took that run for a stranger's and dropped it, and the broker held the task on w2 forever
while w2 heartbeat normally.
"""

import operator
import os
import subprocess
import sys
import time

import pytest
import zmq

from nbcluster import protocol, serialize
from nbcluster.connection import KEY_ENV

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


@pytest.mark.timeout(90)
def test_a_run_that_overtakes_its_welcome_still_runs():
    broker, worker = fake_broker_and_worker()
    try:
        hellos = []   # unanswered, the worker says hello again after 3 s (its default expiry)
        deadline = time.monotonic() + 30
        while len(hellos) < 2:
            ctl, header = broker.recv(max(0.1, deadline - time.monotonic()))
            if header["t"] == "hello":
                hellos.append(header)
        task_identity = hellos[1]["task_identity"]
        broker.send(ctl, welcome("w1", hellos[0].get("session")))   # hello 1's answer...
        beat(broker, ctl, 0.5)                  # ...read by the worker (it may ask for work)
        fn = serialize.prepare(operator.add)
        args = serialize.dumps(((2, 3), {}))
        gid = 777
        broker.send(task_identity, {          # w2's task overtakes w2's welcome
            "t": "run", "w": "w2", "e": EPOCH, "s": hellos[1].get("session"),
            "tasks": [[gid, 0, len(args), False, fn.digest]],
            "fns": [[fn.digest, len(fn.frames)]]}, [*fn.frames, *args])
        beat(broker, ctl, 0.5)
        broker.send(ctl, welcome("w2", hellos[1].get("session")))
        deadline = time.monotonic() + 30
        while True:
            broker.send(ctl, {"t": "hb"})
            try:
                identity, header = broker.recv(0.1)
            except TimeoutError:
                if time.monotonic() < deadline:
                    continue
                pytest.fail("the worker never ran the task its latest registration was sent: "
                            "the broker would hold it there forever")
            if identity == task_identity and header["t"] == "done" and header["items"]:
                assert [item[:3] for item in header["items"]] == [[gid, 0, "ok"]]
                assert header["e"] == EPOCH
                break
    finally:
        worker.kill()
        worker.wait(10)
        broker.close()


def hello_within(broker: FakeBroker, ctl: bytes, seconds: float) -> bool:
    """Does the worker say hello within `seconds`? Meanwhile we heartbeat, as a broker does
    (a worker that hears nothing says hello again, whatever the test is about)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        broker.send(ctl, {"t": "hb"})
        try:
            _, header = broker.recv(0.1)
        except TimeoutError:
            continue
        if header["t"] == "hello":
            return True
    return False


@pytest.mark.timeout(90)
def test_only_a_reconnect_on_the_control_socket_makes_a_worker_register_again():
    """A reconnect on the task socket answers a message sent there, maybe before the worker's
    latest hello: acting on it ended the registration that hello made, and counted the tasks
    held there as lost (after a cut link, one task was lost on four registrations of the
    same two workers and failed). The control socket's reconnect, ordered with the hellos,
    is the one to act on."""
    broker, worker = fake_broker_and_worker()
    try:
        ctl, hello = broker.recv(30)
        assert hello["t"] == "hello"
        broker.send(ctl, welcome("w1", hello.get("session")))
        deadline = time.monotonic() + 30
        while True:   # the worker asks for work on its task socket once welcomed
            assert time.monotonic() < deadline, "the worker asked for no work once welcomed"
            broker.send(ctl, {"t": "hb"})
            try:
                identity, header = broker.recv(0.1)
            except TimeoutError:
                continue
            assert header["t"] != "hello", "the worker registered again unprompted"
            if header["t"] == "ready":
                break
        assert identity == hello["task_identity"]
        broker.send(identity, {"t": "reconnect"})
        assert not hello_within(broker, ctl, 3.0), "a reconnect on the task socket ended a registration"
        broker.send(ctl, {"t": "reconnect"})
        assert hello_within(broker, ctl, 30), "a reconnect on the control socket was ignored"
    finally:
        worker.kill()
        worker.wait(10)
        broker.close()
