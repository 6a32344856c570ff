#!/usr/bin/env python3
"""How fast one client queues tasks, and how much memory it keeps per queued task.

    python benchmarks/scale_client.py                  # 10k and 100k queued, each way
    python benchmarks/scale_client.py --n 1000000 --ways submit
    python benchmarks/scale_client.py --profile --n 100000 --ways submit   # cProfile

Tasks ask for a label no worker has, so they stay queued: this measures queueing only (the
client's submit loop, its I/O thread, the broker taking them in), not running them. Each row
is measured in a fresh child process (so RSS is that run's alone), against a fresh
LocalCluster with no workers. The machine may be shared: CPU times (time.process_time of the
client process: the submitting thread and the client's I/O thread; psutil for the broker)
say what the code costs, wall times what this run took.

    sent_cpu_s, sent_wall_s   from the first submit until the client's I/O thread has sent
                              every task; sent_rate_cpu, sent_rate: tasks per second of those
    wall_s, rate              until the broker holds every task (a status query, answered
                              after the submits on the same socket, counts them)
    broker_cpu_s              the broker's CPU time over the same span
    client_mb, per_task_bytes the client's RSS growth with every task queued
    broker_mb                 the broker's RSS with every task queued

`measure(way, n)` returns one row as a dict (the keys above and a few more); bench_scale.py
imports it. Ways: "submit" (client.submit in a loop), "map" (client.map_chunks with chunks of
one element: a task per element, what Executor.map does), "executor_map"
(Executor(client=...).map, as concurrent.futures).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
NOBODY = "nbcluster-bench-no-worker-has-this"   # the label that keeps tasks queued

__all__ = ["measure", "main", "WAYS"]

WAYS = ("submit", "map", "executor_map")


def noop(*args: object) -> None:
    return None


def _rss_mb(pid: int | None = None) -> float:
    import psutil
    return psutil.Process(pid).memory_info().rss / 1e6


def _cpu_s(pid: int) -> float:
    import psutil
    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


def _wait_sent(client: Any, n: int) -> None:
    """Until the client's I/O thread has sent n tasks."""
    deadline = time.monotonic() + 600
    while client.sent["tasks"] < n:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the client did not send {n} tasks within 600 s")
        time.sleep(0.005)


def _wait_taken(client: Any, n: int) -> None:
    """Until the broker has taken n tasks, sent: a status query (on the same socket, so
    answered after them) says the broker holds them."""
    queued = client.status(timeout=600)["queued"]
    if queued < n - 1:
        raise RuntimeError(f"the broker holds {queued} tasks, not {n}")


def _run(way: str, n: int, profile: bool, workers: int = 0, run: bool = False
         ) -> dict[str, Any]:
    """In this process: queue n tasks one way, measure (see the module docstring)."""
    import gc

    from nbcluster.cluster.local import LocalCluster

    labels = set() if run else {NOBODY}
    with LocalCluster(workers) as cluster:
        client = cluster.client()
        opts = client.options(labels=labels)
        # warm up: the function's payload, the first message
        opts.submit(noop).cancel()
        gc.collect()
        rss0 = _rss_mb()
        broker_pid = cluster.pids()["broker"][0]
        broker0, broker_cpu0 = _rss_mb(broker_pid), _cpu_s(broker_pid)
        prof = None
        if profile:
            import cProfile
            prof = cProfile.Profile()
            prof.enable()
        cpu0, wall0 = time.process_time(), time.perf_counter()
        futures: list[Any]
        if way == "submit":
            futures = [opts.submit(noop) for _ in range(n)]
        elif way == "map":
            futures, _ = client.map_chunks(noop, range(n), chunksize=1, labels=labels)
        elif way == "executor_map":
            client.labels = sorted({*client.labels, *labels})   # every task of this client
            executor = client.executor()
            results = executor.map(noop, range(n))
            futures = []
        else:
            raise ValueError(f"unknown way {way!r}: one of {WAYS}")
        cpu_submit, wall_submit = time.process_time() - cpu0, time.perf_counter() - wall0
        if prof is not None:
            prof.disable()
        _wait_sent(client, n + 1)   # and the warm-up task
        cpu_sent, wall_sent = time.process_time() - cpu0, time.perf_counter() - wall0
        if not run:
            _wait_taken(client, n + 1)
        elif way == "executor_map":
            assert list(results) == [None] * n
        else:
            assert [f.result(600) for f in futures] == [None] * n if way == "submit" else \
                [[None]] * n
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        broker_cpu = _cpu_s(broker_pid) - broker_cpu0
        gc.collect()
        row = {"way": way, "n": n, "workers": workers, "run": run,
               "submit_cpu_s": round(cpu_submit, 3), "submit_wall_s": round(wall_submit, 3),
               "sent_cpu_s": round(cpu_sent, 3), "sent_wall_s": round(wall_sent, 3),
               "sent_rate": round(n / wall_sent), "sent_rate_cpu": round(n / cpu_sent),
               "cpu_s": round(cpu, 3), "wall_s": round(wall, 3), "rate": round(n / wall),
               "rate_cpu": round(n / cpu), "broker_cpu_s": round(broker_cpu, 3),
               "client_mb": round(_rss_mb() - rss0, 1), "client_rss_mb": round(_rss_mb(), 1),
               "per_task_bytes": round((_rss_mb() - rss0) * 1e6 / n),
               "broker_mb": round(_rss_mb(broker_pid), 1),
               "broker_growth_mb": round(_rss_mb(broker_pid) - broker0, 1)}
        if prof is not None:
            import pstats
            pstats.Stats(prof, stream=sys.stderr).sort_stats("tottime").print_stats(25)
        del futures
        if way == "executor_map":
            del results
        client.close()
    return row


def measure(way: str, n: int, profile: bool = False, workers: int = 0, run: bool = False
            ) -> dict[str, Any]:
    """One row (see the module docstring), measured in a fresh child process. With
    `workers`, that many are attached (the tasks still wait for a label none has); with
    `run`, the tasks run and wall_s, rate are until every result came back."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(HERE.parent), *filter(None, [os.environ.get("PYTHONPATH")])])}
    args = [sys.executable, __file__, "--child", way, str(n), "--workers", str(workers)] + \
        (["--profile"] if profile else []) + (["--run"] if run else [])
    out = subprocess.run(args, env=env, stdout=subprocess.PIPE, check=True, timeout=1800)
    return json.loads(out.stdout.decode().strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="*", default=[10_000, 100_000])
    parser.add_argument("--ways", default=",".join(WAYS))
    parser.add_argument("--profile", action="store_true", help="cProfile the submit loop")
    parser.add_argument("--workers", type=int, default=0, help="workers attached")
    parser.add_argument("--run", action="store_true",
                        help="tasks the workers run (rate: until every result came)")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(_run(args.child[0], int(args.child[1]), args.profile, args.workers,
                              args.run)), flush=True)
        return
    cols = ("way", "n", "sent_cpu_s", "sent_wall_s", "sent_rate_cpu", "sent_rate", "wall_s",
            "rate", "broker_cpu_s", "client_mb", "per_task_bytes", "broker_mb")
    print("  ".join(f"{c:>13}" for c in cols))
    for n in args.n:
        for way in args.ways.split(","):
            row = measure(way, n, args.profile, args.workers, args.run)
            print("  ".join(f"{row[c]!s:>13}" for c in cols), flush=True)


if __name__ == "__main__":
    main()
