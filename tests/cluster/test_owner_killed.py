"""A LocalCluster whose owner is killed with SIGKILL leaves nothing behind: its children
(broker, supervisors, workers) exit, and they remove the cluster's files in /dev/shm and
its temp directory (with cluster.json), which the owner would have removed on close."""

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys

import pytest

from nbcluster.testing import wait_for
from nbcluster.wire import shm
from tests.support import SCRIPTS


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with contextlib.suppress(OSError):   # a zombie of ours is not alive
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    return False


def _leftovers(got):
    files = [n for n in os.listdir(shm.SHM_DIR) if n.startswith(got["prefix"])]
    return files, os.path.exists(got["dir"]), [p for p in got["children"] if _alive(p)]


@pytest.mark.skipif(not shm.available(), reason="no /dev/shm here")
@pytest.mark.timeout(180)
def test_children_remove_shm_files_and_the_temp_dir_when_the_owner_is_killed():
    owner = subprocess.Popen([sys.executable, str(SCRIPTS / "owned_cluster.py")],
                             stdout=subprocess.PIPE, text=True)
    got = None
    try:
        assert owner.stdout is not None
        got = json.loads(owner.stdout.readline())
        files, has_dir, alive = _leftovers(got)
        assert files and has_dir and len(alive) == 4, got   # broker, supervisor, 2 workers
        owner.send_signal(signal.SIGKILL)
        owner.wait(30)
        wait_for(lambda: _leftovers(got) == ([], False, []), timeout=60,
                 what="no shm file, no temp dir and no child left after the owner's SIGKILL")
    finally:
        if owner.poll() is None:
            owner.kill()
            owner.wait()
        if got is not None:   # whatever the test left: by pid, and the files by name
            for pid in got["children"]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            for name in _leftovers(got)[0]:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(shm.SHM_DIR, name))
            shutil.rmtree(got["dir"], ignore_errors=True)
