"""Lint and types hold: ruff over the package, tests and benchmarks, mypy over the package,
with the rules and strictness in pyproject.toml (why each: docs/development.md).

Both tools run as subprocesses of this interpreter, at the versions the `test` extra pins
(a new release may judge the same code differently: the pin keeps the verdict ours)."""

from __future__ import annotations

import fnmatch
import importlib.metadata
import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = next(p for p in Path(__file__).resolve().parents if (p / "pyproject.toml").exists())
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
TOOLS = ("ruff", "mypy")


def pinned(tool: str) -> str:
    """The version pattern the test extra pins tool to, e.g. "0.17.*"."""
    for requirement in PYPROJECT["project"]["optional-dependencies"]["test"]:
        m = re.fullmatch(rf"{tool}==(\S+)", requirement.replace(" ", ""))
        if m:
            return m.group(1)
    raise AssertionError(f"the test extra does not pin {tool} (write {tool}==X.Y.*)")


def run(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    """python args... in the repository's root (`-m tool ...`, or `-c code`)."""
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.parametrize("tool", TOOLS)
def test_the_tools_are_the_pinned_versions(tool):
    try:
        installed = importlib.metadata.version(tool)
    except importlib.metadata.PackageNotFoundError:
        pytest.fail(f"{tool} is not installed: pip install -e '.[test]'")
    assert fnmatch.fnmatch(installed, pinned(tool)), (
        f"{tool} {installed} is installed, the test extra pins {pinned(tool)}: its verdicts "
        "may differ; pip install -e '.[test]'")


@pytest.mark.timeout(300)
def test_ruff_passes():
    out = run("-m", "ruff", "check", "--no-cache", "nbcluster", "tests", "benchmarks", timeout=240)
    assert out.returncode == 0, f"ruff found problems:\n{out.stdout}{out.stderr}"


@pytest.mark.timeout(900)
def test_mypy_passes(tmp_path):
    # files= and the strictness per package come from pyproject.toml; the cache goes to
    # tmp_path (a full check, and no .mypy_cache left in the tree)
    out = run("-m", "mypy", "--cache-dir", str(tmp_path / "mypy-cache"), timeout=840)
    assert out.returncode == 0, f"mypy found problems:\n{out.stdout}{out.stderr}"


STRICT_FLAGS = """
import json
from mypy.main import process_options
_, strict = process_options(["--config-file", "", "--strict", "-c", "pass"])
_, plain = process_options(["--config-file", "", "-c", "pass"])
names = [n for n in dir(plain) if not n.startswith("_") and not callable(getattr(plain, n))]
print(json.dumps({n: getattr(strict, n) for n in names
                  if getattr(strict, n) != getattr(plain, n)}))
"""


@pytest.mark.timeout(120)
def test_the_strict_packages_get_every_strict_flag():
    """What `--strict` sets, spelled out for wire/ and broker/ (a per-module `strict = true`
    would apply to every module: python/mypy#11401): no flag dropped, none added by a newer
    mypy without us noticing."""
    out = run("-c", STRICT_FLAGS, timeout=100)
    assert out.returncode == 0, out.stderr
    flags = json.loads(out.stdout)
    overrides = PYPROJECT["tool"]["mypy"]["overrides"]
    strict = next(o for o in overrides if "nbcluster.wire.*" in o["module"])
    assert "nbcluster.broker.*" in strict["module"]
    global_only = {"warn_redundant_casts"}
    for flag in global_only:
        assert PYPROJECT["tool"]["mypy"].get(flag) == flags[flag], flag
    assert {f: strict.get(f) for f in flags.keys() - global_only} == \
        {f: v for f, v in flags.items() if f not in global_only}
