"""The SSH launcher for real: an sshd (Debian's openssh-server) in each host namespace, with
a host key and an authorized key made here; the broker in the root namespace listening
beyond loopback (Curve on)."""

import os
import shutil
import subprocess
import sys
import time

import pytest

from nbcluster import NBClusterError
from nbcluster.cluster.launchers import SSHCluster, SSHWorkers

from ..support import ROOT
from ..support.netns import Hosts, sh, skip_reason

pytestmark = [pytest.mark.timeout(120)]

SSHD = "/usr/sbin/sshd"
if (skip_reason() or not os.path.exists(SSHD)) and not os.environ.get("NBCLUSTER_REQUIRE_NETNS"):
    pytest.skip(skip_reason() or f"{SSHD} is not installed (apt-get install openssh-server)",
                allow_module_level=True)


@pytest.fixture
def ssh_hosts(tmp_path):
    hosts = Hosts()
    try:
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f",
                        str(tmp_path / "hostkey")], check=True)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f",
                        str(tmp_path / "id")], check=True)
        shutil.copy(tmp_path / "id.pub", tmp_path / "authorized_keys")
        os.makedirs("/run/sshd", exist_ok=True)   # sshd's privilege separation directory
        for name in ("host1", "host2"):
            config = tmp_path / f"sshd_{name}"
            config.write_text("\n".join([
                "Port 22", f"ListenAddress {hosts.address(name)}",
                f"HostKey {tmp_path / 'hostkey'}", f"PidFile {tmp_path / f'{name}.pid'}",
                f"AuthorizedKeysFile {tmp_path / 'authorized_keys'}",
                "PermitRootLogin prohibit-password", "PasswordAuthentication no",
                "KbdInteractiveAuthentication no", "UsePAM no", "StrictModes no", ""]))
            hosts.spawn(name, [SSHD, "-D", "-e", "-f", str(config)],
                        stderr=open(tmp_path / f"{name}.log", "w"))  # noqa: SIM115 - sshd's, for its life
        options = ["-i", str(tmp_path / "id"), "-o", f"UserKnownHostsFile={tmp_path / 'known'}",
                   "-o", "StrictHostKeyChecking=accept-new", "-o", "LogLevel=ERROR"]
        deadline = time.monotonic() + 20
        for name in ("host1", "host2"):   # until each sshd answers
            while subprocess.run(["ssh", *options, "-o", "BatchMode=yes",
                                  f"root@{hosts.address(name)}", "true"],
                                 capture_output=True).returncode != 0:
                assert time.monotonic() < deadline, (tmp_path / f"{name}.log").read_text()
                time.sleep(0.2)
        yield hosts, options
    finally:
        hosts.close()


def workers_in(hosts: Hosts, name: str) -> int:
    """Python processes (our workers) in a host namespace."""
    pids = sh("ip", "netns", "pids", hosts.ns[name]).split()
    return sum(1 for p in pids if "nbcluster" in open(f"/proc/{p}/cmdline").read())


def test_workers_over_ssh_run_tasks_and_stop_with_the_cluster(ssh_hosts):
    hosts, options = ssh_hosts
    destinations = [f"root@{hosts.address('host1')}", f"root@{hosts.address('host2')}"]
    with SSHCluster(destinations, n_per_host=2, python=sys.executable,
                    ssh_options=options) as cluster:
        assert cluster.info.curve is not None
        client = cluster.client()
        assert len(client.workers()) == 4
        def where_am_i(_):   # defined here: pickled by value (no `tests` on the hosts)
            from nbcluster.wire.connection import host_addresses
            return host_addresses()[0]
        seen = set(client.map(where_am_i, range(40), chunksize=1))
        assert seen == {hosts.address("host1"), hosts.address("host2")}
        assert workers_in(hosts, "host1") >= 2
    deadline = time.monotonic() + 15
    while workers_in(hosts, "host1") or workers_in(hosts, "host2"):
        assert time.monotonic() < deadline, "remote workers outlived the cluster"
        time.sleep(0.2)


def test_an_unreachable_host_is_reported_not_waited_on(ssh_hosts):
    hosts, options = ssh_hosts
    with SSHCluster([f"root@{hosts.address('host1')}"], python=sys.executable,
                    ssh_options=options) as cluster:
        nowhere = hosts.address("broker")   # reachable, but no sshd listens there
        t0 = time.monotonic()
        with pytest.raises(NBClusterError) as info:
            SSHWorkers([f"root@{nowhere}"], cluster.info, python=sys.executable,
                       ssh_options=options)
        assert time.monotonic() - t0 < 15
        assert nowhere in str(info.value) and "refused" in str(info.value).lower()
        assert len(cluster.client().workers()) == 1   # the good host is unaffected


def test_the_ssh_command_adds_workers_to_a_running_cluster(ssh_hosts, tmp_path):
    from nbcluster import LocalCluster
    hosts, options = ssh_hosts
    with LocalCluster(0, ip="0.0.0.0", connection_file=tmp_path / "c.json") as cluster:
        proc = subprocess.Popen([sys.executable, "-m", "nbcluster.cli", "ssh",
                                 f"root@{hosts.address('host2')}", "-n", "2", "--python",
                                 sys.executable, "--connection-file", str(tmp_path / "c.json"),
                                 *(f"--ssh-option={o}" for o in options)],
                                stdout=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
        try:
            assert "2 workers on each of" in proc.stdout.readline()
            client = cluster.client()
            assert len(client.workers()) == 2
            client.stop_workers()   # they leave; their ssh sessions end; so does the command
            assert proc.wait(20) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_ssh_workers_are_kept_by_their_hosts_supervisor(ssh_hosts, tmp_path):
    """The limits reach the remote `nbcluster worker` (the host's supervisor)."""
    from nbcluster import MemoryLimitExceeded
    hosts, options = ssh_hosts
    # ssh passes no environment: a Python that imports the nbcluster under test, not the
    # installed one
    python = tmp_path / "python"
    python.write_text(f"#!/bin/sh\nexec env PYTHONPATH={ROOT} "
                      f"{sys.executable} \"$@\"\n")
    python.chmod(0o700)
    with SSHCluster([f"root@{hosts.address('host1')}"], n_per_host=1, python=str(python),
                    ssh_options=options, max_tasks_per_child=2,
                    memory_limit="300MiB") as cluster:
        client = cluster.client()
        pids = [client.submit(os.getpid).result(60) for _ in range(4)]
        assert [pids.index(p) for p in pids] == [0, 0, 2, 2], pids

        def allocate():   # defined here: pickled by value (no `tests` on the hosts)
            chunks = []
            for _ in range(512):
                chunks.append(bytearray(8 << 20))
                time.sleep(0.005)
        with pytest.raises(MemoryLimitExceeded, match=r"memory limit 300\.0 MiB exceeded"):
            client.submit(allocate).result(60)
        assert client.submit(os.getpid).result(60) not in pids
