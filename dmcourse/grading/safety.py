"""nbgrader settings that keep grading safe: bounded outputs, no hidden-test code in feedback.

Two things nbgrader 0.9 does not do by itself:

* ``LimitOutput`` caps stream output by *lines* only: one ``print("x" * 10**8)`` still lands in
  the autograded notebook and the feedback HTML. :class:`LimitOutputSize` caps every output by
  characters.
* ``generate_feedback`` renders the *autograded* notebook, whose test cells hold the hidden tests
  (autograde restores them), and tracebacks from a failing hidden test quote its lines.
  :class:`HideHiddenTests` removes the hidden region from the source and replaces quoted hidden
  lines in outputs, keeping the assertion message (written for students) and the student's frames;
  the signatures of functions the hidden tests define and the grader's file paths are hidden too.

A cell that runs past the timeout gets a message in plain words (``TIMEOUT_MESSAGE``) instead of
nbgrader's "No reply from kernel before timeout".

:func:`grading_config` returns both as an nbgrader ``Config``; ``course.api`` always merges it,
and ``configure(c)`` applies it inside ``nbgrader_config.py`` so plain ``nbgrader`` commands get it.
"""

from __future__ import annotations

import os
import re
import sys

from nbgrader.converters import Autograde, GenerateFeedback
from nbgrader.preprocessors import (
    ClearHiddenTests,
    GetGrades,
    LimitOutput,
    NbGraderPreprocessor,
)
from traitlets import Bool, Integer, List
from traitlets.config import Config

TRUNCATED = "... output truncated by the grader ({} characters dropped) ..."
HIDDEN_PLACEHOLDER = "# (hidden tests ran here; their code is not shown)"
HIDDEN_LINE = "[hidden test code]"
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_GUTTER = re.compile(r"^(?P<gutter>\s*(?:-*>\s*)?\d+\s)(?P<code>.*)$")
TIMEOUT_MESSAGE = (
    "This cell ran longer than the grader's time limit for one cell and was stopped; "
    "the cells after it were still graded. Look for a loop that never ends or work that is far too large."
)
HIDDEN_FUNCTION = "[a function of the hidden tests]"
_DEFINED = re.compile(r"^\s*(?:async\s+)?def\s+(\w+)|^\s*class\s+(\w+)")
_PATH = re.compile(r"(?:[A-Za-z]:)?[/\\][^\s:'\"\x1b]*?[/\\]((?:site|dist)-packages[/\\]|dmcourse[/\\])")


def local_paths_hidden(text: str) -> str:
    """``text`` with absolute paths of installed code shortened: ``/home/me/.venv/.../site-packages/x.py``
    -> ``site-packages/x.py``, ``/home/me/course/dmcourse/guard.py`` -> ``dmcourse/guard.py``."""
    text = _PATH.sub(r"\1", text)
    for prefix in {sys.prefix, os.path.expanduser("~")}:
        if len(prefix) > 1:
            text = text.replace(prefix + os.sep, "")
    return text


def strip_ansi(text: str) -> str:
    return _ANSI.sub("", text)


class LimitOutputSize(NbGraderPreprocessor):
    """Cap each output of a code cell at ``max_chars`` characters (streams, rich data, tracebacks)."""

    max_chars = Integer(20_000, help="largest output kept, in characters (base64 images included)").tag(config=True)

    def _cut(self, text: str) -> str:
        if len(text) <= self.max_chars:
            return text
        return text[: self.max_chars] + "\n" + TRUNCATED.format(len(text) - self.max_chars) + "\n"

    def preprocess_cell(self, cell, resources, index):
        if cell.cell_type != "code":
            return cell, resources
        for out in cell.get("outputs", []):
            if out.output_type == "stream":
                out.text = self._cut(out.text)
            elif out.output_type in ("display_data", "execute_result"):
                size = sum(len(v) if isinstance(v, str) else len(str(v)) for v in out.data.values())
                if size > self.max_chars:
                    out.data = {"text/plain": TRUNCATED.format(size)}
            elif out.output_type == "error":
                out.traceback = [self._cut(t) for t in out.traceback]
                out.evalue = self._cut(out.evalue)
        return cell, resources


def split_hidden(
    source: str, begin: str = "BEGIN HIDDEN TESTS", end: str = "END HIDDEN TESTS"
) -> tuple[list[str], list[str]]:
    """(visible lines, hidden lines) of a cell source; delimiter lines belong to neither."""
    visible: list[str] = []
    hidden: list[str] = []
    inside = False
    for line in source.split("\n"):
        if begin in line:
            inside = True
        elif end in line:
            inside = False
        else:
            (hidden if inside else visible).append(line)
    return visible, hidden


class HideHiddenTests(ClearHiddenTests):
    """For feedback: remove hidden tests from test cells and from what their outputs quote."""

    enforce_metadata = Bool(False).tag(config=True)
    # configurable, as in nbgrader's GetGrades: the HTML exporter sets it for every preprocessor
    display_data_priority = List(GetGrades.class_traits()["display_data_priority"].default()).tag(config=True)

    def _redact(self, text: str, secret: set[str]) -> str:
        lines = strip_ansi(text).split("\n")
        if not any(ln.strip() in secret or ((m := _GUTTER.match(ln)) and m["code"].strip() in secret) for ln in lines):
            return text  # keep the colours of untouched text
        out = []
        for ln in lines:
            m = _GUTTER.match(ln)
            if m and m["code"].strip() in secret:
                out.append(m["gutter"] + HIDDEN_LINE)
            elif ln.strip() in secret:
                out.append(HIDDEN_LINE)
            else:
                out.append(ln)
        return "\n".join(out)

    def _paths(self, cell) -> None:
        for out in cell.get("outputs", []):
            if out.output_type == "error":
                out.traceback = [local_paths_hidden(t) for t in out.traceback]
                out.evalue = local_paths_hidden(out.evalue)

    def preprocess_cell(self, cell, resources, index):
        if cell.cell_type != "code":
            return cell, resources
        self._paths(cell)
        if self.begin_test_delimeter not in cell.source:
            return cell, resources
        visible, hidden = split_hidden(cell.source, self.begin_test_delimeter, self.end_test_delimeter)
        helpers = {a or b for ln in hidden if (m := _DEFINED.match(ln)) for a, b in [m.groups()]}
        helpers -= {a or b for ln in visible if (m := _DEFINED.match(ln)) for a, b in [m.groups()]}
        secret = {ln.strip() for ln in hidden if ln.strip()} - {ln.strip() for ln in visible}
        secret |= {
            ln.strip()
            for ln in cell.source.split("\n")
            if self.begin_test_delimeter in ln or self.end_test_delimeter in ln
        }
        cell.source = "\n".join(visible).rstrip() + "\n" + HIDDEN_PLACEHOLDER
        for out in cell.get("outputs", []):
            if out.output_type == "error":
                out.traceback = [_hide_signatures(self._redact(t, secret), helpers) for t in out.traceback]
                out.evalue = self._redact(out.evalue, secret)
            elif out.output_type == "stream":
                out.text = self._redact(out.text, secret)
            elif out.output_type in ("display_data", "execute_result"):
                out.data = {k: self._redact(v, secret) if isinstance(v, str) else v for k, v in out.data.items()}
        return cell, resources


def _hide_signatures(text: str, names: set[str]) -> str:
    """Traceback frame headers ``..., in helper(a, b)`` of the hidden tests' own functions, hidden."""
    if not names:
        return text
    pattern = re.compile(
        r"\bin (?:\x1b\[[0-9;]*m)*(?:"
        + "|".join(map(re.escape, sorted(names)))
        + r")\b(?:\x1b\[[0-9;]*m)*(\([^\n]*\))?"
    )
    return pattern.sub("in " + HIDDEN_FUNCTION, text)


def _insert_after(defaults: list, anchor: type, extra: type) -> list:
    """nbgrader's default preprocessor list with ``extra`` right after ``anchor``."""
    if anchor not in defaults:
        raise RuntimeError(f"nbgrader's preprocessors changed ({defaults}): {anchor.__name__} not found")
    i = defaults.index(anchor)
    return [*defaults[: i + 1], extra, *defaults[i + 1 :]]


def grading_config(timeout: int | None = None) -> Config:
    """nbgrader settings for safe grading (optionally a per-cell timeout in seconds)."""
    c = Config()
    c.Autograde.autograde_preprocessors = _insert_after(
        Autograde.class_traits()["autograde_preprocessors"].default(), LimitOutput, LimitOutputSize
    )
    c.GenerateFeedback.preprocessors = _insert_after(
        GenerateFeedback.class_traits()["preprocessors"].default(), GetGrades, HideHiddenTests
    )
    c.Execute.error_on_timeout = {
        "ename": "CellTimeoutError",
        "evalue": TIMEOUT_MESSAGE,
        "traceback": [f"CellTimeoutError: {TIMEOUT_MESSAGE}"],
    }
    if timeout is not None:
        if not isinstance(timeout, int) or timeout <= 0:
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
        c.Execute.timeout = timeout
    return c


def configure(c: Config) -> None:
    """Apply :func:`grading_config` inside ``nbgrader_config.py`` (``configure(c)``)."""
    c.merge(grading_config())
