#!/usr/bin/env python3
"""Many workers: how long N workers take to register, the no-op round trip with N idle
workers attached, and the broker's CPU while they idle.

    python benchmarks/scale_workers.py                 # 2, 50, 100, 200 workers
    python benchmarks/scale_workers.py -n 2 200 --idle-s 20 --round-trips 500

`measure(n)` is what benchmarks/bench_scale.py imports. How each figure is taken:
- register_s: wall time of `LocalCluster(n_workers=n)` (it returns once the broker lists n
  workers), so broker start included; start_cpu_s: CPU time (user+system, psutil) of the
  supervisor and its workers by then, the cost that wall time hides on a loaded machine;
  broker_start_cpu_s: the broker's CPU time by then (its start and the registrations);
- rt_ms: median of `round_trips` sequential `submit(noop).result()` (after 20 warm-up);
- broker_idle_cpu_pct: the broker process's CPU time (psutil cpu_times, user+system) over
  `idle_s` seconds with every worker idle and attached, as % of one core.
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


def _tree_cpu(pid: int) -> float:
    """CPU of a process and its live descendants, with the ended ones each waited for."""
    total = 0.0
    root = psutil.Process(pid)
    for proc in [root, *root.children(recursive=True)]:
        try:
            t = proc.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += t.user + t.system + t.children_user + t.children_system
    return total


def measure(n: int, round_trips: int = 300, idle_s: float = 20.0) -> dict[str, float]:
    """Start a LocalCluster of n workers and measure it (see the module doc)."""
    t0 = time.perf_counter()
    with nbcluster.LocalCluster(n_workers=n) as cluster:
        register_s = time.perf_counter() - t0
        pids = cluster.pids()
        start_cpu = sum(_tree_cpu(p) for p in pids["supervisors"])
        broker = psutil.Process(pids["broker"][0])
        broker_start_cpu = _cpu(broker)
        client = cluster.client()
        for _ in range(20):
            client.submit(noop).result(timeout=60)
        rts = []
        for _ in range(round_trips):
            t = time.perf_counter()
            client.submit(noop).result(timeout=60)
            rts.append(time.perf_counter() - t)
        time.sleep(1.0)   # let the last messages settle
        before, t = _cpu(broker), time.perf_counter()
        time.sleep(idle_s)
        idle_cpu = (_cpu(broker) - before) / (time.perf_counter() - t)
        registered = client.n_workers
    return {"n": n, "register_s": register_s, "start_cpu_s": start_cpu,
            "broker_start_cpu_s": broker_start_cpu,
            "rt_ms": statistics.median(rts) * 1000, "broker_idle_cpu_pct": idle_cpu * 100,
            "registered": registered}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-n", type=int, nargs="+", default=[2, 50, 100, 200])
    p.add_argument("--round-trips", type=int, default=300)
    p.add_argument("--idle-s", type=float, default=20.0)
    args = p.parse_args()
    print(f"{'workers':>8} {'register s':>11} {'start CPU s':>12} {'broker CPU s':>13} "
          f"{'rt ms':>7} {'broker idle CPU %':>18}")
    for n in args.n:
        r = measure(n, args.round_trips, args.idle_s)
        print(f"{n:>8} {r['register_s']:>11.2f} {r['start_cpu_s']:>12.2f} "
              f"{r['broker_start_cpu_s']:>13.2f} {r['rt_ms']:>7.2f} "
              f"{r['broker_idle_cpu_pct']:>18.2f}", flush=True)


if __name__ == "__main__":
    main()
