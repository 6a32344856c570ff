#!/usr/bin/env python3
"""What CurveZMQ costs: the same cluster on loopback (no Curve) and listening beyond loopback
(Curve on every socket, ipc included), 2 workers, side by side in one run.

    python benchmarks/bench_curve.py
"""

from __future__ import annotations

import statistics
import time

import numpy as np

import nbcluster


def measure(cluster: nbcluster.LocalCluster) -> tuple[float, float, float]:
    client = cluster.client()
    for _ in range(200):
        client.submit(int).result()
    lat = []
    for _ in range(2000):
        t = time.perf_counter()
        client.submit(int).result()
        lat.append(time.perf_counter() - t)
    t = time.perf_counter()
    futures = [client.submit(int) for _ in range(10_000)]
    for f in futures:
        f.result()
    rate = 10_000 / (time.perf_counter() - t)
    # 200 x 512 KiB: under the 1 MiB shared-memory threshold, so it all crosses the socket
    data = np.ones(512 * 1024 // 8)
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        for f in [client.submit(lambda a: a, data) for _ in range(200)]:
            f.result()
        best = min(best, time.perf_counter() - t)
    return statistics.median(lat) * 1e6, rate, 2 * 100 / best


def main() -> None:
    rows = {}
    with nbcluster.LocalCluster(2) as plain:
        rows["loopback, no Curve"] = measure(plain)
    with nbcluster.LocalCluster(2, ip="0.0.0.0") as curve:
        assert curve.info.curve is not None
        rows["beyond loopback, Curve"] = measure(curve)
    print(f"{'':28s} {'round trip (us)':>16s} {'tasks/s':>10s} "
          f"{'MB/s (200 x 512 KiB there+back)':>34s}")
    for name, (lat, rate, mbs) in rows.items():
        print(f"{name:28s} {lat:16.0f} {rate:10,.0f} {mbs:34,.0f}")


if __name__ == "__main__":
    main()
