"""python -m dmcourse.grading: the grading steps nbgrader lacks, around nbgrader's own API.

Run from the course directory (the folder with nbgrader_config.py) or pass --course.
"""

from __future__ import annotations

import argparse
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
  export                    nbgrader's CSV export (grades.csv)
"""


def _course(args: argparse.Namespace) -> Path:
    root = Path(args.course).resolve()
    if not (root / "nbgrader_config.py").exists():
        raise SystemExit(f"error: {root} has no nbgrader_config.py; run from the course directory or pass --course")
    return root


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

    items = collect.collect(_course(args), Path(args.download), args.assignment or None, args.pattern,
                            force=args.force, dry_run=args.dry_run, assume=args.assume)
    _print_items(items)
    if args.dry_run:
        print("dry run: nothing was written")
    return 1 if any(i.status in collect.FLAGGED for i in items) else 0


def cmd_recover(args) -> int:
    from dmcourse.grading import recover

    results = recover.recover(_course(args), args.assignment, args.student or None, dry_run=args.dry_run)
    for student, r in results.items():
        print(f"{r.status:<14} {student}  " + "; ".join(r.notes))
    if not results:
        print(f"no submissions in submitted/*/{args.assignment}")
    if args.dry_run:
        print("dry run: nothing was written")
    return 1 if any(r.status == "manual-review" for r in results.values()) else 0


def cmd_autograde(args) -> int:
    from dmcourse.grading import batch, course, pipeline

    root = _course(args)
    students = args.student or pipeline.submitted_students(root, args.assignment)
    timeout = pipeline.effective_timeout(root, args.timeout)
    if args.dry_run:
        print(f"would autograde {len(students)} submission(s) of {args.assignment}, {timeout} s per cell: "
              + ", ".join(students))
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
    students = args.student or sorted(p.parent.name for p in (root / "autograded").glob(f"*/{args.assignment}"))
    if args.dry_run:
        print(f"would write feedback/<student>/{args.assignment}/ for: " + ", ".join(students))
        return 0
    for s in students if args.student else [None]:
        result = course.feedback(root, args.assignment, s)
        if not result.get("success"):
            print((result.get("error") or result.get("log") or "")[-3000:], file=sys.stderr)
    leaked = pipeline.check_feedback(root, args.assignment, students)
    for s, hit in leaked.items():
        for f in (root / "feedback" / s / args.assignment).rglob("*.html"):
            f.unlink()
        print(f"withheld feedback of {s}: it showed hidden test code ({hit[0]!r})", file=sys.stderr)
    print(f"feedback in feedback/<student>/{args.assignment}/ for {len(students) - len(leaked)} student(s)")
    return 1 if leaked else 0


def cmd_export(args) -> int:
    from dmcourse.grading import course

    root = _course(args)
    if args.dry_run:
        print(f"would write {args.to} (nbgrader's CSV export)")
        return 0
    path = course.export_csv(root, Path(args.to), args.assignment or None)
    print(f"wrote {path}")
    return 0


def cmd_grade(args) -> int:
    from dmcourse.grading import pipeline

    root = _course(args)
    rows = pipeline.grade(root, args.assignment, Path(args.download) if args.download else None, jobs=args.jobs,
                          timeout=args.timeout, pattern=args.pattern, force=args.force, dry_run=args.dry_run,
                          assume=args.assignment if args.assume else None)
    print(pipeline.format_table(rows))
    if args.dry_run:
        print("dry run: nothing was written")
    else:
        print(f"report: autograded/report-{args.assignment}.md and .csv; grades: grades.csv")
    return 1 if any(r.status in ("failed", "not collected", "review") for r in rows) else 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m dmcourse.grading", description=__doc__, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--course", default=".", help="course directory (default: the current one)")
    common.add_argument("--dry-run", action="store_true", help="say what would happen, write nothing")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def timeout_jobs(sp):
        sp.add_argument("--timeout", type=int, help="seconds per cell (default: Execute.timeout of nbgrader_config.py)")
        sp.add_argument("--jobs", type=int, default=1, help="submissions graded at once (default 1)")

    def collect_options(sp):
        sp.add_argument("--pattern", help="regex with a named group 'student' (and optionally 'assignment') "
                                          "for file names no built-in rule reads")
        sp.add_argument("--force", action="store_true", help="replace a different file already in submitted/")

    sp = sub.add_parser("collect", parents=[common], help="LMS download folder -> submitted/<student>/<assignment>/",
                        description="Copy each student's newest readable notebook from an LMS download folder into "
                                    "submitted/<student>/<assignment>/<assignment>.ipynb and report every other file. "
                                    "Name rules: see dmcourse/grading/names.py or the instructors' appendix.")
    sp.add_argument("download", help="the unzipped download folder")
    sp.add_argument("--assignment", action="append", help="collect only this assignment (repeatable)")
    sp.add_argument("--assume", metavar="ASSIGNMENT",
                    help="a file whose name names no known assignment belongs to ASSIGNMENT "
                         "(a download of one assignment in which students renamed their files)")
    collect_options(sp)
    sp.set_defaults(func=cmd_collect)

    sp = sub.add_parser("recover", parents=[common], help="rebuild submissions that lost their nbgrader metadata",
                        description="Check submitted/*/ASSIGNMENT; rebuild damaged notebooks from the release with "
                                    "the student's answers (original kept as .original) or flag them for review.")
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

    sp = sub.add_parser("export", parents=[common], help="grades to CSV (nbgrader's CSV export)")
    sp.add_argument("--to", default="grades.csv", help="CSV file (default grades.csv)")
    sp.add_argument("--assignment", action="append", help="only this assignment (repeatable)")
    sp.set_defaults(func=cmd_export)

    sp = sub.add_parser("grade", parents=[common], help="the whole pipeline for one assignment, with a report",
                        description="collect (with --from) -> recover -> autograde -> feedback -> grades.csv, and "
                                    "a report of every submission that needs a person "
                                    "(autograded/report-ASSIGNMENT.md/.csv).")
    sp.add_argument("assignment")
    sp.add_argument("--from", dest="download", help="LMS download folder to collect first")
    sp.add_argument("--assume", action="store_true",
                    help="with --from: a file whose name names no known assignment is one of ASSIGNMENT")
    collect_options(sp)
    timeout_jobs(sp)
    sp.set_defaults(func=cmd_grade)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from dmcourse.grading.course import ensure_scripts_on_path

    ensure_scripts_on_path()
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
