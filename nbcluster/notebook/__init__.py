"""The notebook layer: magics, progress widgets, the worker panel and the error explorer.

The only part of nbcluster that imports IPython's display machinery and ipywidgets; it is
loaded by `%load_ext nbcluster` (or by calling `panel()` / `explore()`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:   # the heavy modules load when first used
    from ..client.client import Client
    from .explorer import ErrorExplorer
    from .panel import WorkerPanel

__all__ = ["load_ipython_extension", "unload_ipython_extension", "panel", "explore",
           "has_frontend"]


def has_frontend(shell: Any = None) -> bool:
    """Is this a kernel with a front end that shows displays and widgets (Jupyter, VS Code),
    rather than terminal IPython?"""
    if shell is None:
        from IPython import get_ipython
        shell = get_ipython()
    return getattr(shell, "kernel", None) is not None


def load_ipython_extension(shell) -> None:
    """`%load_ext nbcluster`: the magics; in a notebook, widgets for bars and errors."""
    from .. import report
    from ..client import bars
    from ..errors import NBClusterError
    from .magics import ClusterMagics

    rich = has_frontend(shell)
    magics = ClusterMagics(shell, rich)
    shell.register_magics(magics)
    if rich:
        from ..client.client import Client
        from ..cluster.local import LocalCluster
        from .bars import WidgetBar
        bars.set_progress_factory(WidgetBar)
        report.set_viewer(_show_explorer)
        # a cluster or client as a cell's value shows the live worker panel
        formatter = shell.display_formatter.ipython_display_formatter
        formatter.for_type(LocalCluster, _show_panel)
        formatter.for_type(Client, _show_panel)

    def on_error(shell, etype, value, tb, tb_offset=None):
        # The remote story (each failure's traceback once, grouped) instead of a local
        # traceback that would only show nbcluster's own frames; then the explorer.
        magics.last_error = value
        shell._showtraceback(etype, value, report.text_report(value).splitlines())
        if rich:
            _show_explorer(value)

    shell.set_custom_exc((NBClusterError,), on_error)


def unload_ipython_extension(shell) -> None:
    from .. import report
    from ..client import bars
    bars.set_progress_factory(bars._Tqdm)
    report.set_viewer(report._print_report)
    shell.set_custom_exc((), None)


def _show_explorer(error: BaseException) -> None:
    from IPython.display import display

    from .explorer import ErrorExplorer
    display(ErrorExplorer(error))


def _show_panel(obj) -> bool:
    """The worker panel for a cell's value that is a Client or LocalCluster."""
    from IPython.display import display

    from ..client.client import Client
    from .panel import WorkerPanel
    display(WorkerPanel(obj if isinstance(obj, Client) else obj.default_client()))
    return True


def panel(client: Client | None = None) -> WorkerPanel:
    """A live panel of the workers of client (default: the current one)."""
    from ..patterns.session import current_client
    from .panel import WorkerPanel
    return WorkerPanel(current_client(client))


def explore(error: BaseException) -> ErrorExplorer:
    """The error explorer widget for a RemoteError or RemoteErrorGroup."""
    from .explorer import ErrorExplorer
    return ErrorExplorer(error)
