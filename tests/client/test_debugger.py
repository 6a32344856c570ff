"""A live debugger on the worker where a task failed or paused, driven from the client: real
brokers and workers; the user's typing is scripted through `input=` (what `input()` would
return), the terminal's own stdin is in test_debugger_terminal.py."""

import gc
import os
import signal
import threading
import time

import pytest

from nbcluster import LocalCluster, NBClusterError, RemoteError, RemoteErrorGroup
from nbcluster.client.debugging import ATTENTION
from nbcluster.testing import kill_worker, wait_for

pytestmark = pytest.mark.timeout(180)


class Typist:
    """Answers the debugger's prompts with `lines`, in order; records what it saw."""

    def __init__(self, *lines: str, pause_s: float = 0.0):
        self.lines, self.pause_s = list(lines), pause_s
        self.text: list[str] = []
        self.prompts = 0

    def input(self, prompt: str) -> str:
        """As the builtin input() in a terminal: the prompt and the line are echoed."""
        self.prompts += 1
        if not self.lines:
            raise AssertionError(f"the debugger asked for more input: {self.seen!r}")
        line = self.lines.pop(0)
        self.write(f"{prompt}{line}\n")
        if self.pause_s:
            time.sleep(self.pause_s)
        return line

    def write(self, text: str) -> None:
        (self.text.append if self.stdout is None else self.stdout.write)(text)

    stdout = None   # set by `attach`: where the builtin input() would echo

    def attach(self, monkeypatch) -> None:
        """Be the builtin input(), echoing to stdout (where a breakpoint's prompt goes)."""
        import sys
        self.stdout = sys.stdout
        monkeypatch.setattr("builtins.input", self.input)

    @property
    def seen(self) -> str:
        return "".join(self.text)

    def answers(self, text: str | None = None) -> list[str]:
        """What each command printed: the text between one prompt's line and the next."""
        chunks = (self.seen if text is None else text).split("(Pdb) ")
        return [c.split("\n", 1)[1] if "\n" in c else "" for c in chunks[1:]]


def inner(a):
    b = a * 10
    items = list(range(10))
    return b / (a - a), items


def outer(x):
    y = x + 1
    return inner(y)


def element(x):
    import time
    doubled = x * 2
    time.sleep(0.2)   # each worker holds one task at a time: the first two go to both
    raise KeyError(doubled)


def failed(fut) -> RemoteError:
    with pytest.raises(RemoteError) as info:
        fut.result(timeout=60)
    return info.value


def test_post_mortem_runs_pdb_commands_on_the_failed_frame_on_its_worker(client):
    err = failed(client.submit(outer, 4))
    typist = Typist("p b", "p items[3:5]", "up", "p y * 2", "!y = 99", "p y", "w",
                    "p __import__('os').getpid()", "q")
    ended = err.debug(input=typist.input, write=typist.write)
    answers = typist.answers()
    assert answers[0] == "50\n"                     # p b
    assert answers[1] == "[3, 4]\n"                 # p items[3:5]
    assert "outer()" in answers[2]                  # up
    assert answers[3] == "10\n"                     # p y * 2, in the caller's frame
    assert answers[5] == "99\n"                     # the assignment took, in that frame
    assert "inner()" in answers[6] and "outer()" in answers[6]   # w
    assert answers[7] == f"{err.worker['pid']}\n"   # evaluated in the worker's process
    assert ended == "the debugger quit"
    assert "ZeroDivisionError" in typist.seen.splitlines()[0]


def test_a_failed_map_debugs_each_failed_worker_in_turn(client):
    with pytest.raises(RemoteErrorGroup) as info:
        client.map(element, range(6), chunksize=1)
    group = info.value
    workers = group.workers
    assert len(workers) == 2, f"the failures were all on {workers}: the test needs two"
    typist = Typist("p x, doubled", "q", "p x, doubled", "q")
    ended = group.debug(input=typist.input, write=typist.write)
    assert ended == ["the debugger quit", "the debugger quit"]
    values = [eval(a) for a in typist.answers()[::2]]   # (x, doubled) on each worker
    assert all(d == 2 * x for x, d in values), values
    headers = [line for line in typist.seen.splitlines() if line.startswith("[failure")]
    assert [h.split(": worker ")[0] for h in headers] == ["[failure 1 of 2", "[failure 2 of 2"]
    assert {h.split("worker ")[1].split(",")[0] for h in headers} == set(workers)
    assert [h.rsplit("element ", 1)[1] for h in headers] == [f"{x}]" for x, _ in values]
    one = Typist("p x", "q")   # or one, by element
    group.debug(index=values[1][0], input=one.input, write=one.write)
    assert one.answers()[0] == f"{values[1][0]}\n"
    by_kind = Typist("p type(doubled).__name__", "q")   # or the first of a failure group
    assert group.debug(group=0, input=by_kind.input, write=by_kind.write) == \
        ["the debugger quit"]
    assert by_kind.answers()[0] == "'int'\n"


def test_a_released_failure_says_so_and_shows_the_captured_locals(client):
    err = failed(client.submit(outer, 4))
    err.release()
    typist = Typist()
    ended = err.debug(input=typist.input, write=typist.write)
    assert ended == "released: by release()"
    assert typist.prompts == 0
    assert "the frames and locals captured when it failed" in typist.seen
    assert "b = 50" in typist.seen   # the captured locals of the failed frame


@pytest.fixture
def keep_one(monkeypatch):
    monkeypatch.setenv("NBCLUSTER_DEBUG_KEEP", "1")
    monkeypatch.setenv("NBCLUSTER_DEBUG_KEEP_S", "2")
    with LocalCluster(1) as cluster:
        yield cluster


def test_a_worker_keeps_only_its_latest_failures_and_only_for_a_while(keep_one):
    client = keep_one.client()
    first, second = failed(client.submit(outer, 1)), failed(client.submit(outer, 2))
    typist = Typist()
    assert first.debug(input=typist.input, write=typist.write).startswith("released")
    # the newest is kept, until its time is up (seen in the worker's heartbeat)
    wait_for(lambda: client.workers()[0]["info"].get("kept") == 0, timeout=60,
             what="the kept failure expired")
    assert second.debug(input=typist.input, write=typist.write).startswith("released")
    assert typist.prompts == 0


def test_collected_errors_release_their_frames_on_the_worker(client):
    for x in range(3):
        failed(client.submit(outer, x))   # dropped at once (a cycle with its traceback)
    gc.collect()
    wait_for(lambda: all(w["info"].get("kept") == 0 for w in client.workers()), timeout=60,
             what="the workers released the failures nobody holds")


def paused(x):
    a = x * 3
    breakpoint()
    a = a + 1
    return a


def test_breakpoint_pauses_its_task_while_others_run_and_c_resumes_it(client, monkeypatch,
                                                                       capsys):
    typist = Typist("p a", "!a = 100", "p a", "c")
    typist.attach(monkeypatch)
    fut = client.submit(paused, 2)
    wait_for(lambda: ATTENTION.paused, timeout=60, what="the task paused")
    assert client.submit(pow, 2, 5).result(timeout=60) == 32   # the other worker runs on
    assert fut.result(timeout=60) == 101   # attended while waiting: the prompt came here
    assert typist.answers(capsys.readouterr().out)[:3] == ["6\n", "", "100\n"]


def test_q_at_a_breakpoint_fails_the_task(client, monkeypatch):
    Typist("q").attach(monkeypatch)
    with pytest.raises(RemoteError) as info:
        client.submit(paused, 1).result(timeout=60)
    assert info.value.type_name == "bdb.BdbQuit"


def test_two_paused_tasks_get_their_prompts_in_turn(client, monkeypatch, capsys):
    typist = Typist("p x", "c", "p x", "c")
    typist.attach(monkeypatch)
    futures = [client.submit(paused, x) for x in (1, 2)]
    assert sorted(f.result(timeout=60) for f in futures) == [4, 7]
    out = capsys.readouterr().out
    assert sorted(typist.answers(out)[::2]) == ["1\n", "2\n"]
    said = [line for line in out.splitlines() if "paused at a breakpoint" in line]
    assert len(said) == 2 and all("on worker w" in line for line in said)
    assert {f"task {f.key}" for f in futures} == {line.split(" on ")[0][1:] for line in said}


def test_a_paused_task_nobody_attends_resumes_by_itself(monkeypatch):
    monkeypatch.setenv("NBCLUSTER_DEBUG_TIMEOUT_S", "2")
    with LocalCluster(1) as cluster:
        client = cluster.client()
        box = []   # waited for off the main thread: nobody attends
        waiter = threading.Thread(target=lambda: box.append(client.submit(paused, 2).result(60)))
        waiter.start()
        waiter.join(90)
        assert box == [7]
        session = ATTENTION.paused.pop()   # its record: it ended, resumed
        typist = Typist()
        assert session.run(typist.input, typist.write) == "resumed (no input for 2 s)"


def test_another_client_cannot_reach_a_clients_failure(cluster):
    owner, other = cluster.client(), cluster.client()
    err = failed(owner.submit(outer, 4))
    worker, n = str(err.worker["id"]), err.remote_traceback.live[1]
    typist = Typist()
    ended = other._debug_open(worker, n).run(typist.input, typist.write)
    assert ended == "this failure is not one of this client's tasks"
    assert typist.prompts == 0
    mine = Typist("p b", "q")   # still there for its owner
    err.debug(input=mine.input, write=mine.write)
    assert mine.answers()[0] == "50\n"


def test_heartbeats_flow_while_a_session_lasts_longer_than_the_expiry(client):
    err = failed(client.submit(outer, 4))
    slow = Typist("p b", "p b", "q", pause_s=5.0)   # 15 s: past a 9 s expiry
    err.debug(input=slow.input, write=slow.write)
    workers = client.workers()
    assert [w["info"]["hellos"] for w in workers] == [1, 1], "a worker registered again"
    assert client.submit(pow, 3, 2).result(timeout=60) == 9


def test_an_expression_is_evaluated_in_a_chosen_frame_on_its_worker(client):
    err = failed(client.submit(outer, 4))
    assert [f.name for f in err.frames][-2:] == ["outer", "inner"]
    assert err.evaluate("b + 1") == "51"                          # innermost: inner()
    assert err.evaluate("(x, y)", frame=-2) == "(4, 5)"           # its caller
    assert err.evaluate("items[2:4]") == "[2, 3]"
    assert err.evaluate("nope") == "NameError: name 'nope' is not defined\n"
    assert len(err.evaluate("'x' * 100_000")) < 11_000            # the repr is bounded
    err.release()
    with pytest.raises(NBClusterError, match="released"):
        err.evaluate("b")


def test_a_session_ends_when_its_worker_is_killed(cluster):
    client = cluster.client()
    err = failed(client.submit(outer, 4))
    victim = err.worker["id"]

    def kill_then_type(prompt):
        kill_worker(cluster, victim, client=client)
        return "p b"

    ended = err.debug(input=kill_then_type, write=lambda text: None)
    # The broker drops the worker (its supervisor tells it at once) and ends the session;
    # a line that reaches the broker first is answered "no such session" or, by the dying
    # worker, "ended". Never a wait for ever.
    assert ended in (f"the worker {victim} is gone", "no such debugger session",
                     "the session has ended"), ended


def test_a_session_ends_when_the_broker_restarts(cluster):
    client = cluster.client()
    err = failed(client.submit(outer, 4))

    def restart_then_type(prompt):
        os.kill(cluster.pids()["broker"][0], signal.SIGKILL)   # the cluster starts another
        return "p b"

    ended = err.debug(input=restart_then_type, write=lambda text: None)
    assert ended in ("the broker restarted: its debugger sessions are gone",
                     "no such debugger session"), ended
    assert client.submit(pow, 2, 3).result(timeout=120) == 8


def test_a_worker_over_its_memory_budget_lets_its_failures_go(monkeypatch):
    monkeypatch.setenv("NBCLUSTER_DEBUG_KEEP_MB", "1")   # any worker is over 1 MB
    with LocalCluster(1) as cluster:
        client = cluster.client()
        errors = [failed(client.submit(outer, x)) for x in range(3)]
        wait_for(lambda: client.workers()[0]["info"].get("kept") == 0, timeout=60,
                 what="the worker over its budget dropped its kept failures")
        typist = Typist()
        assert errors[-1].debug(input=typist.input, write=typist.write).startswith("released")


def test_a_memory_limit_halves_the_budget_for_kept_failures():
    def budget():
        import os

        from nbcluster.worker.postmortem import KeptFailures
        return os.environ.get("NBCLUSTER_DEBUG_KEEP_MB"), KeptFailures().max_rss

    with LocalCluster(1, memory_limit="2GiB") as cluster:
        assert cluster.client().submit(budget).result(timeout=60) == ("1024", 1 << 30)


def test_waits_through_nbcluster_attend_paused_tasks(client, monkeypatch):
    from nbcluster.client.waiting import as_completed
    Typist("c", "c").attach(monkeypatch)
    futures = [client.submit(paused, 1), client.submit(pow, 2, 3)]
    assert sorted(f.result() for f in as_completed(futures, timeout=120)) == [4, 8]
    executor = client.executor()
    fut = executor.submit(paused, 2)
    executor.shutdown(wait=True)   # attended while it waits
    assert fut.result(timeout=0) == 7


def test_end_of_input_at_a_breakpoint_resumes_the_task(client, monkeypatch):
    def at_end(prompt):   # stdin closed (a script run without a terminal), or Ctrl-D
        raise EOFError

    monkeypatch.setattr("builtins.input", at_end)
    assert client.submit(paused, 2).result(timeout=60) == 7


def test_an_attended_prompt_outlasts_the_unattended_timeout(monkeypatch):
    # 10 s: the client's `attend` must reach the worker before it (a loaded machine may
    # take seconds); the person then thinks longer than that.
    monkeypatch.setenv("NBCLUSTER_DEBUG_TIMEOUT_S", "10")
    with LocalCluster(1) as cluster:
        client = cluster.client()
        answers = iter(["p a", "c"])
        prompts = []

        def thinking(prompt):
            prompts.append(prompt)
            if len(prompts) == 1:
                time.sleep(12.0)   # longer than the unattended timeout
            return next(answers)

        monkeypatch.setattr("builtins.input", thinking)
        assert client.submit(paused, 2).result(timeout=60) == 7
        assert len(prompts) == 2, "the task resumed before the person answered"


def test_end_of_input_in_interact_leaves_the_console_not_the_debugger(client, monkeypatch,
                                                                       capsys):
    answers = iter(["interact", "b = a * 2", "print('in console', b)", EOFError, "p a", "c"])

    def typed(prompt):
        line = next(answers)
        if line is EOFError:
            raise EOFError
        return line

    monkeypatch.setattr("builtins.input", typed)
    assert client.submit(paused, 2).result(timeout=60) == 7   # c: it went on
    out = capsys.readouterr().out
    assert "in console 12" in out and "resumed" in out and "end of input" not in out


def test_an_evaluation_that_outlasts_its_wait_is_a_timeout_not_a_gone_frame(client):
    err = failed(client.submit(outer, 4))
    with pytest.raises(TimeoutError):
        err.evaluate("__import__('time').sleep(30)", timeout=1.0)
    assert err.evaluate("b") == "50"   # the frame is still there
