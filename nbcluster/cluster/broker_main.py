"""`python -m nbcluster.cluster.broker_main [--cluster-dir DIR] BROKER-ARGS`: the broker of a
LocalCluster (started by broker_process), which cleans up after its keeper.

It runs `python -m nbcluster.broker`'s main. When that returns because its stdin closed
(--watch-stdin: the keeper closed it, or was killed with SIGKILL), it removes the
cluster's shared-memory files and the temp directory DIR: a killed keeper cannot. A broker
stopped otherwise (by a client, by a signal) leaves them to its keeper, which lives on.
"""

from __future__ import annotations

import os
import select
import sys

from ..broker.loop import main as broker_main
from ..wire import shm
from ..wire.connection import key_from_env

__all__ = ["main"]


def main(argv: list[str]) -> None:
    cluster_dir = None
    if argv[:1] == ["--cluster-dir"]:
        cluster_dir, argv = argv[1], argv[2:]
    broker_main(argv)
    if cluster_dir and _at_eof(0):
        shm.remove_cluster_files(key_from_env(), cluster_dir)


def _at_eof(fd: int) -> bool:
    try:
        return bool(select.select([fd], [], [], 0)[0]) and not os.read(fd, 4096)
    except OSError:
        return True


if __name__ == "__main__":
    main(sys.argv[1:])
