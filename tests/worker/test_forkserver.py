"""Workers forked by the supervisor's fork server (nbcluster/worker/forkserver.py) are the
supervisor's own children, each in a session of its own, and their exit statuses reach it
as a started process's would."""

import json
import subprocess
import sys

from tests.support import SCRIPTS


def test_forked_workers_are_the_supervisors_children_with_their_exit_statuses():
    out = subprocess.run([sys.executable, str(SCRIPTS / "fork_server.py")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.splitlines()[-1])
    running = got["seen"][0]
    assert running["ppid"] == got["me"] != got["server"]   # re-parented to us, the subreaper
    assert running["sid"] == running["pgid"] == got["pids"][-1]   # a session of its own
    # exit 3, sys.exit("a message"), an exception, SIGKILL, the server's env, stdin closed
    assert got["codes"] == [3, 1, 1, -9, 0, 0]
    assert "boom" in out.stderr and "a message" in out.stderr
    assert got["codes_batch"] == [4, 4, 4]   # a batch of 3 in one request
    assert got["server_reaped"], "ForkServer.close left its server unreaped"
    assert got["spawned"] == 7   # where it cannot fork: a fresh interpreter, its own session
