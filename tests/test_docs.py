"""The docs site builds with warnings as errors: every public name in the API reference, the
tutorials executed with their outputs, the command line and the magics, and no process of
the build (kernels, the clusters they start) left behind."""

import contextlib
import html
import os
import posixpath
import re
import signal
import subprocess
import sys
import time
import tomllib
import uuid
from pathlib import Path

import pytest
from sphinx.util.inventory import InventoryFile

import nbcluster

ROOT = Path(__file__).parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
MARK_ENV = "NBCLUSTER_DOCS_BUILD"   # set in the build's environment: its descendants inherit it
BUILD_TIMEOUT_S = 480               # runs the tutorials: ~40 s idle, minutes on a loaded machine
LEFTOVER_WAIT_S = 30


def processes_marked(mark: str) -> list[int]:
    """Pids of the live processes whose environment holds MARK_ENV=mark."""
    needle = f"{MARK_ENV}={mark}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except OSError:   # gone meanwhile, or not ours to read
            pass
    return found


SHOWN = {   # page: what it shows that only running the code could have printed
    "tutorials/01-getting-started": "[0, 1, 4, 9, 16] 10000 333283335000",
    "tutorials/02-parallel-collections": "tiny elements batched: True",
    "tutorials/03-mapreduce-word-count": "same as serial: True",
    "tutorials/04-errors-and-faults": "all results right: True",
    "tutorials/05-notebook-magics": "total is still 499500",
    "errors": "its worker was lost 4 times",
    "cli": "usage: nbcluster start",
    "magics": "%%cluster",
    "getting-started": "client.submit(pow, 2, 10)",
}


def build_site(out: Path) -> None:
    """sphinx-build -W into out; fails with the build's log, or if a process of the build
    (a kernel, a cluster it started) outlives it."""
    mark = uuid.uuid4().hex
    try:
        build = subprocess.run(
            [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-b", "html",
             str(ROOT / "docs"), str(out)],
            capture_output=True, text=True, timeout=BUILD_TIMEOUT_S, cwd=ROOT,
            env={**os.environ, MARK_ENV: mark})
        assert build.returncode == 0, (f"sphinx-build failed (exit {build.returncode}):\n"
                                       f"{build.stdout[-3000:]}\n{build.stderr[-8000:]}")
    finally:
        deadline = time.monotonic() + LEFTOVER_WAIT_S
        while processes_marked(mark) and time.monotonic() < deadline:
            time.sleep(0.5)
        leftovers = processes_marked(mark)
        for pid in leftovers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    assert not leftovers, f"the docs build left processes behind: {leftovers}"


def test_the_test_extra_has_what_the_docs_extra_has():
    """The README's test command installs .[test] only, and the suite builds the docs."""
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    assert extras["docs"] and set(extras["docs"]) <= set(extras["test"])


def page_text(path: Path) -> str:
    """A page's text without tags (pygments splits code into spans)."""
    return html.unescape(re.sub(r"<[^>]+>", "", path.read_text()))


# One test, so that `pytest -n 2` builds the site once (a module fixture would build it once
# per xdist worker).
@pytest.mark.slow
@pytest.mark.timeout(BUILD_TIMEOUT_S + LEFTOVER_WAIT_S + 60)
def test_docs_site_builds_with_every_public_name_and_executed_tutorials(tmp_path):
    site = tmp_path / "html"
    build_site(site)

    with open(site / "objects.inv", "rb") as f:
        inventory = InventoryFile.load(f, "", posixpath.join)
    documented = {name: getattr(item, "uri", None) or item[2]   # Sphinx 9 | 8
                  for objects in inventory.values() for name, item in objects.items()}
    missing = [n for n in nbcluster.__all__ if f"nbcluster.{n}" not in documented]
    assert not missing, f"not in the docs: {missing}"
    elsewhere = [n for n in nbcluster.__all__
                 if not documented[f"nbcluster.{n}"].startswith("api/")]
    assert not elsewhere, f"documented outside the API reference: {elsewhere}"

    assert NOTEBOOKS
    for notebook in NOTEBOOKS:
        assert (site / "tutorials" / f"{notebook.stem}.html").exists(), notebook.name
    for page, shown in SHOWN.items():
        assert shown in page_text(site / f"{page}.html"), f"{page}.html lacks {shown!r}"
