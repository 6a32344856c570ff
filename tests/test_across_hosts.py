"""Across machines, for real: the broker in one network namespace, workers in two others,
the client in the root namespace; Curve on (the broker listens beyond loopback)."""

import os
import time

import pytest

from .support.netns import skip_reason
from .support.netns_cluster import Cluster, wait_workers

pytestmark = [pytest.mark.timeout(120)]

if skip_reason() and not os.environ.get("NBCLUSTER_REQUIRE_NETNS"):
    pytest.skip(skip_reason(), allow_module_level=True)


def where_am_i(_=None) -> str:
    """The address of this process's network namespace beyond loopback."""
    from nbcluster.wire.connection import host_addresses
    return host_addresses()[0]


def slow_square(x):
    time.sleep(0.3)
    return x * x


def test_tasks_run_on_both_remote_hosts_with_curve(hosts, tmp_path):
    cluster = Cluster(hosts, tmp_path)
    assert cluster.info.curve is not None                # beyond loopback: Curve is on
    assert all(ep.startswith("tcp://") for ep in cluster.info.endpoints)
    with cluster.client() as client:
        wait_workers(client, 2)
        seen = {client.options(labels={h}).submit(where_am_i).result(20)
                for h in ("host1", "host2")}
        assert seen == {hosts.address("host1"), hosts.address("host2")}
        assert client.map(lambda x: x + 1, range(1000)) == list(range(1, 1001))


def test_a_host_killed_mid_run_its_tasks_finish_elsewhere(hosts, tmp_path):
    cluster = Cluster(hosts, tmp_path)
    with cluster.client() as client:
        wait_workers(client, 2)
        futures = [client.submit(slow_square, i) for i in range(12)]
        time.sleep(0.8)                                   # both hosts are busy
        assert hosts.kill_host("host1")
        assert [f.result(60) for f in futures] == [i * i for i in range(12)]
        assert client.stats["unexpected_results"] == 0


def test_a_cut_link_heals_nothing_lost_or_doubled(hosts, tmp_path):
    cluster = Cluster(hosts, tmp_path)
    with cluster.client() as client:
        wait_workers(client, 2)
        futures = [client.submit(slow_square, i) for i in range(16)]
        time.sleep(0.5)
        hosts.set_link("host1", up=False)                 # host1 is declared dead meanwhile
        time.sleep(2.0)
        hosts.set_link("host1", up=True)
        assert [f.result(60) for f in futures] == [i * i for i in range(16)]
        assert client.stats["unexpected_results"] == 0    # late results were dropped
        # host1's worker comes back and serves again
        deadline = time.monotonic() + 120
        while True:
            try:
                answer = client.options(labels={"host1"}).submit(where_am_i).result(60)
                if answer == hosts.address("host1"):
                    break
            except Exception:   # noqa: BLE001 - not back yet
                pass
            assert time.monotonic() < deadline, "host1's worker did not come back"


def test_map_reduce_shuffles_between_hosts_over_curve(hosts, tmp_path):
    from nbcluster import map_reduce
    cluster = Cluster(hosts, tmp_path)
    with cluster.client() as client:
        wait_workers(client, 2)
        words = [f"w{i % 7} w{i % 3}" for i in range(300)]
        counts = map_reduce(words, lambda line: [(w, 1) for w in line.split()], sum,
                            combiner=sum, client=client, chunksize=10, progress=False)
        expected = {}
        for line in words:
            for w in line.split():
                expected[w] = expected.get(w, 0) + 1
        assert counts == expected


def fails_here(x):
    here = where_am_i()
    return here, x / 0


def pauses_here(x):
    here = where_am_i()
    breakpoint()
    return here, x


def test_debugging_a_remote_failure_and_a_remote_breakpoint_over_curve(hosts, tmp_path,
                                                                        monkeypatch):
    cluster = Cluster(hosts, tmp_path)
    with cluster.client() as client:
        wait_workers(client, 2)
        with pytest.raises(ZeroDivisionError) as info:
            client.options(labels={"host1"}).submit(fails_here, 3).result(30)
        answers, seen = iter(["p here", "p x * 2", "q"]), []

        def typed(prompt):
            seen.append(prompt)
            return next(answers)

        out = []
        assert info.value.debug(input=typed, write=out.append) == "the debugger quit"
        printed = "".join(out)
        assert f"'{hosts.address('host1')}'" in printed and "\n6\n" in printed
        assert seen == ["(Pdb) "] * 3
        answers = iter(["p here", "c"])
        monkeypatch.setattr("builtins.input", lambda prompt: next(answers))
        fut = client.options(labels={"host2"}).submit(pauses_here, 5)
        assert fut.result(60) == (hosts.address("host2"), 5)   # attended while waiting
