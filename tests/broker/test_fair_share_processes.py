"""Fair share with real processes: a second client is served while the first one's long
queue is still waiting. Ordering only, no timing bounds."""

import concurrent.futures
import time
from pathlib import Path

import pytest

from nbcluster.testing import throwaway_cluster, wait_for

pytestmark = pytest.mark.timeout(240)


def sleeper(tag: str, i: int, log: str) -> str:
    with open(log, "a") as f:   # one short append a line: lines do not interleave
        f.write(f"{tag}{i}\n")
    time.sleep(0.2)
    return tag


def test_a_second_client_is_served_before_the_first_ones_queue_drains(tmp_path):
    """A queues 300 tasks of 0.2 s on 2 workers (30 s of work); B submits 3. With FIFO
    across clients B waited for all of A's; with fair share B's tasks end while most of
    A's still wait."""
    log = tmp_path / "starts"
    with throwaway_cluster(2) as cluster:
        a, b = cluster.client(), cluster.client()
        a_futures = [a.submit(sleeper, "A", i, str(log)) for i in range(300)]
        wait_for(lambda: log.exists() and log.read_text().count("\n") >= 2, timeout=120,
                 what="A's first tasks started")
        b_futures = [b.submit(sleeper, "B", i, str(log)) for i in range(3)]
        done, _ = concurrent.futures.wait(b_futures, timeout=180)
        assert len(done) == 3 and all(f.result() == "B" for f in b_futures)
        still_waiting = sum(not f.done() for f in a_futures)
        starts = Path(log).read_text().split()
        a.cancel(a_futures)
        assert still_waiting > 0, "B's tasks waited until A's whole queue had run"
        assert max(starts.index(f"B{i}") for i in range(3)) < len(starts) - 1
        assert sum(s.startswith("A") for s in starts) < 300
