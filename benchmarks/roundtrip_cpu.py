#!/usr/bin/env python3
"""CPU time of a no-op round trip, by process: where a round trip's cost goes, and how two
versions compare (the wall-clock round trip alone hides which process got dearer).

    python benchmarks/roundtrip_cpu.py -n 3000
    cd /tmp && PYTHONPATH=/other/checkout python /other/checkout/benchmarks/roundtrip_cpu.py

(Another version: not from a checkout's directory, whose nbcluster the broker and worker,
started with `python -m`, would import first whatever PYTHONPATH says.)

One LocalCluster worker; after 200 warm-up round trips, n sequential
`submit(noop).result()`: the median wall time, and the CPU time (user + system, psutil) of
the broker, the worker and this client process, each divided by n.
"""

from __future__ import annotations

import argparse
import statistics
import time

import psutil

import nbcluster


def noop() -> None:
    return None


def _cpu(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return t.user + t.system


def measure(n: int) -> dict[str, float]:
    with nbcluster.LocalCluster(n_workers=1) as cluster:
        client = cluster.client()
        for _ in range(200):
            client.submit(noop).result(timeout=60)
        pids = cluster.pids()
        procs = {"broker": psutil.Process(pids["broker"][0]),
                 "worker": psutil.Process(pids["workers"][0]), "client": psutil.Process()}
        before = {name: _cpu(p) for name, p in procs.items()}
        walls = []
        for _ in range(n):
            t = time.perf_counter()
            client.submit(noop).result(timeout=60)
            walls.append(time.perf_counter() - t)
        cpu = {f"{name}_us": (_cpu(p) - before[name]) / n * 1e6 for name, p in procs.items()}
    return {"rt_us": statistics.median(walls) * 1e6, **cpu}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-n", type=int, default=3000, help="round trips measured")
    r = measure(p.parse_args().n)
    print(f"{nbcluster.__file__}: round trip median {r['rt_us']:.0f} us; CPU per round trip: "
          f"broker {r['broker_us']:.0f} us, worker {r['worker_us']:.0f} us, "
          f"client {r['client_us']:.0f} us")


if __name__ == "__main__":
    main()
