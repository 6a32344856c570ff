"""The public face: exported names and import cost (the layers: test_layers.py)."""

import subprocess
import sys
from pathlib import Path

import nbcluster

PACKAGE = Path(nbcluster.__file__).parent


def test_exported_names():
    assert sorted(nbcluster.__all__) == sorted([
        "Client", "connect", "default_client", "LocalCluster", "SSHCluster", "SSHWorkers",
        "SlurmWorkers", "Executor", "BrokenExecutor", "TaskFuture",
        "NBClusterError", "RemoteError", "RemoteErrorGroup", "RemoteFrame", "WorkerLost",
        "MemoryLimitExceeded", "TaskCancelled", "AuthenticationError", "ProtocolError",
        "PicklingError",
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
