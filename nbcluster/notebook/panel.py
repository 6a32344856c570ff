"""The live worker panel: one row per worker, refreshed every REFRESH_S from the broker.

    nbcluster.panel()        # in a notebook; a cluster's rich display shows one too
"""

from __future__ import annotations

import html
import os
import threading
import time

import ipywidgets as widgets

from ..client.client import Client
from ..client.english import counted

__all__ = ["WorkerPanel"]

REFRESH_S = 1.0


class WorkerPanel(widgets.VBox):
    """Workers of a client's cluster: host, pid, labels, state, tasks, CPU and memory."""

    def __init__(self, client: Client):
        self.client = client
        self.table = widgets.HTML()
        self.table.add_class("nbcluster-panel")
        super().__init__([self.table])
        self._last_cpu: dict[str, tuple[float, float]] = {}   # worker -> (cpu_s, when)
        self._stop = threading.Event()
        self.refresh()
        threading.Thread(target=self._loop, name="nbcluster-panel", daemon=True).start()

    def _loop(self) -> None:
        while not self._stop.wait(REFRESH_S):
            if self.client.closed:
                self.table.value += "<div><i>the client is closed</i></div>"
                return
            try:
                self.refresh()
            except Exception as e:   # noqa: BLE001 - a slow broker must not kill the panel
                self.table.value = f"<i>no answer from the broker: {html.escape(str(e))}</i>"

    def stop(self) -> None:
        """Stop refreshing."""
        self._stop.set()

    def refresh(self) -> None:
        status = self.client.status()
        now = time.monotonic()
        rows = []
        for w in sorted(status["workers"], key=lambda w: _natural(w["id"])):
            info = w.get("info") or {}
            cpu = ""
            if "cpu_s" in info:
                before = self._last_cpu.get(w["id"])
                if before and now > before[1]:
                    cpu = f"{100 * (info['cpu_s'] - before[0]) / (now - before[1]):.0f} %"
                self._last_cpu[w["id"]] = (info["cpu_s"], now)
            mem = f"{info['rss'] / 2**20:,.0f} MiB" if "rss" in info else ""
            state = "busy" if w.get("running") else w.get("state", "")
            rows.append([w["id"], w.get("host", ""), str(w.get("pid", "")),
                         ", ".join(w.get("labels", [])), state, _current(w.get("tasks", [])),
                         f"{w.get('done', 0):,}", cpu, mem])
        head = ["worker", "host", "pid", "labels", "state", "task", "done", "CPU", "memory"]
        body = "".join("<tr data-worker='{}'>{}</tr>".format(
            html.escape(r[0]), "".join(f"<td>{html.escape(c)}</td>" for c in r)) for r in rows)
        waiting = "".join(
            f"<div class='nbcluster-waiting'>⚠ {counted(n, 'task')} waiting for "
            f"labels no worker has: <code>{html.escape(labels or '(none)')}</code></div>"
            for labels, n in status.get("waiting_for_labels", {}).items())
        self.table.value = (
            f"<div><b>{counted(len(rows), 'worker')}</b> · "
            f"{status.get('queued', 0)} queued · {status.get('running', 0)} running</div>"
            f"<table><tr>{''.join(f'<th>{h}</th>' for h in head)}</tr>{body}</table>{waiting}")


def _current(tasks: list) -> str:
    """The running task (as the client numbered it; "of pid N" for other clients' tasks)."""
    if not tasks:
        return ""
    pid, cid = tasks[0]
    text = f"task {cid}" + ("" if pid == os.getpid() else f" of pid {pid}")
    return text + (f" (+{len(tasks) - 1} queued)" if len(tasks) > 1 else "")


def _natural(worker_id: str) -> tuple:
    digits = "".join(c for c in worker_id if c.isdigit())
    return (worker_id.rstrip("0123456789"), int(digits) if digits else 0)
