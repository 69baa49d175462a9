"""nbgrader's ``ZipCollectApp`` places the files, reading LMS file names the way ``collect`` does.

nbgrader's extension point for LMS downloads is a ``FileNameCollectorPlugin``: ``ZipCollectApp``
asks the plugin, for each file of its extracted folder, which student and which notebook it is
(and when it was handed in), copies it to ``submitted/<student>/<assignment>/`` and writes the time
to ``timestamp.txt``, which nbgrader's ``autograde`` reads for late submissions.
:class:`LmsFileNames` answers with the rules of :mod:`dmcourse.grading.names` (Canvas, Moodle,
Blackboard, plain names). Two ways in:

* :func:`place`, which ``python -m dmcourse.grading collect`` calls with the files it chose
  (duplicates, invalid notebooks, hand edits and the rest are decided in
  :mod:`dmcourse.grading.collect` before; one app per assignment);
* nbgrader's own command, for an instructor who prefers it (same student ids)::

    nbgrader zip_collect ex00_warmup --collector=dmcourse.grading.zipcollect.LmsFileNames

Introduced in the appendix *For instructors*.
"""

from __future__ import annotations

import datetime
import logging
import os
import shutil
import tempfile
from pathlib import Path

from nbgrader.apps.zipcollectapp import ZipCollectApp
from nbgrader.coursedir import CourseDirectory
from nbgrader.plugins import FileNameCollectorPlugin
from nbgrader.utils import parse_utc
from traitlets import Bool, Unicode

from dmcourse.grading import course, names

_LOG = logging.getLogger("dmcourse.grading.zipcollect")
_LOG.addHandler(logging.NullHandler())
_LOG.propagate = False  # collect reports every file itself; nbgrader's lines would repeat it


class LmsFileNames(FileNameCollectorPlugin):
    """File-name plugin of ``ZipCollectApp``: (student id, notebook, time) of an LMS download file."""

    pattern = Unicode(None, allow_none=True, help="regular expression with a group 'student'").tag(config=True)
    assume = Unicode(None, allow_none=True, help="assignment of a file whose name names none").tag(config=True)
    file_time = Bool(
        False,
        help="When the name carries no time, the file's modification time is the time it was handed "
        "in. Only right where the files kept the LMS's times (collect's staging does; nbgrader's "
        "own extractor copies files without their times, so it is off by default).",
    ).tag(config=True)

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.answers: dict[str, dict] = {}  # relative path -> what collect() answered for it

    def collect(self, submitted_file: str) -> dict | None:
        """``{"student_id", "file_id"[, "timestamp"]}`` for a notebook of this assignment, None to
        skip the file (nbgrader logs it). ``submitted_file``: absolute path under the extracted
        folder. ``timestamp``: ``YYYY-MM-DD HH:MM:SS[+00:00]``, see :func:`submission_time`."""
        if not submitted_file.lower().endswith(".ipynb"):
            return None
        app = self.parent
        root, assignment = app.coursedir.root, app.coursedir.assignment_id
        extracted = app._format_collect_path(app.extracted_directory)
        rel = os.path.relpath(submitted_file, extracted).replace(os.sep, "/")
        try:
            parsed = names.parse(rel, names.known_assignments(root), self.pattern, self.assume)
        except names.UnparsableName as e:
            self.log.warning("skipped %s: %s", rel, e)
            return None
        if parsed.assignment != assignment:
            self.log.warning("skipped %s: a file of %s, not %s", rel, parsed.assignment, assignment)
            return None
        info = {"student_id": parsed.student, "file_id": names.notebook_name(root, assignment)}
        when = submission_time(parsed, Path(submitted_file) if self.file_time else None)
        if when:
            info["timestamp"] = when
        self.answers[rel] = info
        return info


def submission_time(parsed: names.Parsed, path: Path | None = None) -> str:
    """When a file was handed in, as nbgrader reads it from ``timestamp.txt``; '' when unknown.

    The time the LMS wrote in the name (Blackboard's attempt time, as written: no time zone, so
    nbgrader takes it as UTC), else the modification time of ``path`` in UTC (seconds), else ''."""
    if parsed.time:
        return parsed.time
    if path is None:
        return ""
    mtime = datetime.datetime.fromtimestamp(path.stat().st_mtime, datetime.timezone.utc)
    return mtime.replace(microsecond=0).isoformat(" ")


def place(
    root: Path, assignment: str, files: dict[str, Path], pattern: str | None = None, assume: str | None = None
) -> dict[str, dict]:
    """Copy ``files`` into ``submitted/<student>/<assignment>/`` with one ``ZipCollectApp``.

    ``files``: path relative to the download folder (what the plugin reads the student from) ->
    the file. The files are staged (with their modification times) in a temporary folder that is
    the app's ``extracted`` folder; each student's folder of ``submitted/`` must be empty or absent
    (nbgrader refuses to fill another). Returns what the plugin answered for each file (files it
    skipped are missing). Raises ValueError with nbgrader's message when the app stops."""
    root = Path(root).resolve()
    cfg = course.load_config(root)
    cfg.CourseDirectory.assignment_id = assignment
    with tempfile.TemporaryDirectory(prefix="dmcourse-collect-") as tmp:
        for rel, src in files.items():
            (Path(tmp) / "extracted" / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, Path(tmp) / "extracted" / rel)  # copy2: the time is the submission time
        cfg.ZipCollectApp.collect_directory_structure = os.path.join(tmp, "{collect_step}")
        cfg.ZipCollectApp.extracted_directory = "extracted"
        cfg.ZipCollectApp.collector_plugin = LmsFileNames
        cfg.ZipCollectApp.force = False  # force would clear the student's folder: collect sets files aside
        cfg.ZipCollectApp.strict = False  # file_id is the source's notebook name, never a student's
        cfg.LmsFileNames.pattern = pattern
        cfg.LmsFileNames.assume = assume
        cfg.LmsFileNames.file_time = True
        app = ZipCollectApp(config=cfg)
        app.log = _LOG
        app.coursedir = CourseDirectory(parent=app)
        errors = _Errors()
        _LOG.addHandler(errors)
        try:
            app.init_plugins()
            app.process_extracted_files()
        except SystemExit:  # ZipCollectApp.fail logs the reason and exits
            raise ValueError(f"nbgrader's zip_collect stopped on {assignment}: {errors.last}") from None
        finally:
            _LOG.removeHandler(errors)
        return dict(app.collector_plugin_inst.answers)


def seconds_late(folder: Path, due: datetime.datetime) -> float:
    """Seconds between ``due`` (naive UTC) and the time in ``folder``'s ``timestamp.txt``, read as
    nbgrader's autograde reads it; 0 when on time or when there is no time."""
    stamp = Path(folder) / "timestamp.txt"
    text = stamp.read_text().strip() if stamp.exists() else ""
    return max(0.0, (parse_utc(text) - due).total_seconds()) if text else 0.0


class _Errors(logging.Handler):
    """Keeps the last error nbgrader logged (the reason ``fail`` gives before it exits)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.last = "no reason given"

    def emit(self, record: logging.LogRecord) -> None:
        self.last = record.getMessage()
