#!/usr/bin/env python3
"""Getting at a failed task's frame: nbcluster's live debugger against what Dask offers
(`Client.recreate_error_locally`, which runs the task again in the client), side by side in
one run, for a task that works `work_s` seconds before it fails.

    python benchmarks/bench_debugger.py [--work-s 2] [--commands 200]

- first prompt: from `err.debug()` to the debugger's first prompt (nbcluster), and from
  `recreate_error_locally(fut)` to the exception raised locally (Dask: the task runs again,
  work included, and with it any side effect).
- command: one pdb command's round trip (`p b`), median over `commands` (nbcluster only:
  Dask's debugger is then local).
- evaluate: `err.evaluate("b")`, median.
- keeping failures: 1,000 tasks that each fail, submitted at once, until every error is
  in, with the workers keeping failures (the default) and not (NBCLUSTER_DEBUG_KEEP=0):
  what keeping costs each failure.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import time


def failing(x, work_s):
    import time
    deadline = time.perf_counter() + work_s
    while time.perf_counter() < deadline:   # work, then fail
        pass
    b = x * 10
    return b / 0


def always_fails(x):
    return 1 / 0


def nbcluster_row(work_s: float, commands: int) -> dict[str, float]:
    import nbcluster
    with nbcluster.LocalCluster(2) as cluster:
        client = cluster.client()
        fut = client.submit(failing, 4, work_s)
        try:
            fut.result()
        except ZeroDivisionError as e:
            err = e
        times: list[float] = []
        answers = ["p b"] * commands + ["q"]
        t = [time.perf_counter()]

        def typed(prompt: str) -> str:
            now = time.perf_counter()
            times.append(now - t[0])
            line = answers.pop(0)
            t[0] = time.perf_counter()
            return line

        err.debug(input=typed, write=lambda text: None)
        evals = []
        for _ in range(commands):
            t0 = time.perf_counter()
            err.evaluate("b")
            evals.append(time.perf_counter() - t0)
        return {"first_ms": times[0] * 1000, "command_ms": statistics.median(times[1:]) * 1000,
                "eval_ms": statistics.median(evals) * 1000}


def keeping_row(keep: bool) -> float:
    import nbcluster
    os.environ["NBCLUSTER_DEBUG_KEEP"] = "5" if keep else "0"
    try:
        with nbcluster.LocalCluster(2) as cluster:
            client = cluster.client()
            best = float("inf")
            for _ in range(5):
                t = time.perf_counter()
                futures = [client.submit(always_fails, i) for i in range(1000)]
                errors = [f.exception() for f in futures]
                best = min(best, time.perf_counter() - t)
                assert all(isinstance(e, ZeroDivisionError) for e in errors)
                del errors, futures
            return best * 1000
    finally:
        os.environ.pop("NBCLUSTER_DEBUG_KEEP", None)


def dask_row(work_s: float) -> float:
    import logging

    from distributed import Client, LocalCluster
    logging.getLogger("distributed").setLevel(logging.CRITICAL)   # it logs every failure
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        fut = client.submit(failing, 4, work_s)
        with contextlib.suppress(ZeroDivisionError):
            fut.result()
        t = time.perf_counter()
        with contextlib.suppress(ZeroDivisionError):
            client.recreate_error_locally(fut)
        return (time.perf_counter() - t) * 1000


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work-s", type=float, default=2.0)
    p.add_argument("--commands", type=int, default=200)
    args = p.parse_args()
    print(f"bench_debugger: a task that works {args.work_s:g} s, then fails; "
          f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    nb = nbcluster_row(args.work_s, args.commands)
    dask_ms = dask_row(args.work_s)
    print(f"{'':46}{'nbcluster':>12}{'dask':>12}")
    print(f"{'to the failed frame (ms)':46}{nb['first_ms']:>12.1f}{dask_ms:>12.1f}")
    print(f"{'one pdb command, median (ms)':46}{nb['command_ms']:>12.2f}{'local':>12}")
    print(f"{'evaluate one expression, median (ms)':46}{nb['eval_ms']:>12.2f}{'-':>12}")
    keep, no_keep = keeping_row(True), keeping_row(False)
    print(f"{'1,000 failing tasks, failures kept (ms)':46}{keep:>12.1f}")
    print(f"{'the same, NBCLUSTER_DEBUG_KEEP=0 (ms)':46}{no_keep:>12.1f}")


if __name__ == "__main__":
    main()
