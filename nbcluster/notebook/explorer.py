"""The error explorer: DMirror's debugger on every failed worker, as a notebook widget.

    groups ("37 x KeyError at line 12 of f, on 2 workers")
      └ failures of the selected group (element, worker)
          └ frames of the selected failure (innermost selected)
              └ the selected frame's source line and locals (captured when it failed)
                  └ an expression box: evaluated live in that frame, on its worker
                    (`RemoteError.evaluate`), its repr shown below it

The box asks the worker, which keeps a failure's frames a while (worker/postmortem.py); once
they are released or expired, it says so, and the captured locals above are what is left.
Failures without frames (a lost worker, a cancelled task) get a disabled box.
"""

from __future__ import annotations

import html

import ipywidgets as widgets

from .. import report
from ..errors import NBClusterError

__all__ = ["ErrorExplorer"]

EVALUATE_TIMEOUT_S = 30.0   # the box's wait for an answer (ErrorExplorer.timeout)
ASK = "an expression, evaluated live in this frame on its worker (Enter)"
CANNOT_ASK = "no frames to evaluate in: this failure did not raise in a task"
# the worker bounds an answer's size (10,000 characters); this bounds its room on the page
ANSWER_STYLE = "margin:2px 0;white-space:pre-wrap;max-height:24em;overflow:auto"


class ErrorExplorer(widgets.VBox):
    """Browse a RemoteError or RemoteErrorGroup: groups, failures, frames, locals; and ask
    the selected frame an expression, live on its worker.

    Attributes:
        timeout: how long the box waits for the worker's answer, in seconds (the kernel
            waits with it: a widget's callback runs on the kernel's main thread).
    """

    def __init__(self, error: BaseException):
        self.error = error
        self.timeout = EVALUATE_TIMEOUT_S   # for an answer from the worker, in seconds
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
        self._build_expression_box()
        self.group_list.observe(self._on_group, "value")
        self.failure_list.observe(self._on_failure, "value")
        self.frame_list.observe(self._on_frame, "value")
        super().__init__([widgets.HTML(f"<b>{html.escape(heading)}</b>"), self.group_list,
                          self.failure_list, self.frame_list, self.frame_view,
                          widgets.HBox([self.expression, self.evaluate_button]), self.answer])
        self.add_class("nbcluster-explorer")
        if self.groups:
            self.group_list.value = None
            self.group_list.value = 0

    def _build_expression_box(self) -> None:
        self.expression = widgets.Text(description="expression", placeholder=ASK,
                                       layout=widgets.Layout(width="80%"))
        self.expression.add_class("nbcluster-expression")
        self.evaluate_button = widgets.Button(description="evaluate")
        self.answer = widgets.HTML()
        self.answer.add_class("nbcluster-answer")
        self.evaluate_button.on_click(lambda _: self.evaluate())
        # Enter in the box: the front end sends a "submit" event (what the deprecated
        # Text.on_submit listens to; continuous_update=False would also fire on blur).
        self.expression.on_msg(self._on_expression_msg)

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
        self._enable_expression_box(bool(frames) and hasattr(error, "evaluate"))
        if frames:
            self.frame_list.value = None
            self.frame_list.value = len(frames) - 1   # the innermost, where it failed
        else:
            self.frame_view.value = f"<pre>{html.escape(str(error))}</pre>"

    def _on_frame(self, change) -> None:
        self.answer.value = ""   # an answer belongs to the frame it was asked in
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

    def _enable_expression_box(self, live: bool) -> None:
        self.expression.disabled = self.evaluate_button.disabled = not live
        self.expression.placeholder = ASK if live else CANNOT_ASK
        self.answer.value = ""

    def _on_expression_msg(self, _widget, content, _buffers) -> None:
        if content.get("event") == "submit":
            self.evaluate()

    def evaluate(self) -> None:
        """Evaluate the box's expression in the selected frame, on its worker; show the
        repr (or the exception it raised), or why the frame cannot answer any more."""
        expression, index = self.expression.value.strip(), self.frame_list.value
        if not expression or index is None or self.expression.disabled:
            return
        self.answer.value = "<i>evaluating on the worker…</i>"
        try:
            text = self._failure().evaluate(   # type: ignore[attr-defined]
                expression, frame=index, timeout=self.timeout)
        except TimeoutError as e:   # the frame is still there: the expression runs on
            self._show_not_evaluated("the worker did not answer in time (the expression may "
                                     "still be running there)", e)
            return
        except NBClusterError as e:
            self._show_not_evaluated("this frame is not live any more", e)
            return
        self.answer.value = (f"<pre style='{ANSWER_STYLE}'><b>&gt;&gt;&gt; "
                             f"{html.escape(expression)}</b>\n{html.escape(text)}</pre>")

    def _show_not_evaluated(self, headline: str, error: Exception) -> None:
        self.answer.value = (f"<div class='nbcluster-not-evaluated'><b>{headline}</b> "
                             f"({html.escape(str(error))}): the locals above are what it held "
                             "when it failed</div>")

    def _failure(self) -> BaseException:
        return self.groups[self.group_list.value].errors[self.failure_list.value]
