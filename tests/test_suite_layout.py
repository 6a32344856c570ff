"""The test suite's own layout: a folder of tests per subpackage of nbcluster, each a package
(tests import as tests.<folder>.<module>, under pytest-xdist too), and no test module
importing another (what tests share is in tests/conftest.py and tests/support/)."""

import ast
from pathlib import Path

import nbcluster

TESTS = Path(__file__).resolve().parent
PACKAGE = Path(nbcluster.__file__).resolve().parent


def test_every_subpackage_has_a_folder_of_tests_and_every_folder_is_a_package():
    subpackages = {p.parent.name for p in PACKAGE.glob("*/__init__.py")}
    folders = {p.name for p in TESTS.iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert subpackages <= folders, f"no tests/ folder for {sorted(subpackages - folders)}"
    assert folders - {"support"} <= subpackages, \
        f"tests/ folders for no subpackage: {sorted(folders - {'support'} - subpackages)}"
    for folder in [TESTS / "support", *{p.parent for p in TESTS.rglob("test_*.py")}]:
        assert (folder / "__init__.py").exists(), f"{folder} has no __init__.py"


def test_no_test_module_imports_another():
    for path in TESTS.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""] + [a.name for a in node.names if not node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            for name in names:
                assert not name.split(".")[-1].startswith("test_"), \
                    f"{path.relative_to(TESTS)}:{node.lineno} imports {name}: move what " \
                    f"it shares to tests/support/"
