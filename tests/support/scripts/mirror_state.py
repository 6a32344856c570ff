"""Run by test_mirror: mirror workers see this script's state as at the fork, and rebinding."""
import json

import nbcluster
from nbcluster.patterns.collections import parallel

BIG = list(range(2_000_000))          # ~ 10 MB pickled: must not travel
def total(i):
    return sum(BIG[:i]) + OFFSET
OFFSET = 1

if __name__ == "__main__":
    with nbcluster.LocalCluster(0) as cluster:
        m = nbcluster.mirror(2)
        out = {"pids": m.pids}
        fut = m.submit(total, 10)
        out["r1"], out["bytes1"] = fut.result(30), fut.input_bytes
        out["workers_pid"] = [w["pid"] for w in m.workers()]
        out["map"] = m.map(total, [1, 2, 3])
        out["parallel"] = parallel(range(5), m, progress=False).map(lambda i: BIG[i] * 2).to_list()
        OFFSET = 100                   # rebound: sent by value
        out["r2"] = m.submit(total, 10).result(30)
        BIG = [0] * 10                 # rebound: sent by value (small now)
        fut = m.submit(total, 10)
        out["r3"], out["bytes3"] = fut.result(30), fut.input_bytes
        m.refresh()
        out["pids2"] = m.pids
        out["r4"] = m.submit(lambda: len(BIG)).result(30)
        print(json.dumps(out), flush=True)
        m.close()
