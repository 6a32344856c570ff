"""Credit: the broker's state machine against a model of worker.py's ledger
(tests/support/worker_model.py).

The worker side is modelled message by message (a main thread running tasks, an I/O thread
handling cancel, given and registration, one FIFO channel per socket and direction, the two
sockets not ordered with each other), so the fuzzers meet the orderings real processes
produce. After every step the broker's credit must match each worker's ledger and a task may
start only where the broker holds it; once all is delivered every idle worker's credit must
cover its window (issue 11: a worker idle forever with free slots). Workers also register
again at any time, and the broker expires them (issue 12): resumed or not, no task runs twice
unless the worker it ran on was dropped, and the ledgers stay right.
"""

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ..support.worker_model import Cluster

STEPS = ["submit", "cancel", "cancel_running", "recv_task", "recv_ctl", "main", "finish_short",
         "finish_long", "giveback", "up_task", "up_ctl"]
REGISTERING = ["hello", "expire", "hb", "thaw"]   # workers registering again (issue 12)


def run_cluster(steps, n_workers: int = 2, **worker_kw) -> Cluster:
    cluster = Cluster(n_workers, **worker_kw)
    cluster.settle()   # the workers' first credit is in
    submitted = []
    for kind, who, n in steps:
        w = cluster.workers[who % len(cluster.workers)]
        client = b"c%d" % (who % 2)
        if kind == "submit":
            cids = [len(submitted) + k + 1 for k in range(n + 1)]
            cluster.client(client, "submit", [b"f"] * len(cids),
                           tasks=[[cid, 1, [], None, 0] for cid in cids])
            submitted += [(client, cid) for cid in cids]
        elif kind == "cancel" and submitted:
            owner, cid = submitted[(who * 7 + n) % len(submitted)]
            cluster.client(owner, "cancel", ids=[cid])
        elif kind == "cancel_running" and w.current and w.current[0] in cluster.state.tasks:
            t = cluster.state.tasks[w.current[0]]
            cluster.client(t.client, "cancel", ids=[t.cid])
        elif kind in ("recv_task", "recv_ctl"):
            w.receive(kind[5:])
        elif kind == "main":
            w.step_main()
        elif kind.startswith("finish"):
            w.finish(short=kind == "finish_short")
        elif kind == "giveback":
            w.giveback()
        elif kind in ("up_task", "up_ctl"):
            cluster.deliver_up(w, kind[3:])
        elif kind == "hello":        # heard nothing for its expiry (a broker stall, a link)
            w.hello()
        elif kind == "expire":       # silent for its expiry (frozen, a link): dropped
            cluster.expire(w)
        elif kind == "hb":
            w.send("ctl", {"t": "hb"})
        elif kind == "thaw":         # frozen past its expiry, it resumes and registers again
            cluster.expire(w)
            w.hello()
        cluster.check()
    cluster.settle()
    # Every task answered exactly once, at its own client (a result, or its cancellation).
    answered = sorted((ident, cid) for ident, cid, _ in cluster.results)
    assert answered == sorted(submitted)
    return cluster


STEP = st.tuples(st.sampled_from(STEPS + REGISTERING), st.integers(0, 1), st.integers(0, 4))


@settings(max_examples=300, deadline=None)
@given(st.lists(STEP, max_size=80))
def test_credit_ledgers_agree_and_idle_workers_keep_their_window(steps):
    """Prefetch, give-backs, cancels of running, prefetched and queued tasks, workers
    registering again, in any order the sockets allow: the broker's credit matches each
    worker's ledger after every step, and once all is delivered every idle worker has its
    whole window as credit."""
    run_cluster(steps)


# Re-registration needs a task running when its worker is dropped and says hello: a mix
# where tasks start more often than they end, and workers thaw often.
REGISTRATION_STEPS = [*STEPS, *REGISTERING,
                      *["main", "recv_task", "recv_ctl", "up_ctl", "thaw"] * 6]


def random_steps(seed: int, kinds: list = STEPS) -> list:
    rng = random.Random(seed)
    return [(rng.choice(kinds), rng.randrange(2), rng.randrange(5))
            for _ in range(rng.randrange(10, 80))]


SWEEP = range(3000)   # seeds: deterministic, and plenty to meet the rare orderings


def test_credit_ledgers_agree_over_a_seeded_sweep():
    for seed in SWEEP:
        try:
            run_cluster(random_steps(seed))
        except AssertionError as e:
            raise AssertionError(f"seed {seed}: {e}") from e


def sweep_finds(message: str, **broken_worker) -> bool:
    """Does the seeded sweep, with the model worker broken so, fail with `message`?"""
    for seed in SWEEP:
        try:
            run_cluster(random_steps(seed), **broken_worker)
        except AssertionError as e:
            assert message in str(e)
            return True
    return False


def test_the_sweep_finds_the_starvation_when_the_worker_does_not_top_up_after_given():
    """The fuzzer is good enough to have found issue 11's starvation on the old worker."""
    assert sweep_finds("is idle with credit", topup_after_given=False), \
        "the sweep did not find the starvation"


def test_the_sweep_finds_the_double_run_when_the_worker_does_not_wait_for_given():
    """The invariant "a task starts only where the broker holds it" catches a worker that
    runs what it has just given back (the kept task ended before `given` arrived)."""
    assert sweep_finds("it may run twice", wait_for_given=False), \
        "the sweep did not find the double run"


def test_cancelling_the_kept_task_of_a_giveback_starves_without_the_topup():
    """The starvation of issue 11, step by step: after a burst (prefetch on) a long task
    runs; its worker gives the prefetched credit back while a cancel ends the task. The
    worker's results leave before the `given` arrives, so nothing finished afterwards would
    ask for credit again: without topping up after `given` it is idle with no credit."""
    steps = [("submit", 0, 0), ("recv_task", 0, 0), ("main", 0, 0),   # w0 runs task 1
             ("giveback", 0, 0),                                      # long: give back
             ("cancel", 0, 0),                                        # cancel task 1
             ("recv_ctl", 0, 0),                                      # interrupt it
             ("finish_long", 0, 0), ("up_task", 0, 0),                # its result, ready 0
             ("up_ctl", 0, 0)]                                        # giveback: voids 3
    run_cluster(steps)
    with pytest.raises(AssertionError, match="is idle with credit 0"):
        run_cluster(steps, topup_after_given=False)


def test_registering_again_keeps_the_ledgers_over_a_seeded_sweep():
    """Workers dropped while running (frozen, cut off) and workers saying hello while the
    broker still holds them (it stalled), one or two workers: ledgers agree after every
    step, and a task starts only where the broker holds it, or where it was charged a loss."""
    for seed in SWEEP:
        try:
            run_cluster(random_steps(seed, REGISTRATION_STEPS), n_workers=1 + seed % 2)
        except AssertionError as e:
            raise AssertionError(f"seed {seed}: {e}") from e


def test_the_sweep_finds_the_double_run_when_old_tasks_do_not_wait_for_the_welcome():
    """A worker that starts a task of its old registration before the welcome says whether
    the broker resumed it runs a task the broker has queued again (and may run elsewhere)."""
    for seed in SWEEP:
        try:
            run_cluster(random_steps(seed, REGISTRATION_STEPS), n_workers=1 + seed % 2,
                        wait_for_welcome=False)
        except AssertionError as e:
            assert "it may run twice" in str(e)
            return
    pytest.fail("the sweep did not find the double run")
