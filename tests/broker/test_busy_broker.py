"""A broker with a big queue and a storm of status queries stays responsive: no worker ever
takes its silence for death (each would say hello again, and its tasks would be charged a
loss). Real processes; no timing bounds."""

import time

import pytest

from nbcluster import LocalCluster
from nbcluster.testing import wait_for

pytestmark = pytest.mark.timeout(600)

WORKERS = 50
QUEUED = 200_000


def heard_since(workers: list[dict], since: float) -> list[dict] | None:
    return workers if all(w["info"].get("time", 0) > since for w in workers) else None


def test_a_status_storm_at_200k_queued_costs_no_worker_its_registration():
    with LocalCluster(WORKERS) as cluster:
        client, prober = cluster.client(), cluster.client()
        wait_for(lambda: len(client.workers()) == WORKERS, timeout=300,
                 what=f"{WORKERS} workers registered")
        first = {w["id"]: w["pid"] for w in client.workers()}
        nowhere = client.options(labels=["no-worker-has-this"])
        futures = [nowhere.submit(int) for _ in range(QUEUED)]
        wait_for(lambda: prober.status()["queued"] == QUEUED, timeout=300,
                 what=f"{QUEUED} tasks queued")
        for _ in range(50):   # the storm: each answer covers the whole queue
            status = prober.status()
            assert status["queued"] == QUEUED
        client.cancel(futures)
        wait_for(lambda: prober.status()["queued"] == 0, timeout=300, what="the queue emptied")
        # a heartbeat from every worker since, with the hellos it has sent so far
        since = time.time()
        workers = wait_for(lambda: heard_since(prober.workers(), since), timeout=60,
                           what="a heartbeat from every worker")
        assert {w["id"]: w["pid"] for w in workers} == first, "a worker registered again"
        said_hello_again = {w["id"]: w["info"]["hellos"] for w in workers
                            if w["info"]["hellos"] != 1}
        assert said_hello_again == {}, f"workers took the broker for lost: {said_hello_again}"
