"""nbgrader's Python API, pointed at a course directory laid out like this repository.

``nbgrader validate`` exits 0 even when tests fail, so scripts and tests grade through the API
and read scores from the gradebook instead of parsing command output. Every API object carries
``safety.grading_config()`` (bounded outputs, hidden tests kept out of feedback).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

from traitlets.config import Config, PyFileConfigLoader

from dmcourse.grading.safety import grading_config


@dataclass(frozen=True)
class Score:
    """A graded submission: autograded points earned and available."""

    student: str
    assignment: str
    score: float
    max_score: float


def load_config(root: Path) -> Config:
    """The course's ``nbgrader_config.py`` with paths made absolute for ``root``."""
    root = Path(root).resolve()
    config_file = root / "nbgrader_config.py"
    if not config_file.exists():
        raise FileNotFoundError(f"{config_file} not found: {root} is not a course directory")
    config = PyFileConfigLoader(config_file.name, path=str(root)).load_config()
    config.CourseDirectory.root = str(root)
    config.CourseDirectory.db_url = f"sqlite:///{root / 'gradebook.db'}"
    return config


def ensure_scripts_on_path() -> None:
    """nbgrader runs ``alembic`` by name whenever it opens a gradebook: with an environment that is
    not activated (``.venv/bin/python -m dmcourse.grading ...``) that fails with FileNotFoundError,
    so the folder of this interpreter's scripts goes first on PATH (child processes inherit it)."""
    scripts = str(Path(sys.executable).parent)
    path = os.environ.get("PATH", "")
    if scripts not in path.split(os.pathsep):
        os.environ["PATH"] = scripts + (os.pathsep + path if path else "")


def api(root: Path, config: Config | None = None):
    """An ``NbGraderAPI`` for the course at ``root`` (optionally with extra config merged in)."""
    from nbgrader.apps import NbGraderAPI
    from nbgrader.coursedir import CourseDirectory

    ensure_scripts_on_path()

    cfg = load_config(root)
    cfg.merge(grading_config())
    if config is not None:
        cfg.merge(config)
    return NbGraderAPI(CourseDirectory(config=cfg), config=cfg)


def _check(result: dict, what: str) -> dict:
    if not result.get("success"):
        raise RuntimeError(f"nbgrader {what} failed:\n{result.get('error') or ''}\n{result.get('log') or ''}")
    return result


def generate(root: Path, assignment: str) -> None:
    """Regenerate ``exercises/<assignment>`` from ``solutions/<assignment>``."""
    _check(api(root).generate_assignment(assignment, force=True), f"generate_assignment {assignment}")


def autograde(root: Path, assignment: str, student: str) -> Score:
    """Autograde ``submitted/<student>/<assignment>`` and return the gradebook's score."""
    _check(api(root).autograde(assignment, student, force=True, create=True), f"autograde {assignment}/{student}")
    return score(root, assignment, student)


def gradebook(root: Path):
    """nbgrader's ``Gradebook`` of the course at ``root`` (use it as a context manager)."""
    from nbgrader.api import Gradebook

    ensure_scripts_on_path()

    return Gradebook(f"sqlite:///{Path(root).resolve() / 'gradebook.db'}")


def score(root: Path, assignment: str, student: str) -> Score:
    with gradebook(root) as gb:
        sub = gb.find_submission(assignment, student)
        return Score(student, assignment, float(sub.score), float(sub.max_score))


def needs_manual_grade(root: Path, assignment: str, student: str) -> bool:
    """Whether a submission has cells that wait for a person (``answer`` cells, failed autograding).

    A cell that already has a manual score does not: nbgrader flags it again on every autograde,
    but the person's score stands (it is kept and counted)."""
    with gradebook(root) as gb:
        sub = gb.find_submission(assignment, student)
        return any(g.needs_manual_grade and g.manual_score is None for nb in sub.notebooks for g in nb.grades)


def _assignment_field(root: Path, assignment: str, read):
    """``read(assignment row)`` from the gradebook, inside its session; None without a gradebook
    (opening one would create it) or without ``assignment`` in it."""
    from nbgrader.api import MissingEntry

    if not (Path(root) / "gradebook.db").exists():
        return None
    with gradebook(root) as gb:
        try:
            return read(gb.find_assignment(assignment))
        except MissingEntry:
            return None


def is_registered(root: Path, assignment: str) -> bool:
    """Whether the gradebook knows ``assignment`` (its cells, points and checksums)."""
    return bool(_assignment_field(root, assignment, lambda a: a.notebooks))


def due_date(root: Path, assignment: str):
    """The due date of ``assignment`` (a naive UTC ``datetime``, as nbgrader keeps it); None without
    a gradebook, without the assignment in it or without a due date (set one with ``nbgrader db
    assignment add ASSIGNMENT --duedate=...``)."""
    return _assignment_field(root, assignment, lambda a: a.duedate)


def register(root: Path, assignment: str) -> None:
    """Record ``assignment`` in the gradebook (nbgrader generate_assignment) without touching
    ``exercises/``: the release is generated into a temporary folder and thrown away."""
    import tempfile

    root = Path(root).resolve()
    if not (root / "solutions" / assignment).is_dir():
        raise ValueError(f"unknown assignment {assignment!r}: no folder solutions/{assignment}")
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Config()
        cfg.CourseDirectory.release_directory = tmp
        _check(api(root, cfg).generate_assignment(assignment, force=True), f"generate_assignment {assignment}")


def feedback(root: Path, assignment: str, student: str | None = None) -> dict:
    """nbgrader generate_feedback (hidden tests removed); returns the API's result dict."""
    return api(root).generate_feedback(assignment, student, force=True)
