"""The command line of a host's supervisor: `python -m nbcluster.worker.supervisor_main`,
which `nbcluster worker` runs (see supervisor.py for what it does)."""

from __future__ import annotations

import logging
import sys

from ..wire.transport import read_line
from .procinfo import memory_arg
from .supervisor import Supervisor

__all__ = ["main", "positive_int"]


def main(argv: list[str] | None = None) -> int:
    """`python -m nbcluster.worker.supervisor_main --connect ENDPOINT|FILE|- -n N ...`: what
    `nbcluster worker` runs."""
    import argparse

    from ..wire.connection import ConnectionInfo, key_from_env, read_or_exit

    p = argparse.ArgumentParser(
        prog="nbcluster worker", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="N workers joining a cluster, kept by this host's supervisor: a worker "
        "that ends is replaced (unless it was asked to leave), and the broker hears how it "
        "ended", epilog="examples:\n  nbcluster worker --connect ~/.nbcluster/cluster.json "
        "-n 4 --memory-limit 2GiB\n  nbcluster worker --connect cluster.json --endpoint "
        "tcp://head:5555 --labels gpu --max-tasks-per-child 100")
    p.add_argument("-n", type=int, default=1, help="how many worker processes")
    p.add_argument("--connect", required=True, help="broker endpoint or connection file, or "
                   "- to read the connection file's JSON as the first line of stdin")
    p.add_argument("--endpoint", help="reach the broker here rather than where the "
                   "connection file says, e.g. tcp://head-node:5555")
    p.add_argument("--labels", default="", help="comma-separated labels, e.g. gpu,bigmem")
    p.add_argument("--memory-limit", type=memory_arg, default=None,
                   help="kill (and replace) a worker whose memory passes this, e.g. 2GiB; "
                   "its task fails with MemoryLimitExceeded")
    p.add_argument("--max-tasks-per-child", type=positive_int, default=None,
                   help="replace each worker after this many tasks")
    p.add_argument("--no-respawn", action="store_true", help="do not replace crashed workers")
    p.add_argument("--announce", action="store_true",
                   help="print 'started PID' and 'exited PID REASON' lines on stdout")
    p.add_argument("--watch-stdin", action="store_true",
                   help="stop the workers and exit when stdin closes")
    p.add_argument("--cluster-dir", help=argparse.SUPPRESS)   # LocalCluster's: see Supervisor
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="nbcluster supervisor %(asctime)s %(levelname)s %(message)s")
    stdin_line = None
    if "://" in args.connect:
        endpoint, key, curve = args.connect, key_from_env(), None
    elif args.connect == "-":
        stdin_line = read_line(0).encode()
        info = ConnectionInfo.from_json(stdin_line.decode())
        endpoint, key, curve = args.endpoint or info.best_endpoint(), info.key, info.curve
    else:   # a file that is missing, garbage or of a cluster gone: one line, exit 2
        info = read_or_exit(args.connect, "nbcluster worker", args.endpoint)
        endpoint, key, curve = args.endpoint or info.best_endpoint(), info.key, info.curve
    worker_args = ["--connect", args.connect]
    if args.endpoint:
        worker_args += ["--endpoint", args.endpoint]
    if args.labels:
        worker_args += ["--labels", args.labels]
    supervisor = Supervisor(endpoint, key, worker_args, args.n, curve=curve,
                            stdin_line=stdin_line, memory_limit=args.memory_limit,
                            max_tasks_per_child=args.max_tasks_per_child,
                            respawn=not args.no_respawn, announce=args.announce,
                            watch_stdin=args.watch_stdin, cluster_dir=args.cluster_dir)
    return supervisor.run()


def positive_int(text: str) -> int:
    """A whole number, at least 1, for argparse."""
    import argparse
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"a whole number, at least 1, not {text!r}")
    return int(text)


if __name__ == "__main__":
    sys.exit(main())
