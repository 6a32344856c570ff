"""`nbcluster list | status | stop | doctor`: looking after a running cluster.

Each takes the cluster's connection file (default ~/.nbcluster/cluster.json); `--json` prints
what a script would parse. Exit codes: 0 fine, 1 something to report (an unknown worker,
findings of doctor), 2 no cluster reached.
"""

from __future__ import annotations

import json
import socket
import stat
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

from ..client.english import counted

__all__ = ["list_workers", "status", "stop", "doctor"]

CLOCK_SKEW_S = 2.0     # doctor reports worker clocks further off than this (plus a heartbeat)


def _connect(path: str):
    from ..client.connect import connect
    from ..errors import NBClusterError
    try:
        return connect(path, timeout=5)
    except FileNotFoundError:
        print(f"nbcluster: no connection file at {path} (start a cluster with "
              "`nbcluster start`, or pass --connection-file)", file=sys.stderr)
    except NBClusterError as e:   # gone, not a connection file, or no answer: it says which
        print(f"nbcluster: {e}", file=sys.stderr)
    except Exception as e:   # noqa: BLE001 - say it, exit 2
        print(f"nbcluster: cannot reach the cluster of {path}: {e}", file=sys.stderr)
    return None


def _status(path: str) -> dict | None:
    """The broker's status of the cluster of path, or None (said on stderr)."""
    from ..errors import NBClusterError
    client = _connect(path)
    if client is None:
        return None
    with client:
        try:
            return client.status()
        except NBClusterError as e:   # BrokerTimeout: it says which broker and how long
            print(f"nbcluster: {e}", file=sys.stderr)
            return None


def list_workers(path: str, as_json: bool) -> int:
    """Workers (host, pid, labels, state, load) and each client's queued and running tasks."""
    data = _status(path)
    if data is None:
        return 2
    if as_json:
        print(json.dumps({"workers": data["workers"], "clients": data["client_tasks"]}))
        return 0
    print(f"{'WORKER':8} {'HOST':16} {'PID':>7} {'STATE':6} {'RUN':>3} {'DONE':>8} "
          f"{'CPU s':>8} {'MEM MiB':>8}  LABELS")
    for w in data["workers"]:
        info = w.get("info", {})
        print(f"{w['id']:8} {w['host'][:16]:16} {w['pid']:>7} {w['state']:6} {w['running']:>3} "
              f"{w['done']:>8} {info.get('cpu_s', 0):>8.1f} {info.get('rss', 0) / 2**20:>8.0f}  "
              f"{','.join(w['labels']) or '-'}")
    for c in data["client_tasks"]:
        print(f"client {c['host']}:{c['pid']}: {c['queued']} queued, {c['running']} running")
    for labels, n in data.get("waiting_for_labels", {}).items():
        print(f"{counted(n, 'task')} {'waits' if n == 1 else 'wait'} for labels no worker "
              f"has: {labels}")
    return 0


def status(path: str, as_json: bool) -> int:
    """One line: workers, queued, running, clients."""
    data = _status(path)
    if data is None:
        return 2
    summary = {"workers": len(data["workers"]), "queued": data["queued"],
               "running": data["running"], "clients": data["clients"],
               "broker": data.get("broker", {})}
    if as_json:
        print(json.dumps(summary))
    else:
        b = summary["broker"]
        print(f"broker {b.get('host', '?')}:{b.get('pid', '?')}: "
              f"{counted(summary['workers'], 'worker')}, {summary['queued']} queued, "
              f"{summary['running']} running, {counted(summary['clients'], 'client')}")
    return 0


def stop(path: str, worker_ids: list[str]) -> int:
    """Stop some workers gracefully, or (none named) the whole cluster and its connection
    file."""
    client = _connect(path)
    if client is None:
        return 2
    from ..wire.connection import ConnectionInfo
    key = ConnectionInfo.read(path).key   # the file of the cluster we reached
    with client:
        try:
            if worker_ids:
                asked = client.stop_workers(worker_ids)
                print(f"stopping {', '.join(asked)} (each after its running task)")
                return 0
            asked = client.shutdown_cluster()
            print(f"stopping the cluster: {counted(len(asked), 'worker')}, then the broker")
        except LookupError as e:
            print(f"nbcluster: {e}", file=sys.stderr)
            return 1
    remove_connection_file(path, key)
    return 0


def remove_connection_file(path: str | Path, key: bytes) -> bool:
    """Remove the connection file at path if it is still the one of the cluster of `key`
    (a newer cluster's file stays); True if removed."""
    from ..errors import NBClusterError
    from ..wire.connection import ConnectionInfo
    try:
        if ConnectionInfo.read(path).key != key:
            return False
    except (OSError, NBClusterError):
        return False
    Path(path).expanduser().unlink(missing_ok=True)
    return True


def doctor(path: str, as_json: bool) -> int:
    """What users get wrong, each finding with its fix."""
    findings: list[dict] = []

    def find(problem: str, fix: str) -> None:
        findings.append({"problem": problem, "fix": fix})

    file = Path(path).expanduser()
    if not file.exists():
        find(f"no connection file at {file}", "start a cluster (nbcluster start) or pass "
             "--connection-file")
        return _report(findings, as_json)
    mode = stat.S_IMODE(file.stat().st_mode)
    if mode & 0o077:
        find(f"{file} is readable by others (mode {oct(mode)}): it holds the cluster key",
             f"chmod 600 {file}")
    from ..errors import NBClusterError
    from ..wire.connection import ConnectionInfo
    from ..wire.curve import is_loopback
    try:
        info = ConnectionInfo.read(file)
    except NBClusterError as e:
        find(str(e), "start the cluster again (nbcluster start), or pass the right "
             "--connection-file")
        return _report(findings, as_json)
    exposed = [ep for ep in info.endpoints if not is_loopback(ep)]
    if exposed and info.curve is None:
        find(f"the broker listens on {', '.join(exposed)} without encryption (--insecure)",
             "restart it without --insecure: beyond loopback it then runs with CurveZMQ")
    gone = info.gone_reason()
    if gone is not None:
        find(f"the cluster of {file} is not running: {gone}",
             "start it again: nbcluster start (a new cluster replaces this stale file)")
        return _report(findings, as_json)
    for ep in info.reachable_endpoints():
        url = urlparse(ep)
        if url.scheme != "tcp" or _port_open(url.hostname, url.port):
            continue
        if not _resolves(url.hostname):
            find(f"the broker's host name {url.hostname} does not resolve here",
                 f"give its address: nbcluster worker --endpoint tcp://ADDRESS:{url.port} "
                 "(or add the name to /etc/hosts)")
        elif is_loopback(ep):   # no firewall between a machine and itself
            find(f"nothing answers at {url.hostname}:{url.port}",
                 "the broker is not running on this machine: start it (nbcluster start)")
        else:
            find(f"nothing answers at {url.hostname}:{url.port} (stopped, or a firewall)",
                 f"check the broker runs; open TCP port {url.port} in the firewall between "
                 "the workers' hosts and the broker's")
    data = _status(str(file))
    if data is None:
        find("the broker did not answer", "start the cluster, or fix the findings above")
        return _report(findings, as_json)
    from ..version import __version__
    now = time.time()
    for w in data["workers"]:
        info_w = w.get("info", {})
        if info_w.get("version") and info_w["version"] != __version__:
            find(f"worker {w['id']} on {w['host']} runs nbcluster {info_w['version']}, this "
                 f"host {__version__}", "install the same nbcluster version everywhere")
        if info_w.get("python") and info_w["python"].rsplit(".", 1)[0] != \
                ".".join(map(str, sys.version_info[:2])):
            find(f"worker {w['id']} on {w['host']} runs Python {info_w['python']}, this host "
                 f"{sys.version.split()[0]} (functions pickled by value may not load)",
                 "use the same Python minor version everywhere")
        if "time" in info_w and abs(info_w["time"] - now) > CLOCK_SKEW_S + 1.0:
            find(f"worker {w['id']} on {w['host']}'s clock is {info_w['time'] - now:+.1f} s off",
                 "run NTP (e.g. chrony or systemd-timesyncd) on every host")
    if not data["workers"]:
        find("no workers are connected", "start some: nbcluster worker --connect "
             f"{file} -n 4 (on each host)")
    return _report(findings, as_json)


def _resolves(host: str | None) -> bool:
    try:
        socket.getaddrinfo(host, None)
        return True
    except (OSError, UnicodeError):
        return False


def _port_open(host: str | None, port: int | None) -> bool:
    if host in (None, "0.0.0.0", "*") or not port:
        return True
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


def _report(findings: list[dict], as_json: bool) -> int:
    if as_json:
        print(json.dumps({"ok": not findings, "findings": findings}))
    elif not findings:
        print("nbcluster doctor: no problems found")
    else:
        for f in findings:
            print(f"problem: {f['problem']}\n    fix: {f['fix']}")
    return 1 if findings else 0
