"""Pickling on the client: the function cache never ships a stale function."""

import threading

import numpy as np
import pytest

from nbcluster.errors import PicklingError
from nbcluster.wire import functions, pickling, serialize

# Functions as a notebook defines them: in a __main__ that cannot be imported, so
# cloudpickle ships them by value, with the globals they use.
NOTEBOOK = {"__name__": "__main__"}
exec("offset = 1\n"
     "table = [1, 2, 3]\n"
     "def uses_offset(x):\n    return x + offset\n"
     "def uses_table(x):\n    return table[x]\n", NOTEBOOK)
uses_offset, uses_table = NOTEBOOK["uses_offset"], NOTEBOOK["uses_table"]


def run(fn, *args):
    return serialize.loads(functions.dumps_function(fn).frames)(*args)


def test_cached_bytes_are_reused_while_globals_are_unchanged():
    assert functions.dumps_function(uses_offset) is functions.dumps_function(uses_offset)


def test_a_rebound_global_is_seen():
    assert run(uses_offset, 10) == 11
    NOTEBOOK["offset"] = 5
    try:
        assert run(uses_offset, 10) == 15
    finally:
        NOTEBOOK["offset"] = 1


def test_mutable_globals_and_closures_are_never_cached():
    assert run(uses_table, 0) == 1
    NOTEBOOK["table"][0] = 100
    assert run(uses_table, 0) == 100
    NOTEBOOK["table"][0] = 1
    box = [1]
    f = lambda: box[0]  # noqa: E731
    assert run(f) == 1
    box[0] = 2
    assert run(f) == 2
    assert functions._captured_values(f) is None


def test_closure_over_immutable_value_is_cached_and_correct():
    n = 7
    f = lambda x: x * n  # noqa: E731
    assert functions.dumps_function(f) is functions.dumps_function(f)
    assert run(f, 2) == 14


def test_large_buffers_travel_out_of_band():
    a = np.arange(1_000_000, dtype=np.float64)
    frames = serialize.dumps(a)
    assert len(frames) == 2 and len(frames[0]) < 1000
    assert memoryview(frames[1]).nbytes == a.nbytes
    back = serialize.loads([frames[0], bytearray(frames[1])])
    assert np.array_equal(back, a)


def test_unpicklable_argument_is_named():
    with pytest.raises(PicklingError, match=r"keyword argument lock="):
        functions.dumps_call(print, (1,), {"lock": threading.Lock()})


def test_shared_memory_round_trip_and_refusals():
    from nbcluster.wire.shm import REF_PREFIX, SharedMemory
    shm = SharedMemory(b"k" * 32)
    a = np.arange(300_000, dtype=np.float64)        # 2.4 MB: goes to shared memory
    frames = serialize.dumps(a, shm)
    assert SharedMemory.is_ref(frames[1]) and len(frames[1]) < 100
    [name] = serialize.shm_names(frames)
    back = serialize.loads(frames, shm, remove=True)
    back[0] = 42.0                                   # a private, writable mapping
    assert np.array_equal(back[1:], a[1:]) and not serialize.shm_names([b""])
    import os
    assert not os.path.exists(f"/dev/shm/{name}")
    other = SharedMemory(b"x" * 32)                  # another cluster's key
    for ref in (REF_PREFIX + name.encode(), REF_PREFIX + b"../../etc/passwd",
                REF_PREFIX + shm.prefix.encode() + b"-" + b"0" * 23 + b"/"):
        with pytest.raises(ValueError, match="not a shared-memory reference"):
            other.get(ref)


CELL = "<ipython-input-3-5eedc0de>"
CELL_SOURCE = ("def helper(x):\n"
               "    return x * 2\n"
               "\n"
               "def from_a_cell(d):\n"
               "    value = helper(d['n'])\n"
               "    return [v for v in range(value) if v > 3][9]\n")
RECEIVER = """
import pickle, sys, traceback
fn = pickle.loads(sys.stdin.buffer.read())
print(fn.__code__.co_filename, fn.__code__.co_firstlineno)
try:
    fn({"n": 3})
except IndexError:
    traceback.print_exc(file=sys.stdout)
"""


@pytest.mark.parametrize("how", ["function", "prepared", "mirror"])
def test_a_function_from_a_cell_keeps_its_file_and_lines_in_another_process(how):
    """cloudpickle 3.1 names code pickled by value "<dynamic-code>"; another process (a
    worker) that has never seen the cell must show its file, lines and source anyway."""
    import linecache
    import subprocess
    import sys
    linecache.cache[CELL] = (len(CELL_SOURCE), None, CELL_SOURCE.splitlines(True), CELL)
    try:
        ns = {"__name__": "__main__"}
        exec(compile(CELL_SOURCE, CELL, "exec"), ns)
        fn = ns["from_a_cell"]
        prepared = (functions.dumps_function(fn) if how == "function" else
                    functions.prepare(fn) if how == "prepared" else
                    functions.prepare(fn, pickling.MainRefs()))
        data = prepared.frames[0]   # no out-of-band buffers: the pickle is the whole payload
    finally:
        del linecache.cache[CELL]
    out = subprocess.run([sys.executable, "-c", RECEIVER], input=data, capture_output=True,
                         timeout=60).stdout.decode()
    assert out.startswith(f"{CELL} 4\n"), out
    assert (f'File "{CELL}", line 6, in from_a_cell\n'
            "    return [v for v in range(value) if v > 3][9]") in out, out
    assert "<dynamic-code>" not in out


def test_source_lines_never_hide_a_file_the_receiver_can_read(tmp_path):
    path = str(tmp_path / "real.py")
    with open(path, "w") as f:
        f.write("line one\nline two\n")
    pickling.remember_source(path, 1, ["stale one\n"])
    assert linecache_lines(path) == ["line one\n", "line two\n"]
    pickling.remember_source("<cell-a>", 3, ["c\n", "d\n"])
    pickling.remember_source("<cell-a>", 1, ["a\n"])    # another function of the same cell
    assert linecache_lines("<cell-a>") == ["a\n", "\n", "c\n", "d\n"]


def linecache_lines(name):
    import linecache
    linecache.checkcache(name)
    return linecache.getlines(name)


def test_a_global_defined_after_the_first_pickle_is_seen():
    ns = {"__name__": "__main__"}
    exec("def late(x):\n    return x + later\n", ns)
    fn = ns["late"]
    first = functions.dumps_function(fn)   # `later` is not defined yet
    ns["later"] = 5
    assert functions.dumps_function(fn) is not first
    assert run(fn, 1) == 6


PLAIN = [((), {}), ((1, 2.5, "s", b"b", None, True, 3j), {"k": [1, (2, 3)], "d": {"x": 1}}),
         (([(i,) for i in range(10)], 0), {}), ((b"x" * 1000,), {})]
NOT_PLAIN = [((b"x" * serialize.OOB_MIN_BYTES,), {}), (({1: "int key"},), {}),
             ((list(range(serialize.PLAIN_MAX_ITEMS + 1)),), {}), ((threading.Lock,), {}),
             ((np.arange(3),), {})]


@pytest.mark.parametrize("obj", PLAIN + NOT_PLAIN)
def test_arguments_come_back_the_same_either_way(obj):
    # plain arguments take the standard pickler, the rest cloudpickle's (ours)
    back = serialize.loads(serialize.dumps(obj))
    assert repr(back) == repr(obj) == repr(serialize.loads([pickling.dumps(obj)]))


def test_which_arguments_take_the_fast_way():
    assert all(serialize._plain(obj) for obj in PLAIN)
    assert not any(serialize._plain(obj) for obj in NOT_PLAIN)
    looped: list = [1]
    looped.append(looped)   # refers to itself: not plain, and pickled as it is
    assert not serialize._plain(looped)
    back = serialize.loads(serialize.dumps(looped))
    assert back[1] is back


def test_a_call_without_arguments_shares_one_frame():
    assert functions.dumps_call(len, (), {})[1] == [functions.NO_ARGUMENTS]
    assert serialize.loads([functions.NO_ARGUMENTS]) == ((), {})
