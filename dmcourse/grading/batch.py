"""Autograde many submissions so that no single one can stop the batch (the appendix for instructors).

nbgrader already carries on after a submission that raises (a dead kernel, say). Two things it
cannot survive run in the grading process itself: a notebook whose output exhausts memory, and a
kernel that hangs past every timeout. So :func:`autograde_all` grades each submission in a process
of its own (``python -m dmcourse.grading.worker``), at most ``jobs`` at a time. A process that runs
longer than ``limit_s`` is killed together with the kernel it started (psutil: the same on every
OS), its submission is flagged, and the batch goes on. The processes share the SQLite gradebook;
a submission whose process found it locked is graded once more. The next process is started while
the others grade, so that its imports (about a second of CPU) overlap their kernels' work.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import nbformat
import psutil

from dmcourse.checks import check_int, positive_float

POLL_S = 0.05  # how often the batch looks at its processes
CHILDREN_EVERY_S = 1.0  # how often it notes the kernels each process started (to reap them if it dies)
_ERROR_START = re.compile(r"There was an error processing assignment: (?P<path>\S+)")
_EXCEPTION = re.compile(r"^[\w.]+(Error|Exception|Interrupt)\b")
_EXPLAIN = {
    "DeadKernelError": "the kernel died while running the notebook (the code exits the process, "
    "e.g. os._exit, crashes, or runs out of memory)",
    "UnresponsiveKernelError": "the kernel stopped responding and could not be interrupted",
    "CellTimeoutError": "a cell ran past the timeout and the kernel could not be interrupted",
}
_LOCKED = ("database is locked", "There was an error accessing the nbgrader database")
LOCKED_REASON = "nbgrader could not write the gradebook (SQLite: database is locked); grade it again"


def default_limit(root: Path, assignment: str, timeout: int) -> float:
    """Seconds one submission may take before its process is killed: every code cell timing out, plus margin."""
    (release,) = sorted((Path(root) / "exercises" / assignment).glob("*.ipynb"))
    n_code = sum(c.cell_type == "code" for c in nbformat.read(release, as_version=4).cells)
    return (n_code + 2) * timeout + 120.0


def reason_from_log(text: str) -> str:
    """Why nbgrader failed one submission, in words, read from its log (and traceback)."""
    if any(s in text for s in _LOCKED):
        return LOCKED_REASON
    if "the kernel became unresponsive" in text:
        return _EXPLAIN["UnresponsiveKernelError"]
    lines = text.splitlines()
    start = next((k for k, line in enumerate(lines) if _ERROR_START.search(line)), None)
    block = []
    for line in lines[start + 1 :] if start is not None else lines:
        if start is not None and "There was an error processing assignment '" in line:
            break
        block.append(line.strip())
    last = next((b for b in reversed(block) if _EXCEPTION.match(b)), "")
    name = last.split(":", 1)[0].rsplit(".", 1)[-1]
    return _EXPLAIN.get(name, f"nbgrader failed: {last or 'see the log'}")


def kill_tree(proc: subprocess.Popen, known: Iterable[psutil.Process] = ()) -> None:
    """Kill ``proc``, every process it started (its kernel) and the processes in ``known``, and wait for them."""
    try:
        kids = psutil.Process(proc.pid).children(recursive=True)
    except psutil.Error:  # already gone
        kids = []
    proc.kill()
    victims = list({*known, *kids})
    for p in victims:
        with contextlib.suppress(psutil.Error):
            p.kill()
    proc.wait()
    psutil.wait_procs(victims, timeout=5)


@dataclass
class _Job:
    """One submission's grading process."""

    student: str
    proc: subprocess.Popen
    log: Path
    stderr: Path
    tries: int
    started: float = field(default_factory=time.monotonic)
    kids: list[psutil.Process] = field(default_factory=list)
    looked: float = 0.0

    def note_children(self, now: float) -> None:
        if now - self.looked >= CHILDREN_EVERY_S:
            self.looked = now
            with contextlib.suppress(psutil.Error):
                self.kids = psutil.Process(self.proc.pid).children(recursive=True) or self.kids

    def reap(self) -> None:
        """Kill kernels left running by a process that ended without shutting them down."""
        left = [p for p in self.kids if p.is_running()]
        for p in left:
            with contextlib.suppress(psutil.Error):
                p.kill()
        psutil.wait_procs(left, timeout=5)


def _spawn(root: Path, assignment: str, timeout: int, work: Path, serial: int) -> _Job:
    """A grading process that imports what it needs, then waits for its student on stdin."""
    log, err = work / f"{serial}.json", work / f"{serial}.stderr"
    cmd = [sys.executable, "-m", "dmcourse.grading.worker", str(root), assignment, "-", str(log), str(timeout)]
    with open(err, "wb") as f:
        proc = subprocess.Popen(cmd, cwd=root, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=f)
    return _Job("", proc, log, err, 0)


def _assign(job: _Job, student: str, tries: int) -> _Job:
    """Give ``job`` its submission; its wall-clock limit starts now."""
    job.student, job.tries, job.started = student, tries, time.monotonic()
    assert job.proc.stdin is not None
    try:
        job.proc.stdin.write(student.encode() + b"\n")
        job.proc.stdin.close()
    except OSError:  # it died while importing: its exit code and stderr say why
        pass
    return job


def _outcome(job: _Job, root: Path, assignment: str) -> str | None:
    """None if ``job`` graded its submission, else why not."""
    rc = job.proc.returncode
    if not job.log.exists():
        err = job.stderr.read_text(errors="replace").splitlines() if job.stderr.exists() else []
        last = next((ln.strip() for ln in reversed(err) if _EXCEPTION.match(ln.strip())), "")
        return f"the grading process died (exit code {rc}) while grading it" + (f": {last}" if last else "")
    result = json.loads(job.log.read_text())
    if not result["success"]:
        return reason_from_log(result["log"] + "\n" + result["error"])
    if not (root / "autograded" / job.student / assignment).is_dir():
        return "not graded by nbgrader (see the log)"
    return None


def autograde_all(
    root: Path,
    assignment: str,
    students: list[str],
    timeout: int,
    jobs: int = 1,
    limit_s: float | None = None,
    echo: Callable[[str], None] = lambda s: None,
) -> dict[str, str | None]:
    """Autograde ``students`` of ``assignment``, ``jobs`` at a time, each in its own process
    stopped after ``limit_s`` seconds (default :func:`default_limit`); ``timeout`` is nbgrader's
    per-cell limit in seconds. Returns student -> None (graded) or why it failed."""
    check_int("jobs", jobs)
    root = Path(root).resolve()
    limit = positive_float("limit_s", limit_s) if limit_s is not None else default_limit(root, assignment, timeout)
    outcome: dict[str, str | None] = {}
    pending: deque[tuple[str, int]] = deque((s, 0) for s in sorted(set(students)))
    running: list[_Job] = []
    work = Path(tempfile.mkdtemp(prefix="dmcourse-grading-"))
    serial = itertools.count(1)
    warm: _Job | None = None  # the next process, importing while the others grade
    try:
        while pending or running:
            while pending and len(running) < jobs:
                job, warm = warm or _spawn(root, assignment, timeout, work, next(serial)), None
                running.append(_assign(job, *pending.popleft()))
            if pending and warm is None:
                warm = _spawn(root, assignment, timeout, work, next(serial))
            time.sleep(POLL_S)
            now = time.monotonic()
            for job in list(running):
                if job.proc.poll() is None:
                    if now - job.started <= limit:
                        job.note_children(now)
                        continue
                    kill_tree(job.proc, job.kids)
                    running.remove(job)
                    outcome[job.student] = f"grading took longer than {limit:.0f} s and was stopped"
                    echo(f"  {job.student}: {outcome[job.student]}")
                    continue
                running.remove(job)
                job.reap()
                why = _outcome(job, root, assignment)
                if why == LOCKED_REASON and job.tries == 0:
                    echo(f"  {job.student}: the gradebook was busy, grading it again")
                    pending.append((job.student, 1))
                    continue
                outcome[job.student] = why
                if why is not None:
                    echo(f"  {job.student}: {why}")
    finally:
        for job in running + ([warm] if warm else []):
            kill_tree(job.proc, job.kids)
        shutil.rmtree(work, ignore_errors=True)
    for s, why in outcome.items():
        if why is not None:
            shutil.rmtree(root / "autograded" / s / assignment, ignore_errors=True)
    return {s: outcome.get(s, "not graded") for s in students}
