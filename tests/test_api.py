"""The public face: exported names, import cost, layering."""

import ast
import subprocess
import sys
from pathlib import Path

import nbcluster

PACKAGE = Path(nbcluster.__file__).parent


def test_exported_names():
    assert sorted(nbcluster.__all__) == sorted([
        "Client", "connect", "LocalCluster", "Executor", "BrokenExecutor", "TaskFuture",
        "NBClusterError", "RemoteError", "RemoteErrorGroup", "RemoteFrame", "WorkerLost",
        "MemoryLimitExceeded", "TaskCancelled", "AuthenticationError", "ProtocolError", "PicklingError",
        "BrokerLost", "BrokerTimeout", "MessageTooLarge",
        "parallel", "Parallel", "pmap", "pmap_indexed", "pfilter", "preject", "pflat_map",
        "pgroup_by", "pany", "pall", "pnone", "MapReduce", "map_reduce",
        "Mirror", "mirror", "progress", "panel", "register_joblib"])
    for name in nbcluster.__all__:
        assert getattr(nbcluster, name).__doc__, f"{name} has no docstring"


def test_import_is_light():
    """`import nbcluster` pulls in none of the heavy layers (its time is measured in
    benchmarks/bench_import.py: a time bound here would flake on a loaded machine)."""
    heavy = ["IPython", "ipywidgets", "ipykernel", "joblib", "numpy", "tqdm", "nbcluster.notebook"]
    code = f"import sys, nbcluster; print([m for m in {heavy!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_lower_layers_never_import_upward():
    """protocol <- broker, worker, client; the broker imports neither client nor worker code."""
    def imports(module):
        tree = ast.parse((PACKAGE / f"{module}.py").read_text())
        found = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                found |= {node.module} if node.module else {a.name for a in node.names}
        return found
    assert imports("protocol") <= {"errors"}
    assert imports("broker_state") <= {"errors", "broker_functions", "broker_supervisors"}
    assert imports("broker_supervisors") <= {"errors", "broker_state"}   # (a type hint)
    assert imports("broker_functions") <= {"errors"}
    assert imports("broker") <= {"protocol", "broker_state", "errors", "connection", "transport",
                                 "curve"}
    assert imports("curve") <= {"errors"}
    assert imports("transport") <= {"curve"}   # for a type hint only
    for module in ("broker", "broker_state", "protocol", "worker", "client"):
        text = (PACKAGE / f"{module}.py").read_text()
        assert "ipywidgets" not in text and "IPython" not in text
    assert not {"client", "local", "executor"} & imports("worker")
    # what runs inside tasks on workers stays below the client
    assert imports("pipeline") <= {"serialize", "tracebacks"}
    assert imports("runtime") == set()
    # what peers use to stay within the broker's limits and to notice it is gone
    assert imports("oob_bytes") == set()
    assert imports("message_limit") <= {"errors", "protocol"}
    assert imports("broker_silence") <= {"errors"}
    assert imports("shuffle") <= {"protocol", "runtime", "serialize", "tracebacks", "errors",
                                  "curve"}
    assert imports("cells") <= {"runtime", "tracebacks"}
    # only the notebook layer imports IPython's display machinery or ipywidgets
    for path in PACKAGE.glob("*.py"):
        text = path.read_text()
        assert "ipywidgets" not in text and "IPython.display" not in text, path.name
        assert "from .notebook" not in text or path.name == "__init__.py", path.name
