#!/usr/bin/env python3
"""Parallel collections and MapReduce against multiprocessing.Pool, joblib and dask.bag,
2 workers each, side by side in one run.

    python benchmarks/bench_collections.py             # everything (a few minutes)
    python benchmarks/bench_collections.py --quick     # smaller corpus, no dask word count

1. pmap / pfilter over 1M small items.
2. Word count over the standard library's .py files repeated to ~200 MB: serial Python,
   nbcluster map_reduce (records = 8 big batches, batches of 16 files, single files),
   multiprocessing.Pool with a manual merge, dask.bag frequencies and foldby; and, as the
   ceiling of any 2-process count, Pool counting two halves at once with no merge.

Needs: pip install -e '.[bench]'.
"""

from __future__ import annotations

import argparse
import collections
import glob
import multiprocessing
import os
import sysconfig
import time

N_WORKERS = 2
N_ITEMS = 1_000_000


def double(x):
    return x * 2


def is_odd(x):
    return x & 1


def read_words(path):
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.read().split()


def count_file(path):
    return collections.Counter(read_words(path))


def count_batch(paths):
    total = collections.Counter()
    for p in paths:
        total.update(read_words(p))
    return total


def merge(counters):
    total = collections.Counter()
    for c in counters:
        total.update(c)
    return total


def timed(fn, repeat=3):
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def corpus(target_mb: int) -> list[str]:
    std = sysconfig.get_paths()["stdlib"]
    files = sorted(f for f in glob.glob(os.path.join(std, "**", "*.py"), recursive=True)
                   if "site-packages" not in f)
    size = sum(os.path.getsize(f) for f in files)
    return files * max(1, round(target_mb * 1e6 / size))


def batches(files, n=16):
    return [files[i:i + n] for i in range(0, len(files), n)]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    import dask.bag as db
    import joblib

    import nbcluster
    from nbcluster import map_reduce, pfilter, pmap

    rows = []
    xs = range(N_ITEMS)
    with multiprocessing.Pool(N_WORKERS) as pool, nbcluster.LocalCluster(N_WORKERS) as cluster:
        _client = cluster.client()   # held: pmap & co. find it through a weak reference
        pool.map(double, range(100))
        pmap(double, range(100), progress=False)
        print(f"== collections over {N_ITEMS:,} small items, {N_WORKERS} workers ==")
        for name, fn in [
            ("map  nbcluster pmap", lambda: pmap(double, xs, progress=False)),
            ("map  multiprocessing.Pool.map", lambda: pool.map(double, xs)),
            ("map  joblib", lambda: joblib.Parallel(n_jobs=N_WORKERS)(
                joblib.delayed(double)(x) for x in xs)),
            ("map  dask.bag", lambda: db.from_sequence(xs, npartitions=8 * N_WORKERS).map(double)
             .compute(scheduler="processes", num_workers=N_WORKERS)),
            ("filter nbcluster pfilter", lambda: pfilter(is_odd, xs, progress=False)),
            ("filter multiprocessing.Pool", lambda: [
                x for x, k in zip(xs, pool.map(is_odd, xs), strict=True) if k]),
            ("filter joblib", lambda: [x for x, k in zip(xs, joblib.Parallel(n_jobs=N_WORKERS)(
                joblib.delayed(is_odd)(x) for x in xs), strict=True) if k]),
            ("filter dask.bag", lambda: db.from_sequence(xs, npartitions=8 * N_WORKERS)
             .filter(is_odd).compute(scheduler="processes", num_workers=N_WORKERS)),
        ]:
            seconds, out = timed(fn, 1 if "joblib" in name else 3)
            assert len(out) in (N_ITEMS, N_ITEMS // 2), name
            rows.append((name, seconds))
            print(f"{name:34s} {seconds:7.3f} s", flush=True)

        files = corpus(40 if args.quick else 200)
        mb = sum(os.path.getsize(f) for f in files) / 1e6
        print(f"\n== word count over {len(files):,} files, {mb:.0f} MB, {N_WORKERS} workers ==")
        # best of 3 for the serial count and nbcluster (the VM drifts 10-20 %); others once
        serial_s, expected = timed(lambda: count_batch(files), 3)
        print(f"{'serial Python (Counter), best of 3':34s} {serial_s:7.3f} s", flush=True)
        cases = [
            ("nbcluster map_reduce (8 big records)", lambda: map_reduce(
                batches(files, -(-len(files) // 8)), count_batch, sum, combiner=sum,
                chunksize=1, progress=False)),
            ("nbcluster map_reduce (16-file records)", lambda: map_reduce(
                batches(files), count_batch, sum, combiner=sum, progress=False)),
            ("nbcluster map_reduce (1-file records)", lambda: map_reduce(
                files, count_file, sum, combiner=sum, progress=False)),
            ("multiprocessing.Pool + merge", lambda: merge(pool.map(count_batch, batches(files)))),
            ("dask.bag foldby (16-file records)", lambda: dict(
                db.from_sequence(batches(files), npartitions=8 * N_WORKERS).map(count_batch)
                .map(lambda c: list(c.items())).flatten()
                .foldby(lambda kv: kv[0], lambda acc, kv: acc + kv[1], 0,
                        lambda a, b: a + b, 0)
                .compute(scheduler="processes", num_workers=N_WORKERS))),
        ]
        if not args.quick:
            cases.append(("dask.bag frequencies (per word)", lambda: dict(
                db.from_sequence(files, npartitions=8 * N_WORKERS).map(read_words).flatten()
                .frequencies().compute(scheduler="processes", num_workers=N_WORKERS))))
        half = len(files) // 2   # the ceiling: two halves counted at once, never merged
        cases.append(("(ceiling) Pool, 2 halves, no merge", lambda: pool.map(
            count_batch, [files[:half], files[half:]], chunksize=1)))
        for name, fn in cases:
            seconds, out = timed(fn, 3 if name.startswith(("nbcluster", "(")) else 1)
            assert name.startswith("(") or dict(out) == dict(expected), name
            print(f"{name:34s} {seconds:7.3f} s   {serial_s / seconds:4.2f}x serial", flush=True)


if __name__ == "__main__":
    main()
