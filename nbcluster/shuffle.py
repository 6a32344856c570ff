"""The worker side of keyed MapReduce: map outputs stay on the worker that made them.

    map task on worker A ──put──► A's store (partitions by key hash, pickled once)
    reduce task p on worker B ──fetch(p)──► the stores of A, C, ... (direct, signed messages)
                              ◄──partition p────────┘

Each worker process starts a small data server (a ROUTER socket on a thread of its own, bound
next to where it reaches the broker) the first time it stores a map output. Fetches go
straight from worker to worker, signed with the cluster key; the client only sees where each
map output lives. A fetch from a worker that is gone fails fast (ZeroMQ reports the refused
connection) and names the map outputs to compute again.
"""

from __future__ import annotations

import itertools
import os
import socket
import threading
import time
import zlib
from collections.abc import Mapping
from typing import Any, Callable
from urllib.parse import urlparse

import pickle

import cloudpickle
import zmq
from zmq.utils.monitor import recv_monitor_message

from . import protocol, runtime, serialize, tracebacks
from .errors import ProtocolError

__all__ = ["MapTask", "ReduceTask", "MapOutcome", "ReduceOutcome", "Missing", "stable_hash",
           "drop"]

FETCH_TIMEOUT_S = 60.0      # a peer that neither answers nor refuses is given up after this
STORE_TTL_S = 3600.0        # map outputs nobody dropped are freed after this long
MAX_PART_BYTES = 1 << 40
_FAILED = zmq.EVENT_CONNECT_RETRIED | zmq.EVENT_DISCONNECTED


def stable_hash(key: Any) -> int:
    """A hash that is the same in every process (str hashes are salted per process)."""
    if isinstance(key, str):
        return zlib.crc32(key.encode("utf-8", "surrogatepass"))
    if isinstance(key, (bytes, bytearray)):
        return zlib.crc32(key)
    if isinstance(key, bool) or isinstance(key, int):
        return int(key) & 0xFFFFFFFF
    if isinstance(key, float) and key.is_integer():   # 2.0 == 2: same key, same partition
        return int(key) & 0xFFFFFFFF
    if isinstance(key, tuple):
        h = 0x345678
        for item in key:
            h = (h * 1000003) ^ stable_hash(item)
        return h & 0xFFFFFFFF
    return zlib.crc32(repr(key).encode())


class _Store:
    """This process's map outputs and the server that hands them to reduce tasks."""

    def __init__(self) -> None:
        self.data: dict[tuple[str, int], tuple[float, list[bytes]]] = {}
        self.lock = threading.Lock()
        self.endpoint: str | None = None

    def put(self, sid: str, map_index: int, parts: list[bytes]) -> str:
        now = time.monotonic()
        with self.lock:
            for k in [k for k, (t, _) in self.data.items() if now - t > STORE_TTL_S]:
                del self.data[k]
            self.data[(sid, map_index)] = (now, parts)
            if self.endpoint is None:
                self._start_server()
        return self.endpoint

    def get(self, sid: str, map_index: int, partition: int) -> bytes | None:
        entry = self.data.get((sid, map_index))
        return entry[1][partition] if entry is not None else None

    def drop(self, sid: str) -> int:
        with self.lock:
            keys = [k for k in self.data if k[0] == sid]
            for k in keys:
                del self.data[k]
        return len(keys)

    def _start_server(self) -> None:
        ctx = zmq.Context.instance()
        sock = ctx.socket(zmq.ROUTER)
        sock.linger = 0
        sock.bind(_bind_address(runtime.broker_endpoint()))
        self.endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        signer = protocol.Signer(runtime.worker_key())
        threading.Thread(target=self._serve, args=(sock, signer), name="nbcluster-shuffle",
                         daemon=True).start()

    def _serve(self, sock: zmq.Socket, signer: protocol.Signer) -> None:
        while True:
            peer, *frames = sock.recv_multipart(copy=False)
            try:
                header, _ = protocol.decode(signer, frames)
                sid, m, p = str(header["s"]), int(header["m"]), int(header["p"])
            except (ProtocolError, KeyError, TypeError, ValueError):
                continue   # unsigned or malformed: no answer
            data = self.get(sid, m, p)
            reply = {"t": "part", "s": sid, "m": m, "p": p, "ok": data is not None}
            sock.send_multipart([peer, *protocol.encode(signer, reply,
                                                        [data] if data is not None else [])],
                                copy=False)


_store = _Store()


def _bind_address(broker: str) -> str:
    """Where to listen: next to the broker's ipc socket, or on the interface that reaches it."""
    url = urlparse(broker)
    if url.scheme == "ipc":
        return f"ipc://{os.path.dirname(url.path) or '/tmp'}/shuffle-{os.getpid()}"
    host = url.hostname or "127.0.0.1"
    if host in ("127.0.0.1", "localhost", "::1"):
        return f"tcp://{host}:*"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect((host, url.port or 1))   # no packet is sent; this picks the interface
        return f"tcp://{s.getsockname()[0]}:*"


def drop(sid: str) -> int:
    """Free this worker's map outputs of shuffle sid; returns how many there were."""
    return _store.drop(sid)


class MapOutcome:
    """Where a map task left its output: endpoint, worker id, bytes per partition; and the
    records that failed as (index, repr, captured traceback)."""

    def __init__(self, endpoint: str, worker: str, sizes: list[int], errors: list):
        self.endpoint, self.worker, self.sizes, self.errors = endpoint, worker, sizes, errors


class ReduceOutcome:
    """A partition's final {key: value}, and keys whose reducer raised."""

    def __init__(self, results: dict, errors: list):
        self.results, self.errors = results, errors


class Missing:
    """A reduce task could not fetch these map outputs: {map index: endpoint it tried}."""

    def __init__(self, where: dict[int, str]):
        self.where = where


class MapTask:
    """Runs the mapper over a chunk of records, combines, partitions and keeps the output."""

    def __init__(self, sid: str, mapper: Callable, combiner: Callable | None, partitions: int):
        self.sid, self.mapper, self.combiner, self.partitions = sid, mapper, combiner, partitions

    def __call__(self, map_index: int, start: int, records: list) -> MapOutcome:
        outputs, errors = [], []
        for pos, record in enumerate(records):
            try:
                out = self.mapper(record)
                outputs.append(out if isinstance(out, Mapping) else list(out))
            except Exception as e:
                errors.append((start + pos, serialize.describe(record), tracebacks.capture(e)))
        if self.combiner is not None and all(isinstance(o, Mapping) for o in outputs):
            groups, combined = _fold_mappings(outputs, self.combiner), True
        else:
            groups, combined = _group_pairs(outputs, self.combiner), False
        frames = [cloudpickle.dumps((combined, part), protocol=5) if part else b""
                  for part in _partition(groups, self.partitions)]
        endpoint = _store.put(self.sid, map_index, frames)
        return MapOutcome(endpoint, runtime.WORKER.get("id", "?"), [len(f) for f in frames],
                          errors)


def _group_pairs(outputs: list, combine: Callable | None) -> dict[Any, list]:
    """{key: [values]} of all (key, value) pairs (or mappings) in outputs, combined."""
    groups: dict[Any, list] = {}
    get = groups.get
    for out in outputs:
        for k, v in (out.items() if isinstance(out, Mapping) else out):
            values = get(k)
            if values is None:
                groups[k] = [v]
            else:
                values.append(v)
    if combine is not None:
        for k, values in groups.items():
            if len(values) > 1:
                groups[k] = [combine(values)]
    return groups


def _fold_mappings(outputs: list[Mapping], combine: Callable) -> dict:
    """{key: combined value} of mappings: C-level dict updates do most of the merging, which
    is several times faster than grouping pair by pair."""
    acc: dict = {}
    for out in outputs:
        common = acc.keys() & out.keys()
        if combine is sum:   # the common case, without a call per key
            merged = {k: acc[k] + out[k] for k in common}
        else:
            merged = {k: combine([acc[k], out[k]]) for k in common}
        acc.update(out)
        acc.update(merged)
    return acc


def _partition(groups: dict, n: int) -> list[dict]:
    """groups split into n dicts by stable_hash of the key."""
    if n == 1:
        return [groups]
    keys = list(groups)
    try:   # str keys: hashed at C speed (the same values stable_hash gives)
        hashes = list(map(zlib.crc32, map(str.encode, keys)))
    except (TypeError, UnicodeEncodeError):
        hashes = list(map(stable_hash, keys))
    slots = [h % n for h in hashes]
    parts = []
    for p in range(n):   # all at C speed: no Python code runs per key
        mine = list(itertools.compress(keys, map(p.__eq__, slots)))
        parts.append(dict(zip(mine, map(groups.__getitem__, mine))))
    return parts


class ReduceTask:
    """Fetches one partition from every map output that has some of it, and reduces it."""

    def __init__(self, sid: str, reducer: Callable):
        self.sid, self.reducer = sid, reducer

    def __call__(self, partition: int, sources: list[tuple[str, int]]) -> ReduceOutcome | Missing:
        blobs, missing = _fetch(self.sid, partition, sources)
        if missing:
            return Missing({m: e for e, m in sources if m in missing})
        parts = [pickle.loads(blob) for blob in blobs]
        if self.reducer is sum and all(combined for combined, _ in parts):
            # sum of one key's combined values, folded dict by dict (see _fold_mappings)
            return ReduceOutcome(_fold_mappings([part for _, part in parts], sum), [])
        groups: dict[Any, list] = {}
        get = groups.get
        for combined, part in parts:
            for k, v in part.items():
                have = get(k)
                if have is None:
                    groups[k] = [v] if combined else v
                elif combined:
                    have.append(v)
                else:
                    have.extend(v)
        results, errors = {}, []
        reducer = self.reducer
        for k, values in groups.items():
            try:
                results[k] = reducer(values)
            except Exception as e:
                errors.append((k, serialize.describe(k), tracebacks.capture(e)))
        return ReduceOutcome(results, errors)


def _fetch(sid: str, partition: int, sources: list[tuple[str, int]]) -> tuple[list, list[int]]:
    """The pickled partition from each (endpoint, map_index), and the map indices that could
    not be fetched."""
    blobs: list = []
    wanted: dict[str, set[int]] = {}
    for endpoint, m in sources:
        if endpoint == _store.endpoint:
            data = _store.get(sid, m, partition)
            if data is None:
                return [], [m]
            blobs.append(data)
        else:
            wanted.setdefault(endpoint, set()).add(m)
    if not wanted:
        return blobs, []
    signer = protocol.Signer(runtime.worker_key())
    ctx = zmq.Context.instance()
    poller = zmq.Poller()
    peers: dict[Any, tuple[str, Any]] = {}   # socket -> (endpoint, its monitor)
    missing: list[int] = []
    try:
        for endpoint, maps in wanted.items():
            sock = ctx.socket(zmq.DEALER)
            sock.linger = 0
            monitor = sock.get_monitor_socket(_FAILED)
            sock.connect(endpoint)
            for m in maps:
                sock.send_multipart(protocol.encode(
                    signer, {"t": "fetch", "s": sid, "m": m, "p": partition}))
            poller.register(sock, zmq.POLLIN)
            poller.register(monitor, zmq.POLLIN)
            peers[sock] = peers[monitor] = (endpoint, sock)
        deadline = time.monotonic() + FETCH_TIMEOUT_S
        while any(wanted.values()):
            timeout = deadline - time.monotonic()
            events = dict(poller.poll(max(0, timeout) * 1000)) if timeout > 0 else {}
            if not events:
                break
            for s in events:
                endpoint, sock = peers[s]
                if s is not sock:   # the monitor: the peer refused or dropped us
                    recv_monitor_message(s)
                    missing += wanted.pop(endpoint, ())
                    wanted[endpoint] = set()
                    continue
                frames = sock.recv_multipart(copy=False)
                try:
                    header, payload = protocol.decode(signer, frames, max_bytes=MAX_PART_BYTES)
                except ProtocolError:
                    continue
                m = header.get("m")
                if m in wanted.get(endpoint, ()):
                    wanted[endpoint].discard(m)
                    if header.get("ok") and payload:
                        blobs.append(payload[0].buffer)
                    else:
                        missing.append(m)
        for maps in wanted.values():
            missing += maps
    finally:
        for s in peers:
            s.close(linger=0)
    return blobs, sorted(set(missing))
