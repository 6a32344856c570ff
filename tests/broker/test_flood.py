"""Issue 14: a peer without the key cannot hurt the cluster's users. A real broker, a flooder
process that sends unsigned garbage (small, 1 MiB, many-frame messages whose total is the
limit, frames over the limit) and a legitimate client: the client keeps getting its results
during the flood, the flooder gets nothing done, and the broker's memory comes back. (How
much the flood slows a round trip is measured in benchmarks, not here.)"""

import subprocess
import sys

import psutil
import pytest

from nbcluster.testing import throwaway_cluster, wait_for

MIB = 1 << 20
LIMIT = 64 * MIB

FLOODER = """
import sys, zmq
from nbcluster.wire import protocol
endpoint, limit = sys.argv[1], int(sys.argv[2])
head = [protocol.MAGIC, b"x" * 32, b"\\x81\\xa1t\\xa5hello"]
one_mib, quarter = b"\\0" * (1 << 20), b"\\1" * (limit // 4)
kinds = [
    [b"garbage"],                        # not even our magic
    head,                                # unsigned hello
    head + [one_mib],                    # 1 MiB to hash, if we hashed it
    head + [quarter] * 3,                # frames under the limit, most of the limit in all
    head + [quarter] * 5,                # frames under the limit, over it in all
    head + [b"\\2" * (limit + 1)],       # a frame over the limit: libzmq closes the link
]
ctx = zmq.Context()
sock = ctx.socket(zmq.DEALER)
sock.connect(endpoint)
rounds = int(sys.argv[3])
for i in range(rounds):
    for frames in kinds[:2] + [kinds[2]] * 50 + (kinds[3:] if i % 10 == 0 else []):
        sock.send_multipart(frames, copy=False)
    while sock.poll(0):
        reply = sock.recv_multipart()
        assert reply in (protocol.DENIED, protocol.TOO_BIG), f"the broker answered {reply[:3]}"
print("done", flush=True)
sock.close(linger=60_000)   # all of it reaches the broker before we go
ctx.term()
"""


def rss(pid: int) -> int:
    return psutil.Process(pid).memory_info().rss


@pytest.mark.timeout(300)
def test_a_flood_without_the_key_neither_stops_a_client_nor_keeps_the_brokers_memory():
    with throwaway_cluster(1, max_message_bytes=LIMIT) as cluster:
        client = cluster.client()
        broker = cluster.pids()["broker"][0]
        assert [client.submit(pow, i, 2).result(60) for i in range(50)] == \
            [i * i for i in range(50)]
        baseline = rss(broker)
        endpoint = next(ep for ep in cluster.endpoints if ep.startswith("tcp://"))
        flooder = subprocess.Popen([sys.executable, "-c", FLOODER, endpoint, str(LIMIT), "40"],
                                   stdout=subprocess.PIPE, text=True)
        try:
            i = 0
            while flooder.poll() is None and i < 100_000:   # the client works throughout
                assert client.submit(pow, i, 2).result(60) == i * i
                i += 1
            assert flooder.wait(120) == 0 and flooder.stdout.read().strip() == "done"
        finally:
            flooder.kill()
            flooder.wait()
        assert client.submit(pow, 3, 2).result(60) == 9
        assert client.status()["clients"] == 1 and client.status()["queued"] == 0
        slack = 32 * MIB
        wait_for(lambda: rss(broker) < baseline + slack, timeout=60,
                 what=f"the broker's RSS back within {slack >> 20} MiB of its "
                 f"{baseline >> 20} MiB before the flood")
