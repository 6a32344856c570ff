"""Hosts for tests: Linux network namespaces joined by veth pairs, with addresses we choose.

    root namespace (pytest, clients) ── 10.N.0.1 ═ 10.N.0.2 ── "broker" namespace
                                                   10.N.1.1 ═ 10.N.1.2 ── "host1"
                                                   10.N.2.1 ═ 10.N.2.2 ── "host2"

The broker namespace forwards between its links, so the root namespace reaches the hosts.

Traffic stays on these links and loopback. Needs root and `ip`; `skip_reason()` says why not.
Every process started here is stopped by its pid, and the namespaces are deleted, on close.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import sys


def skip_reason() -> str | None:
    if sys.platform != "linux":
        return "network namespaces are Linux only"
    if os.geteuid() != 0:
        return "network namespaces need root (.ci/run runs as root)"
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is missing"
    probe = f"nbc-probe-{os.getpid()}"
    if subprocess.run(["ip", "netns", "add", probe], capture_output=True).returncode != 0:
        return "`ip netns add` is not permitted here"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def sh(*args: str, ns: str | None = None) -> str:
    cmd = (["ip", "netns", "exec", ns] if ns else []) + list(args)
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {done.stderr.strip()}")
    return done.stdout


def _claim_net() -> tuple[int, socket.socket]:
    """A 10.N.0.0/16 block no other test (in any process) is using: N, and the socket that
    holds the claim. The claim is a Unix socket bound in Linux's abstract namespace: only
    one process can bind a name, the kernel frees it when the socket closes or its process
    dies, and it leaves no file behind (flock files in /tmp did)."""
    for net in random.sample(range(200, 250), 50):
        claim = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            claim.bind(f"\0nbcluster-test-netns-{net}")
            return net, claim
        except OSError:
            claim.close()
    raise RuntimeError("all 50 address blocks for test namespaces are in use")


class Hosts:
    """A broker namespace and two worker namespaces, linked to it (see the module doc)."""

    def __init__(self) -> None:
        self.net, self._net_lock = _claim_net()
        # Names from the claimed block: no other test can hold the same ones meanwhile, and
        # what a killed run left under them is ours to remove (its lock died with it).
        tag = f"t{self.net}"
        self.ns = {name: f"nbc{tag}{name[0]}{name[-1]}" for name in ("broker", "host1", "host2")}
        self.procs: list[subprocess.Popen] = []
        self.links = {"root": f"nbc{tag}r", "host1": f"nbc{tag}b1", "host2": f"nbc{tag}b2"}
        self._remove_leftovers()
        try:
            for ns in self.ns.values():
                sh("ip", "netns", "add", ns)
                sh("ip", "link", "set", "lo", "up", ns=ns)
            b = self.ns["broker"]
            self._link(self.links["root"], None, f"10.{self.net}.0.1", f"nbc{tag}rb", b,
                       f"10.{self.net}.0.2")
            for i, host in ((1, "host1"), (2, "host2")):
                self._link(self.links[host], b, f"10.{self.net}.{i}.1", f"nbc{tag}h{i}",
                           self.ns[host], f"10.{self.net}.{i}.2")
                sh("ip", "route", "add", "default", "via", f"10.{self.net}.{i}.1",
                   ns=self.ns[host])
                # the root namespace reaches the hosts through the broker's (SSH, tests)
                sh("ip", "route", "add", f"10.{self.net}.{i}.0/24", "via", f"10.{self.net}.0.2")
            sh("sysctl", "-qw", "net.ipv4.ip_forward=1", ns=b)
        except BaseException:
            self.close()
            raise

    def _link(self, a: str, ns_a: str | None, ip_a: str, b: str, ns_b: str, ip_b: str) -> None:
        sh("ip", "link", "add", a, "type", "veth", "peer", "name", b)
        for name, ns, ip in ((a, ns_a, ip_a), (b, ns_b, ip_b)):
            if ns:
                sh("ip", "link", "set", name, "netns", ns)
            sh("ip", "addr", "add", f"{ip}/24", "dev", name, ns=ns)
            sh("ip", "link", "set", name, "up", ns=ns)

    def address(self, name: str) -> str:
        """The address by which `name` is reached from its neighbours (the broker: from the
        root namespace)."""
        return {"broker": f"10.{self.net}.0.2", "host1": f"10.{self.net}.1.2",
                "host2": f"10.{self.net}.2.2"}[name]

    def broker_address_for(self, host: str) -> str:
        """The broker's address on the link to host."""
        return f"10.{self.net}.{1 if host == 'host1' else 2}.1"

    def spawn(self, name: str, args: list[str], **kw) -> subprocess.Popen:
        """Start a process in namespace `name` (`ip netns exec` replaces itself with it)."""
        proc = subprocess.Popen(["ip", "netns", "exec", self.ns[name], *args],
                                start_new_session=True, **kw)
        self.procs.append(proc)
        return proc

    def kill_host(self, name: str) -> list[int]:
        """SIGKILL every process we started in that namespace (the host "dies")."""
        pids = {int(p) for p in sh("ip", "netns", "pids", self.ns[name]).split()}
        ours = [p for p in self.procs if p.pid in pids]
        for p in ours:
            p.kill()
        for p in ours:
            p.wait()
        return [p.pid for p in ours]

    def set_link(self, host: str, up: bool) -> None:
        """Cut (or restore) the link between the broker and host."""
        sh("ip", "link", "set", self.links[host], "up" if up else "down", ns=self.ns["broker"])

    def _remove_leftovers(self) -> None:
        """Namespaces and the root link of a killed run that held this block."""
        for ns in self.ns.values():
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        subprocess.run(["ip", "link", "del", self.links["root"]], capture_output=True)
        for i in (1, 2):
            subprocess.run(["ip", "route", "del", f"10.{self.net}.{i}.0/24"], capture_output=True)

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)   # its own session: it and its children
        for p in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(10)
        self._remove_leftovers()
        self._net_lock.close()   # the 10.N.0.0/16 block is free again
