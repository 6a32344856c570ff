"""Notebooks run in a real kernel (nbclient), and what a cell showed, as text (for the tests
of notebooks, the README, the magics and remote exceptions)."""

import time

import nbformat
from nbclient import NotebookClient


def cell_text(cell) -> str:
    parts = []
    for out in cell.get("outputs", []):
        if out.output_type == "stream":
            parts.append(out.text)
        elif out.output_type in ("execute_result", "display_data"):
            parts.append(out.data.get("text/plain", ""))
        elif out.output_type == "error":
            parts.append("\n".join(out.traceback))
    return "".join(parts)


class TimedClient(NotebookClient):
    """Records (arrival time, cell index, message) of every iopub message."""

    def __init__(self, nb, **kw):
        super().__init__(nb, **kw)
        self.messages: list[tuple[float, int, dict]] = []
        self.cell_done: dict[int, float] = {}

    def process_message(self, msg, cell, cell_index):
        self.messages.append((time.monotonic(), cell_index, msg))
        if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
            self.cell_done[cell_index] = time.monotonic()
        return super().process_message(msg, cell, cell_index)


def run(cells: list[str]) -> tuple[nbformat.NotebookNode, TimedClient]:
    sources = ["%load_ext nbcluster\n%cluster start -n 2", *cells, "%cluster stop"]
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in sources])
    client = TimedClient(nb, timeout=120, kernel_name="python3", allow_errors=True)
    client.execute()
    assert "stopped" in cell_text(nb.cells[-1])
    return nb, client
