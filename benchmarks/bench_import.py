#!/usr/bin/env python3
"""How long `import nbcluster` takes in a fresh interpreter, beside the modules it could have
pulled in. Usage: python benchmarks/bench_import.py [runs]"""

import statistics
import subprocess
import sys

MODULES = ["nbcluster", "zmq", "cloudpickle", "concurrent.futures", "IPython", "numpy"]


def import_time(module: str) -> float:
    code = f"import time; t = time.perf_counter(); import {module}; print(time.perf_counter() - t)"
    return float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                check=True).stdout)


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 7
    for module in MODULES:
        times = [import_time(module) for _ in range(runs)]
        print(f"import {module:20s} min {min(times) * 1000:6.1f} ms   "
              f"median {statistics.median(times) * 1000:6.1f} ms")


if __name__ == "__main__":
    main()
