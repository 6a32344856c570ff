"""nbcluster: run Python in parallel from a Jupyter notebook or a script, over ZeroMQ.

    with nbcluster.LocalCluster(n_workers=4) as cluster:
        client = cluster.client()
        client.map(lambda x: x * 10, range(100_000))
        nbcluster.parallel(words).map(str.lower).reject(is_stopword).group_by(len)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .client.bars import progress
from .client.client import Client
from .client.connect import connect
from .client.executor import BrokenExecutor, Executor
from .client.futures import TaskFuture
from .cluster.launchers import SlurmWorkers, SSHCluster, SSHWorkers
from .cluster.local import LocalCluster
from .errors import (
    AuthenticationError,
    BrokerLost,
    BrokerTimeout,
    MemoryLimitExceeded,
    MessageTooLarge,
    NBClusterError,
    PicklingError,
    ProtocolError,
    RemoteError,
    RemoteErrorGroup,
    RemoteFrame,
    TaskCancelled,
    WorkerLost,
)
from .patterns.collections import (
    Parallel,
    pall,
    pany,
    parallel,
    pfilter,
    pflat_map,
    pgroup_by,
    pmap,
    pmap_indexed,
    pnone,
    preject,
)

# register_joblib: also joblib's "nbcluster" backend, registered once joblib loads
from .patterns.joblib_hook import register_joblib
from .patterns.mapreduce import MapReduce, map_reduce
from .patterns.mirror import Mirror, mirror
from .patterns.session import default_client
from .version import __version__ as __version__

__all__ = [
    "Client", "connect", "default_client", "LocalCluster", "SSHCluster", "SSHWorkers",
    "SlurmWorkers", "Executor", "BrokenExecutor", "TaskFuture",
    "NBClusterError", "RemoteError", "RemoteErrorGroup", "RemoteFrame", "WorkerLost",
    "MemoryLimitExceeded", "TaskCancelled", "AuthenticationError", "ProtocolError", "PicklingError",
    "BrokerLost", "BrokerTimeout", "MessageTooLarge",
    "parallel", "Parallel", "pmap", "pmap_indexed", "pfilter", "preject", "pflat_map",
    "pgroup_by", "pany", "pall", "pnone", "MapReduce", "map_reduce",
    "Mirror", "mirror", "progress", "panel", "register_joblib",
]


if TYPE_CHECKING:   # not imported at run time: `import nbcluster` stays light
    from IPython.core.interactiveshell import InteractiveShell

    from .notebook.panel import WorkerPanel


def load_ipython_extension(ipython: InteractiveShell) -> None:
    """`%load_ext nbcluster`: the magics %cluster, %%cluster and %pmap (see nbcluster.notebook)."""
    from .notebook import load_ipython_extension as load
    load(ipython)


def unload_ipython_extension(ipython: InteractiveShell) -> None:
    from .notebook import unload_ipython_extension as unload
    unload(ipython)


def panel(client: Client | None = None) -> WorkerPanel:
    """A live panel of the cluster's workers (in a notebook)."""
    from .notebook import panel as make_panel
    return make_panel(client)
