"""The worker side of keyed MapReduce: map outputs stay on the worker that made them.

    map tasks on worker A ──fold──► A's bucket of the shuffle (one dict, combined as it grows)
    reduce task p on worker B ──fetch(p)──► the buckets of A, C, ... (direct, signed messages)
                              ◄──partition p─────┘  (A partitions and pickles its bucket once)

Each worker process starts a small data server (a ROUTER socket on a thread of its own, bound
next to where it reaches the broker) the first time it keeps a map output. Fetches go
straight from worker to worker, signed with the cluster key; the client only sees where each
map output lives. A fetch names the map outputs it expects in the bucket, so a bucket that
holds others (a task that ran twice) is refused rather than counted twice. A fetch from a
worker that is gone fails fast (ZeroMQ reports the refused connection) and names the map
outputs to compute again.
"""

from __future__ import annotations

import os
import pickle
import socket
import threading
import time
import zlib
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import cloudpickle
import zmq
from zmq.utils.monitor import recv_monitor_message

from .. import runtime
from ..errors import NBClusterError, ProtocolError
from ..wire import curve, protocol, tracebacks

if TYPE_CHECKING:
    from zmq.auth.thread import ThreadAuthenticator

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
    if isinstance(key, (bool, int)):
        return int(key) & 0xFFFFFFFF
    if isinstance(key, float) and key.is_integer():   # 2.0 == 2: same key, same partition
        return int(key) & 0xFFFFFFFF
    if isinstance(key, tuple):
        h = 0x345678
        for item in key:
            h = (h * 1000003) ^ stable_hash(item)
        return h & 0xFFFFFFFF
    return zlib.crc32(repr(key).encode())


class _Bucket:
    """One worker's map output of one shuffle: every map task sent to this bucket folds its
    pairs into the same dict, so the worker partitions and pickles once, not once per task."""

    def __init__(self, partitions: int, combined: bool):
        self.partitions, self.combined = partitions, combined
        self.lock = threading.Lock()   # held while a map task folds in, and while sealing
        self.groups: dict = {}
        self.maps: set[int] = set()    # the map indices folded in
        self.parts: list[dict] | None = None   # once sealed: groups split by partition
        self.touched = time.monotonic()

    def part(self, partition: int, maps: set[int]) -> dict | None:
        """Partition p (not to be changed) if this bucket holds exactly the map outputs
        `maps`; the first call seals the bucket."""
        with self.lock:
            if self.parts is None:
                self.parts, self.groups = _partition(self.groups, self.partitions), {}
            self.touched = time.monotonic()
            return self.parts[partition] if self.maps == maps else None


class _Store:
    """This process's map outputs and the server that hands them to reduce tasks."""

    def __init__(self) -> None:
        self.buckets: dict[tuple[str, int], _Bucket] = {}
        self.lock = threading.Lock()
        self.endpoint: str | None = None
        # the ZAP authenticator of a Curve cluster's data server
        self.auth: ThreadAuthenticator | None = None

    def bucket(self, sid: str, number: int, partitions: int, combined: bool) -> _Bucket:
        now = time.monotonic()
        with self.lock:
            for k in [k for k, b in self.buckets.items() if now - b.touched > STORE_TTL_S]:
                del self.buckets[k]
            if self.endpoint is None:
                self._start_server()
            return self.buckets.setdefault((sid, number), _Bucket(partitions, combined))

    def part(self, sid: str, number: int, partition: int, maps: set[int]
             ) -> tuple[bool, dict] | None:
        """(combined, partition p of a bucket), or None if it does not hold exactly `maps`."""
        bucket = self.buckets.get((sid, number))
        if bucket is None:
            return None
        part = bucket.part(partition, maps)
        return None if part is None else (bucket.combined, part)

    def drop(self, sid: str) -> int:
        with self.lock:
            keys = [k for k in self.buckets if k[0] == sid]
            for k in keys:
                del self.buckets[k]
        return len(keys)

    def _start_server(self) -> None:
        ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
        sock = ctx.socket(zmq.ROUTER)
        sock.linger = 0
        keys = runtime.curve_keys()
        if keys is not None:   # a Curve cluster: the data server too (the members' key pair)
            self.auth = curve.serve(ctx, sock, keys.client_public, keys.client_secret,
                                    keys.client_public)
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
                sid, b, p = str(header["s"]), int(header["b"]), int(header["p"])
                maps = {int(m) for m in header["m"]}
                found = self.part(sid, b, p, maps)
            except (ProtocolError, KeyError, TypeError, ValueError, IndexError):
                continue   # unsigned or malformed: no answer
            payload = [cloudpickle.dumps(found, protocol=5)] if found is not None else []
            reply = {"t": "part", "s": sid, "b": b, "p": p, "ok": found is not None}
            sock.send_multipart([peer, *protocol.encode(signer, reply, payload)], copy=False)


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
    """Where a map task left its output: the data server's endpoint, the worker's id, the
    bucket it folded into; and the records that failed: in full as (index, repr, captured
    traceback), counted as {signature: n}, and whether it stopped at a repeated failure."""

    def __init__(self, endpoint: str, worker: str, bucket: int, errors: list,
                 counted: dict | None = None, stopped: bool = False):
        self.endpoint, self.worker, self.bucket, self.errors = endpoint, worker, bucket, errors
        self.counted, self.stopped = counted or {}, stopped


class ReduceOutcome:
    """A partition's final {key: value}, and keys whose reducer raised (in full, counted, and
    whether it stopped at a repeated failure, as in MapOutcome)."""

    def __init__(self, results: dict, errors: list, counted: dict | None = None,
                 stopped: bool = False):
        self.results, self.errors = results, errors
        self.counted, self.stopped = counted or {}, stopped


class Missing:
    """A reduce task could not fetch these map outputs: {map index: (endpoint, bucket)}."""

    def __init__(self, where: dict[int, tuple[str, int]]):
        self.where = where


class MapTask:
    """Runs the mapper over a chunk of records and folds the pairs (combined, when there is a
    combiner) into this worker's bucket of the shuffle."""

    def __init__(self, sid: str, mapper: Callable, combiner: Callable | None, partitions: int):
        self.sid, self.mapper, self.combiner, self.partitions = sid, mapper, combiner, partitions

    def __call__(self, map_index: int, bucket: int, start: int, records: list) -> MapOutcome:
        into = _store.bucket(self.sid, bucket, self.partitions, self.combiner is not None)
        failures = tracebacks.ElementFailures()
        with into.lock:
            if into.parts is not None:
                raise NBClusterError(f"map output {map_index} came after its bucket was sent")
            for pos, record in enumerate(records):
                try:
                    _fold(into.groups, self.mapper(record), self.combiner)
                except Exception as e:   # noqa: BLE001 - user code: that record's failure
                    failures.add(start + pos, record, e, skip=1)
                    if failures.should_stop:   # the job fails: the rest need not run
                        break
            into.maps.add(map_index)
        assert _store.endpoint is not None   # the bucket started the data server
        return MapOutcome(_store.endpoint, runtime.WORKER.get("id", "?"), bucket,
                          failures.detailed, failures.counted, failures.should_stop)


def _fold(groups: dict, output: Any, combine: Callable | None) -> None:
    """Folds a mapper's output ((key, value) pairs or a mapping) into groups: {key: combined
    value} with a combiner, else {key: [values]}. A plain loop with a bound dict.get beats
    set and comprehension tricks here (0.25 us a key against 0.6)."""
    items = output.items() if isinstance(output, Mapping) else output
    get = groups.get
    if combine is sum:   # the common case, without a call per key
        for k, v in items:
            groups[k] = get(k, 0) + v
    elif combine is not None:
        for k, v in items:
            groups[k] = combine([groups[k], v]) if k in groups else v
    else:
        for k, v in items:
            values = get(k)
            if values is None:
                groups[k] = [v]
            else:
                values.append(v)


def _partition(groups: dict, n: int) -> list[dict]:
    """groups split into n dicts by stable_hash of the key."""
    if n == 1:
        return [groups]
    keys = list(groups)
    try:   # str keys: hashed at C speed (the same values stable_hash gives)
        hashes = list(map(zlib.crc32, map(str.encode, keys)))
    except (TypeError, UnicodeEncodeError):
        hashes = list(map(stable_hash, keys))
    parts: list[dict] = [{} for _ in range(n)]
    for k, v, h in zip(keys, groups.values(), hashes, strict=True):   # a plain loop: 3x
        parts[h % n][k] = v                  # faster than itertools.compress per part
    return parts


class ReduceTask:
    """Fetches one partition from every bucket that holds map outputs, and reduces it."""

    def __init__(self, sid: str, reducer: Callable):
        self.sid, self.reducer = sid, reducer

    def __call__(self, partition: int, sources: list[tuple[str, int, list[int]]]
                 ) -> ReduceOutcome | Missing:
        """sources: (endpoint, bucket, the map indices it holds) for every bucket."""
        parts, missing = _fetch(self.sid, partition, sources)
        if missing:
            return Missing({m: (sources[i][0], sources[i][1]) for i in missing
                            for m in sources[i][2]})
        if self.reducer is sum and all(combined for combined, _ in parts):
            # fold into a part fetched from another worker (a private copy), else into a copy
            private = [i for i, (_, part) in enumerate(parts) if isinstance(part, dict)]
            results: dict = (parts.pop(private[0])[1] if private
                             else dict(parts.pop(0)[1]) if parts else {})
            for _, part in parts:
                _fold(results, part, sum)
            return ReduceOutcome(results, [])
        groups: dict[Any, list] = {}
        get = groups.get
        for combined, part in parts:
            for k, v in part.items():
                have = get(k)
                if have is None:
                    groups[k] = [v] if combined else list(v)
                elif combined:
                    have.append(v)
                else:
                    have.extend(v)
        results, failures = {}, tracebacks.ElementFailures()
        reducer = self.reducer
        for k, values in groups.items():
            try:
                results[k] = reducer(values)
            except Exception as e:   # noqa: BLE001 - user code: that key's failure
                failures.add(k, k, e, skip=1)
                if failures.should_stop:   # the job fails: the rest need not run
                    break
        return ReduceOutcome(results, failures.detailed, failures.counted, failures.should_stop)


def _fetch(sid: str, partition: int, sources: list[tuple[str, int, list[int]]]
           ) -> tuple[list[tuple[bool, dict]], list[int]]:
    """(combined, partition) from each source (this process's own as a read-only view), and
    the positions in sources of those that could not be fetched."""
    parts: list = []
    wanted: dict[str, dict[int, int]] = {}   # endpoint -> {bucket: position in sources}
    for i, (endpoint, bucket, maps) in enumerate(sources):
        if endpoint == _store.endpoint:
            found = _store.part(sid, bucket, partition, set(maps))
            if found is None:
                return [], [i]
            parts.append((found[0], MappingProxyType(found[1])))   # read-only: not a copy
        else:
            wanted.setdefault(endpoint, {})[bucket] = i
    if not wanted:
        return parts, []
    signer = protocol.Signer(runtime.worker_key())
    keys = runtime.curve_keys()
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
    poller = zmq.Poller()
    peers: dict[Any, tuple[str, Any]] = {}   # socket -> (endpoint, its DEALER socket)
    missing: list[int] = []
    try:
        for endpoint, buckets in wanted.items():
            sock = ctx.socket(zmq.DEALER)
            sock.linger = 0
            if keys is not None:
                keys.connect_as_client(sock, server_public=keys.client_public)
            monitor = sock.get_monitor_socket(_FAILED)
            sock.connect(endpoint)
            for bucket, i in buckets.items():
                sock.send_multipart(protocol.encode(signer, {
                    "t": "fetch", "s": sid, "b": bucket, "p": partition,
                    "m": list(sources[i][2])}))
            poller.register(sock, zmq.POLLIN)
            poller.register(monitor, zmq.POLLIN)
            peers[sock] = peers[monitor] = (endpoint, sock)
        deadline = time.monotonic() + FETCH_TIMEOUT_S
        while any(wanted.values()):
            timeout = deadline - time.monotonic()
            events = dict(poller.poll(int(max(0, timeout) * 1000))) if timeout > 0 else {}
            if not events:
                break
            for s in events:
                endpoint, sock = peers[s]
                if s is not sock:   # the monitor: the peer refused or dropped us
                    recv_monitor_message(s)
                    missing += wanted.pop(endpoint, {}).values()
                    wanted[endpoint] = {}
                    continue
                frames = sock.recv_multipart(copy=False)
                try:
                    header, payload = protocol.decode(signer, frames, max_bytes=MAX_PART_BYTES)
                except ProtocolError:
                    continue
                bucket_number = header.get("b")
                asked = wanted.get(endpoint, {})
                if not isinstance(bucket_number, int) or bucket_number not in asked:
                    continue
                position = asked.pop(bucket_number)
                if header.get("ok") and payload:
                    parts.append(pickle.loads(payload[0].buffer))
                else:
                    missing.append(position)
        for buckets in wanted.values():
            missing += buckets.values()
    finally:
        for s in peers:
            s.close(linger=0)
    return parts, sorted(set(missing))
