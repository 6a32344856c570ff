"""The package's layers, as one table: what each subpackage may import, and no cycles."""

import ast
from pathlib import Path

import nbcluster

PACKAGE = Path(nbcluster.__file__).parent

# Leaves import nothing from nbcluster but each other; every layer may import them.
LEAVES = {"errors", "report", "runtime", "version"}
# Each subpackage, and the subpackages it may import (besides itself and the leaves).
LAYERS = {
    "wire": set(),
    "broker": {"wire"},
    "worker": {"wire"},
    "client": {"wire"},
    "cluster": {"client", "broker", "worker", "wire"},
    "patterns": {"client", "cluster", "worker", "wire"},
    "notebook": {"patterns", "cluster", "client", "worker", "wire"},   # worker: cells run there
    "cli": {"__init__", "patterns", "cluster", "client", "broker", "worker", "wire"},
}
TOP = {"__init__", "testing"}   # the public face and the helpers for users' tests: anything


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" and len(parts) > 1 else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def resolve(name: str) -> str:
    """The module that `import nbcluster.<name>` runs last (a package's __init__ otherwise)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or "__init__"


def imports(module: str) -> dict[str, bool]:
    """Modules of nbcluster that module imports -> whether only for type checking."""
    path = MODULES[module]
    is_package = path.name == "__init__.py"
    here = module.split(".") if is_package else module.split(".")[:-1]
    if module == "__init__":
        here = []
    tree = ast.parse(path.read_text())
    typing_only: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            typing_only |= {id(n) for child in node.body for n in ast.walk(child)}
    found: dict[str, bool] = {}

    def add(target: str, node: ast.AST) -> None:
        target = resolve(target)
        if target != module:
            found[target] = found.get(target, True) and id(node) in typing_only

    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - (node.level - 1)]
            elif node.module and node.module.split(".")[0] == "nbcluster":
                base = []
            else:
                continue
            mod = ".".join(base + ([m for m in (node.module or "").split(".") if m]
                                   if node.level else (node.module or "").split(".")[1:]))
            for alias in node.names:
                sub = f"{mod}.{alias.name}" if mod else alias.name
                add(sub if sub in MODULES else mod, node)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "nbcluster":
                    add(".".join(alias.name.split(".")[1:]), node)
    return found


def layer(module: str) -> str:
    return module.split(".")[0]


def test_every_module_imports_only_what_its_layer_may():
    wrong = []
    for module in MODULES:
        own = layer(module)
        for target in imports(module):
            other = layer(target)
            if own in TOP or other == own or (other in LEAVES and own in LAYERS):
                continue
            ok = other in LEAVES if own in LEAVES else other in LAYERS[own] or other in LEAVES
            if not ok:
                wrong.append(f"{module} imports {target}")
    assert wrong == []


def test_the_table_covers_every_subpackage_and_says_so_in_its_docstring():
    packages = {p.parent.name for p in PACKAGE.glob("*/__init__.py")}
    assert packages == set(LAYERS)
    assert {module_name(p) for p in PACKAGE.glob("*.py")} == LEAVES | TOP
    for package in packages:
        doc = ast.get_docstring(ast.parse((PACKAGE / package / "__init__.py").read_text()))
        assert doc and "import" in doc.lower(), f"{package}/__init__.py: say what it may import"


def test_no_import_cycles():
    """Between modules, counting imports inside functions (they run too), not those made
    only for type checking."""
    graph = {m: {t for t, typing in imports(m).items() if not typing} for m in MODULES}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(m: str) -> None:   # Tarjan's strongly connected components
        index[m] = low[m] = len(index)
        stack.append(m)
        for t in graph[m]:
            if t not in index:
                visit(t)
                low[m] = min(low[m], low[t])
            elif t in stack:
                low[m] = min(low[m], index[t])
        if low[m] == index[m]:
            component = []
            while True:
                t = stack.pop()
                component.append(t)
                if t == m:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for m in graph:
        if m not in index:
            visit(m)
    # the package's __init__ imports the public names, and modules below run `import
    # nbcluster` only from the top layer (the command line), so __init__ sits on no cycle
    assert cycles == []


def test_only_the_notebook_layer_imports_display_code():
    for module, path in MODULES.items():
        if layer(module) == "notebook":
            continue
        text = path.read_text()
        assert "ipywidgets" not in text and "IPython.display" not in text, module
    for module, path in MODULES.items():   # nor IPython at all, below the worker's cells
        if layer(module) in {"wire", "broker", "client"}:
            tree = ast.parse(path.read_text())
            names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
            names += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
            assert not [n for n in names if n.split(".")[0] == "IPython"], module
