"""A host's supervisor across network namespaces (tests/support/netns.py): `nbcluster worker -n 2`
on another host replaces a worker that was SIGKILLed there, and the client, which did not
start it, hears how it ended."""

import os
import signal
import subprocess
import sys
import time

import pytest

from nbcluster import Client, WorkerLost
from nbcluster.testing import wait_for
from nbcluster.wire import protocol
from nbcluster.wire.connection import KEY_ENV, ConnectionInfo

from ..support.netns import skip_reason

pytestmark = [pytest.mark.timeout(120)]

if skip_reason() and not os.environ.get("NBCLUSTER_REQUIRE_NETNS"):
    pytest.skip(skip_reason(), allow_module_level=True)

PORT = 5555


def where_am_i(_=None) -> str:
    from nbcluster.wire.connection import host_addresses
    return host_addresses()[0]


def test_a_remote_worker_sigkilled_is_respawned_there_and_the_client_hears_why(hosts, tmp_path):
    key, file = protocol.new_key(), tmp_path / "cluster.json"
    broker = hosts.spawn("broker", [
        sys.executable, "-m", "nbcluster.broker", "--bind", f"tcp://0.0.0.0:{PORT}",
        "--connection-file", str(file), "--heartbeat-ms", "200", "--liveness", "3",
        "--max-lost", "0"], env={**os.environ, KEY_ENV: key.hex()}, stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL)
    assert broker.stdout.readline().startswith(b"ready")
    info = ConnectionInfo.read(file)
    supervisor = hosts.spawn("host1", [
        sys.executable, "-m", "nbcluster.cli", "worker", "-n", "2", "--connect", str(file),
        "--endpoint", f"tcp://{hosts.broker_address_for('host1')}:{PORT}", "--labels", "host1"],
        env={**os.environ}, stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with Client(f"tcp://{hosts.address('broker')}:{PORT}", key, curve=info.curve) as client:
        wait_for(lambda: len(client.workers()) == 2, timeout=60, what="2 workers on host1")
        first = {w["pid"] for w in client.workers()}
        fut = client.options(labels={"host1"}).submit(time.sleep, 60)
        [victim] = wait_for(lambda: [w for w in client.workers() if w["running"]], timeout=60,
                            what="the task running")
        os.kill(victim["pid"], signal.SIGKILL)   # (network namespaces share our pids)
        with pytest.raises(WorkerLost) as lost:
            fut.result(60)
        assert f"{victim['id']}: killed by SIGKILL" in str(lost.value), str(lost.value)
        wait_for(lambda: len(client.workers()) == 2 and
                 {w["pid"] for w in client.workers()} - first, timeout=60,
                 what="a new worker on host1 in place of the killed one")
        assert client.options(labels={"host1"}).submit(where_am_i).result(60) == \
            hosts.address("host1")
    supervisor.send_signal(signal.SIGTERM)   # its workers leave, then it exits
    assert supervisor.wait(60) == 0
