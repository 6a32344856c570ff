"""Parallel collections on a real cluster: every operation, order, fusion, early stop,
adaptive chunks, failures."""

import os
import subprocess
import sys
import time

import pytest

import nbcluster
from nbcluster import RemoteErrorGroup
from nbcluster.patterns.collections import (
    Parallel,
    pall,
    pany,
    parallel,
    pfilter,
    pflat_map,
    pgroup_by,
    pmap,
    pmap_indexed,
    pnone,
    preject,
)
from nbcluster.patterns.pipeline import COLLECT, FILTER, MAP, Pipeline

pytestmark = pytest.mark.timeout(90)

STOPWORDS = {"the", "a", "of"}


def is_stopword(w):
    return w in STOPWORDS


def test_every_operation_matches_its_serial_meaning(client):
    xs = list(range(-50, 1000))
    opts = dict(client=client, progress=False)
    assert pmap(lambda x: x * x, xs, **opts) == [x * x for x in xs]
    assert pfilter(lambda x: x % 7 == 0, xs, **opts) == [x for x in xs if x % 7 == 0]
    assert preject(lambda x: x % 7 == 0, xs, **opts) == [x for x in xs if x % 7]
    assert pflat_map(lambda x: [x] * (x % 3), xs, **opts) == [y for x in xs for y in [x] * (x % 3)]
    assert pmap_indexed(lambda x, i: (i, x), "abc", **opts) == [(0, "a"), (1, "b"), (2, "c")]
    groups = pgroup_by(lambda x: x % 5, [3, 10, 8, 1, 5, 6], **opts)
    assert list(groups.items()) == [(3, [3, 8]), (0, [10, 5]), (1, [1, 6])]   # first-seen order
    assert pany(lambda x: x > 998, xs, **opts) is True
    assert pany(lambda x: x > 5000, xs, **opts) is False
    assert pall(lambda x: x < 1000, xs, **opts) is True
    assert pall(lambda x: x < 500, xs, **opts) is False
    assert pnone(lambda x: x > 5000, xs, **opts) is True
    assert pnone(lambda x: x == 0, xs, **opts) is False
    assert parallel([0, 0, 3], client, progress=False).any() is True
    assert parallel([], client).to_list() == [] and parallel([], client).all() is True


def test_fused_chains_keep_order_and_index(client):
    words = ("The cat of the house saw a dog " * 300).split()
    p = parallel(words, client, progress=False)
    assert p.map(str.lower).reject(is_stopword).group_by(len) == \
        pgroup_by(len, [w.lower() for w in words if not is_stopword(w.lower())], client=client,
                  progress=False)
    assert p.map(str.upper).filter(lambda w: len(w) == 3).to_list() == \
        [w.upper() for w in words if len(w) == 3]
    assert p.filter(lambda w: "o" in w).map(len).to_list() == [len(w) for w in words if "o" in w]
    assert p.reject(lambda w: "o" in w).map(len).count() == sum(1 for w in words if "o" not in w)
    # the index is the element's position in the input, even after a filter
    assert p.filter(lambda w: w == "dog").map_indexed(lambda w, i: i).to_list() == \
        [i for i, w in enumerate(words) if w == "dog"]
    assert list(parallel(iter(range(10)), client).map(str)) == [str(i) for i in range(10)]


def test_steps_are_lazy_and_reusable(client):
    calls = []
    src = parallel(range(5), client, progress=False)
    chained = src.map(lambda x: x + 1)
    assert isinstance(chained, Parallel) and src.steps == () and not calls
    assert chained.to_list() == [1, 2, 3, 4, 5] and chained.to_list() == [1, 2, 3, 4, 5]
    with pytest.raises(TypeError):
        src.map(3)
    with pytest.raises(ValueError):
        parallel(range(3), client, chunksize=0)


def test_a_generator_input_is_read_lazily_and_in_chunks(client):
    pulled = []

    def gen():
        for i in range(200_000):
            pulled.append(i)
            yield i
    it = iter(parallel(gen(), client, progress=False).map(lambda x: -x))
    assert next(it) == 0
    # not all read before the first result (chunks grow at most 16x per result seen, so
    # reading 200k elements takes several rounds after chunk 0 is back)
    assert len(pulled) < 200_000
    assert list(it) == [-i for i in range(1, 200_000)]


def test_chunks_adapt_to_element_cost_and_overhead_is_reported(client):
    cheap = parallel(range(300_000), client, progress=False).map(lambda x: x + 1)
    cheap.to_list()
    slow = parallel(range(40), client, progress=False).map(lambda x: time.sleep(0.02) or x)
    slow.to_list()
    assert cheap.stats.chunksize >= 1000 and cheap.stats.tasks < 1000
    assert slow.stats.chunksize <= 10     # 20 ms elements are not batched into big chunks
    assert cheap.stats.elements == 300_000 and 0 <= cheap.stats.overhead <= 1
    assert slow.stats.overhead < 0.5
    assert cheap.stats.task_cost_s > 0


def test_big_items_go_one_per_task(client):
    blobs = [os.urandom(3 << 20) for _ in range(6)]
    p = parallel(blobs, client, progress=False).map(len)
    assert p.to_list() == [3 << 20] * 6
    assert p.stats.chunksize <= 2


def test_any_stops_early_and_cancels_the_rest(client):
    def slow_after_first(x):
        if x >= 4:
            time.sleep(1)
        return x == 1
    t0 = time.monotonic()
    assert parallel(range(400), client, chunksize=2, progress=False).any(slow_after_first)
    assert time.monotonic() - t0 < 60     # 398 elements of 1 s would take minutes
    client.submit(int).result(60)
    assert client.status()["queued"] == 0


def test_failures_come_back_as_one_group_naming_elements_and_workers(client):
    def f(x):   # fails on 5 elements: few enough to be kept in full, and not to stop the run
        return 10 // (x % 8)
    with pytest.raises(RemoteErrorGroup) as info:
        parallel(range(40), client, chunksize=3, progress=False).map(f).to_list()
    group = info.value
    assert sorted(e.index for e in group.exceptions) == list(range(0, 40, 8))
    assert all(isinstance(e, ZeroDivisionError) for e in group.exceptions)
    assert {e.item for e in group.exceptions} == {str(i) for i in range(0, 40, 8)}
    assert "5 of 40 elements failed (5 x ZeroDivisionError)" in str(group)
    assert all(e.worker["id"] in str(group) for e in group.exceptions)
    assert group.exceptions[0].frames[-1].locals["x"] == "0"
    # a failure in a later step of a chain names the original element
    with pytest.raises(RemoteErrorGroup) as info:
        parallel(["1", "x", "3"], client, progress=False).map(str.strip).map(int).to_list()
    assert [(e.index, e.item) for e in info.value.exceptions] == [(1, "'x'")]
    with pytest.raises(RemoteErrorGroup):   # undecided: an error makes the answer unknown
        pany(lambda x: 1 / x > 5, [0, 1, 2], client=client, progress=False)
    assert pany(lambda x: 1 / x > 0.4, [0, 1, 2], client=client, progress=False)


def test_the_default_client_is_the_latest_one(cluster):
    client = cluster.client()
    assert pmap(abs, [-1, -2], progress=False) == [1, 2]
    assert nbcluster.default_client() is client


def test_with_no_client_a_local_cluster_is_started_and_announced():
    code = "import nbcluster; print(nbcluster.pmap(abs, [-1, -2], progress=False))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[1, 2]" and "started a local cluster" in out.stderr


def test_pipeline_on_its_own_reports_elements_that_fail():
    out = Pipeline(((MAP, lambda x: 1 / x), (FILTER, lambda x: x > 0.3)), (COLLECT, None))(
        10, [1, 0, 2, 4])
    assert out.values == [1.0, 0.5] and out.n == 4
    assert [(i, item) for i, item, _ in out.errors] == [(11, "0")]


def test_a_step_raising_stopiteration_fails_its_element_instead_of_ending_the_chunk(client):
    """The C-level map() fused steps run in takes a StopIteration for the end of its input:
    the rest of the chunk used to vanish silently."""
    def f(x):
        if x == 2:
            raise StopIteration("not the end")
        return x * 10
    with pytest.raises(RemoteErrorGroup) as info:
        parallel(range(6), client, chunksize=6, progress=False).map(f).to_list()
    [err] = info.value.exceptions
    assert isinstance(err, StopIteration) and err.remote_traceback.index == 2
    assert "1 of 6 elements failed" in str(info.value)
    def keep(x):   # in a filter step too
        return next(iter([])) if x == 4 else x % 2 == 0
    with pytest.raises(RemoteErrorGroup) as info:
        parallel(range(6), client, chunksize=6, progress=False).filter(keep).to_list()
    assert [e.remote_traceback.index for e in info.value.exceptions] == [4]
