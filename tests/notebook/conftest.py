"""Fixtures of the browser tests (test_browser*.py); their machinery: support/jupyterlab.py."""

import pytest

from ..support import jupyterlab


@pytest.fixture
def netns():
    """A network namespace of our own (see `jupyterlab.network_namespace`); None without root."""
    with jupyterlab.network_namespace() as name:
        yield name


@pytest.fixture
def lab(tmp_path, netns):
    """A JupyterLab server on tmp_path, in netns: its base URL (write notebooks to tmp_path)."""
    with jupyterlab.jupyterlab(tmp_path, netns) as base:
        yield base
