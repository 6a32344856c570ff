"""A cluster across network namespaces (netns.py): a broker in the broker namespace listening
beyond loopback (Curve on unless insecure), one worker in each host namespace (for
tests/test_across_hosts.py and tests/wire/test_curve_across_hosts.py)."""

import os
import subprocess
import sys
import time

from nbcluster import Client
from nbcluster.wire import protocol
from nbcluster.wire.connection import KEY_ENV, ConnectionInfo

from .netns import Hosts

PORT = 5555
HEARTBEAT = ["--heartbeat-ms", "200", "--liveness", "3"]


class Cluster:
    """A broker in hosts' broker namespace and one worker in each host namespace."""

    def __init__(self, hosts: Hosts, tmp_path, insecure: bool = False):
        self.hosts, self.key = hosts, protocol.new_key()
        self.file = tmp_path / "cluster.json"
        env = {**os.environ, KEY_ENV: self.key.hex()}
        self.broker = hosts.spawn("broker", [
            sys.executable, "-m", "nbcluster.broker", "--bind", f"tcp://0.0.0.0:{PORT}",
            "--connection-file", str(self.file), *HEARTBEAT, *(["--insecure"] if insecure else [])],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        assert self.broker.stdout.readline().startswith(b"ready")
        self.info = ConnectionInfo.read(self.file)
        self.workers = {h: self.start_worker(h) for h in ("host1", "host2")}

    def start_worker(self, host: str) -> subprocess.Popen:
        endpoint = f"tcp://{self.hosts.broker_address_for(host)}:{PORT}"
        return self.hosts.spawn(host, [
            sys.executable, "-m", "nbcluster.worker", "--connect", str(self.file),
            "--endpoint", endpoint, "--labels", host], env={**os.environ},
            stderr=subprocess.DEVNULL)

    def client(self, **kw) -> Client:
        return Client(f"tcp://{self.hosts.address('broker')}:{PORT}", self.key,
                      curve=self.info.curve, **kw)


def wait_workers(client: Client, n: int, timeout: float = 20) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        workers = client.workers()
        if len(workers) == n:
            return workers
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(workers)} workers, wanted {n}")
        time.sleep(0.05)
