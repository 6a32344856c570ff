"""Who gets in across machines: with Curve on, a peer without the cluster's Curve key pair
(a NULL-mechanism peer holding the right HMAC key, a Curve peer with the wrong key pair),
and bytes captured from a real session and replayed, never run code; a packet capture shows
none of a task's payload, while the same capture of an --insecure cluster does (so the
capture would catch it)."""

import contextlib
import os
import shutil
import socket
import subprocess
import threading
import time

import pytest
import zmq

from nbcluster import Client, NBClusterError
from nbcluster.wire.curve import CurveKeys

from ..support.netns import skip_reason
from ..support.netns_cluster import PORT, Cluster, wait_workers

pytestmark = [pytest.mark.timeout(120)]

if skip_reason() and not os.environ.get("NBCLUSTER_REQUIRE_NETNS"):
    pytest.skip(skip_reason(), allow_module_level=True)

MARKER = "NBCLUSTER-PAYLOAD-MARKER-7f3a9c"


def append_line(path: str) -> int:
    with open(path, "a") as f:
        f.write("ran\n")
    return 1


def lines(path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def test_peers_without_the_curve_key_pair_cannot_run_code(hosts, tmp_path):
    cluster = Cluster(hosts, tmp_path)
    url = f"tcp://{hosts.address('broker')}:{PORT}"
    with cluster.client() as good:
        wait_workers(good, 2)
        # the right HMAC key, but the NULL mechanism: the Curve handshake never completes
        with pytest.raises(NBClusterError, match="no nbcluster broker answered"):
            Client(url, cluster.key, timeout=2)
        # Curve with the broker's public key but a key pair of its own: ZAP says no
        wrong, _ = CurveKeys.generate()
        impostor = CurveKeys(cluster.info.curve.server_public, wrong.client_public,
                             wrong.client_secret)
        with pytest.raises(NBClusterError, match="no nbcluster broker answered"):
            Client(url, cluster.key, timeout=2, curve=impostor)
        # a raw NULL socket writing a signed task frame gets nothing back either
        ctx = zmq.Context()
        raw = ctx.socket(zmq.DEALER)
        raw.linger = 0
        raw.connect(url)
        raw.send_multipart([b"\x01", b"junk"])
        assert raw.poll(1000) == 0
        ctx.destroy(linger=0)
        assert good.submit(abs, -3).result(60) == 3       # the cluster itself is fine


class RecordingProxy:
    """TCP proxy on loopback that forwards to the broker and records what the client sent."""

    def __init__(self, target: tuple[str, int]):
        self.target, self.sent = target, bytearray()
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        conn, _ = self.server.accept()
        upstream = socket.create_connection(self.target)
        threading.Thread(target=self._pump, args=(conn, upstream, True), daemon=True).start()
        self._pump(upstream, conn, False)

    def _pump(self, src, dst, record: bool) -> None:
        try:
            while data := src.recv(65536):
                if record:
                    self.sent += data
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)


def test_a_replayed_session_runs_nothing(hosts, tmp_path):
    cluster = Cluster(hosts, tmp_path)
    marker_file = tmp_path / "ran.txt"
    proxy = RecordingProxy((hosts.address("broker"), PORT))
    with Client(f"tcp://127.0.0.1:{proxy.port}", cluster.key, curve=cluster.info.curve) as c:
        wait_workers(c, 2)
        assert c.submit(append_line, str(marker_file)).result(20) == 1
    assert lines(marker_file) == 1 and len(proxy.sent) > 1000
    with socket.create_connection((hosts.address("broker"), PORT)) as replay:
        replay.sendall(bytes(proxy.sent))                 # the captured session, byte for byte
        time.sleep(2.0)
    assert lines(marker_file) == 1                        # nothing ran again


@pytest.mark.skipif(shutil.which("tcpdump") is None and not os.environ.get(
    "NBCLUSTER_REQUIRE_NETNS"), reason="tcpdump is not installed (.ci/run installs it)")
@pytest.mark.parametrize("insecure", [False, True], ids=["curve", "insecure-control"])
def test_a_packet_capture_shows_no_payload(hosts, tmp_path, insecure):
    cluster = Cluster(hosts, tmp_path, insecure=insecure)
    pcap = tmp_path / "capture.pcap"
    dump = subprocess.Popen(["tcpdump", "-i", hosts.links["root"], "-w", str(pcap), "-U",
                             "--immediate-mode",
                             "tcp", "port", str(PORT)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        assert b"listening" in dump.stderr.readline()
        with cluster.client() as client:
            wait_workers(client, 2)
            assert client.submit(len, MARKER * 10).result(20) == len(MARKER) * 10
        time.sleep(1.0)   # let tcpdump write what it saw
    finally:
        dump.terminate()
        dump.wait(10)
    captured = pcap.read_bytes()
    assert len(captured) > 2000                           # the session was captured
    assert (MARKER.encode() in captured) == insecure
