"""Autograde many submissions so that no single one can stop the batch.

nbgrader already carries on after a submission that raises (a dead kernel, say). Two things it
cannot survive run in the grading process itself: a notebook whose output exhausts memory, and a
kernel that hangs past every timeout. So :func:`autograde_all` runs nbgrader in worker processes
(:mod:`dmcourse.grading.worker`), watches their progress, kills a worker stuck on one submission
for longer than ``limit_s``, flags that submission, and starts a new worker for the rest.
``jobs > 1`` runs that many workers at once (they share the SQLite gradebook).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import nbformat

_ERROR_START = re.compile(r"There was an error processing assignment: (?P<path>\S+)")
_EXPLAIN = {
    "DeadKernelError": "the kernel died while running the notebook (the code exits the process, "
    "e.g. os._exit, crashes, or runs out of memory)",
    "UnresponsiveKernelError": "the kernel stopped responding and could not be interrupted",
    "CellTimeoutError": "a cell ran past the timeout and the kernel could not be interrupted",
}


def default_limit(root: Path, assignment: str, timeout: int) -> float:
    """Seconds one submission may take before its worker is killed: every code cell timing out, plus margin."""
    (release,) = sorted((Path(root) / "exercises" / assignment).glob("*.ipynb"))
    n_code = sum(c.cell_type == "code" for c in nbformat.read(release, as_version=4).cells)
    return (n_code + 2) * timeout + 120.0


def _reasons_from_log(text: str) -> dict[str, str]:
    """student -> why nbgrader failed them, read from nbgrader's log."""
    found: dict[str, str] = {}
    lines = text.splitlines()
    for k, line in enumerate(lines):
        m = _ERROR_START.search(line)
        if not m:
            continue
        student = Path(m["path"]).parent.name
        block = []
        for nxt in lines[k + 1 :]:
            if _ERROR_START.search(nxt) or "There was an error processing assignment '" in nxt:
                break
            block.append(nxt.strip())
        last = next((b for b in reversed(block) if re.match(r"^[\w.]+(Error|Exception|Interrupt)\b", b)), "")
        name = last.split(":", 1)[0].rsplit(".", 1)[-1]
        found[student] = _EXPLAIN.get(name, f"nbgrader failed: {last or 'see the log'}")
    return found


def _kill(proc: subprocess.Popen) -> None:
    """Stop a worker and the kernels it started: its whole process group on POSIX, else the worker."""
    if hasattr(os, "killpg"):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    else:  # Windows: no process groups; ipykernel's parent poller ends a kernel whose parent died
        proc.kill()


def _progress(path: Path) -> tuple[list[str], set[str], dict[str, float]]:
    started, done, since = [], set(), {}
    if path.exists():
        for line in path.read_text().splitlines():
            word, student, t = line.split()
            if word == "start":
                started.append(student)
                since[student] = float(t)
            else:
                done.add(student)
    return started, done, since


def autograde_all(
    root: Path,
    assignment: str,
    students: list[str],
    timeout: int,
    jobs: int = 1,
    limit_s: float | None = None,
    echo: Callable[[str], None] = lambda s: None,
) -> dict[str, str | None]:
    """Autograde ``students`` of ``assignment``; return student -> None (graded) or why it failed."""
    if jobs < 1:
        raise ValueError(f"jobs must be at least 1, got {jobs}")
    root = Path(root).resolve()
    limit = limit_s if limit_s is not None else default_limit(root, assignment, timeout)
    failed: dict[str, str] = {}
    graded: set[str] = set()
    queue = [sorted(students)[k::jobs] for k in range(jobs)]
    queue = [q for q in queue if q]
    work = Path(tempfile.mkdtemp(prefix="dmcourse-grading-"))
    running: list[dict] = []
    serial = 0
    try:
        while queue or running:
            while queue and len(running) < jobs:
                shard = queue.pop(0)
                serial += 1
                w = {k: work / f"{serial}.{k}" for k in ("students", "progress", "log")}
                w["students"].write_text("\n".join(shard))
                cmd = [
                    sys.executable,
                    "-m",
                    "dmcourse.grading.worker",
                    str(root),
                    assignment,
                    str(w["students"]),
                    str(w["progress"]),
                    str(w["log"]),
                    str(timeout),
                ]
                proc = subprocess.Popen(
                    cmd,
                    cwd=root,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    start_new_session=hasattr(os, "killpg"),
                )
                running.append({"proc": proc, "shard": shard, **w})
            time.sleep(0.5)
            for r in list(running):
                started, done, since = _progress(r["progress"])
                current = next((s for s in reversed(started) if s not in done), None)
                rc = r["proc"].poll()
                stuck = current is not None and rc is None and time.time() - since[current] > limit
                if stuck:
                    _kill(r["proc"])
                    r["proc"].wait()
                    rc = r["proc"].returncode
                if rc is None:
                    continue
                running.remove(r)
                log = json.loads(r["log"].read_text()) if r["log"].exists() else None
                reasons = _reasons_from_log(log["log"] + "\n" + log["error"]) if log else {}
                graded |= done
                for s in started:
                    if s not in done:
                        failed[s] = reasons.get(
                            s,
                            (
                                f"grading took longer than {limit:.0f} s and was stopped"
                                if stuck
                                else f"the grading process died (exit code {rc}) while grading it"
                            ),
                        )
                        echo(f"  {s}: {failed[s]}")
                rest = [s for s in r["shard"] if s not in started]
                if log is None and rest:
                    queue.append(rest)  # the worker died: the others get a fresh one
                elif rest:
                    for s in rest:
                        failed[s] = "not graded by nbgrader (see the log)"
                echo(f"  worker {len(done)} graded, {len([s for s in started if s not in done])} failed")
    finally:
        for r in running:
            _kill(r["proc"])
        shutil.rmtree(work, ignore_errors=True)
    for s in failed:
        shutil.rmtree(root / "autograded" / s / assignment, ignore_errors=True)
    return {s: (None if s in graded and s not in failed else failed.get(s, "not graded")) for s in students}
