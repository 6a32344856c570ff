"""A task that is not lost runs once: a give-back never leaves a task both queued elsewhere
and started by the worker that handed it back. Real processes; no wall-clock assertions."""

import os
import time
from pathlib import Path

import pytest

from nbcluster.testing import throwaway_cluster

pytestmark = pytest.mark.timeout(300)


def record(folder, round, i, seconds):
    """A task of a few tens of ms (long enough to be given back behind) that leaves a file
    for every run of it."""
    Path(folder, f"{round}-{i}-{os.getpid()}-{time.monotonic_ns()}").touch()
    time.sleep(seconds)
    return i


def test_given_back_tasks_run_once(tmp_path):
    with throwaway_cluster(2) as cluster:
        client = cluster.client()
        for round in range(40):
            # tiny tasks first: both workers prefetch, and hold tasks behind a longer one
            assert client.map(lambda v: v, range(200), chunksize=1) == list(range(200))
            futures = [client.submit(record, str(tmp_path), round, i, 0.015 + 0.005 * i)
                       for i in range(4)]
            assert [f.result(60) for f in futures] == list(range(4))
        client.broadcast(lambda: None)   # every worker is past what it held: no run is to come
    runs: dict[str, int] = {}
    for path in tmp_path.iterdir():
        key = "-".join(path.name.split("-")[:2])
        runs[key] = runs.get(key, 0) + 1
    twice = {k: n for k, n in runs.items() if n > 1}
    assert len(runs) == 40 * 4 and not twice, f"tasks run more than once: {twice}"
