"""Run by tests/worker/test_forkserver.py: workers started by a ForkServer, as a supervisor
starts them; prints, for each, its parent, session and exit status as this process saw them."""
import json
import os
import signal
import sys
import time

from nbcluster.worker.forkserver import ForkServer, become_subreaper, reap, spawn_process


def run(argv):
    """What a forked worker does, by argv[0]."""
    what = argv[0]
    if what == "exit":
        sys.exit(int(argv[1]))
    if what == "message":
        sys.exit("a message")
    if what == "raise":
        raise RuntimeError("boom")
    if what == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if what == "env":
        sys.exit(0 if os.environ.get("FORKED_ENV") == "yes" else 5)
    os.read(0, 1)   # "stdin": until its pipe closes
    sys.exit(0 if sys.stdin is not None else 6)


def parent_of(pid):
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rpartition(")")[2].split()[1])


if __name__ == "__main__":
    assert become_subreaper()
    server = ForkServer(run, {"FORKED_ENV": "yes"})
    cases = [["exit", "3"], ["message"], ["raise"], ["kill"], ["env"], ["stdin"]]
    procs = [p for case in cases for p in server.start(case)]
    seen = [{"ppid": parent_of(p.pid), "sid": os.getsid(p.pid), "pgid": os.getpgid(p.pid)}
            for p in procs[-1:]]   # the one still running (until its stdin closes)
    procs[-1].stdin.close()
    codes = [p.wait() for p in procs]
    batch = server.start(["exit", "4"], 3)
    deadline = time.monotonic() + 30
    while any(p.poll() is None for p in batch) and time.monotonic() < deadline:
        reap({p.pid: p for p in batch})   # as the supervisor's loop collects them
        time.sleep(0.01)
    codes_batch = [p.poll() for p in batch]
    server.close()
    try:   # close() reaped it (left to init, it stays a zombie for as long as init takes)
        os.waitpid(server.pid, os.WNOHANG)
        server_reaped = False
    except ChildProcessError:
        server_reaped = True
    spawned = spawn_process([sys.executable, "-c", "import os, sys; sys.exit(7 if os.getsid(0) "
                             "== os.getpid() and not sys.stdin.read() else 8)"], dict(os.environ))
    spawned.stdin.close()
    print(json.dumps({"spawned": spawned.wait(), "me": os.getpid(), "server": server.pid,
                      "seen": seen, "pids": [p.pid for p in procs], "codes": codes,
                      "codes_batch": codes_batch, "server_reaped": server_reaped}), flush=True)
