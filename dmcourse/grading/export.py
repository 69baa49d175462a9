"""``grades.csv``: one row per student and assignment, and a number only where one was graded.

nbgrader's own CSV export writes a score for every student the gradebook knows in every assignment
it knows, 0.0 when there is no submission: a file that was not collected, a student who handed in
nothing and an assignment not graded yet all look like a zero. Here each row has a ``status``, and
``score`` is filled only for ``graded`` and ``review`` (and ``graded by hand``):

* ``graded`` / ``review``: autograded (``review``: a person should look, see the grading report);
* ``graded by hand``: autograding failed, but manual scores were entered (formgrader, gradebook API);
* ``failed``: nbgrader could not grade it and nobody has entered a score;
* ``not graded yet``: collected into ``submitted/`` but never autograded;
* ``not collected: <reason>``: the student's file of the download could not be collected;
* ``missing``: nothing from this student for this assignment.

The appendix *For instructors* (book/appendix/instructors.md) introduces it.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from dmcourse.grading import collect

FIELDS = ("assignment", "student_id", "status", "score", "max_score", "late", "notes")
#: statuses that carry a score
SCORED = ("graded", "review", "graded by hand")


@dataclass
class GradeRow:
    """One row of grades.csv; ``score``/``max_score`` in points, None unless the status is in SCORED."""

    assignment: str
    student_id: str
    status: str
    score: float | None = None
    max_score: float | None = None
    late: bool = False
    notes: str = ""


def report_rows(root: Path, assignment: str) -> list[dict]:
    """The rows of ``autograded/report-<assignment>.csv`` (the last ``grade`` run), or []."""
    path = Path(root) / "autograded" / f"report-{assignment}.csv"
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def assignments_with_submissions(root: Path) -> list[str]:
    """Assignments that something was handed in for: a folder in submitted/ or a grading report."""
    root = Path(root)
    found = {p.name for p in (root / "submitted").glob("*/*") if p.is_dir() and not p.parent.name.startswith(".")}
    found |= {p.stem.removeprefix("report-") for p in (root / "autograded").glob("report-*.csv")}
    return sorted(found & set(collect.known_assignments(root)))


def rows(root: Path, assignments: list[str] | None = None) -> list[GradeRow]:
    """Every (assignment, student) row; ``assignments`` default to those with submissions.

    Students: everyone the gradebook knows, everyone in ``submitted/``, and every student id the
    grading reports name (files that were not collected). Raises ValueError for an unknown assignment."""
    from nbgrader.api import MissingEntry

    from dmcourse.grading import course

    root = Path(root).resolve()
    known = collect.known_assignments(root)
    for a in assignments or []:
        if a not in known:
            raise ValueError(f"unknown assignment {a!r}; the course has {', '.join(known)}")
    chosen = list(assignments) if assignments else assignments_with_submissions(root)
    reports = {a: report_rows(root, a) for a in chosen}
    students = {p.parent.name for a in chosen for p in (root / "submitted").glob(f"*/{a}") if p.is_dir()}
    students |= {r["student"] for rs in reports.values() for r in rs if r["student"]}
    out: list[GradeRow] = []
    with course.gradebook(root) as gb:
        students |= {s.id for s in gb.students}
        for a in chosen:
            by_student: dict[str, list[dict]] = {}
            for r in reports[a]:
                if r["student"]:
                    by_student.setdefault(r["student"], []).append(r)
            for s in sorted(students):
                mine = by_student.get(s, [])
                record = collect.recorded(root / "submitted" / s / a / collect.notebook_name(root, a))
                late = bool(record and record.get("late")) or any(r.get("late") == "True" for r in mine)
                row = GradeRow(a, s, "missing", late=late)
                try:
                    sub = gb.find_submission(a, s)
                except MissingEntry:
                    sub = None
                graded_here = (root / "autograded" / s / a).is_dir()
                reported = next((r for r in mine if r["status"] in ("graded", "review", "failed")), None)
                if sub is not None and graded_here:
                    row.status = "review" if (reported and reported["status"] == "review") else "graded"
                    row.score, row.max_score = float(sub.score), float(sub.max_score)
                elif sub is not None and any(g.manual_score is not None for nb in sub.notebooks for g in nb.grades):
                    row.status, row.score, row.max_score = "graded by hand", float(sub.score), float(sub.max_score)
                elif sub is not None or (reported and reported["status"] == "failed"):
                    row.status = "failed"
                    row.notes = (reported or {}).get("notes", "") or "nbgrader could not grade it"
                elif (root / "submitted" / s / a).is_dir():
                    row.status = "not graded yet"
                else:
                    lost = next((r for r in mine if r["status"] == "not collected"), None)
                    if lost:
                        row.status = f"not collected: {lost['notes']}"
                out.append(row)
    return out


def write(root: Path, dest: Path, assignments: list[str] | None = None) -> Path:
    """Write :func:`rows` to ``dest`` as CSV (columns FIELDS; score empty unless graded)."""
    dest = Path(dest).resolve()
    found = rows(root, assignments)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(dest, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(FIELDS)
        for r in found:
            w.writerow(
                [
                    r.assignment,
                    r.student_id,
                    r.status,
                    "" if r.score is None else f"{r.score:g}",
                    "" if r.max_score is None else f"{r.max_score:g}",
                    "LATE" if r.late else "",
                    r.notes,
                ]
            )
    return dest
