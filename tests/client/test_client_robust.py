"""The client never hangs because of user code or a bug of its own; Ctrl-C leaves no work behind."""

import concurrent.futures
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

import nbcluster
from nbcluster import NBClusterError
from nbcluster.testing import wait_for

pytestmark = pytest.mark.timeout(120)

ROOT = Path(nbcluster.__file__).resolve().parent.parent


def _raise(name):
    raise {"SystemExit": SystemExit, "KeyboardInterrupt": KeyboardInterrupt,
           "ValueError": ValueError}[name](f"raised while unpickling ({name})")


class Bomb:
    """Pickles fine on the worker; unpickling it on the client raises `name`."""

    def __init__(self, name):
        self.name = name

    def __reduce__(self):
        return _raise, (self.name,)


def make_bomb(name):
    return Bomb(name)


def test_an_on_output_handler_that_raises_fails_only_its_future(client, tmp_path):
    gate = tmp_path / "gate"   # the task prints only once the handler is set
    fut = client.submit(lambda g: (gated(g, None), print("hello", flush=True),
                                   __import__("time").sleep(2))[2], str(gate))

    def handler(stream, text, worker):
        raise RuntimeError("handler bug")
    fut.on_output = handler
    gate.touch()
    with pytest.raises(NBClusterError, match=r"on_output handler .* raised RuntimeError") as info:
        fut.result(30)
    assert isinstance(info.value.__cause__, RuntimeError)
    assert client.submit(lambda: "still serving").result(30) == "still serving"


@pytest.mark.parametrize("name", ["SystemExit", "KeyboardInterrupt", "ValueError"])
def test_a_result_whose_unpickling_raises_fails_only_its_future(client, name):
    bad = client.submit(make_bomb, name)
    with pytest.raises(NBClusterError, match=f"cannot unpickle the result.*{name}") as info:
        bad.result(30)
    assert type(info.value.__cause__).__name__ == name
    assert client.map(lambda x: x + 1, range(5)) == [1, 2, 3, 4, 5]


def gated(gate: str, value):
    """value, once the file gate exists (so the test adds its callbacks while it is pending)."""
    deadline = time.monotonic() + 60
    while not os.path.exists(gate) and time.monotonic() < deadline:
        time.sleep(0.01)
    return value


def test_a_done_callback_that_raises_base_exceptions_does_not_stop_the_client(client, tmp_path):
    seen = []
    for exc in (SystemExit, KeyboardInterrupt, RuntimeError):
        gate = tmp_path / exc.__name__
        fut = client.submit(gated, str(gate), 7)

        def callback(f, exc=exc):
            seen.append(f.result())
            raise exc("from a done callback")
        fut.add_done_callback(callback)   # pending: it runs on the client's I/O thread
        fut.add_done_callback(lambda f: seen.append("next callback"))   # still called
        gate.touch()
        assert fut.result(30) == 7
    assert client.submit(lambda: "still serving").result(30) == "still serving"
    wait_for(lambda: len(seen) == 6, what="every done callback called")


def test_a_result_callback_that_raises_gives_its_future_the_error(client):
    def callback(value):
        raise ValueError(f"callback saw {value}")
    fut = client.options(callback=callback).submit(lambda: 5)
    with pytest.raises(NBClusterError, match=r"succeeded but its result callback .* raised "
                                             r"ValueError\('callback saw 5'\)") as info:
        fut.result(30)
    assert isinstance(info.value.__cause__, ValueError)
    for i in range(100):   # a callback runs before its future resolves, however fast it is
        got = []
        assert client.options(callback=got.append).submit(lambda i=i: i).result(30) == i
        assert got == [i]


def test_if_the_io_thread_dies_everything_fails_at_once_and_nothing_blocks(cluster):
    client = cluster.client()
    executor = client.executor()
    pending = [client.submit(time.sleep, 30) for _ in range(3)] + [executor.submit(time.sleep, 30)]
    wait_for(lambda: client.status()["running"] >= 1, what="a task running")

    def bug(header, payload):   # a fault injected into this client's message handling
        raise AssertionError("a bug in the client")
    client._on_message = bug
    for fut in pending:
        with pytest.raises(NBClusterError, match=r"I/O thread failed .*a bug in the client"):
            fut.result(30)
    assert isinstance(pending[0].exception().__cause__, AssertionError)
    with pytest.raises(NBClusterError, match="I/O thread failed"):
        client.submit(abs, -1)
    with pytest.raises(NBClusterError, match="I/O thread failed"):
        client.status()
    assert client.closed
    for close in (executor.shutdown, client.close):
        closer = threading.Thread(target=close)
        closer.start()
        closer.join(30)
        assert not closer.is_alive(), f"{close.__qualname__}() blocked"
    # The broker dropped the dead client's tasks; the cluster serves a new client.
    other = cluster.client()
    wait_for(lambda: other.status()["clients"] == 1 and other.status()["queued"] == 0,
             what="the dead client's tasks dropped")
    assert other.submit(lambda: "ok").result(30) == "ok"


# ---- Ctrl-C ---------------------------------------------------------------------------------
SCRIPT = textwrap.dedent("""
    import json, os, sys, time
    import nbcluster

    client = nbcluster.connect(sys.argv[1])
    kind = sys.argv[2]

    def slow(x):
        time.sleep(3)
        return x

    try:
        if kind == "result":
            client.submit(time.sleep, 600).result()
        elif kind == "map":
            client.map(slow, range(40), chunksize=1)
        elif kind == "pmap":
            nbcluster.pmap(slow, range(40), client=client, chunksize=1, progress=False)
        elif kind == "map_reduce":
            nbcluster.map_reduce(range(40), mapper=lambda r: {r % 3: slow(r)}, reducer=sum,
                                 client=client, chunksize=1, progress=False)
    except KeyboardInterrupt:
        mine = [c for c in client.status()["client_tasks"] if c["pid"] == os.getpid()]
        print("interrupted", json.dumps(mine), flush=True)
        raise
""")


@pytest.mark.parametrize("kind", ["result", "map", "pmap", "map_reduce"])
def test_ctrl_c_raises_at_once_and_cancels_what_has_not_run(cluster, client, kind, tmp_path):
    script = tmp_path / "interrupted.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, str(script), str(cluster.connection_file), kind],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        def its_tasks():
            return [c for c in client.status()["client_tasks"] if c["pid"] == proc.pid]
        wanted = 1 if kind == "result" else 2
        wait_for(lambda: its_tasks() and its_tasks()[0]["running"] >= wanted, timeout=60,
                 what="the script's tasks running")
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGINT, err   # KeyboardInterrupt ended the script
    assert "KeyboardInterrupt" in err
    [line] = [x for x in out.splitlines() if x.startswith("interrupted")]
    [mine] = json.loads(line.split(" ", 1)[1])
    # MapReduce frees its map outputs with one task per worker, queued behind running ones.
    assert mine["queued"] <= (2 if kind == "map_reduce" else 0), mine


def test_a_done_callback_may_close_the_client(cluster):
    client = cluster.client()
    pending = client.submit(time.sleep, 60)
    fut = client.submit(lambda: 1)
    fut.add_done_callback(lambda f: client.close())
    assert fut.result(30) == 1
    with pytest.raises(concurrent.futures.CancelledError):   # close() went all the way
        pending.result(30)
    wait_for(lambda: not client._thread.is_alive(), timeout=30, what="the I/O thread ended")
    with pytest.raises(RuntimeError, match="closed"):
        client.submit(abs, 1)
