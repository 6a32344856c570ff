"""What a message costs the broker in steady state, by counts not times: no page faults.

A buffer the broker maps and unmaps per message (its big buffers are mapped alone: see
broker.memory) costs page faults, a TLB shootdown across cores and two system calls each
time: msgpack's 256 KiB packing buffer did that for every message sent, a fifth of a no-op
round trip's broker CPU. Page faults count any such churn, whoever allocates."""

import pytest

from nbcluster.testing import throwaway_cluster
from nbcluster.wire import protocol


def noop():
    return None


def minor_faults(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[7])   # field 10: minflt


@pytest.mark.timeout(180)
def test_round_trips_cost_the_broker_no_page_faults():
    with throwaway_cluster(1) as cluster:
        client = cluster.client()
        for _ in range(300):   # warm: the broker's heap and pools at their steady size
            client.submit(noop).result(timeout=60)
        broker = cluster.pids()["broker"][0]
        before = minor_faults(broker)
        for _ in range(1000):   # 4,000 messages through the broker
            client.submit(noop).result(timeout=60)
        faults = minor_faults(broker) - before
        assert faults < 200, f"{faults} page faults in the broker for 1000 round trips"


def test_packing_a_header_takes_no_big_buffer():
    import tracemalloc
    tracemalloc.start()
    try:
        protocol.pack_header({"t": "hb"})
        assert tracemalloc.get_traced_memory()[1] < 16 * 1024
    finally:
        tracemalloc.stop()
