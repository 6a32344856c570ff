"""The tutorials in notebooks/ run end to end in a real kernel (nbclient), and each cell
with an "expect" list in its metadata printed every one of those strings."""

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from .support.notebooks import cell_text

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))

pytestmark = pytest.mark.timeout(300)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_tutorial_runs_and_shows_what_it_says(path):
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=240, kernel_name="python3", allow_errors=True,
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    checked = 0
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        text = cell_text(cell)
        errors = [o.ename for o in cell.outputs if o.output_type == "error"]
        assert errors == ([cell.metadata["error"]] if "error" in cell.metadata else []), \
            f"cell {i}:\n{text}"
        for expected in cell.metadata.get("expect", []):
            assert expected in text, f"cell {i} of {path.name} lacks {expected!r}:\n{text}"
            checked += 1
    assert checked >= 3
