#!/usr/bin/env python3
"""Many users, big queues, many workers (issue 14): nbcluster and dask.distributed side by
side in one run, one printed table.

    python benchmarks/bench_scale.py                 # everything: ~1 h on the 2-core VM
    python benchmarks/bench_scale.py --only nbcluster  # ~30 min on main at dd63794
    python benchmarks/bench_scale.py --quick         # small sizes: a smoke run, 2-4 min
    python benchmarks/bench_scale.py --only nbcluster --rows queue,fair

Rows (--rows): queue (queued-task memory, queueing rate, status latency and the longest
stall at each queue size), fair (B's 100 tasks behind A's 10,000), labels (round trip
against label sets used), workers (50/100/200 workers: registration, round trip, idle CPU),
flood (round trip during an unauthenticated flood; nbcluster only: dask has no key).

Tasks no worker can run are tasks with labels no worker has (dask: resources no worker
has). Queueing clients run in processes of their own (scale_agent.py), so their RSS is
theirs; round trips and status queries come from this process. Each row is a function of
(peer, config, record): a module written for one row can replace it in ROWS. Every
process started is stopped by pid at the end, also on failure or Ctrl-C (scale_procs.py).
The machine may be shared: the load average is printed with the figures, and CPU seconds
(psutil, of the broker/scheduler and the client) are given beside wall times.

Needs: pip install -e '.[bench]'  (dask[distributed], which brings psutil).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from scale_peers import PEERS
from scale_procs import Procs, cpu_s, mb, percentiles, rss, wait_until

GIB = 2**30


@dataclasses.dataclass
class Config:
    sizes: tuple[int, ...] = (10_000, 100_000, 1_000_000)   # queued no-op tasks
    map_size: int = 100_000          # queueing rate with map
    status_calls: int = 5            # status queries timed at each size
    a_tasks: int = 10_000            # fair share: A's tasks...
    b_tasks: int = 100               # ...B's
    task_s: float = 0.2              # each sleeps this long (the issue says 1 s)
    fair_bound_s: float = 60.0       # B gives up waiting after max(this, 6x B alone)
    label_sets: tuple[int, ...] = (1_000, 10_000, 100_000)
    worker_counts: tuple[int, ...] = (50, 100, 200)
    idle_s: float = 10.0             # broker CPU measured over this long, idle
    roundtrips: int = 300
    flood_s: float = 10.0
    memory_cap: int = 12 * GIB       # what this run may use (of the VM's 24 GB)
    queue_budget_s: float = 400.0    # a size whose extrapolated time passes this is skipped
    register_timeout_s: float = 300.0


QUICK = Config(sizes=(1_000, 5_000), map_size=5_000, status_calls=3, a_tasks=1_000,
               b_tasks=20, task_s=0.05, fair_bound_s=15, label_sets=(200, 1_000),
               worker_counts=(4, 8), idle_s=2.0, roundtrips=100, flood_s=3.0,
               queue_budget_s=60, register_timeout_s=60)

Record = Callable[[str, str], None]


def roundtrips(peer, n: int, max_s: float = 60.0) -> list[float]:
    """Durations of up to n no-op round trips (fewer if they take more than max_s in all)."""
    out: list[float] = []
    end = time.monotonic() + max_s
    while len(out) < n and time.monotonic() < end:
        t = time.perf_counter()
        peer.roundtrip()
        out.append(time.perf_counter() - t)
    return out


def fmt_rtt(samples: list[float]) -> str:
    med, p95, _ = percentiles(samples)
    return f"{med:.1f} / {p95:.1f} ms"


def idle_cpu(pid: int, seconds: float) -> str:
    before = cpu_s(pid)
    time.sleep(seconds)
    return f"{100 * (cpu_s(pid) - before) / seconds:.1f} %"


# ---- rows ----------------------------------------------------------------------------------
def status_hammer(peer, calls: int) -> tuple[list[float], list[float]]:
    """(status query durations, probe round trips meanwhile): the probe client's longest
    round trip is the longest the broker stalled while answering status."""
    probes: list[float] = []
    stop = threading.Event()

    def probe() -> None:
        while not stop.is_set():
            t = time.perf_counter()
            peer.roundtrip()
            probes.append(time.perf_counter() - t)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    times = []
    try:
        for _ in range(calls):
            t = time.perf_counter()
            peer.status()
            times.append(time.perf_counter() - t)
    finally:
        stop.set()
        thread.join(130)
    return times, probes or [float("nan")]


def row_queue(peer, cfg: Config, record: Record, procs: Procs) -> None:
    """Queued-task memory, queueing rate, status latency and stall, at each size."""
    peer.start(1)
    try:
        broker = peer.broker_pid
        times, probes = status_hammer(peer, cfg.status_calls)
        record("status query, 0 queued (ms, median / max)",
               f"{statistics.median(times) * 1e3:.1f} / {max(times) * 1e3:.1f}")
        record("longest probe round trip during status, 0 queued (ms)",
               f"{max(probes) * 1e3:.1f}")
        record("broker RSS, 0 queued", mb(rss(broker)))
        # (size, seconds to queue and cancel, bytes) measured: the next size is extrapolated
        last: tuple[int, float, int] | None = None
        for n in cfg.sizes:
            if last is not None:
                secs, mem = last[1] * n / last[0], last[2] * n / last[0]
                if secs > cfg.queue_budget_s or mem > cfg.memory_cap:
                    record(f"broker RSS, {n:,} queued",
                           f"skipped (~{secs:.0f} s, ~{mem / GIB:.1f} GB extrapolated)")
                    continue
            agent = peer.agent()
            try:
                cpu0 = cpu_s(broker)
                r = agent.ask({"do": "queue", "n": n, "mode": "loop"},
                              timeout=cfg.queue_budget_s * 2)
                broker_cpu = cpu_s(broker) - cpu0
                b_rss, c_rss = rss(broker), agent.rss()
                last = (n, r["fenced_s"], b_rss + c_rss)
                record(f"broker RSS, {n:,} queued", mb(b_rss))
                record(f"client RSS, {n:,} queued", mb(c_rss))
                record(f"queueing {n:,}, submit loop (tasks/s)", f"{n / r['fenced_s']:,.0f}")
                record(f"queueing {n:,}: client / broker CPU (us per task)",
                       f"{r['submit_cpu_s'] / n * 1e6:.0f} / {broker_cpu / n * 1e6:.0f}")
                times, probes = status_hammer(peer, cfg.status_calls)
                record(f"status query, {n:,} queued (ms, median / max)",
                       f"{statistics.median(times) * 1e3:.1f} / {max(times) * 1e3:.1f}")
                record(f"longest probe round trip during status, {n:,} queued (ms)",
                       f"{max(probes) * 1e3:.1f}")
                t = time.perf_counter()
                agent.ask({"do": "cancel"}, timeout=cfg.queue_budget_s)
                wait_until(lambda: peer.n_queued() == 0, 300, "the cancelled tasks to leave",
                           interval=1.0)
                last = (n, r["fenced_s"] + time.perf_counter() - t, b_rss + c_rss)
                time.sleep(2)
                record(f"broker RSS after the {n:,} are cancelled", mb(rss(broker)))
            finally:
                agent.close()
        agent = peer.agent()
        try:
            r = agent.ask({"do": "queue", "n": cfg.map_size, "mode": "map"},
                          timeout=cfg.queue_budget_s * 2)
            record(f"queueing {cfg.map_size:,}, map (tasks/s)",
                   f"{cfg.map_size / r['fenced_s']:,.0f}")
        finally:
            agent.close()
    finally:
        peer.stop()


def _b_run(peer, cfg: Config, bound_s: float) -> tuple[str, str]:
    """B submits its tasks: (first start, completion) in seconds after the submit."""
    t0 = time.time()
    futures = peer.submit_sleeps(cfg.b_tasks, cfg.task_s)
    starts = []
    deadline = time.monotonic() + bound_s
    try:
        for f in futures:
            starts.append(f.result(max(0.01, deadline - time.monotonic())) - t0)
        return f"{min(starts):.2f} s", f"{time.time() - t0:.1f} s"
    except TimeoutError:
        peer.cancel(futures)
        first = f"{min(starts):.2f} s" if starts else f"> {bound_s:.0f} s"
        return first, f"> {bound_s:.0f} s ({len(starts)} of {cfg.b_tasks} done)"


def row_fair(peer, cfg: Config, record: Record, procs: Procs) -> None:
    """B's tasks alone, then behind A's (A in a process of its own), on 2 workers."""
    peer.start(2)
    try:
        alone_first, alone_done = _b_run(peer, cfg, 600)
        record(f"B alone: {cfg.b_tasks} x {cfg.task_s} s tasks, first start", alone_first)
        record(f"B alone: {cfg.b_tasks} x {cfg.task_s} s tasks, all done", alone_done)
        bound = max(cfg.fair_bound_s, 6 * cfg.b_tasks * cfg.task_s / 2)
        agent = peer.agent()
        try:
            agent.ask({"do": "sleep", "n": cfg.a_tasks, "seconds": cfg.task_s}, timeout=300)
            wait_until(lambda: peer.n_queued() >= cfg.a_tasks // 2, 120, "A's tasks queued")
            first, done = _b_run(peer, cfg, bound)
            record(f"B behind A's {cfg.a_tasks:,}: first start", first)
            record(f"B behind A's {cfg.a_tasks:,}: all done", done)
        finally:
            agent.close()
    finally:
        peer.stop()


def row_labels(peer, cfg: Config, record: Record, procs: Procs) -> None:
    """Round trip while K tasks with K distinct label sets are queued, and once cancelled."""
    peer.start(1)
    try:
        broker = peer.broker_pid
        record("round trip, no label sets used (ms, median / p95)",
               fmt_rtt(roundtrips(peer, cfg.roundtrips)))
        record("broker RSS, no label sets used", mb(rss(broker)))   # what "after" compares to
        used, last = 0, None   # last: (sets, seconds to queue and cancel them)
        for k in cfg.label_sets:
            if last is not None and last[1] * k / last[0] > cfg.queue_budget_s:
                record(f"round trip, {k:,} label sets queued (ms, median / p95)",
                       f"skipped (~{last[1] * k / last[0]:.0f} s extrapolated)")
                break
            agent = peer.agent()
            try:
                t0 = time.perf_counter()
                agent.ask({"do": "queue", "n": k, "labels": "distinct"},
                          timeout=cfg.queue_budget_s * 2)
                spent = time.perf_counter() - t0
                used += k
                record(f"round trip, {k:,} label sets queued (ms, median / p95)",
                       fmt_rtt(roundtrips(peer, cfg.roundtrips)))
                t = time.perf_counter()
                peer.status()
                record(f"status query, {k:,} label sets queued (ms)",
                       f"{(time.perf_counter() - t) * 1e3:.1f}")
                t0 = time.perf_counter()
                agent.ask({"do": "cancel"}, timeout=cfg.queue_budget_s)
                wait_until(lambda: peer.n_queued() == 0, 300, "the cancelled tasks to leave",
                           interval=1.0)
                last = (k, spent + time.perf_counter() - t0)
                record(f"round trip after cancel, {used:,} sets used (ms, median / p95)",
                       fmt_rtt(roundtrips(peer, cfg.roundtrips)))
                record(f"broker RSS after cancel, {used:,} sets used", mb(rss(broker)))
            finally:
                agent.close()
    finally:
        peer.stop()


def row_workers(peer, cfg: Config, record: Record, procs: Procs) -> None:
    """Registration time, round trip and idle broker CPU with many workers."""
    peer.start(2)
    try:
        rtt2 = roundtrips(peer, cfg.roundtrips)
        record("round trip, 2 workers (ms, median / p95)", fmt_rtt(rtt2))
        record("broker idle CPU, 2 workers", idle_cpu(peer.broker_pid, cfg.idle_s))
        one = statistics.median(rss(p) for p in peer.worker_pids())
        record("RSS of one idle worker", mb(one))
    finally:
        peer.stop()
    cap = int(cfg.memory_cap // max(one, 1))
    for n in cfg.worker_counts:
        if n > cap:
            record(f"{n} workers: all registered after",
                   f"skipped ({n} x {mb(one)} > {cfg.memory_cap / GIB:.0f} GB)")
            continue
        peer.start(2)
        try:
            t = time.perf_counter()
            peer.add_workers(n - 2)
            wait_until(lambda n=n: peer.n_workers() >= n, cfg.register_timeout_s,
                       f"{n} workers registered", interval=0.25)
            record(f"{n} workers: all registered after", f"{time.perf_counter() - t:.1f} s")
            time.sleep(2)
            samples = roundtrips(peer, cfg.roundtrips)
            ratio = statistics.median(samples) / statistics.median(rtt2)
            record(f"round trip, {n} workers (ms, median / p95)",
                   f"{fmt_rtt(samples)} ({ratio:.2f}x 2)")
            record(f"broker idle CPU, {n} workers", idle_cpu(peer.broker_pid, cfg.idle_s))
        finally:
            peer.stop()


def row_flood(peer, cfg: Config, record: Record, procs: Procs) -> None:
    """A legitimate round trip while a process without the key floods the broker's port."""
    if peer.name != "nbcluster":
        record("round trip during an unauthenticated flood (ms, median / p95)",
               "n/a (no key: any peer is a client)")
        return
    from scale_procs import AGENT
    peer.start(1)
    try:
        broker = peer.broker_pid
        record("round trip, no flood (ms, median / p95)",
               fmt_rtt(roundtrips(peer, cfg.roundtrips)))
        before = rss(broker)
        flood = procs.spawn([sys.executable, str(AGENT), "flood", peer.flood_target()])
        try:
            time.sleep(1)
            samples = roundtrips(peer, cfg.roundtrips, max_s=cfg.flood_s)
            record("round trip during an unauthenticated flood (ms, median / p95)",
                   f"{fmt_rtt(samples)} ({len(samples)} in {cfg.flood_s:.0f} s)")
            record("broker RSS before / during the flood", f"{mb(before)} / {mb(rss(broker))}")
        finally:
            procs.stop(flood, timeout=5)
        time.sleep(3)
        record("broker RSS 3 s after the flood", mb(rss(broker)))
        record("round trip after the flood (ms, median / p95)",
               fmt_rtt(roundtrips(peer, cfg.roundtrips)))
    finally:
        peer.stop()


ROWS = {"queue": row_queue, "fair": row_fair, "labels": row_labels, "workers": row_workers,
        "flood": row_flood}


# ---- the run -------------------------------------------------------------------------------
def load() -> str:
    return "load average " + " ".join(f"{x:.1f}" for x in os.getloadavg())


def print_table(results: dict[str, dict[str, str]], peers: list[str]) -> None:
    if not results:
        return
    width = max(len(label) for label in results) + 2
    cols = [max(28, *(len(v.get(p, "")) + 2 for v in results.values())) for p in peers]
    print()
    print("".ljust(width) + "".join(p.rjust(c) for p, c in zip(peers, cols, strict=True)))
    for label, values in results.items():
        print(label.ljust(width) + "".join(values.get(p, "-").rjust(c)
                                           for p, c in zip(peers, cols, strict=True)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, a smoke run (~2 min)")
    ap.add_argument("--only", default=",".join(PEERS), help="nbcluster,dask")
    ap.add_argument("--rows", default=",".join(ROWS), help=",".join(ROWS))
    ap.add_argument("--json", help="also write the figures here")
    args = ap.parse_args()
    cfg = QUICK if args.quick else Config()
    peers, rows = args.only.split(","), args.rows.split(",")
    for name in [*peers, *rows]:
        if name not in PEERS and name not in ROWS:
            ap.error(f"unknown peer or row {name!r}")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))   # so the finally blocks run
    procs = Procs()
    results: dict[str, dict[str, str]] = {}
    loads = [load()]
    print(f"bench_scale: rows {', '.join(rows)}; {loads[0]}", flush=True)
    try:
        for row in rows:
            for name in peers:
                print(f"[{row}] {name} ... ({load()})", flush=True)

                def record(label: str, value: str, name: str = name) -> None:
                    results.setdefault(label, {})[name] = value
                    print(f"  {label}: {value}", flush=True)

                try:
                    ROWS[row](PEERS[name](procs), cfg, record, procs)
                except Exception as e:  # noqa: BLE001 - one failure must not lose the rest
                    record(f"[{row}] failed", repr(e)[:200])
                finally:
                    procs.stop_all()   # whatever a failed row left
        loads.append(load())
    except (KeyboardInterrupt, SystemExit):
        print("\ninterrupted: the figures so far", flush=True)
        raise
    finally:
        procs.stop_all()
        print_table(results, peers)
    print(f"\n{'quick run; ' if args.quick else ''}{loads[0]} at the start, {loads[-1]} at "
          f"the end; {os.cpu_count()} cores. Round trips from this process; queueing clients "
          "in their own processes.")
    if args.json:
        Path(args.json).write_text(json.dumps({"config": dataclasses.asdict(cfg),
                                               "loads": loads, "results": results}, indent=1))


if __name__ == "__main__":
    main()
