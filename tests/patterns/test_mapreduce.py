"""MapReduce on a real cluster: both shapes, the worker-to-worker shuffle, failures, lost
map outputs recomputed."""

import collections
import glob
import os
import signal
import sysconfig
import time

import pytest

from nbcluster import RemoteErrorGroup
from nbcluster.patterns.mapreduce import MapReduce, _KeyedJob, map_reduce, split_evenly
from nbcluster.patterns.shuffle import MapOutcome, Missing, ReduceTask, stable_hash
from nbcluster.testing import kill_worker, throwaway_cluster, wait_for

pytestmark = pytest.mark.timeout(120)

STDLIB = sysconfig.get_paths()["stdlib"]
FILES = sorted(f for f in glob.glob(os.path.join(STDLIB, "*.py")))[:150]


def count_words(path):
    with open(path, encoding="utf-8", errors="replace") as f:
        return collections.Counter(f.read().split())


def word_pairs(path):
    with open(path, encoding="utf-8", errors="replace") as f:
        for word in f.read().split():
            yield word, 1


def serial_count(paths):
    total = collections.Counter()
    for p in paths:
        total.update(count_words(p))
    return dict(total)


def test_word_count_matches_a_serial_count(client):
    expected = serial_count(FILES)
    assert map_reduce(FILES, count_words, sum, combiner=sum, client=client,
                      progress=False) == expected
    # pairs instead of a mapping, no combiner, more partitions than workers
    assert map_reduce(FILES[:40], word_pairs, sum, partitions=5, client=client,
                      progress=False) == serial_count(FILES[:40])


def test_keys_of_any_type_and_streamed_results(client):
    records = list(range(200))
    pairs = map_reduce(records, lambda x: [((x % 3, "t"), x), (b"b", x), (x % 2 + 0.5, x),
                                           (x % 2 == 1, -x), (float(x % 2), x)],
                       lambda vs: sorted(vs)[:3], client=client, chunksize=7, progress=False,
                       stream=True)
    got = dict(pairs)
    assert got[(0, "t")] == [0, 3, 6] and got[b"b"] == [0, 1, 2] and got[1.5] == [1, 3, 5]
    # True == 1 == 1.0, as in any dict: one key, wherever each pair was made
    assert got[1.0] == [-199, -197, -195] and got[0] == [-198, -196, -194]
    assert stable_hash(2) == stable_hash(2.0) and stable_hash("é") == stable_hash("é")


def test_mapper_and_reducer_failures_name_records_and_keys(client):
    def mapper(x):
        if x % 10 == 3:
            raise KeyError(x)
        return {x % 4: x}
    with pytest.raises(RemoteErrorGroup) as info:
        map_reduce(range(40), mapper, sum, client=client, progress=False)
    assert [e.index for e in info.value.exceptions] == [3, 13, 23, 33]
    assert all(isinstance(e, KeyError) for e in info.value.exceptions)
    assert "4 of 40 records failed" in str(info.value)

    def reducer(values):
        if 0 in values:
            raise ValueError("zero")
        return sum(values)
    with pytest.raises(RemoteErrorGroup) as info:
        map_reduce(range(20), lambda x: {x % 5: x}, reducer, client=client, progress=False)
    [err] = info.value.exceptions
    assert err.index == 0 and isinstance(err, ValueError) and err.worker["id"]


def test_teamtalk_shape_with_callback_and_future(client):
    got = []
    job = MapReduce(split=split_evenly, map=lambda piece: sum(piece), reduce=sum)
    fut = job.run(list(range(10_001)), tasks=7, callback=got.append, client=client)
    assert fut.result(30) == sum(range(10_001))
    wait_for(lambda: got == [sum(range(10_001))], what="the callback")
    assert split_evenly("abcdefg", 3) == ["ab", "cd", "efg"] and split_evenly([1], 4) == [[1]]
    bad = MapReduce(map=lambda piece: 1 / (len(piece) - 2), reduce=sum)
    with pytest.raises(RemoteErrorGroup) as info:
        bad.run([1, 2, 3, 4, 5, 6], tasks=3, client=client).result(30)
    assert len(info.value.exceptions) == 3 and "3 of 3 map tasks failed" in str(info.value)


def test_a_worker_killed_during_the_map_phase(tmp_path):
    marker = tmp_path / "started"

    def slow_count(path):
        marker.touch()
        time.sleep(0.01)
        return count_words(path)
    with throwaway_cluster(3) as cluster:
        client = cluster.client()
        out = {}

        def run():
            out["r"] = map_reduce(FILES, slow_count, sum, combiner=sum, client=client,
                                  chunksize=10, progress=False)
        import threading
        t = threading.Thread(target=run)
        t.start()
        wait_for(marker.exists, what="the map phase started")
        kill_worker(cluster, client.workers()[0]["id"], client=client)
        t.join(90)
        assert out["r"] == serial_count(FILES)


def test_map_outputs_lost_with_their_worker_are_computed_again():
    with throwaway_cluster(3) as cluster:
        client = cluster.client()
        job = _KeyedJob(FILES[:60], count_words, sum, None, 3, client, 10, None, False)
        live = {}
        job._map_phase(live)
        holders = collections.Counter(o.worker for o in job.where.values())
        victim = holders.most_common(1)[0][0]
        kill_worker(cluster, victim, client=client)
        wait_for(lambda: victim not in {w["id"] for w in client.workers()},
                 what="the broker noticed the dead worker")
        results = {}
        for part in job._reduce_phase(live):
            results.update(part)
        assert results == serial_count(FILES[:60])
        assert job.recomputes == holders[victim]


def test_a_fetch_from_a_dead_worker_fails_fast_and_names_the_output(client):
    outcome = client.submit(_store_something, "sid1").result(30)
    assert isinstance(outcome, MapOutcome)
    pid = next(w["pid"] for w in client.workers() if w["id"] == outcome.worker)
    os.kill(pid, signal.SIGKILL)
    t0 = time.monotonic()
    missing = client.submit(ReduceTask("sid1", sum), 0,
                            [(outcome.endpoint, outcome.bucket, [7])]).result(30)
    assert isinstance(missing, Missing) and missing.where == {7: (outcome.endpoint, 0)}
    assert time.monotonic() - t0 < 10


def _store_something(sid):
    from nbcluster.patterns.shuffle import MapTask
    return MapTask(sid, lambda x: {x: 1}, None, 1)(7, 0, 0, ["a", "b"])


def test_a_bucket_holding_other_map_outputs_than_expected_is_refused(client):
    # as when a map task ran twice: its output must not be counted twice
    got = client.submit(_store_two_and_reduce, "sid2").result(30)
    assert isinstance(got["one"], Missing) and got["one"].where == {7: (got["endpoint"], 0)}
    assert got["both"].results == {"a": 2, "b": 1}


def _store_two_and_reduce(sid):
    from nbcluster.patterns.shuffle import MapTask
    task = MapTask(sid, lambda x: {x: 1}, sum, 1)
    where = task(7, 0, 0, ["a", "b"])
    task(8, 0, 2, ["a"])
    reduce = ReduceTask(sid, sum)
    return {"endpoint": where.endpoint, "one": reduce(0, [(where.endpoint, 0, [7])]),
            "both": reduce(0, [(where.endpoint, 0, [7, 8])])}


def test_cancel_from_the_bar_stops_a_map_reduce(client):
    import threading

    from nbcluster import TaskCancelled
    from nbcluster.client import bars

    cancels = []

    class Recording(bars._NoBar):
        def __init__(self, total, desc, cancel=None):
            if cancel is not None:   # (a cluster starting shows a bar with no Cancel)
                cancels.append(cancel)

    def slow(x):
        time.sleep(2)   # the whole job would take 100 s: only a cancel ends it in time
        return {x % 3: 1}

    def press_cancel():
        wait_for(lambda: cancels, timeout=60, what="the job's bar")
        time.sleep(1.0)   # while map tasks run
        cancels[0]()

    bars.set_progress_factory(Recording)
    try:
        threading.Thread(target=press_cancel, daemon=True).start()
        with pytest.raises(TaskCancelled):
            map_reduce(range(100), slow, sum, client=client, chunksize=1)
        wait_for(lambda: client.status()["running"] == 0 and client.status()["queued"] == 0,
                 timeout=60, what="the cancelled map tasks to leave the cluster")
    finally:
        bars.set_progress_factory(bars._Tqdm)
