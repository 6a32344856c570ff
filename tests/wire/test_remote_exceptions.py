"""Remote exceptions are the real exception: a table of stdlib and user-defined exceptions,
raised on workers through every way of running code, compared with the same exception raised
here and with what concurrent.futures.ProcessPoolExecutor gives for it; and a mistake made
over many elements or keys fails fast, in bounds.

The raisers and exception classes live at module level so that ProcessPoolExecutor (which
pickles by reference) can run them too; workers import this module (the tests' directory is
their working directory).
"""

import concurrent.futures
import decimal
import json
import linecache
import pickle
import re
import struct
import subprocess
import threading
import time
from concurrent.futures.process import BrokenProcessPool

import pytest

import nbcluster
from nbcluster import RemoteError, RemoteErrorGroup
from nbcluster.errors import RemoteTraceback
from nbcluster.testing import wait_for
from nbcluster.wire.tracebacks import DETAILED_PER_SIGNATURE

pytestmark = pytest.mark.timeout(300)


# ---- user-defined exceptions ------------------------------------------------------------------
class WithFields(Exception):
    """Extra fields beyond args: pickle calls WithFields(msg), which fails."""

    def __init__(self, msg, code, detail):
        super().__init__(msg)
        self.code, self.detail = code, detail


class KeywordOnly(Exception):
    def __init__(self, msg, *, code):
        super().__init__(msg)
        self.code = code


class OtherArgs(Exception):
    """Its __init__ signature differs from its args."""

    def __init__(self, a, b):
        super().__init__(f"{a}-{b}")
        self.a, self.b = a, b


class OwnMessage(Exception):
    """Attributes named like RemoteError's: its own must win."""

    def __init__(self, message):
        super().__init__(message)
        self.message, self.index, self.worker = message, "own index", "own worker"

    def __str__(self):
        return f"OwnMessage says {self.message}"


class HoldsLock(Exception):
    """Cannot be pickled (it holds a lock)."""

    def __init__(self, msg):
        super().__init__(msg)
        self.lock = threading.Lock()


class Final(Exception):
    """Cannot be subclassed."""

    def __init_subclass__(cls, **kwargs):
        raise TypeError("Final cannot be subclassed")


def _raise(exc):
    raise exc


def _call_process(*args):
    subprocess.run(*args, check=True, capture_output=True)


# name -> (raiser, attributes to compare); every raiser raises on a line of its own
CASES = {
    "KeyError": (lambda: {}["k"], []),
    "IndexError": (lambda: [][1], []),
    "ValueError": (lambda: _raise(ValueError("bad", 3)), []),
    "TypeError": (lambda: len(5), []),
    "ZeroDivisionError": (lambda: 1 / 0, []),
    "AttributeError": (lambda: None.missing, []),
    "NameError": (lambda: undefined_name, []),  # noqa: F821
    "FileNotFoundError": (lambda: open("/nonexistent/dir/x.txt"),  # noqa: SIM115 - it raises
                          ["errno", "strerror", "filename"]),
    "IsADirectoryError": (lambda: open("/"), ["errno", "strerror", "filename"]),  # noqa: SIM115
    "OSError-5-args": (lambda: _raise(OSError(28, "No space left", "a.txt", None, "b.txt")),
                       ["errno", "strerror", "filename", "filename2"]),
    "PermissionError": (lambda: _raise(PermissionError(13, "Permission denied", "/x")),
                        ["errno", "strerror", "filename"]),
    "JSONDecodeError": (lambda: json.loads('{"a": }'), ["msg", "doc", "pos", "lineno", "colno"]),
    "UnicodeDecodeError": (lambda: b"ab\xff".decode("utf-8"),
                           ["encoding", "object", "start", "end", "reason"]),
    "UnicodeEncodeError": (lambda: "é".encode("ascii"),
                           ["encoding", "object", "start", "end", "reason"]),
    "CalledProcessError": (lambda: _call_process(["sh", "-c", "echo out; exit 3"]),
                           ["returncode", "cmd", "output", "stderr"]),
    "TimeoutExpired": (lambda: _raise(subprocess.TimeoutExpired(["sleep", "9"], 0.5, b"o")),
                       ["cmd", "timeout", "output"]),
    "StopIteration": (lambda: next(iter([])), ["value"]),
    "SyntaxError": (lambda: compile("x x", "f.py", "exec"),
                    ["msg", "filename", "lineno", "offset", "text"]),
    "ModuleNotFoundError": (lambda: __import__("no_such_module_here"), ["name"]),
    "AssertionError": (lambda: _raise(AssertionError("expected 1")), []),
    "RuntimeError": (lambda: _raise(RuntimeError("r")), []),
    "OverflowError": (lambda: 10.0 ** 400, []),
    "decimal.InvalidOperation": (lambda: decimal.Decimal("x"), []),
    "struct.error": (lambda: struct.unpack("i", b""), []),
    "re.error": (lambda: re.compile("("), ["msg", "pattern", "pos"]),
    "ExceptionGroup": (lambda: _raise(ExceptionGroup("eg", [ValueError(1), KeyError(2)])), []),
    "WithFields": (lambda: _raise(WithFields("m", 7, {"d": 1})), ["code", "detail"]),
    "KeywordOnly": (lambda: _raise(KeywordOnly("m", code=3)), ["code"]),
    "OtherArgs": (lambda: _raise(OtherArgs(1, 2)), ["a", "b"]),
    "OwnMessage": (lambda: _raise(OwnMessage("mine")), ["message", "index", "worker"]),
}
BASE_ONLY = {"SystemExit": (lambda: _raise(SystemExit(3)), ["code"])}   # not an Exception
ALL_CASES = {**CASES, **BASE_ONLY}
FALLBACKS = {"HoldsLock": (lambda: _raise(HoldsLock("holds a lock")), []),
             "Final": (lambda: _raise(Final("final one")), [])}


def raise_case(name):
    """Raise the exception of case `name` (ProcessPoolExecutor and workers run this)."""
    {**ALL_CASES, **FALLBACKS}[name][0]()


def local(name) -> BaseException:
    try:
        raise_case(name)
    except BaseException as e:  # noqa: BLE001
        return e
    raise AssertionError(f"{name} did not raise")


def facts(name, e) -> dict:
    """What must be the same between the remote exception and the one raised here."""
    attrs = ALL_CASES[name][1]
    return {"instance of its type": isinstance(e, type(local(name))),
            "args": repr(e.args), "str": str(e),
            "attrs": {a: repr(getattr(e, a, "<missing>")) for a in attrs}}


def check_remote(name, err, index=None):
    """err is the remote `name` exception, as real as the local one, with its remote side."""
    assert facts(name, err) == facts(name, local(name)), name
    assert isinstance(err, RemoteError), name
    info = err.__cause__
    assert isinstance(info, RemoteTraceback) and info is err.remote_traceback, name
    assert info.frames and info.worker.get("id") and info.worker.get("pid"), name
    assert type(local(name)).__name__ in info.traceback, name
    assert "raise_case" in info.traceback, name
    assert info.index == index, name
    # a pickle round trip (joblib pickles exceptions) keeps all of it
    again = pickle.loads(pickle.dumps(err))
    assert facts(name, again) == facts(name, err) and isinstance(again, RemoteError), name
    assert again.remote_traceback.traceback == info.traceback, name


def ppe_facts() -> dict:
    """facts of each case through ProcessPoolExecutor, or the error it gave instead."""
    got, pool = {}, concurrent.futures.ProcessPoolExecutor(1)
    try:
        for name in ALL_CASES:
            try:
                pool.submit(raise_case, name).result(60)
            except BrokenProcessPool as e:   # it could not unpickle the exception
                got[name] = f"BrokenProcessPool: {e}"
                pool.shutdown()
                pool = concurrent.futures.ProcessPoolExecutor(1)
            except BaseException as e:  # noqa: BLE001
                got[name] = facts(name, e)
    finally:
        pool.shutdown()
    return got


# ---- the table, way by way ----------------------------------------------------------------
def test_submit_gives_the_real_exception_side_by_side_with_process_pool(client):
    ppe = ppe_facts()
    for name in ALL_CASES:
        with pytest.raises(type(local(name))) as info:
            client.submit(raise_case, name).result(60)
        check_remote(name, info.value)
    # ProcessPoolExecutor gives the same for every stdlib case...
    stdlib = [n for n in ALL_CASES if type(local(n)).__module__ != __name__]
    assert {n: ppe[n] for n in stdlib} == {n: facts(n, local(n)) for n in stdlib}
    # ...and breaks on exceptions whose __init__ pickle cannot call again: nbcluster does not
    assert {n for n, f in ppe.items() if isinstance(f, str)} == \
        {"WithFields", "KeywordOnly", "OtherArgs"}


def test_except_clauses_catch_remote_exceptions_by_their_type(client):
    with pytest.raises(json.JSONDecodeError) as info:
        client.submit(raise_case, "JSONDecodeError").result(60)
    assert info.value.pos == 6 and info.value.lineno == 1
    try:
        client.submit(raise_case, "FileNotFoundError").result(60)
    except OSError as e:   # a base class of the remote type
        assert e.errno == 2 and e.filename == "/nonexistent/dir/x.txt"
    with pytest.raises(subprocess.CalledProcessError) as info:
        client.submit(raise_case, "CalledProcessError").result(60)
    assert info.value.returncode == 3 and info.value.output == b"out\n"
    assert repr(info.value) == repr(local("CalledProcessError"))


def test_client_map_gives_one_real_exception_per_failed_element(client):
    names = list(CASES)
    with pytest.raises(RemoteErrorGroup) as info:
        client.map(raise_case, names, chunksize=4)
    group = info.value
    # (.remote_traceback.index: OwnMessage has an `index` of its own, and it wins)
    indexes = [e.remote_traceback.index for e in group.exceptions]
    assert sorted(indexes) == list(range(len(names)))
    for err, i in zip(group.exceptions, indexes, strict=True):
        check_remote(names[i], err, i)
        assert err.remote_traceback.item == repr(names[i])


def test_executor_map_raises_the_real_exception_where_it_occurs(client):
    ex = nbcluster.Executor(client=client)
    with concurrent.futures.ProcessPoolExecutor(1) as pool:
        for name in ALL_CASES:
            if name == "StopIteration":   # both maps are generators: PEP 479 applies to both
                for mapping in (ex, pool):
                    with pytest.raises(RuntimeError, match="generator raised StopIteration") \
                            as info:
                        list(mapping.map(raise_case, [name]))
                    assert isinstance(info.value.__cause__, StopIteration)
                continue
            with pytest.raises(type(local(name))) as info:
                list(ex.map(raise_case, [name]))
            check_remote(name, info.value, 0)
            if name in ("WithFields", "KeywordOnly", "OtherArgs"):
                continue   # ProcessPoolExecutor breaks on these (see above)
            with pytest.raises(type(local(name))) as theirs:
                list(pool.map(raise_case, [name]))
            assert facts(name, theirs.value) == facts(name, info.value)


def test_collections_give_one_real_exception_per_failed_element(client):
    names = list(CASES)
    with pytest.raises(RemoteErrorGroup) as info:
        nbcluster.pmap(raise_case, names, client=client, progress=False)
    indexes = [e.remote_traceback.index for e in info.value.exceptions]
    assert sorted(indexes) == list(range(len(names)))
    for err, i in zip(info.value.exceptions, indexes, strict=True):
        check_remote(names[i], err, i)
    with pytest.raises(RemoteErrorGroup) as info:   # a later step, element by element
        nbcluster.parallel(names, client, progress=False).flat_map(lambda n: [n]) \
            .map(raise_case).to_list()
    assert len(info.value.exceptions) == len(names)
    for err in info.value.exceptions:
        check_remote(names[err.remote_traceback.index], err, err.remote_traceback.index)


def test_what_cannot_be_pickled_or_rebuilt_is_a_remote_error_naming_it(client):
    with pytest.raises(RemoteError) as info:
        client.submit(raise_case, "HoldsLock").result(60)
    err = info.value
    assert type(err) is RemoteError and not isinstance(err, HoldsLock)
    assert str(err) == f"{__name__}.HoldsLock: holds a lock"
    assert "could not be pickled" in err.remote_traceback.why
    assert "holds a lock" in err.traceback and err.frames[-1].name == "_raise"
    with pytest.raises(RemoteError) as info:
        client.submit(raise_case, "Final").result(60)
    err = info.value
    assert type(err) is RemoteError and str(err) == f"{__name__}.Final: final one"
    assert isinstance(err.exception, Final) and err.exception.args == ("final one",)
    again = pickle.loads(pickle.dumps(err))
    assert str(again) == str(err) and again.traceback == err.traceback


def test_remote_source_lines_show_for_functions_pickled_by_value(client):
    """cloudpickle 3.1 names code pickled by value "<dynamic-code>"; ours keeps the file and
    the lines travel with the function, for files a worker cannot read (a notebook cell)."""
    def inner(d):
        return d["missing"]
    with pytest.raises(KeyError) as info:
        client.submit(lambda: inner({})).result(60)
    frames = info.value.frames
    assert frames[-1].filename == __file__ and frames[-1].line == 'return d["missing"]'
    assert 'return d["missing"]' in info.value.traceback
    cell = "<ipython-input-7-0123abcd>"
    source = "def from_a_cell(x):\n    y = x * 2\n    return y / 0\n"
    linecache.cache[cell] = (len(source), None, source.splitlines(True), cell)
    try:
        namespace = {"__name__": "__main__"}
        exec(compile(source, cell, "exec"), namespace)
        with pytest.raises(ZeroDivisionError) as info:
            client.submit(namespace["from_a_cell"], 4).result(60)
    finally:
        del linecache.cache[cell]
    last = info.value.frames[-1]
    assert (last.filename, last.lineno, last.line) == (cell, 3, "return y / 0")
    assert last.locals == {"x": "4", "y": "8"}
    assert f'File "{cell}", line 3, in from_a_cell\n    return y / 0' in info.value.traceback


# ---- %%cluster ----------------------------------------------------------------------------
KERNEL_CHECK = """
import json
from tests.wire.test_remote_exceptions import ALL_CASES, facts, local
from nbcluster import RemoteError, RemoteErrorGroup
report = {}
for name in ALL_CASES:
    try:
        get_ipython().run_cell_magic(
            "cluster", "",
            f"from tests.wire.test_remote_exceptions import raise_case\\nraise_case({name!r})")
        report[name] = "no error"
    except RemoteErrorGroup as group:
        errs = group.exceptions
        report[name] = [len(errs), all(isinstance(e, RemoteError) for e in errs),
                        all(facts(name, e) == facts(name, local(name)) for e in errs),
                        sorted(e.remote_traceback.worker["id"] for e in errs),
                        all("raise_case" in e.traceback and e.frames for e in errs)]
from nbcluster.patterns.session import current_client
def from_this_cell(d):
    return d["nope"]
try:
    current_client().submit(from_this_cell, {}).result(60)
except KeyError as e:   # the cell's file (ipykernel's) cannot be read on workers
    report["source"] = [e.frames[-1].line,
                        e.frames[-1].filename == from_this_cell.__code__.co_filename]
print("REPORT", json.dumps(report))
"""


@pytest.mark.timeout(400)
def test_cluster_cell_failures_are_the_real_exceptions():
    from ..support.notebooks import cell_text, run
    nb, _ = run([KERNEL_CHECK])
    out = cell_text(nb.cells[1])
    assert "REPORT " in out, out
    report = json.loads(out.split("REPORT ", 1)[1].splitlines()[0])
    assert report.pop("source") == ['return d["nope"]', True]
    assert report == {name: [2, True, True, ["w1", "w2"], True] for name in ALL_CASES}


# ---- a mistake fails fast ------------------------------------------------------------------
def _nothing_left(client) -> bool:
    s = client.status()
    return s["queued"] == 0 and s["running"] == 0


@pytest.mark.timeout(240)
def test_a_repeated_failure_stops_a_map_and_cancels_the_rest(client):
    def fn(x):
        if x < 40:
            raise ValueError(f"bad {x}")
        time.sleep(60)   # the rest would take an hour: they must be cancelled
    with pytest.raises(RemoteErrorGroup) as info:
        client.map(fn, range(200), chunksize=1)
    group = info.value
    assert 0 < len(group.exceptions) <= DETAILED_PER_SIGNATURE < group.failed
    assert all(isinstance(e, ValueError) for e in group.exceptions)
    assert group.not_run > 0 and "not run" in str(group)
    assert wait_for(lambda: _nothing_left(client), 60), client.status()


@pytest.mark.timeout(240)
def test_a_mistake_over_many_elements_keeps_few_in_full_and_counts_the_rest(client):
    with pytest.raises(RemoteErrorGroup) as info:
        client.map(lambda x: x["k"], range(200_000))
    group = info.value
    assert len(group.exceptions) <= DETAILED_PER_SIGNATURE < group.failed
    assert f"the first {len(group.exceptions)} in full" in str(group)
    assert all(isinstance(e, TypeError) and e.frames for e in group.exceptions)
    assert wait_for(lambda: _nothing_left(client), 60), client.status()
    with pytest.raises(RemoteErrorGroup) as info:   # a collection
        nbcluster.pmap(lambda x: x["k"], range(200_000), client=client, progress=False)
    assert len(info.value.exceptions) <= DETAILED_PER_SIGNATURE < info.value.failed
    assert wait_for(lambda: _nothing_left(client), 60), client.status()


@pytest.mark.timeout(240)
def test_a_reducer_with_the_wrong_signature_fails_fast_over_many_keys(client):
    with pytest.raises(RemoteErrorGroup) as info:
        nbcluster.map_reduce(range(90_000), lambda x: [(x, 1)], lambda k, vs: k,
                             client=client, progress=False)
    group = info.value
    assert len(group.exceptions) <= DETAILED_PER_SIGNATURE < group.failed
    assert all(isinstance(e, TypeError) and "missing 1 required positional" in str(e)
               for e in group.exceptions)
    assert wait_for(lambda: _nothing_left(client), 60), client.status()
    with pytest.raises(RemoteErrorGroup) as info:   # a mapper: no reduce runs
        nbcluster.map_reduce(range(90_000), lambda x: x["k"], sum, client=client,
                             progress=False)
    assert len(info.value.exceptions) <= DETAILED_PER_SIGNATURE < info.value.failed


def test_many_workers_failing_alike_make_a_group_in_bounds(client):
    """What %%cluster does with the failures of a cell on many workers."""
    from nbcluster.notebook.magics import _group
    futures = [client.submit(raise_case, "KeyError") for _ in range(12)]
    futures += [client.submit(raise_case, "ValueError") for _ in range(2)]
    concurrent.futures.wait(futures, 60)
    group = _group([f.exception() for f in futures], 14, "workers")
    kinds = [type(e).__name__ for e in group.exceptions]
    assert sorted(kinds) == ["KeyError"] * DETAILED_PER_SIGNATURE + ["ValueError"] * 2
    assert group.failed == 14 and "14 of 14 workers failed (12 x KeyError, 2 x ValueError)" \
        in str(group)
    assert set(group.workers) == {f.exception().worker["id"] for f in futures}


def test_an_exception_from_a_module_only_workers_have_is_a_remote_error(client, tmp_path):
    (tmp_path / "only_on_workers.py").write_text(
        "class Oops(Exception):\n    pass\n")

    def fail(path):
        import sys
        sys.path.insert(0, path)
        import only_on_workers
        raise only_on_workers.Oops("from a module the client lacks")
    with pytest.raises(RemoteError) as info:
        client.submit(fail, str(tmp_path)).result(60)
    err = info.value
    assert type(err) is RemoteError
    assert str(err) == "only_on_workers.Oops: from a module the client lacks"
    assert "could not be unpickled here" in err.remote_traceback.why
    assert "No module named 'only_on_workers'" in err.remote_traceback.why
    assert "could not be unpickled here" in str(err.__cause__)


def test_a_remote_error_raised_again_on_a_worker_comes_back_as_its_type():
    """A task that waits on another task's future re-raises that remote error."""
    from nbcluster.wire import remote, tracebacks
    inner = remote.rebuild(tracebacks.capture(local("JSONDecodeError")))
    try:
        raise inner
    except Exception as e:  # noqa: BLE001
        outer = remote.rebuild(tracebacks.capture(e))
    assert facts("JSONDecodeError", outer) == facts("JSONDecodeError", local("JSONDecodeError"))
    assert isinstance(outer, RemoteError) and type(outer) is type(inner)
