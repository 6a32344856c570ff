"""Pages made from the code at build time, so they cannot drift from it:

- ``nbcluster-cli``: each command's ``--help``, run through the entry point that
  pyproject.toml's ``[project.scripts]`` names (what a user's ``nbcluster`` runs).
- ``nbcluster-magics``: the magics ``%load_ext nbcluster`` registers, with their docstrings.
- a check that every name in ``nbcluster.__all__`` is documented as ``nbcluster.NAME``: a
  warning otherwise, which the build (``-W``) turns into a failure.
"""

from __future__ import annotations

import importlib
import inspect
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

from docutils import nodes
from docutils.parsers.rst import Directive
from sphinx.util import logging

ROOT = Path(__file__).resolve().parents[2]
HELP_COLUMNS = "90"      # argparse wraps help to $COLUMNS: fixed, so the page does not vary
HELP_TIMEOUT_S = 60

logger = logging.getLogger(__name__)


def entry_point() -> tuple[str, str]:
    """(module, function) of the `nbcluster` command, from pyproject.toml."""
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    module, _, function = scripts["nbcluster"].partition(":")
    return module, function


def command_help(*args: str) -> str:
    """What `nbcluster ARGS --help` prints."""
    module, function = entry_point()
    code = f"import sys; from {module} import {function} as main; sys.exit(main())"
    env = {**os.environ, "COLUMNS": HELP_COLUMNS,
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", code, *args, "--help"], capture_output=True,
                         text=True, env=env, cwd=ROOT, timeout=HELP_TIMEOUT_S)
    if out.returncode != 0 or not out.stdout.strip():
        raise RuntimeError(f"`nbcluster {' '.join(args)} --help` failed "
                           f"(exit {out.returncode}):\n{out.stderr}")
    return out.stdout


def section(title: str, anchor: str, *children: nodes.Node) -> nodes.section:
    node = nodes.section(ids=[anchor], names=[anchor])
    node += nodes.title(text=title)
    node.extend(children)
    return node


def literal(text: str) -> nodes.literal_block:
    return nodes.literal_block(text, text, language="text")


class CommandLine(Directive):
    """One section per subcommand of `nbcluster`, each with its --help."""

    def run(self) -> list[nodes.Node]:
        top = command_help()
        listed = re.search(r"\{([\w,-]+)\}", top)
        if not listed:
            raise self.error("no subcommands found in `nbcluster --help`:\n" + top)
        sections = [literal(top)]
        for name in listed.group(1).split(","):
            sections.append(section(f"nbcluster {name}", f"cli-{name}",
                                    literal(command_help(name))))
        return sections


class Magics(Directive):
    """One section per magic that `%load_ext nbcluster` registers, with its docstring."""

    def run(self) -> list[nodes.Node]:
        from nbcluster.notebook.magics import ClusterMagics
        module = inspect.getmodule(ClusterMagics)
        result: list[nodes.Node] = [literal(inspect.cleandoc(module.__doc__ or ""))]
        for kind, prefix in (("line", "%"), ("cell", "%%")):
            for name, method in sorted(ClusterMagics.magics[kind].items()):
                doc = inspect.getdoc(getattr(ClusterMagics, method))
                if not doc:
                    raise self.error(f"the magic {prefix}{name} has no docstring")
                result.append(section(f"{prefix}{name}", f"magic-{kind}-{name}",
                                      literal(doc)))
        return result


def check_public_names(app, env) -> None:
    """Warn (an error under -W) for each name of nbcluster.__all__ not documented as
    nbcluster.NAME."""
    import nbcluster
    documented = set(env.get_domain("py").objects)
    for name in nbcluster.__all__:
        if f"nbcluster.{name}" not in documented:
            logger.warning("nbcluster.%s is in nbcluster.__all__ but not in the API reference "
                           "(docs/api/*.md)", name)


def setup(app):
    importlib.import_module("nbcluster")   # fail early, with the import error, if it breaks
    app.add_directive("nbcluster-cli", CommandLine)
    app.add_directive("nbcluster-magics", Magics)
    app.connect("env-check-consistency", check_public_names)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
