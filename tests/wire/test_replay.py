"""A captured session replayed against a real broker: nothing runs again, nobody gets a
result. A proxy between a real Client and a real broker records every message the client
sends; the recorded hello and submit are then sent again verbatim, without the key, from a
new socket and on the recorded session's own socket."""

import threading
import time

import msgpack
import pytest
import zmq

from nbcluster import AuthenticationError
from nbcluster.client.client import Client
from nbcluster.testing import throwaway_cluster
from nbcluster.wire import freshness

pytestmark = pytest.mark.timeout(120)
WAIT_S = 60


class RecordingProxy:
    """A ROUTER the client connects to, forwarding each message to the broker on one DEALER
    (so the broker sees one session) and back; it records what the client sent, and sends
    what a test hands it on that same DEALER (`inject`), in order with the client's."""

    def __init__(self, broker_endpoint: str):
        self.ctx = zmq.Context()
        self.front = self.ctx.socket(zmq.ROUTER)
        self.front.setsockopt(zmq.LINGER, 0)
        port = self.front.bind_to_random_port("tcp://127.0.0.1")
        self.endpoint = f"tcp://127.0.0.1:{port}"
        self.back = self.ctx.socket(zmq.DEALER)
        self.back.setsockopt(zmq.LINGER, 0)
        self.back.connect(broker_endpoint)
        self.recorded: list[list[bytes]] = []
        self._inject: list[list[bytes]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        poller = zmq.Poller()
        poller.register(self.front, zmq.POLLIN)
        poller.register(self.back, zmq.POLLIN)
        client = None
        while not self._stop.is_set():
            events = dict(poller.poll(20))
            with self._lock:
                injected, self._inject = self._inject, []
            for frames in injected:
                self.back.send_multipart(frames)
            if self.front in events:
                client, *frames = self.front.recv_multipart()
                with self._lock:
                    self.recorded.append(frames)
                self.back.send_multipart(frames)
            if self.back in events:
                frames = self.back.recv_multipart()
                if client is not None:
                    self.front.send_multipart([client, *frames])

    def inject(self, frames):
        with self._lock:
            self._inject.append(frames)

    def first(self, kind: str) -> list[bytes]:
        """The first recorded message of this type, as it was on the wire."""
        with self._lock:
            return next(f for f in self.recorded if msgpack.unpackb(f[2])["t"] == kind)

    def close(self):
        self._stop.set()
        self._thread.join(10)
        self.front.close()
        self.back.close()
        self.ctx.term()


def mark(path):
    with open(path, "a") as f:
        f.write("ran\n")
    return "ran"


def runs_of(path):
    return path.read_text().count("ran\n") if path.exists() else 0


def test_a_recorded_hello_and_submit_sent_again_run_nothing(tmp_path):
    marker = tmp_path / "marker"
    with throwaway_cluster(1) as cluster:
        proxy = RecordingProxy(cluster.endpoint)
        ctx = zmq.Context()
        replayer = ctx.socket(zmq.DEALER)
        replayer.setsockopt(zmq.LINGER, 0)
        client = None
        try:
            client = Client(proxy.endpoint, cluster.key, remember=False, timeout=WAIT_S)
            assert client.submit(mark, str(marker)).result(WAIT_S) == "ran"
            hello, submit = proxy.first("hello"), proxy.first("submit")
            clients = client.status()["clients"]

            # From a new socket, without the key: the hello is refused (seen before), so
            # the submit comes from a stranger, whom the broker only asks to say hello.
            replayer.connect(cluster.endpoint)
            replayer.send_multipart(hello)
            replayer.send_multipart(submit)
            assert replayer.poll(WAIT_S * 1000), "no answer to the replayed messages"
            first = msgpack.unpackb(replayer.recv_multipart()[2])
            assert first["t"] == "reconnect", f"the replayed hello was taken: {first}"

            # On the recorded session's own socket: refused too (hello seen, seq not above
            # the last). A new task sent after them on that socket is served, so the broker
            # has read them by then.
            proxy.inject(hello)
            proxy.inject(submit)
            assert client.submit(mark, str(marker)).result(WAIT_S) == "ran"
            assert runs_of(marker) == 2, "a replayed task ran again"
            assert client.stats["unexpected_results"] == 0
            assert client.status()["clients"] == clients   # the replayer is no client
        finally:
            if client is not None:
                client.close()
            proxy.close()
            replayer.close()
            ctx.term()


def test_a_client_whose_clock_is_far_off_is_told_so(shared_cluster, monkeypatch):
    """Its hello is outside the broker's window: the connect fails at once, saying why,
    instead of waiting out its timeout for a welcome that never comes."""
    monkeypatch.setattr(freshness, "wall_ms", lambda: int(time.time() * 1000) - 3_600_000)
    with pytest.raises(AuthenticationError, match="clock"):
        Client(shared_cluster.endpoint, shared_cluster.key, remember=False, timeout=WAIT_S)
