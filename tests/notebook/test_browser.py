"""What a person sees in JupyterLab, in headless Chromium driven by Playwright: the progress
bar reaching 100 %, the worker panel following a killed worker, the error explorer showing a
frame's locals after a click. Screenshots go to test-artifacts/."""


import pytest

from ..support.jupyterlab import (
    TOKEN,
    WAIT_MS,
    chromium,
    open_notebook,
    require_browser,
    run_cell,
    shots_dir,
    write_notebook,
)

pytestmark = pytest.mark.timeout(900)

require_browser()

CELLS = [
    "%load_ext nbcluster\n%cluster start -n 2",
    "import time\ndef slow(v):\n    time.sleep(0.02)\n    return v\n"
    "r = %pmap slow  range(200)\nprint('mapped', len(r))",
    "import nbcluster\nnbcluster.panel()",
    "from nbcluster.testing import kill_worker\ncluster = get_ipython().magics_manager"
    ".registry['ClusterMagics'].cluster\n"
    "kill_worker(cluster, 'w1', client=cluster.default_client())"
    "\nprint('killed w1')",
    "%%cluster --targets 0\ndef f(a):\n    b = a + 1\n    return b / 0\nf(41)",
    "%cluster stop",
]


def test_progress_panel_and_explorer_in_jupyterlab(lab, netns, request, tmp_path):
    write_notebook(tmp_path / "magics.ipynb", CELLS)
    shots = shots_dir(request.node.name)
    with chromium(tmp_path, netns, shots) as page:
        open_notebook(page, f"{lab}/lab/tree/magics.ipynb?token={TOKEN}")
        run_cell(page, 0, timeout_s=WAIT_MS / 1000)
        assert "started a local cluster of 2 workers" in page.locator(
            ".jp-Cell").nth(0).inner_text()

        run_cell(page, 1)   # the bar appears after 0.5 s and ends full
        bar = page.locator(".nbcluster-progress").first
        bar.wait_for(timeout=WAIT_MS)
        page.wait_for_function(
            "() => [...document.querySelectorAll('.nbcluster-progress')].some("
            "b => b.innerText.includes('200/200'))", timeout=WAIT_MS)
        fill = bar.locator(".progress-bar").first
        width = page.evaluate("e => e.style.width || getComputedStyle(e).width",
                              fill.element_handle())
        assert width in ("100%", "100.0%") or width.endswith("px"), width
        if width.endswith("px"):   # computed: compare with the track
            track = bar.locator(".progress").first.bounding_box()["width"]
            assert abs(float(width[:-2]) - track) < 2
        assert "mapped 200" in page.locator(".jp-Cell").nth(1).inner_text()
        # element shots: a full-page shot cannot scroll JupyterLab's notebook panel
        page.locator(".jp-Cell").nth(1).screenshot(path=str(shots / "1-progress.png"))

        run_cell(page, 2)
        panel = page.locator(".nbcluster-panel").first
        panel.wait_for(timeout=WAIT_MS)
        page.wait_for_function("() => document.querySelector('.nbcluster-panel')"
                               ".innerText.includes('2 workers')", timeout=WAIT_MS)
        assert panel.locator("tr[data-worker='w1']").count() == 1
        panel.screenshot(path=str(shots / "2-panel.png"))

        run_cell(page, 3)   # kill w1: its row goes, a replacement joins
        page.wait_for_function(
            "() => !document.querySelector(\".nbcluster-panel tr[data-worker='w1']\")",
            timeout=WAIT_MS)
        panel.screenshot(path=str(shots / "3-panel-after-kill.png"))

        run_cell(page, 4)   # a failing cell: report and explorer
        failing = page.locator(".jp-Cell").nth(4)
        assert "ZeroDivisionError at line 3 of f" in failing.inner_text()
        explorer = failing.locator(".nbcluster-explorer")
        explorer.wait_for(timeout=WAIT_MS)
        frames = explorer.locator("select").nth(2)
        labels = [o.inner_text() for o in frames.locator("option").all()]
        outer = next(t for t in labels if t.split()[0] == "<module>")
        frames.select_option(label=outer)   # click the cell's frame: its locals
        page.wait_for_function("() => document.querySelector('.nbcluster-frame')"
                               ".innerText.includes('f(41)')", timeout=WAIT_MS)
        inner = [t for t in labels if t.split()[0] == "f"]
        assert inner, labels
        inner = inner[0]
        frames.select_option(label=inner)   # then f's frame: a = 41, b = 42
        page.wait_for_function(
            "() => { const t = document.querySelector('.nbcluster-frame').innerText;"
            " return t.includes('return b / 0') && /b\\s+42/.test(t); }", timeout=WAIT_MS)
        explorer.screenshot(path=str(shots / "4-explorer.png"))
        failing.locator(".jp-RenderedText[data-mime-type='application/vnd.jupyter.stderr']"
                        ).first.screenshot(path=str(shots / "5-error-report.png"))
        # the news pop-up never showed (it would cover the notebook)
        assert page.get_by_text("official Jupyter news").count() == 0

        run_cell(page, 5)
        assert "stopped" in page.locator(".jp-Cell").nth(5).inner_text()
