#!/usr/bin/env python3
"""nbcluster against ipyparallel, dask.distributed and multiprocessing.Pool, 2 workers each,
side by side in one run, with the raw pyzmq floor measured in the same run.

    python benchmarks/bench_core.py            # everything (a few minutes)
    python benchmarks/bench_core.py --quick    # fewer repetitions
    python benchmarks/bench_core.py --only nbcluster,multiprocessing

Needs: pip install -e '.[bench]'  (numpy, ipyparallel, dask[distributed]).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
FLOOR = HERE / "zmq_floor.py"
N_WORKERS = 2


def noop():
    return None


def times10(x):
    return x * 10


def identity(a):
    return a


def cpu_task(n):
    """Pure-Python work that holds the GIL: ~0.3 s here."""
    total = 0
    for i in range(n):
        total += i * i % 7
    return total


CPU_N = 3_000_000


# ---- adapters: the idiomatic way to do each thing in each framework --------------------------
class NBCluster:
    name = "nbcluster"
    pickles_lambdas = True

    def start(self):
        import nbcluster
        self.cluster = nbcluster.LocalCluster(N_WORKERS)
        self.client = self.cluster.client()

    def call(self, fn, *args):
        return self.client.submit(fn, *args).result()

    def submit_many(self, fn, n):
        futures = [self.client.submit(fn) for _ in range(n)]
        return [f.result() for f in futures]

    def map(self, fn, items):
        return self.client.map(fn, items)

    def map_each(self, fn, items):
        return self.client.map(fn, items, chunksize=1)

    def stop(self):
        self.cluster.close()


class IPyParallel:
    name = "ipyparallel"
    pickles_lambdas = True

    def start(self):
        import ipyparallel as ipp
        self.cluster = ipp.Cluster(n=N_WORKERS, log_level=40)
        self.rc = self.cluster.start_and_connect_sync(activate=False)
        self.rc.wait_for_engines(N_WORKERS, timeout=60)
        self.lview = self.rc.load_balanced_view()
        self.dview = self.rc[:]

    def call(self, fn, *args):
        return self.lview.apply_async(fn, *args).get()

    def submit_many(self, fn, n):
        results = [self.lview.apply_async(fn) for _ in range(n)]
        return [r.get() for r in results]

    def map(self, fn, items):
        return self.dview.map_sync(fn, items)      # splits the sequence over the engines

    def map_each(self, fn, items):
        return self.lview.map_sync(fn, items)

    def stop(self):
        self.rc.close()
        self.cluster.stop_cluster_sync()


class Dask:
    name = "dask"
    pickles_lambdas = True

    def start(self):
        import distributed
        self.cluster = distributed.LocalCluster(n_workers=N_WORKERS, threads_per_worker=1,
                                                processes=True, dashboard_address=None)
        self.client = distributed.Client(self.cluster)

    def call(self, fn, *args):
        return self.client.submit(fn, *args, pure=False).result()

    def submit_many(self, fn, n):
        futures = [self.client.submit(fn, pure=False) for _ in range(n)]
        return self.client.gather(futures)

    def map(self, fn, items):
        return self.client.gather(self.client.map(fn, items))

    def map_each(self, fn, items):
        return self.client.gather(self.client.map(fn, items, pure=False))

    def stop(self):
        self.client.close()
        self.cluster.close()


class Pool:
    name = "multiprocessing"
    pickles_lambdas = False   # Pool uses plain pickle: the map gets a named function

    def start(self):
        import multiprocessing
        self.pool = multiprocessing.get_context("fork").Pool(N_WORKERS)

    def call(self, fn, *args):
        return self.pool.apply_async(fn, args).get()

    def submit_many(self, fn, n):
        results = [self.pool.apply_async(fn) for _ in range(n)]
        return [r.get() for r in results]

    def map(self, fn, items):
        return self.pool.map(fn, items)

    def map_each(self, fn, items):
        return self.pool.map(fn, items, chunksize=1)

    def stop(self):
        self.pool.terminate()
        self.pool.join()


PEERS = {p.name: p for p in (NBCluster, IPyParallel, Dask, Pool)}


# ---- measurements ------------------------------------------------------------------------------
def _timed(fn, *args) -> float:
    t = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t


def measure(peer, quick: bool) -> dict:
    out: dict = {}
    peer.start()
    try:
        for _ in range(50):
            peer.call(noop)
        lat = []
        for _ in range(300 if quick else 2000):
            t = time.perf_counter()
            peer.call(noop)
            lat.append((time.perf_counter() - t) * 1e6)
        lat.sort()
        out["latency_median_us"] = statistics.median(lat)
        out["latency_p99_us"] = lat[int(len(lat) * 0.99) - 1]

        t = time.perf_counter()
        peer.submit_many(noop, 10_000)
        out["tasks_per_s"] = 10_000 / (time.perf_counter() - t)

        items = list(range(100_000))
        times = []
        for _ in range(1 if quick else 3):
            t = time.perf_counter()
            res = peer.map((lambda x: x * 10) if peer.pickles_lambdas else times10, items)
            times.append(time.perf_counter() - t)
            if times[-1] > 5:   # minutes per run (dask): once is enough
                break
        assert res[-1] == 999_990 and len(res) == 100_000
        out["map_100k_s"] = min(times)

        arr = np.random.default_rng(0).random(100_000_000 // 8)
        rates = []
        for _ in range(2 if quick else 4):
            t = time.perf_counter()
            back = peer.call(identity, arr)
            rates.append(2 * arr.nbytes / 1e6 / (time.perf_counter() - t))
        assert back.shape == arr.shape and back[123] == arr[123]
        del back
        out["array_100mb_mb_per_s"] = statistics.median(rates)

        if peer.pickles_lambdas:   # a function that captures 16 MB, run 100 times
            data = np.random.default_rng(1).random(2_000_000)
            try:   # a peer that cannot do it shows "fails" in its column, the rest still runs
                t = time.perf_counter()
                assert peer.submit_many(lambda: float(data[7]), 100) == [float(data[7])] * 100
                out["captured_16mb_submit_100_s"] = time.perf_counter() - t
                t = time.perf_counter()
                expected = [float(x) for x in data[:100]]
                assert peer.map_each(lambda i: float(data[i]), range(100)) == expected
                out["captured_16mb_map_100_s"] = time.perf_counter() - t
            except Exception as e:   # noqa: BLE001 - reported, not hidden
                print(f"  {peer.name}: a function capturing 16 MB fails: {e!r}", flush=True)
                out.setdefault("captured_16mb_submit_100_s", "fails")
                out.setdefault("captured_16mb_map_100_s", "fails")
            del data

        # This machine's speed drifts (shared host): time the serial baseline right before, and
        # keep the best of two runs of each.
        serial = 8 * min(_timed(cpu_task, CPU_N) for _ in range(2))
        parallel = min(_timed(peer.map_each, cpu_task, [CPU_N] * 8) for _ in range(2))
        out["cpu_efficiency"] = serial / (N_WORKERS * parallel)
    finally:
        peer.stop()
    return out


STARTUP_SCRIPT = textwrap.dedent("""
    import time, os, sys
    t0 = time.perf_counter()
    sys.path.insert(0, {here!r})
    import bench_core, psutil
    peer = bench_core.PEERS[{name!r}]()
    peer.start()
    peer.call(bench_core.noop)
    first = time.perf_counter() - t0
    me = psutil.Process()
    kids = me.children(recursive=True)
    t1 = time.perf_counter()
    peer.stop()
    gone, alive = psutil.wait_procs(kids, timeout=30)
    stop = time.perf_counter() - t1
    print(first, stop, len(kids), len(alive))
""")


def startup(name: str) -> tuple[float, float]:
    """(import + start + first result, stop until every child process is gone), fresh process."""
    script = STARTUP_SCRIPT.format(here=str(HERE), name=name)
    # ipyparallel's and dask's workers must import this file's functions too.
    path = os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=300, env={**os.environ, "PYTHONPATH": path})
    if out.returncode:
        raise RuntimeError(out.stderr[-2000:])
    first, stop, _kids, _alive = out.stdout.split()[-4:]
    return float(first), float(stop)


def floor() -> dict:
    """The figures of benchmarks/zmq_floor.py. It can hang at exit after printing them, so
    it runs in a session of its own, which is killed (by its id) once the figures are in."""
    if not FLOOR.exists():
        print(f"(no {FLOOR}: floor not measured)")
        return {}
    proc = subprocess.Popen([sys.executable, str(FLOOR), "--json"], stdout=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        for line in proc.stdout:
            if line.startswith("{"):
                return json.loads(line)
        return {}
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", default=",".join(PEERS))
    ap.add_argument("--json", help="also write the figures here")
    ap.add_argument("--no-floor", action="store_true", help="skip the raw pyzmq floor")
    args = ap.parse_args()
    names = args.only.split(",")


    print("measuring the raw pyzmq floor ...", flush=True)
    zmq = {} if args.no_floor else floor()
    results = {}
    for name in names:
        print(f"measuring {name} ...", flush=True)
        try:
            results[name] = measure(PEERS[name](), args.quick)
            results[name]["first_result_s"], results[name]["stop_s"] = startup(name)
        except Exception as e:  # noqa: BLE001 - one peer failing must not lose the others' figures
            print(f"  {name} failed: {e!r}", flush=True)
        print(f"  {json.dumps(results.get(name))}", flush=True)

    rows = [("no-op round trip, median (us)", "latency_median_us", "{:.0f}"),
            ("no-op round trip, p99 (us)", "latency_p99_us", "{:.0f}"),
            ("10k submitted no-ops (tasks/s)", "tasks_per_s", "{:,.0f}"),
            ("map(x*10, 100k) (s)", "map_100k_s", "{:.3f}"),
            ("100 MB array there and back (MB/s)", "array_100mb_mb_per_s", "{:.0f}"),
            ("8 CPU tasks, efficiency vs serial", "cpu_efficiency", "{:.0%}"),
            ("fn capturing 16 MB: 100 submits (s)", "captured_16mb_submit_100_s", "{:.2f}"),
            ("fn capturing 16 MB: map of 100 (s)", "captured_16mb_map_100_s", "{:.2f}"),
            ("import+start+first result (s)", "first_result_s", "{:.2f}"),
            ("stop until all gone (s)", "stop_s", "{:.2f}")]
    width = 36
    print()
    print("".ljust(width) + "".join(n.rjust(16) for n in results))
    for label, key, fmt in rows:
        cells = [("-" if key not in r else r[key] if isinstance(r[key], str) else
                  fmt.format(r[key])) for r in results.values()]
        print(label.ljust(width) + "".join(c.rjust(16) for c in cells))
    if zmq:
        print("\nraw pyzmq floor (no pickling, no signing):")
        for k, v in zmq.items():
            print(f"  {k:11s} no-op round trip {v['roundtrip_us']:7.0f} us   "
                  f"100 MB there and back {v['mb_per_s']:7.0f} MB/s")
    if args.json:
        Path(args.json).write_text(json.dumps({"peers": results, "zmq_floor": zmq}, indent=1))


if __name__ == "__main__":
    main()
