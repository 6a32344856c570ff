"""The command line of one worker process: `python -m nbcluster.worker --connect ...`."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import time

from ..wire.connection import ConnectionInfo, key_from_env, read_or_exit
from ..wire.transport import read_line
from .loop import Worker

__all__ = ["main"]


def main(argv: list[str] | None = None) -> None:
    """`python -m nbcluster.worker --connect ENDPOINT|FILE`; the key comes from $NBCLUSTER_KEY
    or the connection file."""
    p = argparse.ArgumentParser(
        prog="nbcluster worker", formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  nbcluster worker --connect ~/.nbcluster/cluster.json -n 4\n"
               "  nbcluster worker --connect cluster.json --endpoint tcp://head:5555 "
               "--labels gpu")
    p.add_argument("-n", type=int, default=1, help="start this many worker processes "
                   "(`nbcluster worker` only)")
    p.add_argument("--connect", required=True, help="broker endpoint or connection file, or "
                   "- to read the connection file's JSON as the first line of stdin (what "
                   "launchers do: the key never shows in a file or a command line)")
    p.add_argument("--endpoint", help="reach the broker here rather than where the "
                   "connection file says, e.g. tcp://head-node:5555")
    p.add_argument("--labels", default="", help="comma-separated labels, e.g. gpu,bigmem")
    p.add_argument("--watch-stdin", action="store_true", help="exit when stdin closes")
    p.add_argument("--max-tasks-per-child", type=int, default=None,
                   help="leave after this many tasks (our supervisor starts a fresh worker)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.__stderr__,
                        format="nbcluster worker %(asctime)s %(levelname)s %(message)s")
    if "://" in args.connect:
        endpoint, key, curve = args.connect, key_from_env(), None
    else:   # a file that is missing, garbage or of a cluster gone: one line, exit 2
        info = ConnectionInfo.from_json(read_line(0)) if args.connect == "-" else \
            read_or_exit(args.connect, "nbcluster worker", args.endpoint)
        endpoint, key, curve = args.endpoint or info.best_endpoint(), info.key, info.curve
    worker = Worker(endpoint, key, [x for x in args.labels.split(",") if x],
                    watch_stdin=args.watch_stdin, curve=curve,
                    max_tasks=args.max_tasks_per_child)
    signal.signal(signal.SIGTERM, lambda *_: worker.leave())
    signal.signal(signal.SIGINT, signal.default_int_handler)  # cancelling a task needs it
    try:
        worker.run()
    except KeyboardInterrupt:
        worker.leave()
        time.sleep(5)  # the I/O thread exits the process once it has said bye
