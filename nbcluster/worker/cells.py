"""Notebook cells on a worker: an IPython shell whose namespace lasts between tasks.

    %%cluster cell ──run_cell(code)──► worker: shell.run_cell ─► stdout/stderr ──► client
                                                               ─► display() / Out ──┘ ("display")

The shell is made on the first cell a worker runs (IPython is imported then, not when the
worker starts). Rich output (display(), the value of a cell's last expression, inline
matplotlib figures) goes to the client as "display" output items: a JSON mimebundle
{"data", "metadata", "execute_result"}; `clear_output` as a "clear" item. A cell that raises
fails its task with that exception and its frames, as any task would; IPython prints nothing.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from typing import Any

from .. import runtime
from ..wire import tracebacks

__all__ = ["run_cell", "push", "pull", "namespace"]

_shell: list = []


def _make_shell():
    from IPython.core.displayhook import DisplayHook
    from IPython.core.displaypub import DisplayPublisher
    from IPython.core.interactiveshell import InteractiveShell

    class Publisher(DisplayPublisher):
        def publish(self, data, metadata=None, source=None, *, transient=None, update=False,
                    **kwargs) -> None:
            runtime.emit("display", json.dumps({"data": data, "metadata": metadata or {}},
                                               default=str))

        def clear_output(self, wait: bool = False) -> None:
            runtime.emit("clear", "wait" if wait else "")

    class ResultHook(DisplayHook):
        def write_output_prompt(self) -> None:
            pass

        def write_format_data(self, format_dict, md_dict=None) -> None:
            runtime.emit("display", json.dumps({"data": format_dict, "metadata": md_dict or {},
                                                "execute_result": self.prompt_count},
                                               default=str))

        def finish_displayhook(self) -> None:
            pass

    class WorkerShell(InteractiveShell):
        def enable_gui(self, gui=None) -> None:
            # `%matplotlib inline` (gui None) needs no event loop; a worker has no screen.
            if gui not in (None, "inline"):
                raise RuntimeError(f"a worker cannot open {gui} windows: use "
                                   "%matplotlib inline (figures come back under the cell)")

        def showtraceback(self, *args: object, **kwargs: object) -> None:
            """Prints nothing: the error goes back as the task's result."""

        def showsyntaxerror(self, *args: object, **kwargs: object) -> None:
            """Prints nothing: the error goes back as the task's result."""

    # Figures show as inline PNGs (shown at the end of the cell, as in a notebook).
    os.environ.setdefault("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    shell = WorkerShell.instance(displayhook_class=ResultHook, display_pub_class=Publisher,
                                      colors="NoColor", autocall=0)
    return shell


def shell():
    """This worker's IPython shell (made on first use)."""
    if not _shell:
        _shell.append(_make_shell())
    return _shell[0]


def namespace() -> dict:
    """The namespace cells run in on this worker."""
    return shell().user_ns


def run_cell(code: str) -> None:
    """Run a cell in this worker's shell; raises what the cell raised."""
    result = shell().run_cell(code, store_history=True)
    error = result.error_before_exec or result.error_in_exec
    if error is not None:
        raise error.with_traceback(_user_frames(error.__traceback__))


def _user_frames(tb):
    """tb without IPython's own outer frames (run_code and the like)."""
    import IPython
    ipython_dir = os.path.dirname(IPython.__file__)
    while tb is not None and tb.tb_next is not None and \
            tb.tb_frame.f_code.co_filename.startswith(ipython_dir):
        tb = tb.tb_next
    return tb


tracebacks.HIDDEN_FILES.add(__file__)


def push(values: dict[str, Any]) -> list[str]:
    """Bind names in this worker's namespace; returns the names bound."""
    namespace().update(values)
    return sorted(values)


def pull(names: Iterable[str]) -> dict[str, Any]:
    """{name: value} from this worker's namespace.

    Raises:
        NameError: a name is not defined there.
    """
    ns = namespace()
    missing = [n for n in names if n not in ns]
    if missing:
        raise NameError(f"not defined on worker {runtime.WORKER.get('id', '?')}: "
                        f"{', '.join(missing)}")
    return {n: ns[n] for n in names}
