"""The broker's view of its cluster, as `Client.status()` and `Client.workers()` return it.

Typed dicts naming the fields of the broker's reply to a `query` (built by
broker/inspection.py; docs/protocol.md lists them under `reply`), so that a user's type
checker knows `w["labels"]` is a list of strings. At run time they are plain dicts.
"""

from __future__ import annotations

from typing import TypedDict

__all__ = ["WorkerLoad", "WorkerInfo", "ClientTasks", "SupervisorInfo", "BrokerInfo",
           "ClusterStatus"]


class WorkerLoad(TypedDict, total=False):
    """What a worker says about itself in its heartbeats (rss where /proc exists)."""
    cpu_s: float     # CPU seconds its process used
    time: float      # its clock when it said so
    python: str      # its Python version
    version: str     # its nbcluster version
    rss: int         # its resident memory, bytes


class WorkerInfo(TypedDict):
    """One worker, as the broker sees it."""
    id: str
    host: str
    pid: int
    labels: list[str]
    slots: int
    running: int          # tasks it runs now
    done: int             # tasks it finished
    state: str            # "busy" or "idle"
    info: WorkerLoad
    age_s: float          # seconds since it joined
    tasks: list[list[int]]   # its tasks as [client pid, the client's task id], oldest first


class ClientTasks(TypedDict):
    """One client's tasks: queued and running."""
    host: str
    pid: int
    queued: int
    running: int


class SupervisorInfo(TypedDict):
    """A supervisor (the process that starts and watches a host's workers)."""
    host: str
    pid: int
    alive: list[int]   # the worker pids it last vouched for


class BrokerInfo(TypedDict):
    host: str
    pid: int
    version: int   # of the protocol
    max_message_bytes: int


class ClusterStatus(TypedDict):
    """The whole cluster: workers, task counts, clients, and labels no worker has."""
    workers: list[WorkerInfo]
    queued: int
    running: int
    clients: int
    waiting_for_labels: dict[str, int]   # "label,label" -> tasks waiting for such a worker
    label_sets_waiting: int   # how many label sets no worker has (the first 100 listed above)
    label_queues: int         # label sets (and hosts) with tasks queued
    client_tasks: list[ClientTasks]
    functions: dict[str, int]   # payloads held and moved: held, held_bytes, received, sent...
    broker: BrokerInfo
    supervisors: list[SupervisorInfo]
