"""Remote tracebacks: captured on the worker as plain data, rebuilt as RemoteError on the client."""

from __future__ import annotations

import builtins
import pickle
import reprlib
import sys
import traceback
import types
from typing import Any

from .errors import RemoteError, RemoteFrame
from .runtime import WORKER

__all__ = ["capture", "rebuild"]

MAX_LOCALS = 30       # per frame
MAX_FRAMES = 50
_repr = reprlib.Repr()
_repr.maxstring = 200
_repr.maxother = 200
_repr.maxlist = _repr.maxdict = _repr.maxset = _repr.maxtuple = 10


def _safe_repr(value: Any) -> str:
    try:
        return _repr.repr(value)
    except Exception as e:  # a broken __repr__ must not hide the real error
        return f"<unrepresentable {type(value).__name__}: {type(e).__name__}>"




_SHELL_NAMES = {"In", "Out", "get_ipython", "exit", "quit", "open"}   # IPython's own
HIDDEN_FILES: set[str] = set()   # plumbing whose outer frames a user need not see


def capture(exc: BaseException, skip: int = 0) -> dict:
    """Plain, picklable data describing exc and its traceback (skipping `skip` outer frames,
    then outer frames of HIDDEN_FILES)."""
    tb = exc.__traceback__
    for _ in range(skip):
        if tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
    while tb is not None and tb.tb_next is not None and \
            tb.tb_frame.f_code.co_filename in HIDDEN_FILES:
        tb = tb.tb_next
    frames = []
    for frame, lineno in list(traceback.walk_tb(tb))[-MAX_FRAMES:]:
        code = frame.f_code
        local_items = list(frame.f_locals.items())
        if code.co_name == "<module>":   # a module's or a cell's globals: only the user's names
            local_items = [(k, v) for k, v in local_items if not k.startswith("_")
                           and k not in _SHELL_NAMES and not isinstance(v, types.ModuleType)]
        local_items = local_items[:MAX_LOCALS]
        frames.append(RemoteFrame(code.co_filename, lineno, code.co_name,
                                  _source_line(code.co_filename, lineno, frame.f_globals),
                                  {k: _safe_repr(v) for k, v in local_items}))
    text = "".join(traceback.format_exception(type(exc), exc, tb))
    t = type(exc)
    try:
        pickled = pickle.dumps(exc, protocol=5)
        pickle.loads(pickled)
    except Exception:
        pickled = None
    return {"type": f"{t.__module__}.{t.__qualname__}", "message": str(exc), "traceback": text,
            "frames": [vars(f) for f in frames], "worker": dict(WORKER), "exception": pickled}


def _source_line(filename: str, lineno: int, module_globals: dict) -> str:
    import linecache
    return linecache.getline(filename, lineno, module_globals).strip()


def rebuild(data: dict) -> RemoteError:
    """The RemoteError for captured data; also an instance of the remote type if importable."""
    exception = None
    if data.get("exception") is not None:
        try:
            exception = pickle.loads(data["exception"])
        except Exception:
            exception = None
    cls = _error_class(data["type"])
    err = cls.__new__(cls)
    RemoteError.__init__(err, data["type"], data["message"], data["traceback"],
                         [RemoteFrame(**f) for f in data["frames"]], data["worker"], exception)
    return err


_classes: dict[str, type] = {}


def _error_class(type_name: str) -> type:
    """A subclass of RemoteError and the remote exception type, so `except KeyError` works."""
    if type_name in _classes:
        return _classes[type_name]
    cls = RemoteError
    module, _, qualname = type_name.rpartition(".")
    try:
        # Only modules this process already imported: a worker's error must not import code here.
        owner = builtins if module == "builtins" else sys.modules.get(module)
        remote_type = getattr(owner, qualname, None) if "." not in qualname else None
        if isinstance(remote_type, type) and issubclass(remote_type, Exception) \
                and not issubclass(remote_type, RemoteError):
            cls = type(f"Remote{qualname}", (RemoteError, remote_type),
                       {"__module__": "nbcluster.errors", "__init__": RemoteError.__init__,
                        "__str__": RemoteError.__str__, "__reduce__": RemoteError.__reduce__})
    except Exception:
        cls = RemoteError
    _classes[type_name] = cls
    return cls
