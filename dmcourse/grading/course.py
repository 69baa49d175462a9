"""nbgrader's Python API, pointed at a course directory laid out like this repository.

``nbgrader validate`` exits 0 even when tests fail, so scripts and tests grade through the API
and read scores from the gradebook instead of parsing command output.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from traitlets.config import Config, PyFileConfigLoader


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


def api(root: Path, config: Config | None = None):
    """An ``NbGraderAPI`` for the course at ``root`` (optionally with extra config merged in)."""
    from nbgrader.apps import NbGraderAPI
    from nbgrader.coursedir import CourseDirectory

    cfg = load_config(root)
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


def score(root: Path, assignment: str, student: str) -> Score:
    from nbgrader.api import Gradebook

    with Gradebook(f"sqlite:///{Path(root).resolve() / 'gradebook.db'}") as gb:
        sub = gb.find_submission(assignment, student)
        return Score(student, assignment, float(sub.score), float(sub.max_score))
