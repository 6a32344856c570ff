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
import time

import pytest

from nbcluster.wire import functions, serialize

from ..support.fake_broker import (
    EPOCH,
    FakeBroker,
    beat,
    fake_broker_and_worker,
    run_message,
    task_run,
    welcome,
)


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
        fn = functions.prepare(operator.add)
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
        assert not hello_within(broker, ctl, 3.0), \
            "a reconnect on the task socket ended a registration"
        broker.send(ctl, {"t": "reconnect"})
        assert hello_within(broker, ctl, 30), "a reconnect on the control socket was ignored"
    finally:
        worker.kill()
        worker.wait(10)
        broker.close()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("resumed", [True, False])
def test_a_batch_interrupted_by_registering_again_runs_on_only_if_resumed(tmp_path, resumed):
    """A worker runs task A of a batch [A, B] when it hears nothing for its expiry and says
    hello again, naming its registration and A. Resumed, B is still its own and runs. Not
    resumed (a new registration that kept A), the broker has queued B again: B must not run
    here, and A's result counts in the new ledger."""
    gate = tmp_path / "gate"

    def record(path, gate=None):
        import time
        open(path, "w").close()
        deadline = time.monotonic() + 60
        while gate and not os.path.exists(gate) and time.monotonic() < deadline:
            time.sleep(0.02)
        return path

    broker, worker = fake_broker_and_worker()
    try:
        ctl, hello = broker.recv(30)
        assert hello["t"] == "hello" and "resume" not in hello and hello["running"] == []
        short_expiry = {**welcome("w1", hello["session"]), "liveness": 2, "ledger": 1}
        broker.send(ctl, short_expiry)
        while True:   # its task socket must have spoken before we can route to it
            _, ready = broker.recv(30)
            if ready["t"] == "ready":
                break
        assert ready["l"] == 1
        header, frames = run_message("w1", hello["session"], [
            task_run(record, 1, str(tmp_path / "A"), str(gate)),
            task_run(record, 2, str(tmp_path / "B"))])
        broker.send(hello["task_identity"], header, frames)
        deadline = time.monotonic() + 30
        while not (tmp_path / "A").exists():
            assert time.monotonic() < deadline, "task A never started"
            beat(broker, ctl, 0.1)
        while True:   # silence: the worker says hello again within its expiry (2 s)
            _, again = broker.recv(30)
            if again["t"] == "hello":
                break
        assert again["resume"] == ["w1", EPOCH] and again["running"] == [[1, 0]]
        assert again["session"] == hello["session"] + 1
        answer = {**welcome("w1" if resumed else "w2", again["session"]), "ledger": 1}
        answer.update({"resumed": True} if resumed else {"ledger": again["session"],
                                                         "kept": [[1, 0]]})
        broker.send(ctl, answer)
        beat(broker, ctl, 0.3)
        gate.touch()
        header, frames = run_message(answer["id"], again["session"], [
            task_run(record, 3, str(tmp_path / "C"))])
        broker.send(hello["task_identity"], header, frames)
        done, deadline = {}, time.monotonic() + 30
        while 3 not in done:
            assert time.monotonic() < deadline, f"no result for task C (results: {done})"
            broker.send(ctl, {"t": "hb"})
            try:
                _, header = broker.recv(0.1)
            except TimeoutError:
                continue
            if header["t"] == "done":
                done.update({item[0]: header["l"] for item in header["items"]})
        assert (tmp_path / "B").exists() == resumed
        assert done == ({1: 1, 2: 1, 3: 1} if resumed else {1: 2, 3: 2})
    finally:
        worker.kill()
        worker.wait(10)
        broker.close()


@pytest.mark.timeout(90)
def test_a_worker_waits_the_expiry_its_welcome_names_before_registering_again():
    """A supervised worker is told in its welcome that the broker heartbeats it only every
    3 s (expiry 9 s). The worker set its deadline from its default 3 s expiry before reading
    the welcome, so a first heartbeat due 3 s later raced it: CI saw 2 of 50 workers
    register again at start. Silent for 6 s after the welcome, no hello may come."""
    broker, worker = fake_broker_and_worker()
    try:
        ctl, hello = broker.recv(30)
        assert hello["t"] == "hello"
        broker.send(ctl, {**welcome("w1", hello["session"]), "heartbeat_ms": 3000,
                          "liveness": 3})
        deadline = time.monotonic() + 6
        while (left := deadline - time.monotonic()) > 0:
            try:
                _, header = broker.recv(left)
            except TimeoutError:
                break
            assert header["t"] != "hello", \
                "the worker registered again before the expiry its welcome named"
    finally:
        worker.kill()
        worker.wait(10)
        broker.close()
