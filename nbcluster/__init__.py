"""nbcluster: run Python in parallel from a Jupyter notebook or a script, over ZeroMQ.

    with nbcluster.LocalCluster(n_workers=4) as cluster:
        client = cluster.client()
        client.map(lambda x: x * 10, range(100_000))
        nbcluster.parallel(words).map(str.lower).reject(is_stopword).group_by(len)
"""

from .client import Client, connect
from .collections import (Parallel, pall, pany, parallel, pfilter, pflat_map, pgroup_by, pmap,
                          pmap_indexed, pnone, preject)
from .errors import (AuthenticationError, NBClusterError, PicklingError, ProtocolError,
                     RemoteError, RemoteErrorGroup, RemoteFrame, TaskCancelled, WorkerLost)
from .executor import Executor
from .futures import TaskFuture
from .local import LocalCluster
from .mapreduce import MapReduce, map_reduce
from .mirror import Mirror, mirror

__version__ = "0.1.0"

__all__ = [
    "Client", "connect", "LocalCluster", "Executor", "TaskFuture",
    "NBClusterError", "RemoteError", "RemoteErrorGroup", "RemoteFrame", "WorkerLost",
    "TaskCancelled", "AuthenticationError", "ProtocolError", "PicklingError",
    "parallel", "Parallel", "pmap", "pmap_indexed", "pfilter", "preject", "pflat_map",
    "pgroup_by", "pany", "pall", "pnone", "MapReduce", "map_reduce",
    "Mirror", "mirror",
]


def load_ipython_extension(ipython):  # pragma: no cover - the notebook layer comes later
    """`%load_ext nbcluster` (the notebook layer is not built yet)."""
    raise ImportError("nbcluster's notebook integration is not available yet")
