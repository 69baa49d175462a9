"""python -m dmcourse.grading: the grading steps nbgrader lacks, around nbgrader's own API.

Run from the course directory (the folder with nbgrader_config.py) or pass --course.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

EPILOG = """\
typical use (see the book's appendix "For instructors"):
  python -m dmcourse.grading grade ex00_warmup --from ~/Downloads/ex00_submissions --dry-run
  python -m dmcourse.grading grade ex00_warmup --from ~/Downloads/ex00_submissions
steps one by one:
  collect DOWNLOAD_DIR      LMS download folder -> submitted/<student>/<assignment>/
  recover ASSIGNMENT        put answers of notebooks that lost nbgrader metadata into the release
  autograde ASSIGNMENT      nbgrader autograde, one broken submission never stops the batch
  feedback ASSIGNMENT       nbgrader generate_feedback without hidden-test code
  export                    grades.csv: a score for each graded submission, a status for the rest
  lms-export ASSIGNMENT     Canvas/Moodle grade file and feedback zip (--format canvas|moodle)
"""


def _course(args: argparse.Namespace) -> Path:
    root = Path(args.course).resolve()
    if not (root / "nbgrader_config.py").exists():
        raise SystemExit(f"error: {root} has no nbgrader_config.py; run from the course directory or pass --course")
    return root


def _assignment(root: Path, name: str) -> str:
    """``name`` if the course has it (a folder of solutions/), else ValueError naming the known ones."""
    from dmcourse.grading import collect

    known = collect.known_assignments(root)
    if name not in known:
        raise ValueError(f"unknown assignment {name!r}; the course has {', '.join(known)}")
    return name


def _students(root: Path, assignment: str, given: list[str] | None, folder: str = "submitted") -> list[str]:
    """The students given (each must have ``<folder>/<student>/<assignment>``), else all that have one."""
    have = sorted(
        p.parent.name
        for p in (root / folder).glob(f"*/{assignment}")
        if p.is_dir() and not p.parent.name.startswith(".")
    )
    for s in given or []:
        if s not in have:
            raise ValueError(f"unknown student {s!r}: there is no {folder}/{s}/{assignment}")
    if not have:
        raise ValueError(
            f"nothing to do: no {folder}/*/{assignment}"
            + (" (collect the submissions first)" if folder == "submitted" else " (autograde first)")
        )
    return list(given) if given else have


def _print_items(items) -> None:
    width = max((len(i.source) for i in items), default=10)
    for i in items:
        who = f"{i.student}/{i.assignment}" if i.student else ""
        print(f"{i.status:<18} {i.source:<{width}}  {who}  {i.reason}".rstrip())
    counts: dict[str, int] = {}
    for i in items:
        counts[i.status] = counts.get(i.status, 0) + 1
    print("summary: " + (", ".join(f"{v} {k}" for k, v in sorted(counts.items())) or "no files"))


def cmd_collect(args) -> int:
    from dmcourse.grading import collect

    root = _course(args)
    only = [_assignment(root, a) for a in args.assignment or []]
    if args.assume and len(only) != 1:
        raise ValueError("--assume needs exactly one --assignment (the one a file naming none belongs to)")
    items = collect.collect(
        root,
        Path(args.download),
        only or None,
        args.pattern,
        force=args.force,
        dry_run=args.dry_run,
        assume=only[0] if args.assume else None,
    )
    if not items:
        raise ValueError(f"nothing to do: {args.download} holds no files")
    _print_items(items)
    if args.dry_run:
        print("dry run: nothing was written")
    return 1 if any(i.status in collect.FLAGGED for i in items) else 0


def cmd_recover(args) -> int:
    from dmcourse.grading import recover

    root = _course(args)
    assignment = _assignment(root, args.assignment)
    students = _students(root, assignment, args.student)
    results = recover.recover(root, assignment, students, dry_run=args.dry_run)
    would = {"rebuilt": "would rebuild", "manual-review": "would flag"} if args.dry_run else {}
    for student, r in results.items():
        print(f"{would.get(r.status, r.status):<14} {student}  " + "; ".join(r.notes))
    if args.dry_run:
        print("dry run: nothing was written")
    return 1 if any(r.status == "manual-review" for r in results.values()) else 0


def cmd_autograde(args) -> int:
    from dmcourse.grading import batch, course, pipeline

    root = _course(args)
    _assignment(root, args.assignment)
    students = _students(root, args.assignment, args.student)
    timeout = pipeline.effective_timeout(root, args.timeout)
    if args.dry_run:
        print(
            f"would autograde {len(students)} submission(s) of {args.assignment}, {timeout} s per cell: "
            + ", ".join(students)
        )
        return 0
    if not course.is_registered(root, args.assignment):
        course.register(root, args.assignment)
    outcome = batch.autograde_all(root, args.assignment, students, timeout, jobs=args.jobs, echo=print)
    for s, why in sorted(outcome.items()):
        if why:
            print(f"failed  {s}: {why}")
        else:
            sc = course.score(root, args.assignment, s)
            print(f"graded  {s}: {sc.score:g}/{sc.max_score:g}")
    return 1 if any(outcome.values()) else 0


def cmd_feedback(args) -> int:
    from dmcourse.grading import course, pipeline

    root = _course(args)
    _assignment(root, args.assignment)
    students = _students(root, args.assignment, args.student, folder="autograded")
    if args.dry_run:
        print(f"would write feedback/<student>/{args.assignment}/ for: " + ", ".join(students))
        return 0
    failed = []
    for s in students if args.student else [None]:
        result = course.feedback(root, args.assignment, s)
        if not result.get("success"):
            failed.append(s or "the batch")
            print(
                f"error: nbgrader generate_feedback failed for {s or args.assignment}: "
                + pipeline.last_line(result.get("error") or result.get("log") or ""),
                file=sys.stderr,
            )
    students = [s for s in students if any((root / "feedback" / s / args.assignment).glob("*.html"))]
    leaked = pipeline.check_feedback(root, args.assignment, students)
    for s, hit in leaked.items():
        for f in (root / "feedback" / s / args.assignment).rglob("*.html"):
            f.unlink()
        print(f"withheld feedback of {s}: it showed hidden test code ({hit[0]!r})", file=sys.stderr)
    print(f"feedback in feedback/<student>/{args.assignment}/ for {len(students) - len(leaked)} student(s)")
    return 1 if leaked or failed else 0


def cmd_export(args) -> int:
    from dmcourse.grading import export

    root = _course(args)
    assignments = [_assignment(root, a) for a in args.assignment or []] or export.assignments_with_submissions(root)
    if not assignments:
        raise ValueError("nothing to export: no assignment has submissions (collect and grade first)")
    if args.dry_run:
        print(f"would write {args.to}: {', '.join(assignments)}")
        return 0
    found = export.rows(root, assignments)
    path = export.write(root, root / Path(args.to).expanduser(), assignments)
    counts: dict[str, int] = {}
    for r in found:
        key = r.status.split(":")[0]
        counts[key] = counts.get(key, 0) + 1
    print(f"wrote {path}: " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())))
    return 0


def cmd_lms_export(args) -> int:
    from dmcourse.grading import lms

    root = _course(args)
    assignment = _assignment(root, args.assignment)
    dest = root / Path(args.to).expanduser() if args.to else None
    if args.dry_run:
        print(f"would write the {args.format} grade file of {assignment} and its feedback zip")
        return 0
    out = lms.write(root, assignment, args.format, column=args.column, out_of=args.out_of, dest=dest)
    print(f"wrote {out.grades} ({out.rows} student(s))")
    print(f"wrote {out.feedback}" if out.feedback else "no feedback files to bundle")
    for why in out.skipped:
        print(f"skipped {why}")
    for note in out.notes:
        print(f"note: {note}")
    return 1 if out.skipped else 0


def cmd_grade(args) -> int:
    from dmcourse.grading import pipeline

    root = _course(args)
    rows = pipeline.grade(
        root,
        args.assignment,
        Path(args.download) if args.download else None,
        jobs=args.jobs,
        timeout=args.timeout,
        pattern=args.pattern,
        force=args.force,
        dry_run=args.dry_run,
        assume=args.assignment if args.assume else None,
    )
    print(pipeline.format_table(rows))
    if args.dry_run:
        print("dry run: nothing was written")
    else:
        print(f"report: autograded/report-{args.assignment}.md and .csv; grades: grades.csv")
    return 1 if any(r.status in pipeline.NEEDS_YOU for r in rows) else 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m dmcourse.grading",
        description=__doc__,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--course", default=".", help="course directory (default: the current one)")
    common.add_argument("--dry-run", action="store_true", help="say what would happen, write nothing")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def timeout_jobs(sp):
        sp.add_argument("--timeout", type=int, help="seconds per cell (default: Execute.timeout of nbgrader_config.py)")
        sp.add_argument("--jobs", type=int, default=1, help="submissions graded at once (default 1)")

    def collect_options(sp):
        sp.add_argument(
            "--pattern",
            help="regex with a named group 'student' (and optionally 'assignment') "
            "for file names no built-in rule reads",
        )
        sp.add_argument("--force", action="store_true", help="replace a different file already in submitted/")

    sp = sub.add_parser(
        "collect",
        parents=[common],
        help="LMS download folder -> submitted/<student>/<assignment>/",
        description="Copy each student's newest readable notebook from an LMS download folder into "
        "submitted/<student>/<assignment>/<assignment>.ipynb and report every other file. "
        "Name rules: see dmcourse/grading/names.py or the instructors' appendix.",
    )
    sp.add_argument("download", help="the download folder, unzipped or as the .zip")
    sp.add_argument("--assignment", action="append", help="collect only this assignment (repeatable)")
    sp.add_argument(
        "--assume",
        action="store_true",
        help="with one --assignment: a file whose name names no known assignment is one of it "
        "(a download of one assignment in which students renamed their files)",
    )
    collect_options(sp)
    sp.set_defaults(func=cmd_collect)

    sp = sub.add_parser(
        "recover",
        parents=[common],
        help="rebuild submissions that lost their nbgrader metadata",
        description="Check submitted/*/ASSIGNMENT; rebuild damaged notebooks from the release with "
        "the student's answers (the original is kept in "
        "submitted/.recovered/<student>/ASSIGNMENT/) or flag them for review.",
    )
    sp.add_argument("assignment")
    sp.add_argument("--student", action="append", help="only this student (repeatable)")
    sp.set_defaults(func=cmd_recover)

    sp = sub.add_parser("autograde", parents=[common], help="nbgrader autograde, isolating broken submissions")
    sp.add_argument("assignment")
    sp.add_argument("--student", action="append", help="only this student (repeatable)")
    timeout_jobs(sp)
    sp.set_defaults(func=cmd_autograde)

    sp = sub.add_parser("feedback", parents=[common], help="nbgrader generate_feedback without hidden-test code")
    sp.add_argument("assignment")
    sp.add_argument("--student", action="append", help="only this student (repeatable)")
    sp.set_defaults(func=cmd_feedback)

    sp = sub.add_parser(
        "export",
        parents=[common],
        help="grades to CSV, with a status for every row",
        description="One row per student and assignment: a score for graded submissions only, "
        "else the status (missing, not collected: <reason>, failed, not graded yet).",
    )
    sp.add_argument(
        "--to", default="grades.csv", help="CSV file, relative to the course directory (default grades.csv)"
    )
    sp.add_argument(
        "--assignment",
        action="append",
        help="only this assignment (repeatable; default: every assignment with submissions)",
    )
    sp.set_defaults(func=cmd_export)

    sp = sub.add_parser(
        "lms-export",
        parents=[common],
        help="a grade file Canvas or Moodle imports, and the feedback zip",
        description="Write autograded/lms-ASSIGNMENT-FORMAT.csv (Canvas gradebook import or Moodle "
        "grading worksheet, with a LATE column) and .zip (each student's feedback named "
        "for the LMS's bulk feedback upload). See the instructors' appendix.",
    )
    sp.add_argument("assignment")
    sp.add_argument("--format", required=True, choices=["canvas", "moodle"], help="the LMS")
    sp.add_argument(
        "--column",
        help="canvas: the assignment's column header in Canvas's gradebook export, "
        "e.g. 'Warm-up (12345)' (default: the assignment's name)",
    )
    sp.add_argument("--out-of", type=float, help="rescale scores to this maximum (default: points as graded)")
    sp.add_argument("--to", help="the CSV file, relative to the course directory")
    sp.set_defaults(func=cmd_lms_export)

    sp = sub.add_parser(
        "grade",
        parents=[common],
        help="the whole pipeline for one assignment, with a report",
        description="collect (with --from) -> recover -> autograde -> feedback -> grades.csv, and "
        "a report of every submission that needs a person "
        "(autograded/report-ASSIGNMENT.md/.csv).",
    )
    sp.add_argument("assignment")
    sp.add_argument("--from", dest="download", help="LMS download folder (or its .zip) to collect first")
    sp.add_argument(
        "--assume",
        action="store_true",
        help="with --from: a file whose name names no known assignment is one of ASSIGNMENT",
    )
    collect_options(sp)
    timeout_jobs(sp)
    sp.set_defaults(func=cmd_grade)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if importlib.util.find_spec("nbgrader") is None:  # find_spec: importing nbgrader takes seconds
        print('error: the instructor tools need nbgrader: pip install "dmcourse[grading]"', file=sys.stderr)
        return 2
    from dmcourse.grading.course import ensure_scripts_on_path

    ensure_scripts_on_path()
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
