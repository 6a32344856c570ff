"""A broker that is gone: pending futures wait for it up to the client's broker_timeout, then
fail with BrokerLost (futures, Executor, map alike); a request gets BrokerTimeout (a
TimeoutError, never a bare one); a broker back within broker_timeout finishes the work."""

import threading
import time

import pytest

from nbcluster import BrokerLost, BrokerTimeout, NBClusterError, parallel
from nbcluster.client.client import Client
from nbcluster.testing import wait_for

from ..support.processes import Processes, gated, release, running

pytestmark = pytest.mark.timeout(180)

RESULT_WAIT_S = 60   # generous: before, they waited forever


def test_futures_fail_with_broker_lost_when_the_broker_is_gone(tmp_path):
    """A broker and a worker of the test's own (LocalCluster restarts a broker that dies:
    here it must stay gone)."""
    procs = Processes(tmp_path)
    client = None
    try:
        broker = procs.broker()
        procs.spawn("nbcluster.worker", "--watch-stdin", "--connect", procs.endpoint)
        client = Client(procs.endpoint, procs.key, remember=False, broker_timeout=2)
        wait_for(lambda: client.status()["workers"], what="the worker joined")
        check_broker_lost(client, broker, procs.endpoint)
    finally:
        if client is not None:
            client.close()
        procs.close()


def check_broker_lost(client, broker, endpoint):
    running_task = client.submit(time.sleep, 120)
    queued_task = client.submit(time.sleep, 120)
    executor_task = client.executor().submit(time.sleep, 120)
    outcomes: dict = {}

    def run(name, fn):
        try:
            outcomes[name] = fn()
        except BaseException as e:   # noqa: BLE001 - what the test looks at
            outcomes[name] = e

    mappers = [threading.Thread(target=run, args=args, daemon=True) for args in (
        ("map", lambda: client.map(time.sleep, [120] * 3)),
        ("parallel", lambda: parallel([120] * 3, client).map(time.sleep).to_list()))]
    for mapper in mappers:
        mapper.start()
    wait_for(lambda: client.status()["workers"][0]["running"], what="a task running")
    killed_at = time.time()
    broker.kill()   # SIGKILL, and not started again
    broker.wait()

    with pytest.raises(BrokerTimeout) as info:
        client.status(timeout=0.5)
    assert isinstance(info.value, TimeoutError) and isinstance(info.value, NBClusterError)
    assert endpoint in str(info.value) and "0.5 s" in str(info.value)

    for fut in (running_task, queued_task, executor_task):
        with pytest.raises(BrokerLost) as info:
            fut.result(RESULT_WAIT_S)
        error = info.value
        assert not isinstance(error, TimeoutError)   # result(timeout) means "not done yet"
        assert error.endpoint == endpoint and endpoint in str(error)
        assert killed_at - 5 < error.silent_since <= time.time()
        assert "broker_timeout" in str(error) and "is running" in str(error)
    for mapper in mappers:
        mapper.join(RESULT_WAIT_S)
        assert not mapper.is_alive(), "a map still waits for a broker that is gone"
    assert isinstance(outcomes["map"], BrokerLost), outcomes
    assert isinstance(outcomes["parallel"], BrokerLost), outcomes

    # every later wait ends too: a new task fails, a request says the broker is gone
    with pytest.raises(BrokerLost):
        client.submit(len, "abc").result(RESULT_WAIT_S)
    with pytest.raises(BrokerTimeout, match="broker_timeout"):
        client.status(timeout=None)


def test_tasks_finish_when_the_broker_is_back_within_broker_timeout(tmp_path):
    procs = Processes(tmp_path)
    client = None
    try:
        broker = procs.broker()
        procs.spawn("nbcluster.worker", "--watch-stdin", "--connect", procs.endpoint)
        client = Client(procs.endpoint, procs.key, remember=False, broker_timeout=60)
        wait_for(lambda: client.status()["workers"], what="the worker joined")
        futures = [client.submit(gated, "T", i, i, str(tmp_path)) for i in range(3)]
        task = wait_for(lambda: running(tmp_path), timeout=RESULT_WAIT_S,
                        what="a task running")[0]
        broker.kill()
        broker.wait()
        with pytest.raises(BrokerTimeout, match="no word from it"):   # it is silent
            client.status(timeout=1)
        broker = procs.broker()
        release(tmp_path, task)
        (tmp_path / "go-all").touch()
        assert [f.result(RESULT_WAIT_S) for f in futures] == [("T", i, i) for i in range(3)]
    finally:
        (tmp_path / "go-all").touch()
        if client is not None:
            client.close()
        procs.close()


def test_broker_timeout_must_be_positive():
    with pytest.raises(ValueError, match="broker_timeout"):
        Client("ipc:///nonexistent/nbcluster-broker", b"k" * 32, broker_timeout=0)
