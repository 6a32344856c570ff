"""A client in a process of its own, for bench_scale: queues tasks when told, holds them.

    python scale_agent.py nbcluster ENDPOINT     (the key in $NBCLUSTER_KEY)
    python scale_agent.py dask SCHEDULER_ADDRESS
    python scale_agent.py flood ENDPOINT          (garbage frames, no key, until killed)

One JSON command per line on stdin, one JSON reply per line on stdout; it exits when its
stdin closes (its client leaves, so its queued tasks are dropped). Commands:

    {"do": "hello"}                                  -> {"pid": ...}
    {"do": "queue", "n": N, "mode": "loop"|"map", "labels": "nowhere"|"distinct"}
        N no-op tasks no worker can run (labels no worker has; dask: resources no worker
        has), then a fence: a no-op any worker runs, submitted after them on the same
        connection, so its result means the broker (scheduler) took in all N.
        -> {"submit_s", "submit_cpu_s", "fenced_s"}
    {"do": "sleep", "n": N, "seconds": S}            -> N tasks of time.sleep(S), submitted
    {"do": "cancel"}                                 -> cancels every task it holds
"""

from __future__ import annotations

import json
import os
import sys
import time

FENCE_TIMEOUT_S = 1800.0


def noop():
    return None


def sleep_task(seconds):
    start = time.time()
    time.sleep(seconds)
    return start


class NBClusterSide:
    def __init__(self, endpoint: str):
        import nbcluster
        self.client = nbcluster.Client(endpoint, bytes.fromhex(os.environ["NBCLUSTER_KEY"]),
                                       remember=False)
        self.futures: list = []

    def queue(self, n: int, mode: str, labels: str) -> None:
        c = self.client
        if labels == "distinct":   # a label set of its own for each task
            self.futures += [c.options(labels={f"set{i}"}).submit(noop) for i in range(n)]
        elif mode == "map":
            self.futures += c.map_chunks(noop_one, range(n), chunksize=1, labels={"nowhere"})[0]
        else:
            opts = c.options(labels={"nowhere"})
            self.futures += [opts.submit(noop) for _ in range(n)]

    def fence(self) -> None:
        self.client.submit(noop).result(FENCE_TIMEOUT_S)

    def sleep(self, n: int, seconds: float) -> None:
        self.futures += [self.client.submit(sleep_task, seconds) for _ in range(n)]

    def cancel(self) -> None:
        self.client.cancel(self.futures)
        self.futures = []


def noop_one(_x):
    return None


class DaskSide:
    def __init__(self, address: str):
        import distributed
        self.client = distributed.Client(address, timeout=60)
        self.futures: list = []

    def queue(self, n: int, mode: str, labels: str) -> None:
        c = self.client
        if labels == "distinct":
            self.futures += [c.submit(noop, pure=False, resources={f"set{i}": 1})
                             for i in range(n)]
        elif mode == "map":
            self.futures += c.map(noop_one, range(n), resources={"nowhere": 1})
        else:
            self.futures += [c.submit(noop, pure=False, resources={"nowhere": 1})
                             for _ in range(n)]

    def fence(self) -> None:
        self.client.submit(noop, pure=False).result(FENCE_TIMEOUT_S)

    def sleep(self, n: int, seconds: float) -> None:
        self.futures += self.client.map(sleep_task, [seconds] * n, pure=False)

    def cancel(self) -> None:
        self.client.cancel(self.futures)
        self.futures = []


def handle(side, cmd: dict) -> dict:
    if cmd["do"] == "hello":
        return {"pid": os.getpid()}
    if cmd["do"] == "queue":
        t, cpu = time.perf_counter(), time.process_time()
        side.queue(cmd["n"], cmd.get("mode", "loop"), cmd.get("labels", "nowhere"))
        out = {"submit_s": time.perf_counter() - t, "submit_cpu_s": time.process_time() - cpu}
        side.fence()
        out["fenced_s"] = time.perf_counter() - t
        return out
    if cmd["do"] == "sleep":
        side.sleep(cmd["n"], cmd["seconds"])   # no fence: it would wait behind them
        return {}
    if cmd["do"] == "cancel":
        t = time.perf_counter()
        side.cancel()
        return {"cancel_s": time.perf_counter() - t}
    return {"error": f"unknown command {cmd['do']!r}"}


def flood(endpoint: str) -> None:
    """Garbage frames to endpoint as fast as a DEALER can send them, without the key, until
    killed (what a local process without the key can do to the broker's TCP port)."""
    import zmq
    sock = zmq.Context().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    frames = [os.urandom(32), os.urandom(200), os.urandom(64)]
    while True:
        try:
            sock.send_multipart(frames, flags=zmq.NOBLOCK, copy=False)
        except zmq.Again:   # its queue is full: the broker reads no faster; try again
            time.sleep(0)


def main() -> None:
    peer, address = sys.argv[1], sys.argv[2]
    if peer == "flood":
        flood(address)
    side = NBClusterSide(address) if peer == "nbcluster" else DaskSide(address)
    for line in sys.stdin:
        try:
            reply = handle(side, json.loads(line))
        except Exception as e:  # noqa: BLE001 - said to the bench, which reports it
            reply = {"error": repr(e)[:500]}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()
    side.client.close()   # stdin closed: say goodbye (the broker drops our queued tasks)


if __name__ == "__main__":
    main()
