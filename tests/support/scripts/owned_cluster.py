"""Run by tests/cluster/test_owner_killed.py: a LocalCluster with a file in /dev/shm (the big
argument of a task still running); prints what must be gone once this process is killed."""
import json
import os
import time

import nbcluster
from nbcluster.wire import shm

BIG = 4 << 20   # above shm.SHM_MIN_BYTES: the argument goes through /dev/shm


def hold(data):
    time.sleep(600)


if __name__ == "__main__":
    cluster = nbcluster.LocalCluster(2)
    client = cluster.client()
    assert client.submit(len, b"r" * BIG).result(60) == BIG   # a result through shm too
    running = client.submit(hold, b"a" * BIG)               # its argument file stays
    prefix = shm.cluster_prefix(cluster.key)
    deadline = time.monotonic() + 60
    while not (names := [n for n in os.listdir(shm.SHM_DIR) if n.startswith(prefix)]) \
            and time.monotonic() < deadline:
        time.sleep(0.05)
    pids = cluster.pids()
    print(json.dumps({"pid": os.getpid(), "dir": os.path.dirname(cluster.connection_file),
                      "prefix": prefix, "shm": names,
                      "children": pids["broker"] + pids["supervisors"] + pids["workers"]}),
          flush=True)
    time.sleep(600)
