"""The error explorer's expression box, on real failures of real workers: the widget is built
in this process (ipywidgets without a front end), its box typed into and submitted as the
front end would (a value, then Enter's "submit" message through the widget's comm), and the
answer read from its widget. In JupyterLab itself: test_browser_debugger.py."""

import html
import os
import re

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
def client():
    with throwaway_cluster(2) as cluster:
        yield cluster.client()


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
    assert "WorkerLost" in explorer.frame_view.value or "lost" in explorer.frame_view.value
