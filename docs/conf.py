"""Sphinx configuration of nbcluster's docs site.

Build (warnings are errors; the tutorials in notebooks/ are executed, so this takes a while):
    pip install -e '.[docs]' && sphinx-build -W --keep-going -b html docs docs/_build/html
"""

import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
sys.path[:0] = [str(DOCS.parent), str(DOCS / "_ext")]   # this checkout's nbcluster first

import nbcluster  # noqa: E402

project = "nbcluster"
author = "the nbcluster developers"
copyright = "the nbcluster developers"
release = version = nbcluster.__version__

extensions = [
    "myst_nb",                 # Markdown pages (it includes myst_parser) and executed notebooks
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",     # our docstrings use Google style (Args:, Attributes:, Raises:)
    "nbcluster_docs",          # _ext/: the command line, the magics, the __all__ check
]

exclude_patterns = ["_build", "_ext", "**.ipynb_checkpoints"]
suppress_warnings = []         # nothing is silenced: a warning fails the build (-W)

# Markdown
myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3       # links such as protocol.md#signing resolve

# The API reference: documented under the public path (nbcluster.Client), never the module
# that happens to define a name today.
autodoc_default_options = {"members": True, "show-inheritance": True}   # documented members only
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
add_module_names = True
napoleon_google_docstring = True
napoleon_numpy_docstring = False
default_role = "code"          # `name` in a docstring reads as code, as in Markdown

# The tutorials (docs/tutorials -> ../notebooks, stored without outputs) run at every build,
# each in its own kernel; a cell error fails the build unless the cell is tagged
# raises-exception (the tutorials show some errors on purpose).
nb_execution_mode = "force"
nb_execution_timeout = 300     # per cell; a loaded machine is slow, a hang still ends
nb_execution_raise_on_error = True
nb_execution_show_tb = True    # the failing cell's traceback in the build log
nb_merge_streams = True

html_theme = "furo"
html_title = f"nbcluster {release}"
html_static_path = []
