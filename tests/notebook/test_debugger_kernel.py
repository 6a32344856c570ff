"""The live debugger in a real kernel (jupyter_client, stdin allowed): the debugger's prompts
come as the notebook's input requests, answered here as a user would type them, against
real workers. Each test starts its own kernel and cluster, and stops both."""

import queue
import time

import pytest
from jupyter_client.manager import start_new_kernel

pytestmark = pytest.mark.timeout(240)

class Kernel:
    """A kernel we type into: `run(code, answers)` executes a cell, answering each input
    request with the next answer, and returns (what the cell printed, with each prompt and
    answer echoed as a notebook shows them; its error, if any)."""

    def __init__(self) -> None:
        self.km, self.kc = start_new_kernel(kernel_name="python3")

    def run(self, code: str, answers: list[str] = (), timeout: float = 180
            ) -> tuple[str, dict | None]:
        answers = list(answers)
        msg_id = self.kc.execute(code, allow_stdin=True)
        out: list[str] = []
        self.error: dict | None = None
        idle = False
        deadline = time.monotonic() + timeout
        while not idle:
            assert time.monotonic() < deadline, f"the cell did not finish: {''.join(out)}"
            try:
                request = self.kc.get_stdin_msg(timeout=0.05)
            except queue.Empty:
                request = None
            # What was printed before the request is on the other channel: read it first,
            # so the echo comes after it, as a notebook shows it.
            idle = self._read_output(msg_id, out, quiet_s=0.3 if request else 0.05)
            if request is not None and request["msg_type"] == "input_request":
                assert answers, f"the debugger asked for more input: {''.join(out)}"
                line = answers.pop(0)
                out.append(f"{request['content']['prompt']}{line}\n")
                self.kc.input(line)
        assert not answers, f"answers left unused: {answers}; the cell printed {''.join(out)}"
        return "".join(out), self.error

    def _read_output(self, msg_id: str, out: list[str], quiet_s: float) -> bool:
        """Read the cell's output until none comes for quiet_s; True once it is idle."""
        while True:
            try:
                msg = self.kc.get_iopub_msg(timeout=quiet_s)
            except queue.Empty:
                return False
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            kind, content = msg["msg_type"], msg["content"]
            if kind == "stream":
                out.append(content["text"])
            elif kind in ("display_data", "update_display_data"):   # %%cluster's output
                out.append(content["data"].get("text/plain", ""))
            elif kind == "error":
                self.error = content
            elif kind == "status" and content["execution_state"] == "idle":
                return True

    def close(self) -> None:
        try:
            self.run("%cluster stop", timeout=60)
        finally:
            self.kc.stop_channels()
            self.km.shutdown_kernel(now=True)


@pytest.fixture
def kernel():
    k = Kernel()
    try:
        out, error = k.run("%load_ext nbcluster\n%cluster start -n 2")
        assert error is None and "started a local cluster of 2 workers" in out, out
        yield k
    finally:
        k.close()


def answers_in(text: str) -> list[str]:
    """What each debugger command printed (the text between one prompt's line and the next)."""
    chunks = text.split("(Pdb) ")
    return [c.split("\n", 1)[1] if "\n" in c else "" for c in chunks[1:]]


def test_post_mortem_in_the_notebook_after_submit(kernel):
    out, error = kernel.run(
        "from nbcluster.client.latest import latest\n"
        "def inner(a):\n    b = a * 10\n    return b / 0\n"
        "def outer(x):\n    a = x + 1\n    return inner(a)\n"
        "try:\n    latest().submit(outer, 4).result(timeout=60)\n"
        "except ZeroDivisionError as e:\n    err = e\n"
        "err.debug()",
        ["p b", "up", "p a * 2", "!a = 7", "p a", "q"])
    assert error is None, error
    answers = answers_in(out)
    assert answers[0] == "50\n" and "outer()" in answers[1] and answers[2] == "10\n"
    assert answers[4] == "7\n"
    assert "[debugger on worker w" in out and "the debugger quit" in out


def test_cluster_debug_after_a_failed_cell_goes_through_each_worker(kernel):
    out, error = kernel.run("%%cluster\ndef f(a):\n    b = a + 1\n    return b / 0\nf(41)")
    assert error is not None and error["ename"] == "RemoteErrorGroup"
    out, error = kernel.run("%cluster debug", ["p b", "q", "p b + 1", "q"])
    assert error is None, error
    assert answers_in(out)[::2] == ["42\n", "43\n"]
    assert "[failure 1 of 2: worker w" in out and "[failure 2 of 2: worker w" in out


def test_breakpoint_in_a_task_prompts_under_the_waiting_cell(kernel):
    out, error = kernel.run(
        "from nbcluster.client.latest import latest\n"
        "def paused(x):\n    a = x * 3\n    breakpoint()\n    return a + 1\n"
        "print('result', latest().submit(paused, 2).result(timeout=120))",
        ["p a", "!a = 10", "c"])
    assert error is None, error
    assert answers_in(out)[0] == "6\n"
    assert "is paused at a breakpoint" in out and "result 11" in out


def test_breakpoint_in_a_cluster_cell(kernel):
    out, error = kernel.run("%%cluster --targets 0\nx = 6\nbreakpoint()\nprint('after', x)",
                            ["p x", "!x = 7", "c"])
    assert error is None, error
    assert answers_in(out)[0] == "6\n"
    assert "after 7" in out
