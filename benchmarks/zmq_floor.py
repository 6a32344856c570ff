#!/usr/bin/env python3
"""The floor under nbcluster's data path on this machine: raw pyzmq, no pickling, no signing.

    direct: DEALER <-> echo process                       (one hop each way)
    proxy:  DEALER <-> ROUTER/DEALER proxy <-> echo        (what any broker-based design pays)

For tcp and ipc, prints the median no-op round trip (us) and the median MB/s of a 100 MB
buffer sent there and back zero-copy. Usage: python benchmarks/zmq_floor.py [--json]
"""

from __future__ import annotations

import json
import multiprocessing as mp
import statistics
import sys
import tempfile
import time

import zmq

ROUND_TRIPS = 2000
BULK_MB = 100


def echo(endpoint: str, bind: bool) -> None:
    sock = zmq.Context().socket(zmq.DEALER)
    sock.bind(endpoint) if bind else sock.connect(endpoint)
    while (frames := sock.recv_multipart(copy=False))[0].bytes != b"stop":
        sock.send_multipart(frames, copy=False)


def relay(front: str, back: str) -> None:
    ctx = zmq.Context()
    router, dealer = ctx.socket(zmq.ROUTER), ctx.socket(zmq.DEALER)
    router.bind(front)
    dealer.bind(back)
    zmq.proxy(router, dealer)


def measure(sock: zmq.Socket) -> tuple[float, float]:
    sock.setsockopt(zmq.RCVTIMEO, 60_000)    # a lost message fails the run, never hangs it
    for _ in range(200):                     # warm up
        sock.send(b"x")
        sock.recv()
    latencies = []
    for _ in range(ROUND_TRIPS):
        t = time.perf_counter()
        sock.send(b"x")
        sock.recv()
        latencies.append((time.perf_counter() - t) * 1e6)
    bulk = bytearray(BULK_MB * 1_000_000)
    rates = []
    for _ in range(5):
        t = time.perf_counter()
        sock.send(bulk, copy=False)
        sock.recv(copy=False)
        rates.append(2 * BULK_MB / (time.perf_counter() - t))
    sock.send(b"stop")
    return statistics.median(latencies), statistics.median(rates)


def run(transport: str, via_proxy: bool, tmp: str) -> tuple[float, float]:
    def endpoint(name: str) -> str:
        return f"ipc://{tmp}/{name}" if transport == "ipc" else f"tcp://127.0.0.1:{free_port()}"
    children = []
    sock = zmq.Context.instance().socket(zmq.DEALER)
    if via_proxy:
        front, back = endpoint("front"), endpoint("back")
        children.append(mp.Process(target=relay, args=(front, back), daemon=True))
        children.append(mp.Process(target=echo, args=(back, False), daemon=True))
        target = front
    else:
        target = endpoint("direct")
        children.append(mp.Process(target=echo, args=(target, True), daemon=True))
    for child in children:
        child.start()
    time.sleep(0.3)    # let the children bind before we connect
    sock.connect(target)
    try:
        return measure(sock)
    finally:
        sock.close(linger=0)
        for child in children:        # ours, by handle: the relay never returns by itself
            child.join(2)
            if child.is_alive():
                child.kill()
                child.join()


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    figures = {}
    with tempfile.TemporaryDirectory() as tmp:
        for transport in ("tcp", "ipc"):
            for via_proxy in (False, True):
                name = f"{transport} {'proxy' if via_proxy else 'direct'}"
                figures[name] = run(transport, via_proxy, tmp)
    if "--json" in sys.argv:
        print(json.dumps({k: {"roundtrip_us": v[0], "mb_per_s": v[1]} for k, v in figures.items()}))
    else:
        for name, (us, mbs) in figures.items():
            print(f"{name:11s} no-op round trip {us:7.1f} us   "
                  f"{BULK_MB} MB there and back {mbs:7.0f} MB/s")


if __name__ == "__main__":
    main()
