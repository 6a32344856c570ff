"""Functions that capture big data: right results everywhere, and the data travels once."""

import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

import nbcluster
from nbcluster.broker.loop import Broker
from nbcluster.client.client import Client
from nbcluster.testing import throwaway_cluster
from nbcluster.wire import protocol
from nbcluster.wire.connection import KEY_ENV

pytestmark = pytest.mark.timeout(120)

ROOT = Path(nbcluster.__file__).resolve().parent.parent

# A function as a notebook defines it: in a __main__ that cannot be imported, so it travels
# by value with the globals it uses.
NOTEBOOK = {"__name__": "__main__"}
exec("import numpy as np\n"
     "data = np.zeros(200_000)\n"
     "def total(i):\n    return float(data.sum()) + i\n", NOTEBOOK)
total = NOTEBOOK["total"]


@pytest.fixture(params=["numpy-1MB", "bytes-200KB"])
def captured(request):
    if request.param.startswith("numpy"):
        return np.random.default_rng(0).random(1 << 17)    # 1 MiB, an out-of-band buffer
    return bytes(range(256)) * 800                          # 200 KB, inside the pickle


def test_big_captured_data_works_with_submit_map_executor_and_pmap(client, captured):
    data = captured

    def pick(i):
        return (len(data), data[i * 7])
    expected = [(len(data), data[i * 7]) for i in range(40)]
    assert [f.result(60) for f in [client.submit(pick, i) for i in range(40)]] == expected
    assert client.map(pick, range(40)) == expected
    assert client.map(pick, range(40), chunksize=1) == expected
    assert list(client.executor().map(pick, range(40))) == expected
    assert nbcluster.pmap(pick, range(40), client=client, progress=False) == expected


def test_a_function_payload_crosses_the_broker_once_per_worker(client):
    data = np.arange(1 << 17, dtype=np.float64)    # 1 MiB

    def pick(i):
        return float(data[i])
    assert [f.result(60) for f in [client.submit(pick, i) for i in range(30)]] == \
        [float(i) for i in range(30)]
    for _ in range(2):
        assert client.map(pick, range(30), chunksize=1) == [float(i) for i in range(30)]
    # Two payloads: pick for submit, pick in a chunk runner for map; each went to the broker
    # once and to each of the two workers at most once.
    assert client.sent["functions"] == 2 and client.sent["function_bytes"] < 2.2e6
    assert client.sent["tasks"] == 90 and client.sent["task_bytes"] < 100_000
    functions = client.status()["functions"]
    assert functions["received"] == 2
    assert functions["sent"] <= 4 and functions["sent_bytes"] < 4.4e6, functions


def test_a_changed_global_is_seen_rebound_or_changed_in_place(client):
    assert client.submit(total, 1).result(60) == 1.0
    assert client.map(total, [1, 2]) == [1.0, 2.0]
    NOTEBOOK["data"] = np.ones(200_000)          # rebound
    assert client.submit(total, 1).result(60) == 200_001.0
    assert client.map(total, [1, 2]) == [200_001.0, 200_002.0]
    NOTEBOOK["data"][:] = 2                      # changed in place
    assert client.submit(total, 0).result(60) == 400_000.0
    assert client.map(total, [0]) == [400_000.0]
    assert nbcluster.pmap(total, [0], client=client, progress=False) == [400_000.0]
    NOTEBOOK["data"] = np.zeros(200_000)


def _forget_functions():
    """(On a worker) empty its function cache, as if it had dropped every function."""
    import gc

    from nbcluster.wire.functions import FunctionCache
    caches = [o for o in gc.get_objects() if isinstance(o, FunctionCache)]
    for cache in caches:
        cache._entries.clear()
        cache._bytes = 0
    return len(caches)


def test_a_worker_that_dropped_a_function_gets_it_again():
    with throwaway_cluster(1) as cluster:
        client = cluster.client()
        data = np.arange(1 << 17, dtype=np.float64)

        def pick(i):
            return float(data[i])
        assert client.submit(pick, 3).result(60) == 3.0
        assert client.submit(_forget_functions).result(60) == 1
        sent = client.status()["functions"]["sent"]
        # The broker believes the worker has pick: the task goes without it, the worker
        # hands it back, and it comes again with its function.
        assert client.submit(pick, 4).result(60) == 4.0
        assert client.status()["functions"]["sent"] == sent + 1


def test_the_client_sends_a_function_again_when_the_broker_dropped_it(tmp_path):
    key = protocol.new_key()
    broker = Broker([f"ipc://{tmp_path}/broker"], key)
    broker.state.functions.idle_limit = 0    # keep no function that no task needs
    serving = threading.Thread(target=broker.serve, daemon=True)
    serving.start()
    endpoint = broker.endpoints[0]
    env = {**os.environ, KEY_ENV: key.hex(), "PYTHONPATH": str(ROOT)}
    worker = subprocess.Popen([sys.executable, "-m", "nbcluster.worker", "--connect", endpoint],
                              env=env, stdin=subprocess.DEVNULL)
    client = None
    try:
        client = Client(endpoint, key, remember=False)
        data = np.arange(1 << 17, dtype=np.float64)

        def pick(i):
            return float(data[i])
        assert client.submit(pick, 1).result(60) == 1.0
        assert client.status()["functions"]["held"] == 0    # its only task is over: dropped
        assert client.submit(pick, 2).result(60) == 2.0     # the broker asked for it again
        assert client.sent["functions"] == 2
        assert client.status()["functions"]["received"] == 2
    finally:
        if client is not None:
            client.close()
        worker.kill()
        worker.wait(30)
        broker.stop()
        serving.join(30)


def test_a_payload_is_reused_while_unchanged_and_never_stale():
    from nbcluster.wire import functions, serialize
    data = np.arange(1 << 17, dtype=np.float64)

    def pick(i):
        return float(data[i])
    first = functions.dumps_function(pick)
    assert functions.dumps_function(pick) is first        # compared, not hashed again
    data[5] = -1.0                                        # changed in place
    changed = functions.dumps_function(pick)
    assert changed.digest != first.digest and serialize.loads(changed.frames)(5) == -1.0
    assert serialize.loads(first.frames)(5) == 5.0        # what was sent stays as it was
    data[5] = 5.0
    assert functions.dumps_function(pick).digest == first.digest
