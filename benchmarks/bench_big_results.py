#!/usr/bin/env python3
"""Big results: a task returning N bytes as `bytes`, `bytearray`, a `memoryview` or a numpy
array, on this host (shared memory) and, with --netns, from a worker in another network
namespace over tcp with Curve (out-of-band frames). One worker; each figure is the time from
submit to the value in the client's hands, the value's type checked.

    python benchmarks/bench_big_results.py                  # 64 MiB, 256 MiB, 1 GiB here
    python benchmarks/bench_big_results.py --netns --sizes 64,256   # also across hosts (root)
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import nbcluster  # noqa: E402
from nbcluster.wire import protocol  # noqa: E402
from nbcluster.wire.connection import KEY_ENV, ConnectionInfo  # noqa: E402

KINDS = ("bytes", "bytearray", "memoryview", "numpy")
TIMEOUT_S = 180.0


def make(kind: str, n: int):
    """The result the task returns (built on the worker)."""
    if kind == "numpy":
        import numpy as np
        return np.ones(n, dtype=np.uint8)
    data = bytearray(n)
    data[::4096] = b"x" * len(data[::4096])   # touch every page
    return {"bytes": bytes, "bytearray": bytearray, "memoryview": memoryview}[kind](data)


def measure(client, sizes_mib: list[int], where: str) -> None:
    for mib in sizes_mib:
        for kind in KINDS:
            n = mib << 20
            start = time.perf_counter()
            try:
                value = client.submit(make, kind, n).result(TIMEOUT_S)
                got = f"{type(value).__name__}"
                ok = memoryview(value).nbytes == n
                text = f"{time.perf_counter() - start:8.2f} s  {got}{'' if ok else ' (WRONG SIZE)'}"
                del value
            except Exception as e:   # noqa: BLE001 - a failure is a figure too
                text = f"failed after {time.perf_counter() - start:.1f} s: {type(e).__name__}: " \
                       f"{str(e)[:80]}"
            print(f"{where:6} {mib:5} MiB {kind:11} {text}", flush=True)


def here(sizes: list[int]) -> None:
    with nbcluster.LocalCluster(1) as cluster:
        measure(cluster.client(), sizes, "here")


def across(sizes: list[int]) -> None:
    from tests.support.netns import Hosts  # the repository is on sys.path (above)
    hosts = Hosts()
    try:
        key, folder = protocol.new_key(), Path(os.environ.get("TMPDIR", "/tmp"))
        file = folder / f"nbc-bench-{os.getpid()}.json"
        env = {**os.environ, KEY_ENV: key.hex(), "PYTHONPATH": str(HERE.parent)}
        broker = hosts.spawn("broker", [sys.executable, "-m", "nbcluster.broker", "--bind",
                                        "tcp://0.0.0.0:5555", "--connection-file", str(file)],
                             env=env, stdout=subprocess.PIPE)
        assert broker.stdout.readline().startswith(b"ready")
        info = ConnectionInfo.read(file)
        # A host name of its own (a UTS namespace), or the broker would take the worker for
        # one on the client's host and results would go through shared memory.
        worker = [sys.executable, "-m", "nbcluster.worker", "--connect", str(file),
                  "--endpoint", f"tcp://{hosts.broker_address_for('host1')}:5555"]
        hosts.spawn("host1", ["unshare", "--uts", "sh", "-c",
                              'hostname nbc-bench-host1 && exec "$@"', "-", *worker], env=env)
        with nbcluster.Client(f"tcp://{hosts.address('broker')}:5555", key,
                              curve=info.curve) as client:
            deadline = time.monotonic() + 30
            while not client.workers():
                assert time.monotonic() < deadline, "the worker did not join"
                time.sleep(0.05)
            assert client.workers()[0]["host"] == "nbc-bench-host1"
            measure(client, sizes, "tcp")
        file.unlink(missing_ok=True)
    finally:
        hosts.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="64,256,1024", help="MiB, comma-separated")
    ap.add_argument("--netns", action="store_true", help="also across network namespaces")
    ap.add_argument("--only-netns", action="store_true")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    if not args.only_netns:
        here(sizes)
    if args.netns or args.only_netns:
        across(sizes)


if __name__ == "__main__":
    main()
