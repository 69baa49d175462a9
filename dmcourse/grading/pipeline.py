"""``grade``: collect -> recover -> autograde -> feedback -> CSV export, and a report of flags.

Every submission ends in the report with a status:

* ``graded``: the score stands (notes say what was repaired or noticed: a rebuilt notebook, a
  timeout, truncated output);
* ``review``: graded, but a person should look (an answer recovery could not find, cells that
  wait for manual grading);
* ``failed``: nbgrader could not grade it (a kernel that died, a hang): grade it by hand;
* ``not collected`` / ``ignored``: a file of the download folder that was not graded, and why.

``grades.csv`` is written by :mod:`dmcourse.grading.export` (a score only for graded submissions).
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import nbformat

from dmcourse.grading import batch, collect, course, export, leaks, recover
from dmcourse.grading.safety import TRUNCATED

REPORT_FIELDS = ("student", "assignment", "status", "score", "max_score", "late", "file", "notes")
#: report statuses that need a person (the command exits 1)
NEEDS_YOU = ("failed", "not collected", "review")


@dataclass
class Row:
    """One line of the grading report."""

    student: str
    assignment: str
    status: str
    score: float | None = None
    max_score: float | None = None
    file: str = ""
    notes: list[str] = field(default_factory=list)
    late: bool = False  # the LMS marked the file late (Canvas LATE_)


def effective_timeout(root: Path, timeout: int | None) -> int:
    """The per-cell timeout in seconds: ``timeout`` or the course's ``Execute.timeout`` (nbgrader's default 30)."""
    if timeout is not None:
        return timeout
    cfg = course.load_config(root)
    return int(cfg.Execute.timeout) if "timeout" in cfg.Execute else 30


def submitted_students(root: Path, assignment: str) -> list[str]:
    return sorted(p.parent.name for p in (Path(root) / "submitted").glob(f"*/{assignment}") if p.is_dir())


def autograded_notes(root: Path, assignment: str, student: str) -> list[str]:
    """What the autograded notebook shows: timeouts, truncated output, answers that call dmcourse."""
    notes = []
    for path in sorted((Path(root) / "autograded" / student / assignment).glob("*.ipynb")):
        for i, cell in enumerate(nbformat.read(path, as_version=4).cells):
            name = (cell.metadata.get("nbgrader") or {}).get("grade_id") or f"cell {i}"
            outs = cell.get("outputs", [])
            if any(o.get("ename") == "CellTimeoutError" for o in outs):
                notes.append(f"{name} hit the timeout")
            texts = [o.get("text", "") + str(o.get("data", "")) + "".join(o.get("traceback", [])) for o in outs]
            if any(TRUNCATED.split("(")[0] in t for t in texts):
                notes.append(f"{name}: output truncated")
            if any("calls the course package" in o.get("evalue", "") for o in outs):
                notes.append(f"{name}: the answer calls dmcourse")
    return notes


def check_feedback(root: Path, assignment: str, students: list[str]) -> dict[str, list[str]]:
    """student -> hidden-test lines found in their feedback (should be empty for everyone)."""
    lines = [
        ln
        for src in sorted((Path(root) / "solutions" / assignment).glob("*.ipynb"))
        for ln in leaks.hidden_lines(src, Path(root) / "exercises" / assignment / src.name)
    ]
    found = {}
    for s in students:
        for f in sorted((Path(root) / "feedback" / s / assignment).rglob("*")):
            if f.is_file() and (hit := leaks.leaked(f, lines)):
                found[s] = hit
    return found


def grade(
    root: Path,
    assignment: str,
    download: Path | None = None,
    *,
    jobs: int = 1,
    timeout: int | None = None,
    pattern: str | None = None,
    force: bool = False,
    dry_run: bool = False,
    assume: str | None = None,
    echo: Callable[[str], None] = print,
) -> list[Row]:
    """Run the whole pipeline for ``assignment``; return the report rows (also written next to autograded/)."""
    root = Path(root).resolve()
    if assignment not in collect.known_assignments(root):
        raise ValueError(
            f"unknown assignment {assignment!r}; the course has " + ", ".join(collect.known_assignments(root))
        )
    timeout = effective_timeout(root, timeout)
    rows: list[Row] = []
    late: set[str] = set()
    incoming: list[str] = []  # students a dry run would collect
    said: dict[str, str] = {}  # student -> what collect says about a file it kept (a hand edit)
    if download is not None:
        echo(f"collect {download} -> submitted/")
        for item in collect.collect(root, download, [assignment], pattern, force=force, dry_run=dry_run, assume=assume):
            if item.late and item.student:
                late.add(item.student)
            if item.status == "unchanged" and item.reason and item.student:
                said[item.student] = item.reason
            if item.status == "would-collect" and item.student:
                incoming.append(item.student)
                rows.append(
                    Row(
                        item.student,
                        assignment,
                        "would collect",
                        file=item.source,
                        notes=[item.reason] if item.reason else [],
                        late=item.late,
                    )
                )
            if item.status in collect.COLLECTED or item.status == "other-assignment":
                continue
            status = "ignored" if item.status in collect.IGNORED else "not collected"
            rows.append(
                Row(
                    item.student or "",
                    item.assignment or "",
                    status,
                    file=item.source,
                    notes=[f"{item.status}: {item.reason}"],
                    late=item.late,
                )
            )
    else:  # no new download: the files the last run could not collect still need you
        rows += [
            _row_of(r) for r in export.report_rows(root, assignment) if r["status"] in ("not collected", "ignored")
        ]
    students = submitted_students(root, assignment)
    if not students and not incoming and not rows:
        raise ValueError(
            f"nothing to grade: no submissions in submitted/*/{assignment}"
            + ("" if download is not None else " (collect a download with --from)")
        )
    echo(f"recover: checking {len(students)} submission(s)")
    recovered = recover.recover(root, assignment, dry_run=dry_run)
    gradable = [s for s in students if recovered[s].notebook is not None]
    if dry_run:
        for s in students:
            r = recovered[s]
            rows.append(
                Row(
                    s,
                    assignment,
                    "would grade" if r.notebook is not None else "failed",
                    file=f"submitted/{s}/{assignment}",
                    notes=[r.status, *r.notes],
                )
            )
        n = len(gradable) + len(set(incoming) - set(students))
        echo(f"dry run: would autograde {n} submission(s) with a {timeout} s cell timeout")
        return rows

    if not course.is_registered(root, assignment):
        echo(f"register {assignment} in the gradebook (nbgrader generate_assignment into a temporary folder)")
        course.register(root, assignment)
    echo(f"autograde {len(gradable)} submission(s), {jobs} at a time, {timeout} s per cell")
    outcome = batch.autograde_all(root, assignment, gradable, timeout, jobs=jobs, echo=echo)

    graded = [s for s in gradable if outcome[s] is None]
    if graded:
        echo(f"feedback for {len(graded)} submission(s)")
        result = course.feedback(root, assignment)
        if not result.get("success"):
            echo("nbgrader generate_feedback reported errors: " + last_line(result.get("error") or ""))
    leaked = check_feedback(root, assignment, graded)
    for s in leaked:  # never let hidden tests out: remove the file and flag it
        for f in (root / "feedback" / s / assignment).rglob("*.html"):
            f.unlink()

    for s in students:
        r = recovered[s]
        record = collect.recorded(root / "submitted" / s / assignment / collect.notebook_name(root, assignment))
        row = Row(
            s,
            assignment,
            "graded",
            file=f"submitted/{s}/{assignment}",
            notes=[] if r.status == "intact" else [f"recovery: {r.status}", *r.notes],
            late=s in late or bool(record and record.get("late")),
        )
        if s in said:
            row.notes.append(said[s])
        if r.status == "manual-review":
            row.status = "review"
        if r.notebook is None or outcome.get(s):
            row.status = "failed"
            row.notes.append(outcome.get(s) or "not a readable notebook")
            if outcome.get(s):  # nbgrader created the submission: it holds manual scores only
                sc = course.score(root, assignment, s)
                row.score, row.max_score = sc.score, sc.max_score
                row.notes.append("the gradebook score counts manual grades only")
        else:
            sc = course.score(root, assignment, s)
            row.score, row.max_score = sc.score, sc.max_score
            row.notes += autograded_notes(root, assignment, s)
            if course.needs_manual_grade(root, assignment, s):
                row.status = "review"
                row.notes.append("cells wait for manual grading (formgrader)")
        if s in leaked:
            row.status = "review"
            row.notes.append(f"feedback withheld: it showed hidden test code ({leaked[s][0]!r})")
        rows.append(row)
    write_report(root, assignment, rows)
    csv_path = export.write(root, root / "grades.csv")
    echo(f"grades exported to {csv_path.relative_to(root)}")
    return rows


def last_line(text: str) -> str:
    """The last non-empty line of a log (the exception), for a one-line error."""
    return next((ln.strip() for ln in reversed(text.splitlines()) if ln.strip()), "see nbgrader's log")


def _row_of(r: dict) -> Row:
    """A report row read back from ``report-<assignment>.csv``."""
    score = float(r["score"]) if r.get("score") else None
    max_score = float(r["max_score"]) if r.get("max_score") else None
    return Row(
        r["student"],
        r["assignment"],
        r["status"],
        score,
        max_score,
        r["file"],
        [n for n in r["notes"].split("; ") if n],
        r.get("late") == "True",
    )


def write_report(root: Path, assignment: str, rows: list[Row]) -> tuple[Path, Path]:
    """``autograded/report-<assignment>.csv`` and ``.md`` (instructor-only: not under feedback/)."""
    out = Path(root) / "autograded"
    out.mkdir(exist_ok=True)
    csv_path, md_path = out / f"report-{assignment}.csv", out / f"report-{assignment}.md"
    with open(csv_path, "w", newline="") as f:
        w = csv.DictWriter(f, REPORT_FIELDS)
        w.writeheader()
        for r in rows:
            w.writerow({**asdict(r), "notes": "; ".join(r.notes)})
    md_path.write_text(format_table(rows) + "\n")
    return csv_path, md_path


def format_table(rows: list[Row]) -> str:
    """The report as a Markdown table, rows needing a person first."""
    order = {"failed": 0, "not collected": 1, "review": 2, "ignored": 3, "graded": 4}
    lines = ["| student | status | score | notes |", "|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (order.get(r.status, 5), r.student, r.file)):
        score = f"{r.score:g}/{r.max_score:g}" if r.score is not None else "–"
        who = r.student or f"`{r.file}`"
        lines.append(f"| {who} | {r.status} | {score} | {'; '.join(r.notes).replace('|', '/')} |")
    return "\n".join(lines)
