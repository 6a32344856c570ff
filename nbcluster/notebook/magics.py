"""The magics: `%cluster`, `%%cluster` and `%pmap`.

    %cluster start [-n 4] [--labels a,b]   a local cluster (stops the one started before)
    %cluster status | stop | debug
    %cluster push x y [--targets ...]     names of this namespace -> every worker's namespace
    vals = %cluster pull x [--targets ...] {worker id: x on that worker}
    %%cluster [--targets all|0|0:2|w1,w3] [--labels gpu] [--noblock]
    squares = %pmap lambda x: x * x  range(1000)
"""

from __future__ import annotations

import ast
import io
import os
import shlex
import sys
import tokenize
from typing import Any

from IPython.core.magic import Magics, cell_magic, line_magic, magics_class

from .. import report
from ..client.client import Client
from ..client.connect import connect
from ..client.debugging import ATTENTION, wait_futures
from ..client.english import counted
from ..client.latest import latest as made_last
from ..client.status import WorkerInfo
from ..cluster.local import LocalCluster
from ..errors import RemoteError, RemoteErrorGroup
from ..patterns.collections import parallel
from ..wire.remote import FailureTally
from ..worker import cells
from .live import WorkerOutputs

__all__ = ["ClusterMagics", "CONNECTION_ENV", "DEFAULT_CONNECTION_FILE"]

CONNECTION_ENV = "NBCLUSTER_CONNECTION"
DEFAULT_CONNECTION_FILE = "~/.nbcluster/cluster.json"
BAR_FROM_WORKERS = 4          # %%cluster on this many workers or more shows a progress bar


@magics_class
class ClusterMagics(Magics):
    def __init__(self, shell, rich: bool):
        super().__init__(shell)
        self.rich = rich
        self.cluster: LocalCluster | None = None    # the one these magics started
        self.last_error: BaseException | None = None

    # ---- which cluster -------------------------------------------------------------------
    def client(self) -> Client:
        """The client magics use: the latest one made, else the cluster in the connection
        file, else a new local cluster (saying which)."""
        latest = made_last()
        if latest is not None:
            return latest if isinstance(latest, Client) else latest.default_client()
        path = os.path.expanduser(os.environ.get(CONNECTION_ENV, DEFAULT_CONNECTION_FILE))
        if os.path.exists(path):
            try:
                client = connect(path, timeout=5)
                print(f"nbcluster: connected to the cluster of {path} "
                      f"({counted(len(client.workers()), 'worker')})")
                return client
            except Exception as e:   # noqa: BLE001 - a stale file: say so, start our own
                print(f"nbcluster: no cluster answered at {path} ({e}); starting a local one",
                      file=sys.stderr)
        return self._start(None, [])

    def _start(self, n: int | None, labels: list[str]) -> Client:
        if self.cluster is not None and not self.cluster.closed:
            self.cluster.close()
        self.cluster = LocalCluster(n, labels=labels)
        print(f"nbcluster: started a local cluster of {counted(self.cluster.n_workers, 'worker')} "
              "(%cluster stop stops it)")
        return self.cluster.default_client()

    @property
    def _user_ns(self) -> dict[str, Any]:
        assert self.shell is not None   # set when the magics were registered
        return self.shell.user_ns

    # ---- %cluster ------------------------------------------------------------------------
    # (ignore: IPython types line_magic("name") as `F | Callable[[F], F]`, not a decorator)
    @line_magic("cluster")   # type: ignore[arg-type]
    def cluster_line(self, line: str) -> Any:
        """%cluster start [-n N] [--labels a,b] | status | stop | push NAMES | pull NAMES |
        debug [--worker ID] [--index I] | explore

        debug: a live debugger on the worker where the last error happened (tasks paused at
        breakpoint() first); explore: the error explorer on the last error."""
        words = shlex.split(_without_comment(line))
        if not words:
            print(self.cluster_line.__doc__)
            return None
        command, args = words[0], words[1:]
        if command == "start":
            opts = _options(args, {"-n": int, "--labels": str})
            self._start(opts.get("-n"), _split(opts.get("--labels")))
        elif command == "status":
            return self._status()
        elif command == "stop":
            self._stop()
        elif command in ("push", "pull"):
            opts = _options(args, {"--targets": str})
            names = opts.pop("", [])
            if not names:
                raise ValueError(f"%cluster {command}: name the variables, "
                                 f"e.g. %cluster {command} x y")
            client = self.client()
            ids = _targets(client.workers(), opts.get("--targets", "all"), [])
            if command == "push":
                values = {n: self._user_ns[n] for n in names}
                self._gather(client.submit_to(ids, cells.push, values), "push")
                print(f"pushed {', '.join(names)} to {counted(len(ids), 'worker')}")
                return None
            pulled = self._gather(client.submit_to(ids, cells.pull, names), "pull")
            return {w: v[names[0]] if len(names) == 1 else v for w, v in pulled.items()}
        elif command == "debug":
            self._debug(_options(args, {"--worker": str, "--index": int}))
        elif command == "explore":
            error = self._last_error()
            if error is None:
                print("no nbcluster error to explore yet")
            else:
                report.explore(error)
        else:
            raise ValueError(f"%cluster: unknown command {command!r} "
                             "(start, status, stop, push, pull, debug, explore)")
        return None

    def _last_error(self) -> BaseException | None:
        return self.last_error or getattr(sys, "last_value", None)

    def _debug(self, opts: dict) -> None:
        """Tasks paused at a breakpoint first; else the last error, live on its worker."""
        if ATTENTION.attend():
            return
        error = self._last_error()
        if isinstance(error, RemoteErrorGroup):
            error.debug(worker=opts.get("--worker"), index=opts.get("--index"))
        elif isinstance(error, RemoteError):
            error.debug()
        else:
            print("no task is paused at a breakpoint, and no remote error to debug yet")

    def _status(self) -> None:
        client = self.client()
        if self.rich:
            from IPython.display import display

            from .panel import WorkerPanel
            display(WorkerPanel(client))
            return None
        status = client.status()
        print(f"{counted(len(status['workers']), 'worker')}, {status['queued']} queued, "
              f"{status['running']} running")
        for w in status["workers"]:
            print(f"  {w['id']:6} {w['host']}:{w['pid']}  {w['state']:5} done {w['done']:,}"
                  f"  labels {','.join(w['labels']) or '-'}")
        for labels, n in status.get("waiting_for_labels", {}).items():
            print(f"  {counted(n, 'task')} waiting for labels no worker has: {labels}")
        return None

    def _stop(self) -> None:
        if self.cluster is not None and not self.cluster.closed:
            self.cluster.close()
            print("nbcluster: the local cluster is stopped")
        else:
            latest = made_last()
            if isinstance(latest, Client):
                latest.close()
                print("nbcluster: disconnected (the cluster itself keeps running)")
            else:
                print("nbcluster: no cluster to stop")
        self.cluster = None

    def _gather(self, futures: dict, what: str) -> dict:
        wait_futures(futures.values())
        errors = [f.exception() for f in futures.values() if f.exception() is not None]
        if errors:
            raise _group(errors, len(futures), f"{what} targets")
        return {w: f.result() for w, f in futures.items()}

    # ---- %%cluster -----------------------------------------------------------------------
    @cell_magic("cluster")   # type: ignore[arg-type]  # (as line_magic above)
    def cluster_cell(self, line: str, cell: str) -> Any:
        """%%cluster [--targets all|N|I:J|ids] [--labels a,b] [--noblock]: run the cell on
        workers, in their own namespaces, with their output shown live under the cell."""
        opts = _options(shlex.split(_without_comment(line)),
                        {"--targets": str, "--labels": str, "--noblock": bool})
        client = self.client()
        workers = client.workers()
        ids = _targets(workers, opts.get("--targets", "all"), _split(opts.get("--labels")))
        if not ids:
            raise ValueError("%%cluster: no worker matches (see %cluster status)")
        futures = client.submit_to(ids, cells.run_cell, cell)
        described = {w["id"]: w for w in workers}
        outputs = WorkerOutputs(futures, described, self.rich)
        if len(futures) >= BAR_FROM_WORKERS:
            from ..client.bars import progress
            progress(futures.values(), desc="%%cluster", wait=False)
        if opts.get("--noblock"):
            return CellRun(futures, outputs)
        try:
            outputs.wait()
        except KeyboardInterrupt:
            client.cancel(list(futures.values()))
            raise
        CellRun(futures, outputs).raise_errors()
        return None

    # ---- %pmap ---------------------------------------------------------------------------
    @line_magic("pmap")   # type: ignore[arg-type]  # (as above)
    def pmap(self, line: str) -> list:
        """%pmap FUNCTION ITERABLE: [FUNCTION(x) for x in ITERABLE] on the cluster, in order,
        with a progress bar. Both are Python expressions, e.g. `%pmap lambda x: x * 2 data`."""
        fn_text, it_text = _split_two_expressions(_without_comment(line))
        ns = self._user_ns
        fn, iterable = eval(fn_text, ns), eval(it_text, ns)
        return parallel(iterable, client=self.client()).map(fn).to_list()


class CellRun:
    """A `%%cluster --noblock` run: {worker id: future}, its output still arriving live."""

    def __init__(self, futures: dict, outputs: WorkerOutputs):
        self.futures, self.outputs = futures, outputs

    def wait(self) -> None:
        """Until every worker is done; raises their failures (see raise_errors)."""
        self.outputs.wait()
        self.raise_errors()

    def raise_errors(self) -> None:
        """A RemoteErrorGroup naming every worker the cell failed on (if any)."""
        errors = [f.exception() for f in self.futures.values()
                  if not f.cancelled() and f.exception() is not None]
        if errors:
            raise _group(errors, len(self.futures), "workers")

    def __repr__(self) -> str:
        done = sum(f.done() for f in self.futures.values())
        return f"<CellRun on {counted(len(self.futures), 'worker')}, {done} done>"


def _without_comment(line: str) -> str:
    """line without a trailing `# comment` (a # inside a Python string does not start one),
    as in a Python line: `%cluster push data  # this notebook's data`."""
    line = line.strip()
    try:
        for token in tokenize.generate_tokens(io.StringIO(line).readline):
            if token.type == tokenize.COMMENT:
                return line[:token.start[1]].rstrip()
    except (tokenize.TokenError, SyntaxError):   # e.g. an unclosed bracket after the comment
        pass
    return line


def _group(errors: list[BaseException], total: int, what: str) -> RemoteErrorGroup:
    """One group of the failures, the first few of each kind in full (many workers failing
    alike are counted, not each shown)."""
    tally = FailureTally()
    for e in errors:
        tally.add(e)
    return tally.group(total, what)


def _options(words: list[str], known: dict[str, type]) -> dict:
    """Flags of `known` (type bool: takes no value); the other words under ""."""
    opts: dict[str, Any] = {}
    i = 0
    while i < len(words):
        w = words[i]
        if w in known:
            if known[w] is bool:
                opts[w] = True
            else:
                if i + 1 >= len(words):
                    raise ValueError(f"{w} needs a value")
                opts[w] = known[w](words[i + 1])
                i += 1
        elif w.startswith("-"):
            raise ValueError(f"unknown option {w} (known: {', '.join(known)})")
        else:
            opts.setdefault("", []).append(w)
        i += 1
    return opts


def _split(text: str | None) -> list[str]:
    return [x for x in (text or "").split(",") if x]


def _targets(workers: list[WorkerInfo], spec: str, labels: list[str]) -> list[str]:
    """Worker ids chosen by --targets (all, an index, a slice I:J, or ids/indices separated
    by commas) among the workers holding every label."""
    ordered = [w["id"] for w in workers if set(labels) <= set(w.get("labels", ()))]
    if spec == "all":
        return ordered
    chosen: list[str] = []
    for part in spec.split(","):
        if ":" in part:
            a, _, b = part.partition(":")
            chosen += ordered[int(a) if a else None:int(b) if b else None]
        elif part.isdigit():
            if int(part) >= len(ordered):
                raise ValueError(f"--targets {part}: there are {counted(len(ordered), 'worker')}")
            chosen.append(ordered[int(part)])
        elif part in ordered:
            chosen.append(part)
        else:
            raise ValueError(f"--targets: no worker {part!r} (workers: {', '.join(ordered)})")
    return list(dict.fromkeys(chosen))


def _split_two_expressions(line: str) -> tuple[str, str]:
    """'FN ITERABLE' cut at the first space where both sides are Python expressions."""
    line = line.strip()
    for i, ch in enumerate(line):
        if ch.isspace():
            left, right = line[:i].strip(), line[i:].strip()
            if left and right and _is_expression(left) and _is_expression(right):
                return left, right
    raise ValueError("%pmap FUNCTION ITERABLE, e.g. %pmap lambda x: x * 2  range(10)")


def _is_expression(text: str) -> bool:
    try:
        ast.parse(text, mode="eval")
        return True
    except SyntaxError:
        return False
