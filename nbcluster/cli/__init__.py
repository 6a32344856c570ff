"""The `nbcluster` command line: the top layer, it may import any other (`nbcluster demo`
uses the public API; `nbcluster broker` and `nbcluster worker` run those processes)."""

from .main import main

__all__ = ["main"]
