"""Autograde throughput: seconds per submission on this machine (not a test).

Grades N generated correct submissions of each assignment in a temporary copy of the course,
through the same path as `python -m dmcourse.grading autograde` (``batch.autograde_all``: one
process per submission), once per --jobs value, and prints a table.

    python benchmarks/autograde_throughput.py                    # every assignment, 8 each, jobs 1 and 2
    python benchmarks/autograde_throughput.py --assignment ex00_warmup -n 20 --jobs 1 2 4
    python benchmarks/autograde_throughput.py --assignment ex02_moe -n 12 --jobs 2 --before f726361 --repeats 3
    python benchmarks/autograde_throughput.py --assignment ex02_moe -n 12 --jobs 2 --grade   # the whole `grade`
    python benchmarks/autograde_throughput.py --assignment ex02_moe --breakdown   # where the seconds go

``--before REV`` also runs the batch runner of git revision REV (its ``batch.py`` and ``worker.py``,
loaded from ``git show`` into a temporary folder, never into the package), interleaved with the
current one, ``--repeats`` times each, and prints the medians and their ratio. ``--grade`` times
the whole ``pipeline.grade`` (recover, autograde, feedback, CSV export) step by step instead.

``--breakdown`` times, each --repeats times in fresh processes (medians, interleaved): the imports
a grading process pays (as nbgrader's API loads them; as the worker loads them), a kernel's start
with an empty cell, the assignment's correct notebook run by nbclient alone (kernel start, all its
cells, then the kernel asked to shut down or killed, as the worker does), and one grading process
for one submission from start to exit; the rest of that process (nbgrader's gradebook, copies,
sanitizing, writing) is what remains. The table of runs gives the CPU seconds too (grading
processes and kernels): unlike wall time, they hardly change with the machine's load.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from unittest import mock

import nbformat

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # test tooling: synth, mutation

import mutation  # noqa: E402
import synth  # noqa: E402

from dmcourse.grading import batch, course, pipeline  # noqa: E402

Runner = Callable[..., dict]


def make_course(assignment: str, n: int, tmp: Path) -> tuple[Path, list[str]]:
    """A copy of the course with n correct submissions of ``assignment``, registered in its gradebook."""
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
    return root, students


def children_cpu_s() -> float:
    """CPU seconds (user + system) of the ended child processes so far, their kernels included;
    NaN where the OS does not say (Windows)."""
    try:
        import resource
    except ImportError:
        return float("nan")
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def measure(assignment: str, n: int, jobs: int, runner: Runner = batch.autograde_all) -> tuple[float, int, float]:
    """(seconds, submissions graded, CPU seconds of the grading processes and kernels) for n
    correct submissions graded by ``runner`` with ``jobs``."""
    tmp = Path(tempfile.mkdtemp(prefix="dmcourse-bench-"))
    try:
        root, students = make_course(assignment, n, tmp)
        timeout = pipeline.effective_timeout(root, None)
        start, cpu = time.perf_counter(), children_cpu_s()
        outcome = runner(root, assignment, students, timeout, jobs=jobs)
        seconds, cpu = time.perf_counter() - start, children_cpu_s() - cpu
        full = sum(
            course.score(root, assignment, s).score == course.score(root, assignment, s).max_score for s in students
        )
        graded = sum(v is None for v in outcome.values())
        if full != graded:
            raise RuntimeError(f"{graded} graded but {full} with full marks: the runner changed a result")
        return seconds, graded, cpu
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def measure_grade(assignment: str, n: int, jobs: int, runner: Runner = batch.autograde_all) -> list[tuple[str, float]]:
    """(step, seconds) of ``pipeline.grade`` (its batch runner: ``runner``) for n correct
    submissions, split at its progress lines."""
    tmp = Path(tempfile.mkdtemp(prefix="dmcourse-bench-"))
    try:
        root, _ = make_course(assignment, n, tmp)
        marks: list[tuple[str, float]] = []
        start = time.perf_counter()
        with mock.patch.object(batch, "autograde_all", runner):
            rows = pipeline.grade(root, assignment, jobs=jobs, echo=lambda s: marks.append((s, time.perf_counter())))
        end = time.perf_counter()
        if sorted(r.status for r in rows) != ["graded"] * n:
            raise RuntimeError(f"not every submission was graded: {[(r.student, r.status) for r in rows]}")
        names = {"recover": "recover", "autograde": "autograde", "feedback": "feedback (nbgrader generate_feedback)"}
        steps, last_name, last_t = [], "start-up", start
        for text, t in marks:
            word = text.split()[0].rstrip(":")
            if word in names:
                steps.append((last_name, t - last_t))
                last_name, last_t = names[word], t
        steps.append((f"{last_name}, leak check, report and CSV export", end - last_t))
        steps.append(("total", end - start))
        return steps
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def load_before(rev: str, tmp: Path) -> Runner:
    """``autograde_all`` of git revision ``rev``, loaded from a temporary folder (not the package)."""
    folder = tmp / "before"
    folder.mkdir(parents=True)
    for name in ("batch", "worker"):
        text = subprocess.run(
            ["git", "show", f"{rev}:dmcourse/grading/{name}.py"], cwd=ROOT, check=True, capture_output=True, text=True
        ).stdout
        (folder / f"before_{name}.py").write_text(text.replace("dmcourse.grading.worker", "before_worker"))
    sys.path.insert(0, str(folder))
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(folder), str(ROOT), os.environ.get("PYTHONPATH")) if p)
    return importlib.import_module("before_batch").autograde_all


def _seconds(args: list[str], cwd: Path = ROOT) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one command, its children included."""
    start, cpu = time.perf_counter(), children_cpu_s()
    subprocess.run(args, check=True, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start, children_cpu_s() - cpu


def breakdown(assignment: str, repeats: int) -> list[tuple[str, float, float]]:
    """(what, median wall seconds, median CPU seconds) of the fixed costs around one submission
    (see the module doc)."""
    tmp = Path(tempfile.mkdtemp(prefix="dmcourse-bench-"))
    try:
        root, (student,) = make_course(assignment, 1, tmp)
        solution, release = synth.load(root, assignment)
        good = tmp / "good.ipynb"
        nbformat.write(synth.correct(solution, release), good)
        first = next(c.source for c in release.cells[1:] if c.cell_type == "code")  # cell 0: the setup cell
        lean = "from dmcourse.grading import worker; worker.lean_imports(); "  # as the worker imports
        kernel = lean + (
            "import nbformat, nbclient; nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell({!r})]);"
            " nbclient.NotebookClient(nb, kernel_name='python3').execute()"
        )
        py = [sys.executable, "-c"]

        def notebook(shutdown: str) -> str:
            return lean + (
                f"import nbformat, nbclient; nbclient.NotebookClient(nbformat.read({str(good)!r}, 4),"
                f" kernel_name='python3', resources={{'metadata': {{'path': {str(tmp)!r}}}}},"
                f" shutdown_kernel={shutdown!r}).execute()"
            )

        imports = lean + "from dmcourse.grading import course; import nbclient"
        parts = {
            "python alone": [*py, "pass"],
            "imports as NbGraderAPI loads them (nbgrader.apps, safety)": [
                *py,
                "import nbgrader.apps, dmcourse.grading.safety",
            ],
            "imports as the worker loads them (lean_imports)": [*py, imports],
            "import nbformat, nbclient (what the kernel rows below pay before their kernel)": [
                *py,
                lean + "import nbformat, nbclient",
            ],
            "kernel start, empty cell": [*py, kernel.format("pass")],
            f"kernel start + first code cell of {assignment}": [*py, kernel.format(first)],
            f"{assignment}, correct notebook, nbclient alone: kernel start, all cells, graceful shutdown": [
                *py,
                notebook("graceful"),
            ],
            f"{assignment}, correct notebook, nbclient alone: kernel start, all cells, kernel killed": [
                *py,
                notebook("immediate"),
            ],
            "one worker process, one submission, start to exit": [
                sys.executable,
                "-m",
                "dmcourse.grading.worker",
                str(root),
                assignment,
                student,
                str(tmp / "log.json"),
                str(pipeline.effective_timeout(root, None)),
            ],
        }
        times: dict[str, list[tuple[float, float]]] = {k: [] for k in parts}
        for _ in range(repeats):  # interleaved, so that the machine's load hits every part alike
            for what, args in parts.items():
                times[what].append(_seconds(args, cwd=root))
        out = [
            (what, statistics.median(w for w, _ in ts), statistics.median(c for _, c in ts))
            for what, ts in times.items()
        ]
        med = {what: (wall, cpu) for what, wall, cpu in out}
        whole = med["one worker process, one submission, start to exit"]
        worker_imports = med["imports as the worker loads them (lean_imports)"]
        cells = med[f"{assignment}, correct notebook, nbclient alone: kernel start, all cells, kernel killed"]
        client = med["import nbformat, nbclient (what the kernel rows below pay before their kernel)"]
        rest = "rest of the worker: nbgrader's gradebook, copies, sanitizing, writing (difference)"
        wall, cpu = (whole[k] - worker_imports[k] - (cells[k] - client[k]) for k in (0, 1))
        out.append((rest, wall, cpu))
        return out
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def grade_table(assignments: list[str], args: argparse.Namespace, runners: dict[str, Runner]) -> None:
    """Print the ``--grade`` table: each step of ``grade``, medians of interleaved runs per runner."""
    _header(f"`grade` step by step, {args.n} correct submissions (medians of {args.repeats})", args)
    print("| assignment | jobs | runner | step | seconds | s/submission |")
    print("|---|---|---|---|---|---|")
    for a in assignments:
        for jobs in args.jobs:
            runs: dict[str, list[list[tuple[str, float]]]] = {k: [] for k in runners}
            for _ in range(args.repeats):
                for name, runner in runners.items():
                    runs[name].append(measure_grade(a, args.n, jobs, runner))
            for name, rs in runs.items():
                for k, (step, _) in enumerate(rs[0]):
                    sec = statistics.median(r[k][1] for r in rs)
                    print(f"| {a} | {jobs} | {name} | {step} | {sec:.2f} | {sec / args.n:.2f} |", flush=True)


def _header(what: str, args: argparse.Namespace) -> None:
    load = getattr(os, "getloadavg", lambda: (float("nan"),) * 3)()
    print(
        f"{what} on {platform.processor() or platform.machine()} ({os.cpu_count()} CPUs), {dt.date.today()}, "
        f"load average at start {load[0]:.1f}; command: python benchmarks/autograde_throughput.py "
        + " ".join(sys.argv[1:])
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--assignment", action="append", help="default: every folder of solutions/")
    p.add_argument("-n", type=int, default=8, help="submissions per assignment and run (default 8)")
    p.add_argument("--jobs", type=int, nargs="+", default=[1, 2], help="processes at once to try (default 1 2)")
    p.add_argument("--before", metavar="REV", help="also run the batch runner of git revision REV, interleaved")
    p.add_argument("--grade", action="store_true", help="time the whole `grade` pipeline step by step")
    p.add_argument("--breakdown", action="store_true", help="time the fixed costs instead (see above)")
    p.add_argument("--repeats", type=int, default=1, help="runs of each measurement (medians; default 1)")
    args = p.parse_args()
    assignments = args.assignment or sorted(d.name for d in (ROOT / "solutions").iterdir() if d.is_dir())
    if args.breakdown:
        _header(f"fixed costs (medians of {args.repeats})", args)
        print("| part | wall seconds | CPU seconds |")
        print("|---|---|---|")
        for what, sec, cpu in breakdown(assignments[0], args.repeats):
            print(f"| {what} | {sec:.2f} | {cpu:.2f} |", flush=True)
        return
    tmp = Path(tempfile.mkdtemp(prefix="dmcourse-bench-before-"))
    try:
        runners: dict[str, Runner] = {"now": batch.autograde_all}
        if args.before:
            runners = {f"before ({args.before})": load_before(args.before, tmp), **runners}
        if args.grade:
            grade_table(assignments, args, runners)
            return
        _header(f"autograde throughput, {args.n} correct submissions per run, runners interleaved", args)
        print(
            "| assignment | jobs | runner | seconds (each run) | median s | s/submission | submissions/min"
            " | CPU s/submission (median) |"
        )
        print("|---|---|---|---|---|---|---|---|")
        for a in assignments:
            for jobs in args.jobs:
                secs: dict[str, list[float]] = {k: [] for k in runners}
                cpus: dict[str, list[float]] = {k: [] for k in runners}
                for _ in range(args.repeats):
                    for name, runner in runners.items():
                        seconds, graded, cpu = measure(a, args.n, jobs, runner)
                        if graded != args.n:
                            raise RuntimeError(f"{name}: only {graded} of {args.n} graded")
                        secs[name].append(seconds)
                        cpus[name].append(cpu)
                for name, ts in secs.items():
                    med = statistics.median(ts)
                    each = ", ".join(f"{t:.1f}" for t in ts)
                    print(
                        f"| {a} | {jobs} | {name} | {each} | {med:.1f} | {med / args.n:.2f} | {60 * args.n / med:.1f}"
                        f" | {statistics.median(cpus[name]) / args.n:.2f} |",
                        flush=True,
                    )
                if len(secs) == 2:
                    (before, now), (cpu_before, cpu_now) = secs.values(), cpus.values()
                    wall = statistics.median(now) / statistics.median(before)
                    cpu = statistics.median(cpu_now) / statistics.median(cpu_before)
                    print(f"| {a} | {jobs} | now / before | | {wall:.2f} | | | {cpu:.2f} |")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
