"""Remote failures, grouped, told and debugged: what the error explorer shows, as data and
as text, and the live debugger on the worker that keeps a failure's frames.

    group_failures(err)   [FailureGroup("KeyError at line 12 of f", errors, workers), ...]
    text_report(err)      the same as text, with each group's traceback once and its locals
    explore(err)          shows it: the notebook layer installs a widget, elsewhere text
    debug_failure(err)    pdb on the failed frame, on its worker, through the client that ran
                          it (client/debugging.py); the captured frames once released
"""

from __future__ import annotations

import collections
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["FailureGroup", "failures", "group_failures", "text_report", "explore",
           "set_viewer", "debug_failure", "debug_group", "evaluate_failure", "short_type",
           "summarize_failures", "failed_workers"]


@dataclass
class FailureGroup:
    """Failures that share a signature: exception type and the innermost frame."""

    signature: str
    errors: list[BaseException] = field(default_factory=list)

    @property
    def workers(self) -> list[str]:
        seen: dict[str, None] = {}
        for e in self.errors:
            wid = (getattr(getattr(e, "_nbcluster", e), "worker", None) or {}).get("id")
            seen.update((w, None) for w in ([wid] if wid else getattr(e, "lost_on", [])))
        return list(seen)

    @property
    def title(self) -> str:
        n, w = len(self.errors), len(self.workers)
        return f"{n} x {self.signature}, on {w} worker{'s' if w != 1 else ''}"


def failures(error: BaseException) -> list[BaseException]:
    """The single failures inside error (itself, or the leaves of an exception group)."""
    if isinstance(error, BaseExceptionGroup) and not hasattr(error, "_nbcluster"):
        # (a task that raised an ExceptionGroup is one failure, with one remote traceback)
        return [leaf for e in error.exceptions for leaf in failures(e)]
    return [error]


def signature(error: BaseException) -> str:
    remote = getattr(error, "_nbcluster", None)
    kind = short_type(error)
    frames = getattr(remote, "frames", None)
    if frames:
        f = frames[-1]
        # A cell's file names the worker's own cell counter, which differs between workers
        # (after a --targets cell): the same cell's failures must still share a signature.
        place = re.sub(r"^<ipython-input-\d+-", "<ipython-input-", short_path(f.filename))
        return f"{kind} at line {f.lineno} of {f.name} ({place})"
    return kind


def short_type(error: BaseException) -> str:
    """The name of error's type (the remote type's, for a remote error), unqualified."""
    info = getattr(error, "_nbcluster", None)
    return info.type_name.rsplit(".", 1)[-1] if info is not None else type(error).__name__


def summarize_failures(errors: Sequence[BaseException], total: int | None, what: str,
                       counted: dict | None = None, not_run: int = 0,
                       workers: list[str] | None = None, stopped: bool = False) -> str:
    """One line naming how many of `total` (if known) `what` failed, how, and on which
    workers, e.g. "3 of 100 elements failed (2 x KeyError, 1 x WorkerLost) on workers w1, w2".
    `counted`: {(type name, file, line): n} of failures counted but not kept in full;
    `workers`: every worker involved, if errors do not name them all; `stopped`: the run
    stopped at a repeated failure, leaving `not_run` not run."""
    kinds = collections.Counter(short_type(e) for e in errors)
    for (type_name, _, _), n in (counted or {}).items():
        kinds[type_name.rsplit(".", 1)[-1]] += n
    workers = list(workers or failed_workers(errors))
    kinds_text = ", ".join(f"{n} x {k}" for k, n in kinds.most_common())
    of = "" if total is None else f" of {total}"
    text = (f"{sum(kinds.values())}{of} {what} failed ({kinds_text}) "
            f"on {'worker' if len(workers) == 1 else 'workers'} {', '.join(workers) or '?'}")
    if counted:
        text += f"; the first {len(errors)} in full"
    if not_run:
        text += f"; stopped at a repeated failure, {not_run} not run"
    elif stopped:
        text += "; stopped at a repeated failure, the rest cancelled"
    return text


def failed_workers(errors: Sequence[BaseException]) -> list[str]:
    """Ids of the workers the errors happened on (or were lost on), in first-seen order."""
    seen: dict[str, None] = {}
    for e in errors:
        info = getattr(e, "_nbcluster", None)
        w = info.worker if info is not None else None
        if isinstance(w, dict) and w.get("id"):
            seen[str(w["id"])] = None
        seen.update((x, None) for x in getattr(e, "lost_on", []))
    return list(seen)


def group_failures(error: BaseException) -> list[FailureGroup]:
    """Failures grouped by signature, the biggest group first."""
    groups: dict[str, FailureGroup] = {}
    for e in failures(error):
        sig = signature(e)
        groups.setdefault(sig, FailureGroup(sig)).errors.append(e)
    return sorted(groups.values(), key=lambda g: -len(g.errors))


def failure_title(error: BaseException) -> str:
    """One line naming one failure: its element or key, and its worker."""
    parts = []
    remote = getattr(error, "_nbcluster", error)   # not the remote exception's own attributes
    if (index := getattr(remote, "index", None)) is not None:
        parts.append(f"element {index}: {getattr(remote, 'item', '')}")
    w = getattr(remote, "worker", None) or {}
    if w:
        parts.append(f"on {w.get('id', '?')} ({w.get('host', '?')}, pid {w.get('pid', '?')})")
    elif lost_on := getattr(error, "lost_on", None):   # a WorkerLost's
        parts.append(f"lost on {', '.join(lost_on)}")
    return " ".join(parts) or str(error).splitlines()[0]


def text_report(error: BaseException, max_failures: int = 5) -> str:
    """The groups, each group's remote traceback once, and the innermost frame's locals."""
    remote = getattr(error, "_nbcluster", None)
    lines = [f"{remote.type_name.removeprefix('builtins.')}: {remote.message}" if remote
             else str(error).splitlines()[0] if isinstance(error, BaseExceptionGroup)
             else f"{type(error).__name__}: {error}"]
    for group in group_failures(error):
        lines += ["", f"== {group.title}"]
        lines += [f"   {failure_title(e)}" for e in group.errors[:max_failures]]
        if len(group.errors) > max_failures:
            lines.append(f"   ... and {len(group.errors) - max_failures} more")
        first = getattr(group.errors[0], "_nbcluster", group.errors[0])
        tb = getattr(first, "traceback", "")
        if tb:
            lines += ["", *("   " + line for line in tb.rstrip("\n").splitlines())]
        frames = getattr(first, "frames", None)
        if frames and frames[-1].locals:
            lines.append(f"   locals of {frames[-1].name}:")
            lines += [f"     {k} = {v}" for k, v in frames[-1].locals.items()]
    more = getattr(error, "failed", 0) - len(failures(error))
    if more > 0:
        lines += ["", f"== and {more} more failures like these, counted but not kept in full"]
    return "\n".join(lines)


def short_path(path: str) -> str:
    """The file name of a path, for one-line labels."""
    return path.rsplit("/", 1)[-1]


def _print_report(error: BaseException) -> None:
    print(text_report(error))


_viewer: list[Callable[[BaseException], None]] = [_print_report]


def set_viewer(viewer: Callable[[BaseException], None]) -> None:
    """Make `explore` show errors with viewer(error) (the notebook layer's widget)."""
    _viewer[0] = viewer


def explore(error: BaseException) -> None:
    """Show a remote failure (or a group of them): a widget in a notebook, else text."""
    _viewer[0](error)


def debug_failure(error: BaseException, input: Callable[[str], str] | None = None,
                  write: Callable[[str], object] | None = None) -> str:
    """RemoteError.debug: a post-mortem session on the worker that keeps the failure, or
    its captured frames and locals when none does."""
    out = write or (lambda text: sys.stdout.write(text))
    info = error._nbcluster   # type: ignore[attr-defined]
    live = info.live
    client = live[0]() if live else None
    where = f"{info.type_name.rsplit('.', 1)[-1]}: {info.message}"
    if client is None or client.closed:
        why = ("its client is closed" if live else
               "released: by release()" if info.released else
               "its worker did not keep its frames (see NBCLUSTER_DEBUG_KEEP)")
        out(f"[no live debugger for {where} ({why}); the frames and locals captured when "
            f"it failed:]\n{text_report(error)}\n")
        return why
    out(f"[debugger on {info.where()}, where {where} was raised; pdb commands run there: "
        "`q` ends]\n")
    why = client._debug_open(str(info.worker.get("id")), live[1]).run(input, write)
    if why.startswith(("released", "this failure cannot")):
        info.live = None
        out(f"[the frames and locals captured when it failed:]\n{text_report(error)}\n")
    return why


def debug_group(group: BaseException, which: int | None, worker: str | None, index: object,
                input: Callable[[str], str] | None = None,
                write: Callable[[str], object] | None = None,
                kind: int | None = None) -> list[str]:
    """RemoteErrorGroup.debug: one failure, or the first on each failed worker in turn."""
    errors = [e for e in failures(group) if hasattr(e, "_nbcluster")]

    def info(e: BaseException) -> Any:
        return e._nbcluster   # type: ignore[attr-defined]

    if which is not None:
        chosen = [group.exceptions[which]]   # type: ignore[attr-defined]
    elif kind is not None:
        chosen = group_failures(group)[kind].errors[:1]
    elif index is not None:
        chosen = [e for e in errors if info(e).index == index][:1]
    elif worker is not None:
        chosen = [e for e in errors if info(e).worker.get("id") == worker][:1]
    else:
        firsts: dict[object, BaseException] = {}
        for e in errors:
            firsts.setdefault(info(e).worker.get("id"), e)
        chosen = list(firsts.values())
    if not chosen:
        raise ValueError(f"no failure matches (which={which}, group={kind}, worker={worker}, "
                         f"index={index})")
    out = write or (lambda text: sys.stdout.write(text))
    ended = []
    for i, e in enumerate(chosen, 1):
        if len(chosen) > 1:
            element = "" if info(e).index is None else f", element {info(e).index}"
            out(f"[failure {i} of {len(chosen)}: worker {info(e).worker.get('id')}{element}]\n")
        ended.append(debug_failure(e, input, write))
    return ended


def evaluate_failure(error: BaseException, expression: str, frame: int = -1,
                     timeout: float = 30.0) -> tuple[str | None, str]:
    """RemoteError.evaluate: (None, the repr of expression in one of the failure's frames,
    live on its worker, or the exception it raised, formatted), or ("gone" or "timeout",
    why it cannot be answered)."""
    info = error._nbcluster   # type: ignore[attr-defined]
    live = info.live
    client = live[0]() if live else None
    if client is None or client.closed:
        return "gone", ("this failure's frames are not reachable: "
                        f"{'released' if info.released else 'not kept, or its client closed'}")
    session = client._debug_eval(str(info.worker.get("id")), live[1], frame, expression)
    ended, text = session.answer(timeout)
    if ended in ("evaluated", "raised"):
        return None, text
    if session.ended is None:   # no answer in time: the frame may well still be there
        return "timeout", f"the worker did not answer within {timeout:g} s"
    if ended.startswith(("released", "this failure cannot")):
        info.live = None
    return "gone", f"cannot evaluate in the failed frame: {ended}"
