#!/usr/bin/env python3
"""The notebook layer against ipyparallel's, in a real kernel each (2 workers / engines).

    python benchmarks/bench_notebook.py [--repeat 20]

1. `%%cluster` of `print(1)` on 2 workers vs ipyparallel's `%%px` on 2 engines: wall time
   from execute_request to execute_reply, as the notebook sees it (median of --repeat).
2. `%pmap abs range(10_000)` vs `view.map_sync(abs, range(10_000))` (DirectView).
3. The progress bar's cost: widget messages per second on iopub while a 100k-element map
   of ~50 us tasks runs (the bar is throttled to ~10 updates a second).

Needs: pip install -e '.[bench,test]'.
"""

from __future__ import annotations

import argparse
import statistics
import time

from jupyter_client.manager import start_new_kernel


class Kernel:
    def __init__(self):
        self.km, self.kc = start_new_kernel(kernel_name="python3")

    def run(self, code: str, timeout: float = 300) -> tuple[float, list[dict]]:
        """(seconds from request to reply, iopub messages of this cell)."""
        t0 = time.perf_counter()
        msg_id = self.kc.execute(code)
        messages = []
        while True:
            msg = self.kc.get_iopub_msg(timeout=timeout)
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            messages.append(msg)
            if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                break
        reply = self.kc.get_shell_msg(timeout=timeout)
        elapsed = time.perf_counter() - t0
        if reply["content"]["status"] != "ok":
            raise RuntimeError(f"{code!r} failed: {reply['content']}")
        return elapsed, messages

    def close(self):
        self.kc.stop_channels()
        self.km.shutdown_kernel(now=False)


def median_ms(kernel: Kernel, code: str, repeat: int) -> float:
    kernel.run(code)   # warm up
    return 1000 * statistics.median(kernel.run(code)[0] for _ in range(repeat))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--repeat", type=int, default=20)
    args = p.parse_args()
    rows = []

    nb = Kernel()
    try:
        nb.run("%load_ext nbcluster\n%cluster start -n 2")
        rows.append(("%%cluster print(1), 2 workers (ms)",
                     median_ms(nb, "%%cluster\nprint(1)", args.repeat)))
        rows.append(("%pmap abs over 10,000 items (ms)",
                     median_ms(nb, "r = %pmap abs  range(10_000)", args.repeat)))
        nb.run("import time\ndef tiny(v):\n    t = time.perf_counter() + 50e-6\n"
               "    while time.perf_counter() < t: pass\n    return v")
        seconds, messages = nb.run("r = %pmap tiny  range(100_000)")
        comms = [m for m in messages if m["msg_type"] in ("comm_msg", "comm_open")]
        nb.run("%cluster stop")
    finally:
        nb.close()

    ip = Kernel()
    try:
        ip.run("import ipyparallel as ipp\ncluster = ipp.Cluster(n=2, log_level=40)\n"
               "rc = cluster.start_and_connect_sync()\nrc.wait_for_engines(2)\nrc.activate()\n"
               "view = rc[:]")
        px = median_ms(ip, "%%px\nprint(1)", args.repeat)
        pmap = median_ms(ip, "r = view.map_sync(abs, range(10_000))", args.repeat)
        ip.run("cluster.stop_cluster_sync()")
    finally:
        ip.close()

    print(f"{'':40s} {'nbcluster':>10s} {'ipyparallel':>12s}")
    print(f"{'cell on 2 workers, print(1) (ms)':40s} {rows[0][1]:10.1f} {px:12.1f}"
          "   (%%cluster vs %%px)")
    print(f"{'map abs over 10,000 items (ms)':40s} {rows[1][1]:10.1f} {pmap:12.1f}"
          "   (%pmap vs view.map_sync)")
    print(f"\nprogress bar: {len(comms)} widget messages in {seconds:.2f} s while a "
          f"100,000-element map ran: {len(comms) / seconds:.1f} messages/s")


if __name__ == "__main__":
    main()
