"""The error explorer: DMirror's debugger on every failed worker, as a notebook widget.

    groups ("37 x KeyError at line 12 of f, on 2 workers")
      └ failures of the selected group (element, worker)
          └ frames of the selected failure (innermost selected)
              └ the selected frame's source line and locals
"""

from __future__ import annotations

import html

import ipywidgets as widgets

from .. import report

__all__ = ["ErrorExplorer"]


class ErrorExplorer(widgets.VBox):
    """Browse a RemoteError or RemoteErrorGroup: groups, failures, frames, locals."""

    def __init__(self, error: BaseException):
        self.error = error
        self.groups = report.group_failures(error)
        heading = report.text_report(error).splitlines()[0]
        self.group_list = widgets.Select(
            options=[(g.title, i) for i, g in enumerate(self.groups)],
            rows=min(4, len(self.groups)),
            description="groups", layout=widgets.Layout(width="95%"))
        self.failure_list = widgets.Select(description="failures", rows=5,
                                           layout=widgets.Layout(width="95%"))
        self.frame_list = widgets.Select(description="frames", rows=6,
                                         layout=widgets.Layout(width="95%"))
        self.frame_view = widgets.HTML()
        self.frame_view.add_class("nbcluster-frame")
        self.group_list.observe(self._on_group, "value")
        self.failure_list.observe(self._on_failure, "value")
        self.frame_list.observe(self._on_frame, "value")
        super().__init__([widgets.HTML(f"<b>{html.escape(heading)}</b>"), self.group_list,
                          self.failure_list, self.frame_list, self.frame_view])
        self.add_class("nbcluster-explorer")
        if self.groups:
            self.group_list.value = None
            self.group_list.value = 0

    def _on_group(self, change) -> None:
        if change["new"] is None:
            return
        group = self.groups[change["new"]]
        self.failure_list.options = [(report.failure_title(e), i)
                                     for i, e in enumerate(group.errors)]
        self.failure_list.value = None
        self.failure_list.value = 0

    def _on_failure(self, change) -> None:
        if change["new"] is None:
            return
        error = self._failure()
        frames = getattr(error, "frames", None) or []
        self.frame_list.options = [(f"{f.name} — {report.short_path(f.filename)}:{f.lineno}", i)
                                   for i, f in enumerate(frames)]
        if frames:
            self.frame_list.value = None
            self.frame_list.value = len(frames) - 1   # the innermost, where it failed
        else:
            self.frame_view.value = f"<pre>{html.escape(str(error))}</pre>"

    def _on_frame(self, change) -> None:
        if change["new"] is None:
            return
        frame = getattr(self._failure(), "frames", [])[change["new"]]   # a RemoteError's
        rows = "".join(f"<tr><td style='text-align:left'><code>{html.escape(k)}</code></td>"
                       f"<td style='text-align:left'><code>{html.escape(v)}</code></td></tr>"
                       for k, v in frame.locals.items())
        self.frame_view.value = (
            f"<div><code>{html.escape(frame.filename)}</code>, line {frame.lineno}, in "
            f"<b>{html.escape(frame.name)}</b></div>"
            f"<pre style='background:#f6f6f6;padding:4px'>{html.escape(frame.line)}</pre>"
            f"<table class='nbcluster-locals'><tr><th>local</th><th>value</th></tr>{rows}</table>"
            if rows else
            f"<div><code>{html.escape(frame.filename)}</code>, line {frame.lineno}</div>"
            f"<pre>{html.escape(frame.line)}</pre><i>no locals</i>")

    def _failure(self) -> BaseException:
        return self.groups[self.group_list.value].errors[self.failure_list.value]
