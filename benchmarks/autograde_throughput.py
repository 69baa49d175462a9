"""Autograde throughput: submissions per minute on this machine (not a test).

Grades N generated correct submissions of each assignment in a temporary copy of the course,
through the same path as `python -m dmcourse.grading autograde` (nbgrader's API in worker
processes), once per --jobs value, and prints a table.

    python benchmarks/autograde_throughput.py                    # every assignment, 8 each, jobs 1 and 2
    python benchmarks/autograde_throughput.py --assignment ex00_warmup -n 20 --jobs 1 2 4
    python benchmarks/autograde_throughput.py --assignment ex00_warmup --breakdown   # where the seconds go

``--breakdown`` times, each --repeats times in fresh processes (medians): the imports every
grading process pays (``dmcourse``: torch; ``nbgrader.apps``), a kernel's start with an empty
cell, and the assignment's first code cell in a fresh kernel (its imports).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import shutil
import statistics
import subprocess
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


def _seconds(code: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
    return time.perf_counter() - start


def breakdown(assignment: str, repeats: int) -> list[tuple[str, float]]:
    """(what, median seconds) of the fixed costs around one submission (see the module doc)."""
    _, release = synth.load(ROOT, assignment)
    first = next(c.source for c in release.cells[1:] if c.cell_type == "code")  # cell 0: the setup cell
    kernel = (
        "import nbformat, nbclient; nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell({!r})]);"
        " nbclient.NotebookClient(nb, kernel_name='python3').execute()"
    )
    parts = {
        "python alone": "pass",
        "import dmcourse (torch)": "import dmcourse",
        "import nbgrader.apps": "import nbgrader.apps",
        "kernel start, empty cell": kernel.format("pass"),
        f"kernel start + first code cell of {assignment}": kernel.format(first),
    }
    times: dict[str, list[float]] = {k: [] for k in parts}
    for _ in range(repeats):  # interleaved, so that the machine's load hits every part alike
        for what, code in parts.items():
            times[what].append(_seconds(code))
    return [(what, statistics.median(ts)) for what, ts in times.items()]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--assignment", action="append", help="default: every folder of solutions/")
    p.add_argument("-n", type=int, default=8, help="submissions per assignment and run (default 8)")
    p.add_argument("--jobs", type=int, nargs="+", default=[1, 2], help="workers to try (default 1 2)")
    p.add_argument("--breakdown", action="store_true", help="time the fixed costs instead (see above)")
    p.add_argument("--repeats", type=int, default=3, help="with --breakdown: runs of each part (default 3)")
    args = p.parse_args()
    assignments = args.assignment or sorted(d.name for d in (ROOT / "solutions").iterdir() if d.is_dir())
    if args.breakdown:
        print(
            f"fixed costs on {platform.processor() or platform.machine()} ({os.cpu_count()} CPUs), "
            f"{dt.date.today()}, medians of {args.repeats}, load average {getattr(os, 'getloadavg', lambda: (float('nan'),))()[0]:.1f}"
        )
        print("| part | seconds |")
        print("|---|---|")
        for what, sec in breakdown(assignments[0], args.repeats):
            print(f"| {what} | {sec:.2f} |", flush=True)
        return
    print(
        f"autograde throughput on {platform.processor() or platform.machine()} ({os.cpu_count()} CPUs), "
        f"{dt.date.today()}, {args.n} correct submissions per run"
    )
    print("| assignment | jobs | seconds | submissions/min | s/submission |")
    print("|---|---|---|---|---|")
    for a in assignments:
        for jobs in args.jobs:
            seconds, graded = measure(a, args.n, jobs)
            print(
                f"| {a} | {jobs} | {seconds:.1f} | {60 * graded / seconds:.1f} | {seconds / max(graded, 1):.2f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
