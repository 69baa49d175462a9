"""Mutation check of an assignment's tests: each known student mistake must lose points.

A mutants file (``tests/mutants/<assignment>.py``) holds ``MUTANTS = [{"name", "cell", "old",
"new"}, ...]``: in the solution cell whose grade_id is ``cell``, ``old`` is replaced by ``new``.
:func:`run` grades every mutant of an assignment as one batch of students (plus the unchanged
solution as a control) in a copy of the course and reports the score of each.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import nbformat

from dmcourse.grading import batch, course, synth

COURSE_FILES = ("nbgrader_config.py", "solutions", "exercises")


@dataclass(frozen=True)
class Result:
    """One mutant graded: caught when it scores below the control (the unchanged solution)."""

    assignment: str
    name: str
    score: float | None
    max_score: float
    failure: str | None = None

    @property
    def caught(self) -> bool:
        return self.failure is None and self.score is not None and self.score < self.max_score


def load_mutants(path: Path) -> list[dict]:
    """The ``MUTANTS`` list of a mutants file, checked for the four keys."""
    spec = importlib.util.spec_from_file_location(f"_mutants_{Path(path).stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    mutants = getattr(module, "MUTANTS", None)
    if not isinstance(mutants, list) or not mutants:
        raise ValueError(f"{path} must define a non-empty list MUTANTS")
    names = [m.get("name") for m in mutants]
    if len(set(names)) != len(names):
        raise ValueError(f"{path}: mutant names must be unique")
    for m in mutants:
        if set(m) != {"name", "cell", "old", "new"}:
            raise ValueError(f"{path}: mutant {m.get('name')!r} needs exactly the keys name, cell, old, new")
    return mutants


def copy_course(src: Path, dest: Path) -> Path:
    """Copy the course files (config, solutions, exercises) of ``src`` into ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in COURSE_FILES:
        s = Path(src) / name
        if s.is_dir():
            shutil.copytree(s, dest / name, ignore=shutil.ignore_patterns(".ipynb_checkpoints", "__pycache__"))
        else:
            shutil.copy2(s, dest / name)
    return dest


def student_id(index: int, name: str) -> str:
    return f"m{index:02d}_" + re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_")[:40]


def run(root: Path, assignment: str, mutants: list[dict], jobs: int = 2, timeout: int = 120,
        workdir: Path | None = None) -> tuple[list[Result], float]:
    """Grade every mutant of ``assignment`` in a copy of the course; return (results, control score)."""
    tmp = Path(tempfile.mkdtemp(prefix="dmcourse-mutants-")) if workdir is None else Path(workdir)
    try:
        copy = copy_course(root, tmp / "course")
        solution, _ = synth.load(copy, assignment)
        (nb_name,) = [p.name for p in (copy / "solutions" / assignment).glob("*.ipynb")]
        students = {"control": solution}
        for i, m in enumerate(mutants):
            students[student_id(i, m["name"])] = synth.apply_mutant(solution, m)
        for s, nb in students.items():
            d = copy / "submitted" / s / assignment
            d.mkdir(parents=True)
            nbformat.write(nb, d / nb_name)
        course.register(copy, assignment)
        outcome = batch.autograde_all(copy, assignment, sorted(students), timeout, jobs=jobs)
        if outcome["control"]:
            raise RuntimeError(f"the unchanged solution of {assignment} could not be graded: {outcome['control']}")
        control = course.score(copy, assignment, "control")
        if control.score != control.max_score:
            raise RuntimeError(f"the unchanged solution of {assignment} scores {control.score}/{control.max_score}")
        results = []
        for i, m in enumerate(mutants):
            s = student_id(i, m["name"])
            sc = None if outcome[s] else course.score(copy, assignment, s).score
            results.append(Result(assignment, m["name"], sc, control.max_score, outcome[s]))
        return results, control.score
    finally:
        if workdir is None:
            shutil.rmtree(tmp, ignore_errors=True)


def format_table(results: list[Result]) -> str:
    """Per-mutant lines and a caught/total line per assignment (Markdown)."""
    lines = ["| assignment | mutant | score | caught |", "|---|---|---|---|"]
    for r in results:
        score = f"{r.score:g}/{r.max_score:g}" if r.score is not None else f"failed ({r.failure})"
        lines.append(f"| {r.assignment} | {r.name} | {score} | {'yes' if r.caught else 'NO'} |")
    lines += ["", "| assignment | caught | total |", "|---|---|---|"]
    for a in sorted({r.assignment for r in results}):
        rs = [r for r in results if r.assignment == a]
        lines.append(f"| {a} | {sum(r.caught for r in rs)} | {len(rs)} |")
    lines.append(f"| all | {sum(r.caught for r in results)} | {len(results)} |")
    return "\n".join(lines)
