#!/usr/bin/env python3
"""joblib on nbcluster against joblib's default backend (loky), 2 workers each, one run.

    python benchmarks/bench_joblib.py            # cold and warm, 3 warm repetitions
    python benchmarks/bench_joblib.py --repeat 5

Cold: the first call on fresh workers (loky starts its processes inside that call; for
nbcluster the cluster's start is shown apart, then the first call). Both pay for the workers
importing scikit-learn there. Warm: the median of the next calls, loky's and nbcluster's
alternating so that a shared machine's drift in speed falls on both alike.

Needs: pip install -e '.[bench]'  (joblib, scikit-learn).
"""

from __future__ import annotations

import argparse
import statistics
import time

import joblib
from joblib import Parallel, delayed, parallel_config

import nbcluster

N_WORKERS = 2


def square(x):
    return x * x


def cpu_task(n):
    """Pure-Python work holding the GIL (~20 ms here for n=150_000)."""
    total = 0
    for i in range(n):
        total += i * i % 7
    return total


def grid_search():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import GridSearchCV
    from sklearn.svm import SVC
    X, y = load_digits(return_X_y=True)
    grid = {"C": [0.1, 1, 10, 100], "gamma": [1e-3, 1e-4]}
    return GridSearchCV(SVC(), grid, n_jobs=-1, cv=5).fit(X, y).best_params_


WORKLOADS = {
    "GridSearchCV(SVC, digits, 8x5 fits)": grid_search,
    "Parallel: 10,000 tiny calls (auto batch)": lambda: Parallel()(
        delayed(square)(i) for i in range(10_000)),
    "Parallel: 200 calls of ~20 ms CPU": lambda: Parallel()(
        delayed(cpu_task)(150_000) for _ in range(200)),
}


def timed(fn) -> tuple[float, object]:
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def stop_loky() -> None:
    from joblib.externals.loky import reusable_executor
    if reusable_executor._executor is not None:
        reusable_executor._executor.shutdown(wait=True, kill_workers=True)


def run(work, repeat: int) -> dict:
    """Cold then warm calls of one workload, loky's and nbcluster's interleaved, so that the
    drift of a shared machine's speed falls on both alike: {backend: (cold, warm, result)}."""
    stop_loky()   # cold: loky starts its workers inside the call
    start, cluster = timed(lambda: nbcluster.LocalCluster(N_WORKERS))   # fresh workers
    client = cluster.client()
    configs = {"loky": lambda: parallel_config(backend="loky", n_jobs=N_WORKERS),
               "nbcluster": lambda: parallel_config(backend="nbcluster", client=client)}
    out: dict = {}
    with cluster:
        for backend, config in configs.items():
            with config():
                out[backend] = [*timed(work)]
        warm: dict = {backend: [] for backend in configs}
        for _ in range(repeat):
            for backend, config in configs.items():
                with config():
                    warm[backend].append(timed(work)[0])
    stop_loky()
    return {backend: (cold, statistics.median(warm[backend]), result, start)
            for backend, (cold, result) in out.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="warm repetitions (median shown)")
    args = parser.parse_args()
    rows = {name: run(work, args.repeat) for name, work in WORKLOADS.items()}
    import sklearn
    print(f"== joblib {joblib.__version__}, scikit-learn {sklearn.__version__}, "
          f"{N_WORKERS} workers each; seconds ==")
    print(f"{'':44}{'loky cold':>10}{'nbcluster cold':>16}{'loky warm':>11}{'nbcluster warm':>16}")
    for name, row in rows.items():
        lc, lw, lr, _ = row["loky"]
        nc, nw, nr, _ = row["nbcluster"]
        assert lr == nr, f"{name}: different results"
        print(f"{name:44}{lc:10.3f}{nc:16.3f}{lw:11.3f}{nw:16.3f}")
    starts = [row["nbcluster"][3] for row in rows.values()]
    print(f"(nbcluster cold excludes starting the LocalCluster: "
          f"{statistics.median(starts):.2f} s median, started once per workload; "
          f"warm: median of {args.repeat}, loky and nbcluster calls alternating)")


if __name__ == "__main__":
    main()
