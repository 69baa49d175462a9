"""The batch runner: one grading process per submission, a wall-clock limit, no orphan kernel.

The slow tests grade a tiny assignment (kernels import nothing heavy) with nbgrader, two
submissions at a time: correct and wrong answers, a hang past the limit, a kernel that kills
itself, and a gradebook locked by another writer.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import nbformat
import psutil
import pytest
import synth
from conftest import ROOT

from dmcourse.grading import batch, course

A = "zz_batch"
LIMIT_S = 25.0  # the wall-clock limit of one submission in these tests (a correct one takes a few seconds)


# ---------------------------------------------------------------- without nbgrader


def test_reasons_read_from_nbgraders_log() -> None:
    dead = (
        "[INFO] Autograding ...\n[ERROR] There was an error processing assignment: /c/submitted/bob/a\n"
        "[ERROR] Traceback (most recent call last):\n  ...\n"
        "    nbclient.exceptions.DeadKernelError: Kernel died\n"
        "[ERROR] There was an error processing assignment 'a' for student 'bob'\n"
        "nbgrader.converters.base.NbGraderException: Please see the the above traceback"
    )
    assert batch.reason_from_log(dead).startswith("the kernel died while running the notebook")
    stuck = "[ERROR] While processing assignment /c/submitted/bob/a, the kernel became unresponsive and we could"
    assert batch.reason_from_log(stuck) == "the kernel stopped responding and could not be interrupted"
    locked = "sqlalchemy.exc.OperationalError: (sqlite3.OperationalError) database is locked"
    assert "database is locked" in batch.reason_from_log(locked)
    other = "[ERROR] There was an error processing assignment: /c/submitted/bob/a\n  ValueError: bad cell\n"
    assert batch.reason_from_log(other) == "nbgrader failed: ValueError: bad cell"
    assert batch.reason_from_log("") == "nbgrader failed: see the log"


def test_bad_jobs_and_limit_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="jobs must be a positive int, got 0"):
        batch.autograde_all(tmp_path, A, ["bob"], 10, jobs=0)
    with pytest.raises(ValueError, match="limit_s must be a positive finite number, got -1"):
        batch.autograde_all(tmp_path, A, ["bob"], 10, limit_s=-1)


def test_a_grading_process_that_dies_says_why(tmp_path: Path) -> None:
    """No log from the process (here: not a course directory): its exit code and exception instead."""
    said: list[str] = []
    outcome = batch.autograde_all(tmp_path, A, ["bob"], 10, limit_s=120, echo=said.append)
    assert outcome["bob"] is not None and outcome["bob"].startswith(
        "the grading process died (exit code 1) while grading it: FileNotFoundError:"
    ), outcome
    assert "is not a course directory" in outcome["bob"] and said == [f"  bob: {outcome['bob']}"]


def _wait_for(condition, seconds: float = 30.0) -> None:
    end = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > end:
            raise AssertionError("timed out waiting")
        time.sleep(0.05)


def test_kill_tree_stops_a_process_and_what_it_started() -> None:
    """The portable kill (psutil): the process and its child (a kernel, in the batch) both end."""
    grandchild = "import time; time.sleep(120)"
    code = f"import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', {grandchild!r}]); time.sleep(120)"
    proc = subprocess.Popen([sys.executable, "-c", code])
    _wait_for(lambda: len(psutil.Process(proc.pid).children()) == 1)
    (kid,) = psutil.Process(proc.pid).children()
    batch.kill_tree(proc)
    assert proc.returncode is not None
    assert not kid.is_running() or kid.status() == psutil.STATUS_ZOMBIE


def test_worker_imports_neither_torch_nor_the_server_extensions() -> None:
    """Every submission pays the worker's imports: nbgrader's converters, not jupyter_server or torch."""
    code = (
        "import sys; from dmcourse.grading import worker; worker.lean_imports(); worker_run = worker.run;"
        " from nbgrader.converters import Autograde; from dmcourse.grading import course;"
        " heavy = [m for m in ('torch', 'jupyter_server', 'nbgrader.apps', 'dmcourse.moe') if m in sys.modules];"
        " assert not heavy and sys.modules['rfc3987_syntax'] is None, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


# ---------------------------------------------------------------- with nbgrader


def _submit(root: Path, student: str, body: str = "    return 2 * x", extra: str = "") -> None:
    solution, release = synth.load(root, A)
    nb = synth.correct(solution, release)
    synth.cell(nb, "double").source = f"{extra}def double(x):\n{body}"
    d = root / "submitted" / student / A
    d.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, d / f"{A}.ipynb")


def _kernels() -> list[psutil.Process]:
    """Processes started by this test process whose command line runs ipykernel."""
    found = []
    for p in psutil.Process().children(recursive=True):
        try:
            if any("ipykernel" in part for part in p.cmdline()):
                found.append(p)
        except psutil.Error:
            pass
    return found


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.fixture(scope="module")
def graded(tmp_path_factory) -> tuple[Path, dict[str, str | None], float, Path]:
    """One batch, two at a time: two correct answers (one as synth.correct builds it), a wrong
    one, a hang past the limit (its kernel writes its pid first) and a kernel that exits."""
    from mutation import copy_course

    root = copy_course(ROOT, tmp_path_factory.mktemp("batch") / "course")
    synth.tiny_assignment(root, A)
    solution, release = synth.load(root, A)
    (root / "submitted" / "ann" / A).mkdir(parents=True)
    nbformat.write(synth.correct(solution, release), root / "submitted" / "ann" / A / f"{A}.ipynb")
    _submit(root, "bea")
    _submit(root, "cal", body="    return x + 1")
    pid_file = root / "hang.pid"
    _submit(
        root,
        "dan",
        extra=f"import os, time\nopen({str(pid_file)!r}, 'w').write(str(os.getpid()))\n"
        "while True:\n    time.sleep(0.1)\n",
    )
    _submit(root, "eve", extra="import os\nos._exit(1)\n")
    start = time.monotonic()
    outcome = batch.autograde_all(root, A, ["ann", "bea", "cal", "dan", "eve"], timeout=120, jobs=2, limit_s=LIMIT_S)
    return root, outcome, time.monotonic() - start, pid_file


@pytest.mark.slow
def test_jobs_2_grades_every_submission_with_its_score(graded) -> None:
    root, outcome, _, _ = graded
    assert outcome["ann"] is None and outcome["bea"] is None and outcome["cal"] is None, outcome
    assert {s: course.score(root, A, s).score for s in ("ann", "bea", "cal")} == {"ann": 1.0, "bea": 1.0, "cal": 0.0}
    assert all((root / "autograded" / s / A / f"{A}.ipynb").exists() for s in ("ann", "bea", "cal"))


@pytest.mark.slow
def test_a_hang_is_stopped_at_the_limit_and_leaves_no_kernel(graded) -> None:
    root, outcome, seconds, pid_file = graded
    assert outcome["dan"] == f"grading took longer than {LIMIT_S:.0f} s and was stopped"
    assert seconds < 3 * LIMIT_S, "the hang held the batch far past its limit"
    kernel_pid = int(pid_file.read_text())
    assert _gone(kernel_pid), f"the hanging kernel (pid {kernel_pid}) survived its grading process"
    assert not _kernels(), f"kernels left running: {[p.cmdline() for p in _kernels()]}"
    assert not (root / "autograded" / "dan" / A).exists(), "a stopped submission keeps no autograded notebook"


@pytest.mark.slow
def test_a_kernel_that_kills_itself_is_flagged_and_the_others_graded(graded) -> None:
    root, outcome, _, _ = graded
    assert outcome["eve"] is not None and outcome["eve"].startswith("the kernel died"), outcome["eve"]
    assert sum(v is None for v in outcome.values()) == 3


@pytest.mark.slow
def test_a_locked_gradebook_is_waited_out_by_grading_again(tmp_path: Path) -> None:
    """Another writer holds the gradebook past SQLite's busy timeout (5 s): the first attempt
    fails with "database is locked", the batch grades the submission again, with the right score."""
    from mutation import copy_course

    root = copy_course(ROOT, tmp_path / "course")
    synth.tiny_assignment(root, A)
    _submit(root, "ann")
    held = sqlite3.connect(root / "gradebook.db", isolation_level=None, check_same_thread=False)
    held.execute("BEGIN EXCLUSIVE")
    first_attempt_over = threading.Event()

    def release() -> None:  # as soon as the first grading process has given up
        me = psutil.Process()
        seen: set[int] = set()
        while not first_attempt_over.is_set():
            now = {p.pid for p in me.children() if "dmcourse.grading.worker" in " ".join(_cmdline(p))}
            if seen and not (seen & now):
                break
            seen |= now
            time.sleep(0.05)
        held.execute("ROLLBACK")
        first_attempt_over.set()

    def _cmdline(p: psutil.Process) -> list[str]:
        try:
            return p.cmdline()
        except psutil.Error:
            return []

    t = threading.Thread(target=release)
    t.start()
    said: list[str] = []
    try:
        outcome = batch.autograde_all(root, A, ["ann"], timeout=60, jobs=2, limit_s=120, echo=said.append)
    finally:
        first_attempt_over.set()
        t.join()
        held.close()
    assert outcome == {"ann": None}
    assert said == ["  ann: the gradebook was busy, grading it again"]
    assert course.score(root, A, "ann").score == 1.0
