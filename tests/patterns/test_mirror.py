"""Mirror workers forked from a real script: its state without pickling, rebinding seen,
refresh, and the forked workers going away with their parent."""

import json
import os
import signal
import subprocess
import sys

import pytest

from nbcluster.testing import wait_for

from ..support import SCRIPTS

pytestmark = pytest.mark.timeout(90)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:   # a zombie has exited
        return f.read().split(")")[-1].split()[0] != "Z"


def test_mirror_workers_have_the_scripts_state_and_see_rebinding():
    out = subprocess.run([sys.executable, str(SCRIPTS / "mirror_state.py")], capture_output=True,
                         text=True, timeout=80)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.splitlines()[-1])
    assert sorted(got["workers_pid"]) == sorted(got["pids"])   # the forked ones serve
    assert got["r1"] == 46 and got["bytes1"] < 5000            # BIG (10 MB) was not pickled
    assert got["map"] == [1, 2, 4] and got["parallel"] == [0, 2, 4, 6, 8]
    assert got["r2"] == 145                                    # OFFSET rebound: sent by value
    assert got["r3"] == 100                                    # BIG rebound: the new one
    assert got["r4"] == 10 and set(got["pids2"]).isdisjoint(got["pids"])   # refreshed
    assert not any(_alive(p) for p in got["pids"] + got["pids2"])


def test_mirror_workers_exit_when_their_parent_is_killed(tmp_path):
    code = ("import nbcluster, sys, time\n"
            "cluster = nbcluster.LocalCluster(0)\n"
            "m = nbcluster.mirror(2)\n"
            "print(*m.pids, *cluster.pids()['workers'], cluster.pids()['broker'][0], flush=True)\n"
            "time.sleep(600)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        pids = [int(x) for x in proc.stdout.readline().split()]
        assert len(pids) == 3 and all(_alive(p) for p in pids[:2])
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        wait_for(lambda: not any(_alive(p) for p in pids), timeout=20,
                 what="the mirror workers and the broker exited")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_state_pickles_as_a_name_and_fails_clearly_where_it_is_missing():
    import __main__
    from nbcluster.wire import pickling, serialize
    __main__.SOME_STATE = list(range(10_000))
    try:
        refs = pickling.MainRefs()
        frames = serialize.dumps({"x": __main__.SOME_STATE}, refs=refs)
        assert len(frames[0]) < 60                     # a name, not 10,000 numbers
        assert serialize.loads(frames)["x"] is __main__.SOME_STATE
        __main__.SOME_STATE = [1]                      # rebound: goes by value now
        assert len(serialize.dumps(__main__.SOME_STATE, refs=refs)[0]) > 10
    finally:
        del __main__.SOME_STATE
    with pytest.raises(Exception, match="not one of them"):
        serialize.loads(frames)                        # like a worker that was not forked
