"""The magics in a real kernel (nbclient), and in terminal IPython: values, live output,
errors. Every notebook here starts its own cluster with %cluster start and stops it."""

import json
import subprocess
import sys
import time

import nbformat
import pytest
from nbclient import NotebookClient

from ..support.notebooks import cell_text as text
from ..support.notebooks import run

pytestmark = pytest.mark.timeout(180)


def html(cell) -> str:
    return "".join(o.data.get("text/html", "") for o in cell.outputs
                   if o.output_type in ("display_data", "execute_result"))


def test_cluster_cell_push_pull_and_pmap_values():
    nb, _ = run([
        "%%cluster\nimport os\nprint('pid', os.getpid())\nanswer = 6 * 7\nf'answer={answer}'",
        "factor = 3\n%cluster push factor",
        "pulled = %cluster pull answer factor\nprint(sorted(pulled.items()))",
        "r = %pmap lambda v: v * factor  range(8)\nprint(r)",
        "%%cluster --targets 1\nprint('only me')",
        "%%cluster --targets w1,w2 --labels nosuchlabel\nprint('nobody')",
    ])
    c = nb.cells
    assert "started a local cluster of 2 workers" in text(c[0])
    out = text(c[1])
    assert "[w1]" in out and "[w2]" in out and out.count("answer=42") == 2
    assert out.count("pid") == 2
    assert "<details" in html(c[1]) and "Out[1]" in html(c[1])
    assert "pushed factor to 2 workers" in text(c[2])
    pulled = text(c[3])
    for w in ("w1", "w2"):
        assert f"('{w}', {{'answer': 42, 'factor': 3}})" in pulled
    assert "[0, 3, 6, 9, 12, 15, 18, 21]" in text(c[4])
    assert text(c[5]).count("only me") == 1
    assert [o.ename for o in c[6].outputs if o.output_type == "error"] == ["ValueError"]


def test_output_arrives_while_the_cell_runs():
    nb, client = run(["%%cluster\nimport time\nprint('first line')\ntime.sleep(3)\n"
                      "print('second line')"])
    arrivals = [t for t, i, m in client.messages if i == 1 and "first line" in json.dumps(
        m["content"])]
    assert arrivals, "the first line never arrived"
    assert client.cell_done[1] - arrivals[0] > 2.0, "the first line came only at the end"
    assert "second line" in text(nb.cells[1])


def test_rich_display_from_workers():
    nb, _ = run(["%%cluster\nfrom IPython.display import display, HTML\n"
                 "display(HTML('<b class=\"from-worker\">bold</b>'))\nprint('after')",
                 "%%cluster --targets 0\nimport matplotlib.pyplot as plt\nplt.plot([1, 3, 2])"])
    assert html(nb.cells[1]).count('<b class="from-worker">bold</b>') == 2
    assert html(nb.cells[2]).count("<img src='data:image/png;base64,iVBOR") == 1   # inline


def test_a_failing_cell_shows_each_failure_once_and_the_explorer():
    nb, _ = run(["%%cluster\ndef f(a):\n    b = a + 1\n    return b / 0\nf(41)",
                 "%cluster explore"])
    cell = nb.cells[1]
    [error] = [o for o in cell.outputs if o.output_type == "error"]
    report = "\n".join(error.traceback)
    assert error.ename == "RemoteErrorGroup"
    assert "2 x ZeroDivisionError at line 3 of f" in report and "on 2 workers" in report
    assert report.count("return b / 0") == 1          # one traceback for the group
    assert "b = 42" in report                          # the innermost frame's locals
    widgets = [o for o in cell.outputs if "application/vnd.jupyter.widget-view+json" in o.get(
        "data", {})]
    assert any("ErrorExplorer" in o.data["text/plain"] for o in widgets)
    assert "ErrorExplorer" in text(nb.cells[2])


def test_terminal_ipython_prints_worker_lines(tmp_path):
    script = tmp_path / "session.ipy"
    script.write_text("%load_ext nbcluster\n%cluster start -n 2\n"
                      "get_ipython().run_cell_magic('cluster', '', "
                      "'print(\"hello from\", 6 * 7)')\n"
                      "r = %pmap abs  [-1, -2]\nprint('pmap', r)\n%cluster status\n%cluster stop\n")
    out = subprocess.run([sys.executable, "-m", "IPython", "--no-banner", "--quick",
                          "--colors=NoColor", str(script)], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert "[w1] hello from 42" in out.stdout and "[w2] hello from 42" in out.stdout
    assert "pmap [1, 2]" in out.stdout and "2 workers, 0 queued" in out.stdout


def widget_states(nb) -> list[dict]:
    states = nb.metadata["widgets"]["application/vnd.jupyter.widget-state+json"]["state"]
    return [m["state"] | {"_model": m["model_name"]} for m in states.values()]


def test_progress_widget_reaches_the_total_without_flooding():
    nb, client = run(["import time\ndef slow(v):\n    time.sleep(0.02)\n    return v\n"
                      "t0 = time.monotonic()\nr = %pmap slow  range(150)\n"
                      "print(len(r), 'in', round(time.monotonic() - t0, 1), 's')"])
    assert "150 in" in text(nb.cells[1])
    bars = [s for s in widget_states(nb) if s["_model"] == "IntProgressModel"]
    # a loaded machine may also show cell 0's "workers joining" bar (after 0.5 s): not ours
    bars = [b for b in bars if b["max"] != 2]
    assert [(b["value"], b["max"], b["bar_style"]) for b in bars] == [(150, 150, "success")]
    labels = [s["value"] for s in widget_states(nb) if s["_model"] == "HTMLModel"]
    assert any("150/150" in v and "150 done" in v for v in labels)
    seconds = float(text(nb.cells[1]).split(" in ")[1].split()[0])
    updates = [m for _, i, m in client.messages if i == 1 and m["msg_type"] == "comm_msg"]
    # throttled: 10 pushes a second, each one message for the bar and one for its label
    assert len(updates) <= 25 * max(seconds, 1) + 10


def test_cancel_from_the_bar_stops_the_remaining_tasks():
    import threading

    import nbcluster
    from nbcluster.client import bars
    from nbcluster.testing import throwaway_cluster, wait_for

    cancels = []

    class Recording(bars._NoBar):
        def __init__(self, total, desc, cancel=None):
            if cancel is not None:   # (a cluster starting shows a bar with no Cancel)
                cancels.append(cancel)

    bars.set_progress_factory(Recording)
    try:
        with throwaway_cluster(2) as cluster:
            client = cluster.client()
            threading.Timer(1.0, lambda: cancels[0]()).start()
            t0 = time.monotonic()
            with pytest.raises(nbcluster.TaskCancelled):
                nbcluster.pmap(time.sleep, [2] * 200, client=client, chunksize=1)
            assert time.monotonic() - t0 < 60         # not the 200 s the whole map takes
            wait_for(lambda: client.status()["running"] == 0 and client.status()["queued"] == 0,
                     what="the cancelled tasks to leave the cluster")
    finally:
        bars.set_progress_factory(bars._Tqdm)


def test_the_cluster_as_a_cell_value_shows_the_panel_with_waiting_tasks():
    nb, _ = run(["cluster = get_ipython().magics_manager.registry['ClusterMagics'].cluster\n"
                 "client = cluster.default_client()\n"
                 "waiting = client.options(labels={'gpu'}).submit(abs, -1)\n"
                 "import time; busy = client.submit(time.sleep, 3); time.sleep(0.5)\ncluster",
                 "waiting.cancel()"])   # busy runs on until the cluster stops
    panels = [s["value"] for s in widget_states(nb) if s["_model"] == "HTMLModel"
              and "nbcluster-panel" in s.get("_dom_classes", ())]
    assert panels and "2 workers" in panels[0]
    assert "1 task waiting for labels no worker has" in panels[0] and "gpu" in panels[0]
    assert "data-worker='w1'" in panels[0] and "data-worker='w2'" in panels[0]
    assert "<td>task 2</td>" in panels[0]            # the running task, as this client numbers it


def test_a_worker_printing_in_a_tight_loop_is_rate_limited():
    nb, client = run(["%%cluster\nfor i in range(300_000):\n    print('line', i)"])
    seconds = client.cell_done[1] - min(t for t, i, _ in client.messages if i == 1)
    updates = [m for _, i, m in client.messages if i == 1 and m["msg_type"] ==
               "update_display_data"]
    assert len(updates) <= 2 * (seconds / 0.2 + 3)      # one per worker every FLUSH_S at most
    shown = html(nb.cells[1])
    assert "line 299999" in shown and "earlier characters or outputs not shown" in shown
    assert len(shown) < 1_000_000                        # the most recent 200k characters each


def test_noblock_returns_at_once_and_output_lands_under_its_own_cell():
    nb, client = run(["%%cluster --noblock\nimport time\ntime.sleep(1.5)\nprint('late line')",
                      "run = _\nprint('next cell ran')\nrun.wait()\n"
                      "print(sorted(f.result() is None for f in run.futures.values()))"])
    started = min(t for t, i, _ in client.messages if i == 1)
    assert client.cell_done[1] - started < 1.0           # the cell did not wait for the workers
    assert "CellRun on 2 workers" in text(nb.cells[1])
    assert text(nb.cells[1]).count("late line") == 2     # under the cell that ran it...
    assert "late line" not in text(nb.cells[2])          # ...not under the one running then
    assert "[True, True]" in text(nb.cells[2])


def test_first_use_connects_to_the_cluster_of_the_connection_file(tmp_path, monkeypatch):
    from nbcluster import LocalCluster
    conn = tmp_path / "cluster.json"
    with LocalCluster(2, connection_file=conn) as cluster:
        monkeypatch.setenv("NBCLUSTER_CONNECTION", str(conn))   # the kernel inherits it
        nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in [
            "%load_ext nbcluster", "%%cluster\nimport os\nprint('worker pid', os.getpid())"]])
        NotebookClient(nb, timeout=60, kernel_name="python3").execute()
        said = text(nb.cells[1])
        assert f"connected to the cluster of {conn} (2 workers)" in said
        assert "started a local cluster" not in said
        for pid in cluster.pids()["workers"]:
            assert f"worker pid {pid}" in said


def test_magic_lines_may_end_in_a_comment_as_in_the_readme():
    nb, _ = run([
        "data = [1, 2, 3]\ncount = 3\n"
        "squares = %pmap lambda x: x * x  range(10_000)  # a parallel map with a progress bar\n"
        "%cluster push data                             # this notebook's `data` on every worker\n"
        "%cluster push count  # {worker: count}\n"
        "counts = %cluster pull count                   # {worker id: count}\n"
        "hashes = %pmap str.upper  ['a#b', 'c']  # a # in a string is no comment\n"
        "print(squares[:4], len(squares), sorted(counts.items()), hashes)",
        "%%cluster --targets 0  # only the first worker\nprint('data on', len(data))",
    ])
    out = text(nb.cells[1])
    assert "[0, 1, 4, 9] 10000 [('w1', 3), ('w2', 3)] ['A#B', 'C']" in out, out
    assert "pushed data to 2 workers" in out
    assert text(nb.cells[2]).count("data on 3") == 1, text(nb.cells[2])


def test_failures_group_by_place_whatever_each_workers_cell_counter():
    # A cell on one worker only: w1's cell counter is then ahead of w2's, so the failing
    # cell's file is <ipython-input-3-...> on one and <ipython-input-2-...> on the other.
    nb, _ = run(["%%cluster --targets 0\nx = 1",
                 "%%cluster\ndef f(a):\n    b = a + 1\n    return b / 0\nf(41)"])
    [error] = [o for o in nb.cells[2].outputs if o.output_type == "error"]
    report = "\n".join(error.traceback)
    assert "2 x ZeroDivisionError at line 3 of f" in report, report
    assert report.count("== ") == 1, report          # one group, not one per counter


def test_matplotlib_inline_inside_a_cluster_cell():
    nb, _ = run(["%%cluster --targets 0\n%matplotlib inline\nimport matplotlib.pyplot as plt\n"
                 "plt.plot([1, 3, 2])\nprint('plotted')"])
    cell = nb.cells[1]
    assert [o.ename for o in cell.outputs if o.output_type == "error"] == [], text(cell)
    assert "plotted" in text(cell)
    assert html(cell).count("<img src='data:image/png;base64,iVBOR") == 1


def test_the_bar_counts_as_running_only_what_the_workers_can_hold():
    """Running means started on a worker: never more than the workers' slots (2 here), however
    many tasks are in flight. (A count above 0 needs futures that know they started, which
    the RUNNING state of futures brings; before it, this bar shows 0 running.)"""
    import nbcluster
    from nbcluster.client import bars
    from nbcluster.testing import throwaway_cluster

    shown: list[int] = []

    class Recording(bars._NoBar):
        def __init__(self, total, desc, cancel=None):
            pass

        def update(self, done=0, failed=0, running=None, overhead=None):
            if running is not None:
                shown.append(running)

    bars.set_progress_factory(Recording)
    try:
        with throwaway_cluster(2) as cluster:
            client = cluster.client()
            slots = sum(w["slots"] for w in client.workers())
            assert nbcluster.pmap(time.sleep, [0.05] * 40, client=client, chunksize=1) \
                == [None] * 40
            futures = [client.submit(time.sleep, 0.05) for _ in range(20)]
            bars.progress(futures, wait=True)
    finally:
        bars.set_progress_factory(bars._Tqdm)
    assert shown, "the map reported no running count"
    assert max(shown) <= slots, shown
