"""Hostile bytes at the broker's port, wrong keys: the broker drops them and keeps serving."""

import os
import socket
import time

import cloudpickle
import msgpack
import pytest
import zmq

from nbcluster import AuthenticationError
from nbcluster.client.client import Client
from nbcluster.testing import throwaway_cluster
from nbcluster.wire import protocol

pytestmark = pytest.mark.timeout(60)

MAX = 1 << 20


@pytest.fixture(scope="module")
def small_cluster():
    with throwaway_cluster(2, max_message_bytes=MAX) as c:
        yield c


def tcp_endpoint(cluster):
    return next(ep for ep in cluster.endpoints if ep.startswith("tcp://"))


def forged_submit(marker):
    """A well-formed submit whose task would create `marker` if any worker ran it."""
    fn = cloudpickle.dumps(lambda: open(marker, "w").close())
    args = cloudpickle.dumps(((), {}))
    return {"t": "submit", "tasks": [[1, 2, [], None, 0]]}, [fn, args]


def hostile_messages(marker):
    wrong = protocol.Signer(b"w" * 32)
    header, payload = forged_submit(marker)
    good_header = msgpack.packb(header)
    return {
        "garbage": [b"\x00\xffgarbage"],
        "empty frames": [b"", b"", b""],
        "truncated": [protocol.MAGIC, b"x" * 32],
        "unsigned": [protocol.MAGIC, b"", good_header, *payload],
        "forged signature": protocol.encode(wrong, header, payload),
        "other version": [b"NBC\x02", b"x" * 32, good_header, *payload],
        "bad msgpack": [protocol.MAGIC, b"x" * 32, b"\xc1\xc1\xc1"],
        "oversized": [protocol.MAGIC, b"x" * 32, good_header, b"\0" * (2 * MAX)],
        "many frames": [protocol.MAGIC, b"x" * 32, good_header] + [b"f"] * 70_000,
    }


def test_broker_drops_hostile_messages_and_keeps_serving(small_cluster, tmp_path):
    marker = tmp_path / "ran"
    client = small_cluster.client()
    ctx = zmq.Context.instance()
    for name, frames in hostile_messages(str(marker)).items():
        s = ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.connect(tcp_endpoint(small_cluster))
        s.send_multipart(frames)
        time.sleep(0.05)
        s.close()
        assert client.submit(lambda n: n, name).result(60) == name, f"broker stuck after {name}"
    pid = small_cluster.pids()["broker"][0]
    os.kill(pid, 0)                      # still alive
    time.sleep(0.3)
    assert not marker.exists(), "a message without the key made a worker run code"


def test_raw_tcp_garbage_at_the_port(small_cluster):
    host, port = tcp_endpoint(small_cluster)[len("tcp://"):].rsplit(":", 1)
    for blob in (os.urandom(4096), b"GET / HTTP/1.1\r\n\r\n", b"\xff" * 100_000):
        with socket.create_connection((host, int(port))) as so:
            so.sendall(blob)
    client = small_cluster.client()
    assert client.submit(lambda: "still serving").result(60) == "still serving"


def test_wrong_key_gets_a_clear_error_fast(small_cluster):
    t0 = time.monotonic()
    with pytest.raises(AuthenticationError, match="key is wrong"):
        Client(tcp_endpoint(small_cluster), b"not the key at all!!", timeout=120)
    assert time.monotonic() - t0 < 60   # refused at once, not after the connect timeout


def test_a_worker_with_the_wrong_key_never_gets_work(small_cluster, tmp_path):
    import subprocess
    import sys
    env = {**os.environ, "NBCLUSTER_KEY": (b"z" * 32).hex()}
    intruder = subprocess.Popen([sys.executable, "-m", "nbcluster.worker", "--connect",
                                 tcp_endpoint(small_cluster)], env=env, stdin=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)
    try:
        client = small_cluster.client()
        pids = set(client.map(lambda _: (time.sleep(0.01), os.getpid())[1], range(40), chunksize=1))
        assert intruder.pid not in pids
        assert len(client.workers()) == 2
        assert intruder.wait(60) == 2 and b"rejected our key" in intruder.stderr.read()
    finally:
        intruder.kill()
        intruder.wait()


def test_signatures_cover_every_frame():
    signer = protocol.Signer(b"k" * 32)
    frames = protocol.encode(signer, {"t": "x"}, [b"a", b"bc"])
    assert protocol.decode(signer, frames)[0] == {"t": "x"}
    for tampered in ([*frames[:3], b"ab", b"c"], [*frames[:3], b"a", b"bd"], frames[:4],
                     [*frames, b""],
                     [frames[0], frames[1], msgpack.packb({"t": "y"}), *frames[3:]]):
        with pytest.raises(protocol.ProtocolError, match="signature"):
            protocol.decode(signer, tampered)


def test_connection_file_is_owner_only(small_cluster):
    mode = os.stat(small_cluster.connection_file).st_mode & 0o777
    assert mode == 0o600
