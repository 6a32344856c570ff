"""The broker process: a ZeroMQ ROUTER loop around `BrokerState`.

    client (DEALER) ─ submit/cancel/query ─►┐               ┌─ ready n/done/output ─ worker (DEALER)
                   ◄─ results/output/reply ─┤ ROUTER socket ├─ run / cancel ───────►
                                            └───────────────┘
                     every frame checked by `protocol.decode`; bookkeeping in `BrokerState`

One thread. Each received message is checked (version, size, signature, header) and handed
to the state machine; what it returns is signed and sent. Payload frames travel as received
(zero-copy), and a single large task or result is re-signed without reading its payload
again. A message that fails the check is dropped with one log line; a peer whose signature
is wrong gets the fixed DENIED reply (at most once a second) so a client with the wrong key
fails fast instead of hanging, and its messages are dropped unread for a while (`gate`: a
peer without the key costs us little). Nothing a peer sends can stop the loop.

A peer whose connection closed (its process died, or libzmq's pings found it frozen or cut
off) is `gone` as soon as a send to it fails (`router`): a dead client's tasks stop within a
heartbeat, while a client whose kernel holds the GIL keeps its connection, and its tasks.
"""

from __future__ import annotations

import logging
import os
import select
import socket
import sys
import time
import traceback

import zmq

from ..errors import NBClusterError, ProtocolError
from ..wire import protocol
from ..wire.curve import CurveKeys, is_loopback, read_server_keys, serve
from ..wire.transport import pending_messages
from . import memory
from . import router as routing
from .gate import Gate
from .records import Send
from .state import CLIENT_EXPIRY_MS, BrokerState

__all__ = ["Broker", "main"]

log = logging.getLogger("nbcluster.broker")
MAX_LOG_LINES_PER_S = 20
SHUTDOWN_GRACE_MS = 30_000   # asked to stop, the broker waits this long for workers to leave
UNREAD_REPORT_MS = 10_000    # how often the count of messages dropped unread is logged
DRAIN_BUDGET_MS = 50         # messages are read this long at most between ticks (see _drain)


def _now_ms() -> int:
    return int(time.monotonic() * 1000)


class Broker:
    """A broker bound to `endpoints`, serving until `stop()` or until its parent goes away.

    Args:
        endpoints: ZeroMQ endpoints to bind, e.g. ``["ipc:///tmp/x/broker", "tcp://127.0.0.1:0"]``.
        key: the cluster key; every message must be signed with it.
        max_message_bytes: larger messages are refused (by libzmq per frame, and here in total).
        curve: (the cluster's CurveKeys, the server's secret key): serve CURVE only, and
            admit only the cluster's client key.
        insecure: allow endpoints beyond loopback without curve (a warning is logged).

    Raises:
        NBClusterError: an endpoint beyond loopback without curve and not insecure.
    """

    def __init__(self, endpoints: list[str], key: bytes, *, max_message_bytes: int =
                 protocol.DEFAULT_MAX_MESSAGE_BYTES, heartbeat_ms: int = 1000, liveness: int = 3,
                 max_lost: int = 3, client_expiry_ms: int = CLIENT_EXPIRY_MS,
                 curve: tuple[CurveKeys, bytes] | None = None, insecure: bool = False):
        exposed = [ep for ep in endpoints if not is_loopback(ep)]
        if exposed and curve is None:
            if not insecure:
                raise NBClusterError(
                    f"refusing to listen on {', '.join(exposed)} without encryption: anyone "
                    "who can reach it could watch the traffic (the cluster key stops them "
                    "running code, not reading it); give the broker Curve keys (nbcluster "
                    "start/broker do when --ip is not loopback), or pass --insecure")
            log.warning("listening on %s WITHOUT encryption (--insecure): messages are signed "
                        "but readable by anyone on the network", ", ".join(exposed))
        self.signer = protocol.Signer(key)
        self.max_message_bytes = max_message_bytes
        self.state = BrokerState(heartbeat_ms, liveness, max_lost,
                                 client_expiry_ms=client_expiry_ms, housekeep=memory.housekeep,
                                 info={"host": socket.gethostname(), "pid": os.getpid(),
                                       "version": protocol.VERSION,
                                       "max_message_bytes": max_message_bytes})
        self.ctx = zmq.Context(io_threads=1)
        self.router = routing.open_router(self.ctx, max_message_bytes)
        self.auth = None
        if curve is not None:
            keys, server_secret = curve
            self.auth = serve(self.ctx, self.router, keys.server_public, server_secret,
                              keys.client_public)
        self.endpoints = []
        for ep in endpoints:
            self.router.bind(ep)
            self.endpoints.append(self.router.getsockopt_string(zmq.LAST_ENDPOINT))
        self._stopping = False
        self._denied_at: dict[bytes, int] = {}
        self._log_budget = (0, 0)
        self.gate = Gate()
        self._unread_reported = _now_ms()

    def serve(self, watch_fd: int | None = None) -> None:
        """Run until stop(); with watch_fd, also until that fd reaches EOF (parent gone)."""
        poller = zmq.Poller()
        poller.register(self.router, zmq.POLLIN)
        if watch_fd is not None:
            poller.register(watch_fd, zmq.POLLIN)
        try:
            shutdown_deadline = None
            while not self._stopping:
                now = _now_ms()
                if self.state.shutdown_requested:   # once the workers are gone (or 30 s)
                    shutdown_deadline = shutdown_deadline or now + SHUTDOWN_GRACE_MS
                    if not self.state.workers or now > shutdown_deadline:
                        log.info("stopping: asked to by a client")
                        return
                if now >= self.state.next_deadline():   # heartbeats out, silent peers expire
                    self._drain()   # what peers sent is read before their silence is judged
                    self._tick()
                    self._report_unread(now)
                timeout = max(0, self.state.next_deadline() - now)
                events = dict(poller.poll(timeout))
                if watch_fd is not None and watch_fd in events and not _fd_alive(watch_fd):
                    log.debug("parent went away: stopping")
                    return
                if self.router in events:
                    self._drain()
        finally:
            self.close()

    def _drain(self) -> None:
        """Handle what peers sent, for DRAIN_BUDGET_MS at most: then the loop ticks (our
        heartbeats go out) before it reads on. A backlog of big submits (a million tasks
        queued) takes seconds to read: read in one go, it would make the broker look dead to
        every worker, which would all register again."""
        # Hellos carry their peer's wall clock; the state machine's is its clock plus this.
        self.state.wall_offset_ms = int(time.time() * 1000) - _now_ms()
        deadline = _now_ms() + DRAIN_BUDGET_MS
        for frames in pending_messages(self.router):
            self._handle(frames)
            if _now_ms() >= deadline:
                return

    def _handle(self, frames: list[zmq.Frame]) -> None:
        identity, body = frames[0].bytes, frames[1:]
        if self._unread(identity, body):
            return
        try:
            header, payload, mac = protocol.decode(self.signer, body, self.max_message_bytes,
                                                   keep_mac=True)
            out = self.state.handle(identity, header, payload, mac, _now_ms())
        except ProtocolError as e:
            self._log(f"dropped a message from peer {identity.hex()}: {e}")
            if "signature" in str(e):
                self.gate.bad_signature(identity, _now_ms())
                self._deny(identity)
            elif "oversized message" in str(e):
                self._deny(identity, protocol.TOO_BIG)
            return
        except Exception:  # a bug of ours must not take the cluster down
            log.exception("internal error handling a message from %s", identity.hex())
            return
        self._send(out)

    def _tick(self) -> None:
        try:
            out = self.state.tick(_now_ms())
        except Exception:  # noqa: BLE001 - a bug of ours must not take the cluster down
            self._log(f"internal error in a tick:\n{traceback.format_exc()}")
            return
        self._send(out)

    def _unread(self, identity: bytes, body: list[zmq.Frame]) -> bool:
        """Drop the message unread? (See `gate`: garbage must cost us little.)"""
        if self.gate.ignores(identity, _now_ms()):
            self._deny(identity)
            return True
        state = self.state
        if identity in state.clients or identity in state.worker_by_identity or \
                identity in state.supervisors.by_identity:
            return False   # a registered peer's message: decode checks its size
        nbytes = sum(len(f) for f in body)   # (summed only for strangers: not per task)
        # over the limit: TOO_BIG from decode, which does not read it
        return nbytes <= self.max_message_bytes and self.gate.too_big_for_a_stranger(nbytes)

    def _report_unread(self, now: int) -> None:
        """One line every UNREAD_REPORT_MS at most for the messages the gate dropped."""
        if self.gate.dropped and now >= self._unread_reported + UNREAD_REPORT_MS:
            n = self.gate.dropped
            log.warning("dropped %d message%s unread in the last %d s: from peers that sent a "
                        "bad signature (wrong key, or not an nbcluster peer), or too big for "
                        "a peer that has not said hello", n, "" if n == 1 else "s",
                        (now - self._unread_reported) // 1000)
            self.gate.dropped, self._unread_reported = 0, now

    def _send(self, sends: list[Send]) -> None:
        """Send; a peer with no connection any more is gone (and what that causes is sent)."""
        while sends:
            gone = routing.send_all(self.router, self.signer, sends, self._log)
            for identity in gone:
                c = self.state.clients.get(identity)
                if c is not None:
                    log.info("client %s (pid %s on %s) went away: its connection closed, so "
                             "its %d tasks are dropped", identity.hex(), c.pid, c.host,
                             len(c.tasks))
            sends = self.state.gone(gone) if gone else []

    def _deny(self, identity: bytes, reply: list[bytes] = protocol.DENIED) -> None:
        """Send a fixed, unsigned reply (DENIED, TOO_BIG), at most once a second per peer."""
        now = _now_ms()
        if now - self._denied_at.get(identity, -10_000) >= 1000:
            if len(self._denied_at) > 10_000:
                self._denied_at.clear()
            self._denied_at[identity] = now
            routing.send_raw(self.router, identity, reply)

    def _log(self, line: str) -> None:
        second, count = self._log_budget
        now = int(time.monotonic())
        if now != second:
            second, count = now, 0
        if count < MAX_LOG_LINES_PER_S:
            log.warning(line)
        self._log_budget = (second, count + 1)

    def stop(self) -> None:
        self._stopping = True

    def close(self) -> None:
        self.router.close(linger=0)
        if self.auth is not None:
            self.auth.stop()
        self.ctx.term()


def _fd_alive(fd: int) -> bool:
    """False once the pipe at fd is closed by its writer (our parent died or let us go)."""
    try:
        return bool(os.read(fd, 4096)) if select.select([fd], [], [], 0)[0] else True
    except OSError:
        return False


def main(argv: list[str] | None = None) -> None:
    """`python -m nbcluster.broker`: used by LocalCluster and `nbcluster broker`."""
    import argparse

    from ..wire.connection import ConnectionInfo, advertised, key_from_env

    p = argparse.ArgumentParser(
        prog="nbcluster broker", epilog="example: NBCLUSTER_KEY=<64 hex digits> nbcluster broker "
        "--bind tcp://0.0.0.0:5555 --connection-file cluster.json  (CurveZMQ on: not loopback)")
    p.add_argument("--bind", action="append", required=True, help="endpoint to bind (repeat)")
    p.add_argument("--connection-file", help="write the connection file here once bound")
    p.add_argument("--watch-stdin", action="store_true", help="exit when stdin closes")
    p.add_argument("--heartbeat-ms", type=int, default=1000)
    p.add_argument("--liveness", type=int, default=3)
    p.add_argument("--max-lost", type=int, default=3)
    p.add_argument("--client-expiry-ms", type=int, default=CLIENT_EXPIRY_MS,
                   help="forget a client silent this long though its connection is up (its "
                   "tasks are dropped); a client whose connection closes is dropped at once")
    p.add_argument("--max-message-bytes", type=int, default=protocol.DEFAULT_MAX_MESSAGE_BYTES)
    p.add_argument("--insecure", action="store_true",
                   help="listen beyond loopback without encryption (not recommended)")
    p.add_argument("--curve-keys-on-stdin", action="store_true",
                   help="serve the Curve keys of a JSON line read from stdin (how a restarted "
                   "broker keeps its keys: see nbcluster.broker_process)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="nbcluster broker %(asctime)s %(levelname)s %(message)s")
    key = key_from_env()
    memory.map_big_buffers_alone()   # memory of big messages, floods included, goes back
    curve = None
    try:
        if args.curve_keys_on_stdin:   # from our keeper, which restarts us with the same ones
            curve = read_server_keys(0)
        elif not args.insecure and not all(is_loopback(ep) for ep in args.bind):
            curve = CurveKeys.generate()   # the server's secret key stays in this process
        broker = Broker(args.bind, key, max_message_bytes=args.max_message_bytes,
                        heartbeat_ms=args.heartbeat_ms, liveness=args.liveness,
                        max_lost=args.max_lost, client_expiry_ms=args.client_expiry_ms,
                        curve=curve, insecure=args.insecure)
    except (NBClusterError, zmq.ZMQError) as e:
        print(f"nbcluster broker: {e}", file=sys.stderr)
        sys.exit(2)
    if args.connection_file:
        ConnectionInfo(endpoints=advertised(broker.endpoints), key=key,
                       curve=curve[0] if curve else None).write(args.connection_file)
    print("ready", " ".join(broker.endpoints), flush=True)
    memory.limit_collections()   # no full GC of a million queued tasks in one go (the process's)
    broker.serve(watch_fd=0 if args.watch_stdin else None)
