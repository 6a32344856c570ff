"""The live debugger as a person uses it in JupyterLab (headless Chromium, Playwright): a cell
fails on a worker; `%cluster debug` opens pdb on that worker, answered through JupyterLab's
stdin box under the cell; then the failed cell's error explorer evaluates an expression in
the live frame, and says so once the frame is gone. Screenshots: test-artifacts/<test>/."""


import pytest

from ..support.jupyterlab import (
    TOKEN,
    WAIT_MS,
    cell,
    chromium,
    open_notebook,
    require_browser,
    run_cell,
    shots_dir,
    start_cell,
    wait_cell_done,
    write_notebook,
)

pytestmark = pytest.mark.timeout(900)

require_browser()

CELLS = [
    "%load_ext nbcluster\n%cluster start -n 2",
    "%%cluster --targets 0\ndef f(a):\n    b = a + 1\n    return b / 0\nf(41)",
    "%cluster debug",
    "%cluster stop",
]

# JupyterLab 4's stdin box; an answered one stays, soft-hidden, its answer echoed as stdout
OPEN_STDIN = ".jp-OutputArea-stdin-item:not(.jp-OutputArea-stdin-hiding) input.jp-Stdin-input"


def type_into_stdin(page, index: int, line: str) -> None:
    """Wait for the stdin box under cell `index`, type `line` into it and press Enter."""
    box = cell(page, index).locator(OPEN_STDIN)
    box.wait_for(state="visible", timeout=WAIT_MS)
    box.fill(line)
    box.press("Enter")


def wait_text(page, index: int, css: str, pattern: str) -> None:
    """Wait until the element `css` in cell `index` shows text matching regex `pattern`."""
    page.wait_for_function(
        "([i, css, pattern]) => { const c = document.querySelectorAll('.jp-Notebook .jp-Cell')"
        "[i]; const e = c && c.querySelector(css);"
        " return !!e && new RegExp(pattern).test(e.innerText); }",
        arg=[index, css, pattern], timeout=WAIT_MS)


def test_debugger_stdin_and_explorer_box_in_jupyterlab(lab, netns, request, tmp_path):
    write_notebook(tmp_path / "debugger.ipynb", CELLS)
    shots = shots_dir(request.node.name)
    with chromium(tmp_path, netns, shots) as page:
        open_notebook(page, f"{lab}/lab/tree/debugger.ipynb?token={TOKEN}")
        run_cell(page, 0, timeout_s=WAIT_MS / 1000)
        assert "started a local cluster of 2 workers" in cell(page, 0).inner_text()
        run_cell(page, 1)   # fails on worker 0: the report, and the explorer
        assert "ZeroDivisionError at line 3 of f" in cell(page, 1).inner_text()
        cell(page, 1).locator(".nbcluster-explorer").wait_for(timeout=WAIT_MS)

        start_cell(page, 2)   # %cluster debug: pdb on the worker, its prompt in the stdin box
        type_into_stdin(page, 2, "p b")
        wait_text(page, 2, ".jp-OutputArea", r"\(Pdb\)\s+p b\s*\n42\n")   # b, on the worker
        output = cell(page, 2).locator(".jp-OutputArea").inner_text()
        assert "[debugger on worker" in output and "-> return b / 0" in output, output
        cell(page, 2).screenshot(path=str(shots / "6-debugger-stdin.png"))
        type_into_stdin(page, 2, "q")
        wait_text(page, 2, ".jp-OutputArea", "the debugger quit")
        wait_cell_done(page, 2)
        assert cell(page, 2).locator(OPEN_STDIN).count() == 0   # no prompt left

        explorer = cell(page, 1).locator(".nbcluster-explorer")
        box = explorer.locator(".nbcluster-expression input")
        box.wait_for(state="visible", timeout=WAIT_MS)
        box.click()
        box.fill("a + b")
        box.press("Enter")   # in f's frame (selected: the innermost), live on the worker
        wait_text(page, 1, ".nbcluster-answer", r">>> a \+ b\s*\n83$")
        explorer.screenshot(path=str(shots / "7-explorer-eval.png"))

        run_cell(page, 3)   # the cluster stops: the frame is gone, the box says so
        assert "stopped" in cell(page, 3).inner_text()
        box.press("Enter")
        wait_text(page, 1, ".nbcluster-answer", "this frame is not live any more")
        explorer.screenshot(path=str(shots / "8-explorer-frame-gone.png"))
