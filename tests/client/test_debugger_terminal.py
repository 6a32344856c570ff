"""The live debugger where a user types into a terminal: a plain script and terminal IPython,
each reading the debugger's commands from its real stdin (a pipe here), printing to stdout."""

import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.timeout(180)

SCRIPT = """
import nbcluster

def inner(a):
    b = a * 10
    return b / 0

def paused(x):
    a = x * 3
    breakpoint()
    return a + 1

with nbcluster.LocalCluster(2) as cluster:
    client = cluster.client()
    try:
        client.submit(inner, 4).result(timeout=60)
    except ZeroDivisionError as err:
        print("ended:", err.debug())
    print("result:", client.submit(paused, 2).result(timeout=60))
"""


def run(args: list[str], typed: list[str], tmp_path) -> str:
    done = subprocess.run(args, input="".join(f"{line}\n" for line in typed), text=True,
                          capture_output=True, timeout=150, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.parametrize("shell", ["python", "ipython"])
def test_a_terminal_user_debugs_a_failure_and_a_breakpoint(shell, tmp_path):
    script = tmp_path / ("session.py" if shell == "python" else "session.ipy")
    script.write_text(textwrap.dedent(SCRIPT))
    args = [sys.executable, str(script)] if shell == "python" else [
        sys.executable, "-m", "IPython", "--no-banner", "--quick", "--colors=NoColor",
        str(script)]
    out = run(args, ["p b", "p a + 1", "q", "p a", "!a = 20", "c"], tmp_path)
    assert "(Pdb) 40\n" in out                     # p b (input() echoes no typing: a pipe)
    assert "(Pdb) 5\n" in out                      # p a + 1, in the same frame
    assert "ended: the debugger quit" in out
    assert "is paused at a breakpoint" in out and "(Pdb) 6\n" in out
    assert "result: 21" in out
