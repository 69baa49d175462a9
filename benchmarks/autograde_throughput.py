"""Autograde throughput: submissions per minute on this machine (not a test).

Grades N generated correct submissions of each assignment in a temporary copy of the course,
through the same path as `python -m dmcourse.grading autograde` (nbgrader's API in worker
processes), once per --jobs value, and prints a table.

    python benchmarks/autograde_throughput.py                    # every assignment, 8 each, jobs 1 and 2
    python benchmarks/autograde_throughput.py --assignment ex00_warmup -n 20 --jobs 1 2 4
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # test tooling: synth, mutation

import mutation  # noqa: E402
import synth  # noqa: E402

from dmcourse.grading import batch, course, pipeline  # noqa: E402


def measure(assignment: str, n: int, jobs: int) -> tuple[float, int]:
    """(seconds, submissions graded) for n correct submissions graded with `jobs` workers."""
    tmp = Path(tempfile.mkdtemp(prefix="dmcourse-bench-"))
    try:
        root = mutation.copy_course(ROOT, tmp / "course")
        solution, release = synth.load(root, assignment)
        good = synth.correct(solution, release)
        (name,) = [p.name for p in (root / "exercises" / assignment).glob("*.ipynb")]
        students = [f"s{i:04d}" for i in range(n)]
        for s in students:
            d = root / "submitted" / s / assignment
            d.mkdir(parents=True)
            nbformat.write(good, d / name)
        course.register(root, assignment)
        start = time.perf_counter()
        outcome = batch.autograde_all(root, assignment, students, pipeline.effective_timeout(root, None), jobs=jobs)
        seconds = time.perf_counter() - start
        return seconds, sum(v is None for v in outcome.values())
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--assignment", action="append", help="default: every folder of solutions/")
    p.add_argument("-n", type=int, default=8, help="submissions per assignment and run (default 8)")
    p.add_argument("--jobs", type=int, nargs="+", default=[1, 2], help="workers to try (default 1 2)")
    args = p.parse_args()
    assignments = args.assignment or sorted(d.name for d in (ROOT / "solutions").iterdir() if d.is_dir())
    print(f"autograde throughput on {platform.processor() or platform.machine()} ({os.cpu_count()} CPUs), "
          f"{dt.date.today()}, {args.n} correct submissions per run")
    print("| assignment | jobs | seconds | submissions/min | s/submission |")
    print("|---|---|---|---|---|")
    for a in assignments:
        for jobs in args.jobs:
            seconds, graded = measure(a, args.n, jobs)
            print(f"| {a} | {jobs} | {seconds:.1f} | {60 * graded / seconds:.1f} | {seconds / max(graded, 1):.2f} |",
                  flush=True)


if __name__ == "__main__":
    main()
