"""The `nbcluster` command.

    nbcluster demo [-n N]                 estimate pi on a local cluster, with a progress bar
    nbcluster start [-n N] [--ip IP]      a broker and N local workers [--daemon]
    nbcluster worker --connect FILE -n N  N workers joining a cluster (from any host)
    nbcluster broker --bind EP            a broker alone (key in $NBCLUSTER_KEY)
    nbcluster list | status | stop [--worker ID] | doctor     looking after a cluster

Exit codes: 0 done, 1 something to report (an unknown worker, doctor's findings),
2 no cluster reached or it could not start.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time

__all__ = ["main"]

DEFAULT_CONNECTION_FILE = "~/.nbcluster/cluster.json"


def _pi_chunk(samples: int, seed: int) -> int:
    """How many of `samples` random points fall inside the unit quarter circle."""
    import random
    rng = random.Random(seed)
    rand = rng.random
    return sum(1 for _ in range(samples) if rand() ** 2 + rand() ** 2 <= 1.0)


def demo(n_workers: int | None, tasks: int, samples: int) -> int:
    """Monte-Carlo estimate of pi over all cores, against one core."""
    from tqdm import tqdm

    import nbcluster

    from ..client.english import counted

    one_chunk_s = float("inf")
    for seed in (-1, -2, -3):   # fastest of three: the first pays for warming up
        t0 = time.perf_counter()
        _pi_chunk(samples, seed)
        one_chunk_s = min(one_chunk_s, time.perf_counter() - t0)
    with nbcluster.LocalCluster(n_workers) as cluster:
        client = cluster.client()
        print(f"local cluster: {counted(cluster.n_workers, 'worker')}; "
              f"{counted(tasks, 'task')} of {samples:,} samples")
        t0 = time.perf_counter()
        futures = [client.submit(_pi_chunk, samples, seed) for seed in range(tasks)]
        inside = 0
        import concurrent.futures
        with tqdm(total=tasks, unit="task", desc="estimating pi") as bar:
            for fut in concurrent.futures.as_completed(futures):
                inside += fut.result()
                bar.update(1)
        elapsed = time.perf_counter() - t0
    pi = 4 * inside / (tasks * samples)
    serial = one_chunk_s * tasks
    print(f"pi ~ {pi:.6f} (error {abs(pi - 3.141592653589793):.1e}) in {elapsed:.2f} s")
    print(f"one core would take ~{serial:.2f} s (one task timed here, x {tasks}): "
          f"speed-up {serial / elapsed:.2f}x on {counted(cluster.n_workers, 'worker')}")
    return 0


def start(args) -> int:
    """A broker and local workers: in the foreground until Ctrl-C (or `nbcluster stop`), or
    with --daemon in the background once ready."""
    running = _running_cluster(args.connection_file)
    if running:   # overwriting its file would leave it running out of everyone's reach
        print(f"nbcluster: {running}: stop it with `nbcluster stop --connection-file "
              f"{args.connection_file}`, or start another one beside it with a file of its "
              "own: nbcluster start --connection-file ~/.nbcluster/other.json", file=sys.stderr)
        return 2
    if args.daemon:
        return _daemonize(args)
    import logging

    import nbcluster

    from ..client.english import counted

    # the broker's restarts (nbcluster.broker_process), with their time, in the log
    logging.basicConfig(format="%(asctime)s %(message)s", level=logging.WARNING)
    signal.signal(signal.SIGTERM, _interrupt)   # `kill` stops it as Ctrl-C does: cleanly
    labels = [x for x in args.labels.split(",") if x]
    try:   # Ctrl-C at any moment, even while starting, stops everything cleanly
        with nbcluster.LocalCluster(args.workers, labels, connection_file=args.connection_file,
                                    ip=args.ip, port=args.port, insecure=args.insecure,
                                    memory_limit=args.memory_limit,
                                    max_tasks_per_child=args.max_tasks_per_child,
                                    **({"max_message_bytes": args.max_message_bytes}
                                       if args.max_message_bytes else {})) as cluster:
            print(f"nbcluster: broker at {' '.join(cluster.endpoints)}, "
                  f"{counted(cluster.n_workers, 'worker')}"
                  + (" (CurveZMQ on)" if cluster.info.curve else ""), flush=True)
            print(f"connection file: {cluster.connection_file}", flush=True)
            print("ready", flush=True)
            if args.log_file:   # a daemon: our launcher has stopped reading
                fd = os.open(args.log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
                os.dup2(fd, 1)
                os.dup2(fd, 2)
            # until `nbcluster stop` ends the broker (one that dies is started again)
            while not cluster.broker.wait_stopped(0.5):
                pass
            if cluster.broker.gave_up:   # (its log line said why)
                print("nbcluster: no broker any more: stopping the workers", file=sys.stderr,
                      flush=True)
                return 1
            print("the broker stopped: stopping the workers", flush=True)
    except KeyboardInterrupt:
        print("stopped")
    except nbcluster.NBClusterError as e:
        print(f"nbcluster: {e}", file=sys.stderr)
        return 2
    finally:   # the file of a cluster that is gone would only mislead
        _remove_if_gone(args.connection_file)
    return 0


def _interrupt(signum, _frame) -> None:
    raise KeyboardInterrupt


def _remove_if_gone(path: str) -> None:
    """Remove the connection file at path if its cluster is gone (ours, once it stopped, even
    if Ctrl-C came while it was starting); the file of a newer cluster stays."""
    from ..errors import NBClusterError
    from ..wire.connection import ConnectionInfo
    try:
        if ConnectionInfo.read(path).gone_reason() is not None:
            os.unlink(os.path.expanduser(path))
    except (OSError, NBClusterError):
        pass


def _running_cluster(path: str) -> str | None:
    """What runs already with the connection file at path ("a cluster is running ..."), or
    None if nothing does (no file, not a connection file, or its cluster is gone)."""
    from ..errors import NBClusterError
    from ..wire.connection import ConnectionInfo
    try:
        info = ConnectionInfo.read(path)
    except (OSError, NBClusterError):
        return None
    if info.gone_reason() is not None:
        return None
    where = f"pid {info.pid}" if info.pid and info.on_this_machine else f"on {info.host}"
    return f"a cluster is already running with the connection file {path} (its broker: {where})"


def _daemonize(args) -> int:
    """Run `nbcluster start` detached; return once it is ready (0) or failed (2)."""
    log_file = os.path.expanduser(args.log_file or "~/.nbcluster/cluster.log")
    os.makedirs(os.path.dirname(log_file), mode=0o700, exist_ok=True)
    argv = [sys.executable, "-m", "nbcluster.cli", "start", "--connection-file",
            args.connection_file, "--labels", args.labels, "--port", str(args.port),
            "--log-file", log_file, *(["-n", str(args.workers)] if args.workers is not None
                                      else []),
            *(["--ip", args.ip] if args.ip else []), *(["--insecure"] if args.insecure else []),
            *_limit_args(args),
            *(["--max-message-bytes", str(args.max_message_bytes)]
              if args.max_message_bytes else [])]
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lines: list[str] = []
    assert proc.stdout is not None   # PIPE
    for line in proc.stdout:
        if line.strip() == "ready":
            print("".join(lines), end="")
            print(f"running in the background (pid {proc.pid}); log: {log_file}; "
                  "stop it with `nbcluster stop`")
            return 0
        lines.append(line)
    proc.wait()
    print("".join(lines), end="", file=sys.stderr)
    return 2


def worker(argv: list[str]) -> int:
    """`nbcluster worker ... [-n N]`: N workers under a supervisor
    (nbcluster.worker.supervisor) that replaces any that ends; SIGTERM/Ctrl-C stops them all."""
    n = 1
    if "-n" in argv:
        i = argv.index("-n")
        try:
            n = _count(argv[i + 1] if i + 1 < len(argv) else "")
        except argparse.ArgumentTypeError as e:
            print(f"nbcluster worker: -n: {e}", file=sys.stderr)
            return 2
        argv = argv[:i] + argv[i + 2:]
    from ..worker.supervisor_main import main as supervisor_main
    return supervisor_main(["-n", str(n), *argv])


def ssh(args) -> int:
    """Workers on other hosts over SSH, until Ctrl-C, `nbcluster stop`, or they all end."""
    from ..client.english import counted
    from ..cluster.launchers import SSHWorkers
    from ..errors import NBClusterError
    from ..wire.connection import read_or_exit
    info = read_or_exit(args.connection_file, "nbcluster ssh")
    try:
        workers = SSHWorkers(args.hosts, info, args.workers, labels=_split(args.labels),
                             python=args.python, endpoint=args.endpoint,
                             ssh_options=args.ssh_option, memory_limit=args.memory_limit,
                             max_tasks_per_child=args.max_tasks_per_child)
    except NBClusterError as e:
        print(f"nbcluster ssh: {e}", file=sys.stderr)
        return 2
    print(f"{counted(args.workers, 'worker')} on each of {', '.join(args.hosts)}; "
          "Ctrl-C stops them",
          flush=True)
    try:
        while any(p.poll() is None for p in workers.procs.values()):
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        workers.close()
    return 0


def slurm(args) -> int:
    """Workers as a Slurm job; Ctrl-C (or the job ending) cancels it."""
    from ..client.english import counted
    from ..cluster.launchers import SlurmWorkers
    from ..errors import NBClusterError
    from ..wire.connection import read_or_exit
    info = read_or_exit(args.connection_file, "nbcluster slurm")
    try:
        job = SlurmWorkers(info, args.nodes, args.workers, labels=_split(args.labels),
                           python=args.python, partition=args.partition,
                           time_limit=args.time, endpoint=args.endpoint,
                           memory_limit=args.memory_limit,
                           max_tasks_per_child=args.max_tasks_per_child)
    except NBClusterError as e:
        print(f"nbcluster slurm: {e}", file=sys.stderr)
        return 2
    print(f"submitted Slurm job {job.job_id}: {counted(args.nodes, 'node')} x "
          f"{counted(args.workers, 'worker')}; Ctrl-C cancels it", flush=True)
    try:
        while job.state() not in ("", "COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"):
            time.sleep(2)
    except KeyboardInterrupt:
        pass
    finally:
        job.close()
    return 0


def _worker_limits(p: argparse.ArgumentParser) -> None:
    from ..worker.procinfo import memory_arg
    p.add_argument("--memory-limit", type=memory_arg, default=None, help="replace a worker "
                   "whose memory passes this, e.g. 2GiB (its task fails: MemoryLimitExceeded)")
    p.add_argument("--max-tasks-per-child", type=_count, default=None,
                   help="replace each worker after this many tasks")


def _limit_args(args) -> list[str]:
    return [*(["--memory-limit", str(args.memory_limit)] if args.memory_limit else []),
            *(["--max-tasks-per-child", str(args.max_tasks_per_child)]
              if args.max_tasks_per_child else [])]


def _split(text: str) -> list[str]:
    return [x for x in text.split(",") if x]


def _count(text: str) -> int:
    """A number of workers or nodes: a whole number, at least 1 (argparse type)."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a number of workers is a whole number, not "
                                         f"{text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"needs at least 1, not {n}")
    return n


EXAMPLES = {
    "demo": "example: nbcluster demo -n 4 --tasks 64",
    "start": "examples:\n  nbcluster start -n 4 --labels gpu\n"
             "  nbcluster start -n 8 --ip 0.0.0.0 --port 5555 --daemon   # others may join "
             "(CurveZMQ on)",
    "worker": "examples:\n  nbcluster worker --connect ~/.nbcluster/cluster.json -n 4 "
              "--memory-limit 2GiB\n"
              "  nbcluster worker --connect cluster.json --endpoint tcp://head:5555 --labels gpu",
    "broker": "example: NBCLUSTER_KEY=$(python -c 'import os;print(os.urandom(32).hex())') "
              "nbcluster broker --bind tcp://0.0.0.0:5555 --connection-file cluster.json",
    "list": "examples:\n  nbcluster list\n  nbcluster list --json | jq '.workers[].id'",
    "status": "example: nbcluster status --json",
    "stop": "examples:\n  nbcluster stop                  # the whole cluster\n"
            "  nbcluster stop --worker w3      # one worker, after its running task",
    "doctor": "example: nbcluster doctor --connection-file cluster.json",
    "ssh": "examples:\n  nbcluster start --ip 0.0.0.0 --daemon\n"
           "  nbcluster ssh alice@node1 alice@node2 -n 8 --ssh-option=-i --ssh-option=~/.ssh/lab",
    "slurm": "examples:\n  nbcluster start --ip 0.0.0.0 --daemon\n"
             "  nbcluster slurm --nodes 4 -n 32 --partition compute --time 2:00:00",
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="nbcluster", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, help: str, **kw) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, epilog=EXAMPLES[name],
                              formatter_class=argparse.RawDescriptionHelpFormatter, **kw)

    def connection(p: argparse.ArgumentParser) -> None:
        p.add_argument("--connection-file", default=DEFAULT_CONNECTION_FILE,
                       help=f"the cluster's connection file (default {DEFAULT_CONNECTION_FILE})")

    p = command("demo", "estimate pi on a local cluster")
    p.add_argument("-n", "--workers", type=_count, default=None, help="default: one per core")
    p.add_argument("--tasks", type=_count, default=32)
    p.add_argument("--samples", type=_count, default=1_000_000)
    p = command("start", "a broker and local workers (Ctrl-C or `nbcluster stop` ends them)")
    p.add_argument("-n", "--workers", type=_count, default=None, help="default: one per core")
    p.add_argument("--labels", default="", help="comma-separated labels of the workers")
    p.add_argument("--ip", default=None, help="also listen here, e.g. 0.0.0.0 (Curve on)")
    p.add_argument("--port", type=int, default=0, help="TCP port (default: any free one)")
    p.add_argument("--daemon", action="store_true", help="return once ready, keep running")
    p.add_argument("--max-message-bytes", type=int, default=None, metavar="N",
                   help="the broker refuses larger messages (a task with its arguments, a "
                        "result); default 256 MiB")
    p.add_argument("--insecure", action="store_true",
                   help="beyond loopback without encryption (not recommended)")
    p.add_argument("--log-file", default=None, help=argparse.SUPPRESS)
    _worker_limits(p)
    connection(p)
    command("broker", "a broker alone (nbcluster broker --help)", add_help=False)
    command("worker", "workers that join a cluster (nbcluster worker --help; -n N for N)",
            add_help=False)
    p = command("list", "workers and each client's tasks")
    p.add_argument("--json", action="store_true")
    connection(p)
    p = command("status", "a one-line summary of the cluster")
    p.add_argument("--json", action="store_true")
    connection(p)
    p = command("stop", "stop the cluster, or some of its workers")
    p.add_argument("--worker", action="append", default=[], metavar="ID",
                   help="stop only this worker (repeat for more)")
    connection(p)
    p = command("ssh", "workers on other hosts over SSH (until Ctrl-C)")
    p.add_argument("hosts", nargs="+", metavar="[USER@]HOST")
    p.add_argument("-n", "--workers", type=_count, default=1, help="workers per host")
    p.add_argument("--labels", default="")
    p.add_argument("--python", default="python3", help="the Python on the hosts")
    p.add_argument("--endpoint", default=None, help="where the hosts reach the broker")
    p.add_argument("--ssh-option", action="append", default=[], help="passed to ssh")
    _worker_limits(p)
    connection(p)
    p = command("slurm", "workers as a Slurm batch job (until Ctrl-C)")
    p.add_argument("--nodes", type=_count, default=1)
    p.add_argument("-n", "--workers", type=_count, default=1, help="workers per node")
    p.add_argument("--labels", default="")
    p.add_argument("--partition", default=None)
    p.add_argument("--time", default=None, help="time limit, e.g. 2:00:00")
    p.add_argument("--python", default=sys.executable, help="the Python on the nodes")
    p.add_argument("--endpoint", default=None, help="where the nodes reach the broker")
    _worker_limits(p)
    connection(p)
    p = command("doctor", "check the setup; each finding comes with its fix")
    p.add_argument("--json", action="store_true")
    connection(p)

    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "broker":
        from ..broker.loop import main as broker_main
        broker_main(argv[1:])
        return 0
    if argv and argv[0] == "worker":
        return worker(argv[1:])
    args = parser.parse_args(argv)
    if args.command == "demo":
        return demo(args.workers, args.tasks, args.samples)
    if args.command == "start":
        return start(args)
    if args.command in ("ssh", "slurm"):
        return (ssh if args.command == "ssh" else slurm)(args)
    from . import admin as cli_admin
    if args.command == "list":
        return cli_admin.list_workers(args.connection_file, args.json)
    if args.command == "status":
        return cli_admin.status(args.connection_file, args.json)
    if args.command == "stop":
        return cli_admin.stop(args.connection_file, args.worker)
    return cli_admin.doctor(args.connection_file, args.json)
