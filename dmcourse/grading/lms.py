"""Back to the LMS: a grade file Canvas or Moodle imports, and the feedback bundled for bulk upload.

Introduced in the appendix *For instructors* (book/appendix/instructors.md), which cites the
layouts:

* **Canvas** gradebook import CSV: ``Student, ID, SIS User ID, SIS Login ID, Section``, then one
  column per assignment headed as in Canvas's own gradebook export (``Name (assignment id)``).
  Canvas finds the student by ``ID`` (its user id: the number in the download's file names). An
  empty cell leaves the grade as it is. The ``LATE`` column is not an assignment: tell Canvas to
  ignore it when it asks what the unknown column is.
* **Moodle** grading worksheet CSV (assignment -> *Upload grading worksheet*): ``Identifier``
  (``Participant N``), ``Full name``, ``Email address``, ``Status``, ``Grade``, ``Maximum Grade``,
  ``Grade can be changed``, ``Last modified (submission)``, ``Last modified (grade)``,
  ``Feedback comments``. Moodle reads ``Identifier``, ``Grade``, ``Last modified (grade)`` and the
  feedback columns by their names and ignores the others (``LATE`` among them). ``N`` is the
  participant id of *this* assignment (the number in the download's file names); it differs
  between assignments and from the Moodle user id. Moodle strips ``Participant `` and looks the
  number up, and skips a row whose ``Last modified (grade)`` is older than the grade it holds
  (moodle/moodle ``mod/assign/feedback/offline/importgradeslib.php``). Columns Moodle ignores
  carry what we know: ``Status`` our status, ``Last modified (submission)`` the hand-in time
  (nbgrader's ``timestamp.txt``), ``Feedback comments`` the score it imports as a comment.

Feedback: a zip with each student's HTML named as the LMS expects for bulk upload. Moodle's
*Upload multiple feedback files in a zip*: ``<Full Name>_<participant id>_assignfeedback_file_/<file>``
(``importziplib.php``, ``is_valid_filename_for_import``: a path part that splits on ``_`` into
name, numeric participant id, plugin type and name). Canvas's *Re-upload submissions*: the
download's file-name prefix ``<login>_[LATE_]<user id>_<attachment id>_``: Canvas takes the first
two all-digit ``_``-parts of a name as user id and attachment id and comments on the submission
that holds that attachment (instructure/canvas-lms ``app/models/assignment.rb``,
``infer_comment_context_from_filename``).
"""

from __future__ import annotations

import csv
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

from dmcourse.grading import collect, export, names

CANVAS_FIELDS = ("Student", "ID", "SIS User ID", "SIS Login ID", "Section")
MOODLE_FIELDS = (
    "Identifier",
    "Full name",
    "Email address",
    "Status",
    "Grade",
    "Maximum Grade",
    "Grade can be changed",
    "Last modified (submission)",
    "Last modified (grade)",
    "Feedback comments",
)
LATE_COLUMN = "LATE"
FORMATS = ("canvas", "moodle")


@dataclass
class LmsExport:
    """What :func:`write` produced: the grade file, the feedback zip (None if no feedback), the
    rows it left out with the reason (students the LMS would not recognise), and notes (feedback
    that could not be named for this LMS)."""

    grades: Path
    feedback: Path | None
    rows: int
    skipped: list[str]
    notes: list[str]


def _points(score: float | None, max_score: float | None, out_of: float | None) -> str:
    if score is None:
        return ""
    if out_of is not None and max_score:
        score = score * out_of / max_score
    return f"{score:g}"


def _lms_name(root: Path, assignment: str, student: str, record: dict) -> str:
    """The student's name or login as the LMS wrote it in the file name: from collect's record, else
    from the file the grading report lists for them (a file that could not be collected)."""
    if record.get("name"):
        return str(record["name"])
    for r in export.report_rows(root, assignment):
        if r["student"] == student and r["file"] and not r["file"].startswith("submitted/"):
            try:
                return names.parse(r["file"], collect.known_assignments(root)).name
            except names.UnparsableName:
                continue
    return ""


def write(
    root: Path,
    assignment: str,
    fmt: str,
    *,
    column: str | None = None,
    out_of: float | None = None,
    dest: Path | None = None,
) -> LmsExport:
    """Write the ``fmt`` (canvas | moodle) grade file of ``assignment`` and its feedback zip.

    ``column``: Canvas's header of the assignment column (copy it from Canvas's gradebook export,
    e.g. ``Warm-up (12345)``; default the assignment's name). ``out_of``: rescale scores to this
    maximum (default: points as graded). ``dest``: the CSV (default ``autograded/lms-<assignment>-<fmt>.csv``);
    the zip is written next to it (``.zip``). Students whose id is not an LMS number are skipped
    and listed."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown LMS format {fmt!r}; expected one of {', '.join(FORMATS)}")
    if out_of is not None and out_of <= 0:
        raise ValueError(f"out_of must be a positive number of points, got {out_of!r}")
    root = Path(root).resolve()
    # students of this assignment's download only: a ``missing`` row names someone this LMS
    # assignment never listed (Moodle's participant ids differ between assignments)
    rows = [r for r in export.rows(root, [assignment]) if r.assignment == assignment and r.status != "missing"]
    if not rows:
        raise ValueError(f"nothing to export: no submissions of {assignment} (grade it first)")
    dest = Path(dest) if dest is not None else root / "autograded" / f"lms-{assignment}-{fmt}.csv"
    dest.parent.mkdir(parents=True, exist_ok=True)
    nb_name = collect.notebook_name(root, assignment)
    kept, skipped, notes, bundle = [], [], [], {}
    for r in rows:
        record = collect.recorded(root / "submitted" / r.student_id / assignment / nb_name) or {}
        if not r.student_id.isdigit():
            skipped.append(f"{r.student_id}: not an LMS user id (collected from a file name without one)")
            continue
        kept.append((r, record))
        html = sorted((root / "feedback" / r.student_id / assignment).glob("*.html"))
        prefix = names.lms_prefix(record.get("source", "")) if record else None
        if html and r.status in export.SCORED:
            if prefix is None or prefix[0] != fmt:
                notes.append(f"{r.student_id}: feedback not bundled (the file was not collected from a {fmt} download)")
            elif fmt == "moodle":
                name = prefix[1].removesuffix("_").rsplit("_", 1)[0]
                bundle[f"{name}_{r.student_id}_assignfeedback_file_/{html[0].name}"] = html[0]
            else:
                bundle[f"{prefix[1]}{assignment}_feedback.html"] = html[0]
    now = time.strftime("%Y-%m-%d %H:%M:%S")
    with open(dest, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        if fmt == "canvas":
            w.writerow([*CANVAS_FIELDS, column or assignment, LATE_COLUMN])
            for r, record in kept:
                w.writerow(
                    [
                        _lms_name(root, assignment, r.student_id, record),
                        r.student_id,
                        "",
                        "",
                        "",
                        _points(r.score, r.max_score, out_of),
                        "LATE" if r.late else "",
                    ]
                )
        else:
            w.writerow([*MOODLE_FIELDS, LATE_COLUMN])
            for r, record in kept:
                prefix = names.lms_prefix(record.get("source", "")) if record else None
                full_name = (
                    prefix[1].removesuffix("_").rsplit("_", 1)[0]
                    if prefix and prefix[0] == "moodle"
                    else _lms_name(root, assignment, r.student_id, record)
                )
                maximum = out_of if out_of is not None else r.max_score
                comment = (
                    f"Score: {r.score:g}/{r.max_score:g} points (autograded tests and any manual grades); "
                    "the feedback file shows each test."
                    if r.score is not None
                    else ""
                )
                w.writerow(
                    [
                        f"Participant {r.student_id}",
                        full_name,
                        "",
                        r.status,
                        _points(r.score, r.max_score, out_of),
                        "" if maximum is None else f"{maximum:g}",
                        "Yes",
                        record.get("timestamp") or record.get("collected_at", "").replace("T", " "),
                        now if r.score is not None else "",
                        comment,
                        "LATE" if r.late else "",
                    ]
                )
    zpath = None
    if bundle:
        zpath = dest.with_suffix(".zip")
        with zipfile.ZipFile(zpath, "w", zipfile.ZIP_DEFLATED) as z:
            for arcname, path in sorted(bundle.items()):
                z.write(path, arcname)
    return LmsExport(dest, zpath, len(kept), skipped, notes)
