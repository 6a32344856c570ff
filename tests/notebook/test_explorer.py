"""The error explorer's expression box, on real failures of real workers. Mostly the widget is
built in this process (ipywidgets without a front end), its box typed into and submitted as
a front end would (a value, then Enter's "submit" message through the widget's comm), and
the answer read from its widget; one test does the same to a real kernel's widgets with
comm messages (jupyter_client). In JupyterLab itself: test_browser_debugger.py."""

import html
import os
import queue
import re
import time

import pytest

from nbcluster import RemoteError, RemoteErrorGroup, WorkerLost
from nbcluster.notebook.explorer import ErrorExplorer
from nbcluster.testing import throwaway_cluster

pytestmark = pytest.mark.timeout(180)


def inner(a):
    b = a + 1
    items = list(range(b))
    return items[b]   # IndexError, with a, b, items in the frame


def outer(a):
    scale = 3
    return inner(a * scale)


def fails_with_pid(a):
    pid = os.getpid()
    raise ValueError(f"element {a} on {pid}")


def exits(_):
    os._exit(3)


def failure_of(future) -> BaseException:
    with pytest.raises((RemoteError, WorkerLost)) as info:
        future.result(timeout=60)
    return info.value


def ask(explorer: ErrorExplorer, expression: str) -> str:
    """Type `expression` into the box and press Enter, as the front end sends them; return
    the answer as it reads (its HTML without tags, unescaped)."""
    explorer.expression.value = expression
    explorer.expression.comm.handle_msg(   # what a front end's Enter sends the kernel
        {"content": {"data": {"method": "custom", "content": {"event": "submit"}}},
         "buffers": []})
    return html.unescape(re.sub(r"<[^>]+>", "", explorer.answer.value)).strip()


def select_frame(explorer: ErrorExplorer, name: str) -> None:
    [index] = [i for label, i in explorer.frame_list.options if label.split()[0] == name]
    explorer.frame_list.value = index


@pytest.fixture(scope="module")
def client(shared_cluster):
    """One client of the module's cluster (each test's failures stay apart: own tasks)."""
    return shared_cluster.client()


def test_the_box_evaluates_in_the_selected_frame_live_on_its_worker(client):
    error = failure_of(client.submit(outer, 4))
    explorer = ErrorExplorer(error)
    assert explorer.frame_list.options[explorer.frame_list.value][0].startswith("inner")
    assert not explorer.expression.disabled
    assert explorer.answer.value == ""

    answer = ask(explorer, "b")   # the innermost frame, where it failed: a = 12, b = 13
    assert answer == ">>> b\n13", answer
    # live objects, not the captured reprs: a call on the worker's list, the worker's pid
    assert ask(explorer, "items[3:5] + [len(items)]") == ">>> items[3:5] + [len(items)]\n[3, 4, 13]"
    assert ask(explorer, "__import__('os').getpid()").endswith(f"\n{error.worker['pid']}")

    select_frame(explorer, "outer")   # the caller's frame: its own locals
    assert explorer.answer.value == "", "an answer from another frame stays shown"
    assert ask(explorer, "a, scale") == ">>> a, scale\n(4, 3)"
    explorer.answer.value = ""
    explorer.evaluate_button.click()   # the button does what Enter does
    assert "\n(4, 3)</pre>" in explorer.answer.value

    answer = ask(explorer, "b")   # not in this frame: the exception, as Python prints it
    assert "NameError: name 'b' is not defined" in answer, answer
    answer = ask(explorer, "1 / 0")
    assert "ZeroDivisionError: division by zero" in answer, answer
    assert ask(explorer, "'<b>'") == ">>> '<b>'\n'<b>'"
    assert "\n&#x27;&lt;b&gt;&#x27;</pre>" in explorer.answer.value   # escaped, not rendered

    error.release()   # the worker lets the frames go: the box says so, the locals stay
    answer = ask(explorer, "a")
    assert "this frame is not live any more" in answer and "released" in answer, answer
    assert "the locals above" in answer
    assert "scale" in explorer.frame_view.value   # the captured locals: the fallback


def test_each_failure_of_a_group_answers_from_its_own_worker(client):
    with pytest.raises(RemoteErrorGroup) as info:
        client.map(fails_with_pid, range(4), chunksize=1)
    explorer = ErrorExplorer(info.value)
    [group] = explorer.groups
    assert len(group.errors) == 4
    for i, error in enumerate(group.errors):
        explorer.failure_list.value = i
        answer = ask(explorer, "(a, pid == __import__('os').getpid())")
        assert answer.endswith(f"\n({error.index}, True)"), answer
        assert ask(explorer, "pid").endswith(f"\n{error.worker['pid']}")
    info.value.exceptions[0].release()
    explorer.failure_list.value = 0
    assert "not live any more" in ask(explorer, "a")
    explorer.failure_list.value = 1   # the others are still kept
    assert ask(explorer, "a").endswith(f"\n{group.errors[1].index}")


def test_a_failure_without_frames_has_a_disabled_box():
    with throwaway_cluster(2, max_lost=0) as cluster:
        error = failure_of(cluster.client().submit(exits, 0))
    assert isinstance(error, WorkerLost)
    explorer = ErrorExplorer(error)
    assert explorer.expression.disabled and explorer.evaluate_button.disabled
    assert "no frames" in explorer.expression.placeholder
    assert ask(explorer, "1 + 1") == ""   # nothing asked, nothing shown
    assert "its worker was lost" in explorer.frame_view.value   # what is known of it


def test_an_expression_that_outlasts_the_wait_leaves_the_frame_live(client):
    error = failure_of(client.submit(outer, 1))
    explorer = ErrorExplorer(error)
    explorer.timeout = 1.0
    answer = ask(explorer, "__import__('time').sleep(30)")   # still sleeping on the worker
    assert "did not answer in time" in answer and "not live" not in answer, answer
    explorer.timeout = 60.0
    assert ask(explorer, "b") == ">>> b\n4"   # the frame answers again meanwhile


class KernelWidgets:
    """A real kernel spoken to as a front end does: cells executed, the widgets' comms read
    from what it publishes, and typed into with comm messages."""

    def __init__(self) -> None:
        from jupyter_client.manager import start_new_kernel
        self.km, self.kc = start_new_kernel(kernel_name="python3")
        self.states: dict[str, dict] = {}   # comm id -> the widget's state, as published

    def run(self, code: str) -> list[dict]:
        """Execute a cell; its iopub messages (the widgets' comms read on the way)."""
        return self._until_idle(self.kc.execute(code))

    def send(self, comm_id: str, data: dict) -> list[dict]:
        """A comm message to a widget, as a front end sends it; the kernel's messages until
        it is idle again."""
        msg = self.kc.session.msg("comm_msg", {"comm_id": comm_id, "data": data})
        self.kc.shell_channel.send(msg)
        return self._until_idle(msg["header"]["msg_id"])

    def find(self, **state) -> str:
        """The comm id of the one widget whose state has these values."""
        [comm_id] = [c for c, s in self.states.items()
                     if all(s.get(k) == v for k, v in state.items())]
        return comm_id

    def _until_idle(self, msg_id: str, timeout: float = 120) -> list[dict]:
        messages = []
        deadline = time.monotonic() + timeout
        while True:
            assert time.monotonic() < deadline, f"the kernel did not finish: {messages}"
            try:
                msg = self.kc.get_iopub_msg(timeout=1)
            except queue.Empty:
                continue
            content = msg["content"]
            if msg["msg_type"] in ("comm_open", "comm_msg"):
                state = content.get("data", {}).get("state", {})
                self.states.setdefault(content["comm_id"], {}).update(state)
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            messages.append(msg)
            if msg["msg_type"] == "status" and content["execution_state"] == "idle":
                return messages

    def close(self) -> None:
        try:
            self.run("%cluster stop")
        finally:
            self.kc.stop_channels()
            self.km.shutdown_kernel(now=True)


def test_the_box_answers_a_front_ends_comm_messages_in_a_real_kernel():
    kernel = KernelWidgets()
    try:
        kernel.run("%load_ext nbcluster\n%cluster start -n 2")
        kernel.run("%%cluster --targets 0\ndef f(a):\n    b = a + 1\n    return b / 0\nf(41)")
        box = kernel.find(_dom_classes=["nbcluster-expression"])
        answer = kernel.find(_dom_classes=["nbcluster-answer"])
        frames = kernel.find(description="frames")
        assert kernel.states[frames]["index"] == 1   # f's frame, the innermost

        def typed(expression: str) -> str:   # then Enter: the answer's value, as published
            kernel.send(box, {"method": "update", "state": {"value": expression},
                              "buffer_paths": []})
            kernel.send(box, {"method": "custom", "content": {"event": "submit"}})
            return html.unescape(re.sub(r"<[^>]+>", "", kernel.states[answer]["value"]))

        assert typed("a * b").strip() == ">>> a * b\n1722"
        kernel.send(frames, {"method": "update", "state": {"index": 0}, "buffer_paths": []})
        assert kernel.states[answer]["value"] == ""   # the cell's frame: f is defined there
        assert typed("f.__name__, a").startswith(">>> f.__name__, a\nNameError")
        assert typed("f.__name__").strip() == ">>> f.__name__\n'f'"
    finally:
        kernel.close()
