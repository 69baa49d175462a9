"""Every assignment round-trips through nbgrader: release in sync, solution full marks, blank zero."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import nbformat
import pytest
from conftest import ROOT, assignments

from dmcourse.grading import course

HIDDEN = re.compile(r"### BEGIN HIDDEN TESTS\n(.*?)### END HIDDEN TESTS", re.S)


def _comparable(path: Path) -> list[tuple[str, str, dict]]:
    nb = nbformat.read(path, as_version=4)
    return [(c.cell_type, c.source, dict(c.metadata)) for c in nb.cells]


def _submit(root: Path, assignment: str, student: str, source_dir: Path) -> None:
    dest = root / "submitted" / student / assignment
    dest.mkdir(parents=True)
    for nb in source_dir.glob("*.ipynb"):
        shutil.copy2(nb, dest / nb.name)


@pytest.mark.parametrize("assignment", assignments())
def test_release_is_generated_from_solutions(course_copy: Path, assignment: str) -> None:
    committed = {p.name: _comparable(p) for p in (ROOT / "exercises" / assignment).glob("*.ipynb")}
    assert committed, f"exercises/{assignment} has no notebook: run `make release`"
    shutil.rmtree(course_copy / "exercises" / assignment)
    course.generate(course_copy, assignment)
    regenerated = {p.name: _comparable(p) for p in (course_copy / "exercises" / assignment).glob("*.ipynb")}
    assert regenerated == committed, f"exercises/{assignment} is out of sync with solutions/: run `make release`"
    files = {
        p.relative_to(course_copy / "exercises").as_posix()
        for p in (course_copy / "exercises").rglob("*")
        if p.is_file() and p.parts[-2] == assignment
    }
    assert files == {f"{assignment}/{name}" for name in committed}, (
        f"the release of {assignment} holds more than its notebooks (a .pct.py twin of the solution?): {sorted(files)}"
    )


@pytest.mark.parametrize("assignment", assignments())
def test_hidden_tests_never_reach_students(assignment: str) -> None:
    released = "\n".join(p.read_text() for p in (ROOT / "exercises" / assignment).rglob("*") if p.is_file())
    hidden_lines = []
    for nb_path in (ROOT / "solutions" / assignment).glob("*.ipynb"):
        for cell in nbformat.read(nb_path, as_version=4).cells:
            for block in HIDDEN.findall(cell.source):
                hidden_lines += [ln.strip() for ln in block.splitlines() if len(ln.strip()) > 12]
    assert hidden_lines, f"solutions/{assignment} has no hidden tests"
    leaked = [ln for ln in hidden_lines if ln in released]
    assert not leaked, f"hidden-test lines appear in exercises/{assignment}: {leaked[:3]}"


@pytest.mark.slow
@pytest.mark.parametrize("assignment", assignments())
def test_solution_full_marks_and_blank_release_zero(course_copy: Path, assignment: str) -> None:
    _submit(course_copy, assignment, "solution", course_copy / "solutions" / assignment)
    _submit(course_copy, assignment, "blank", course_copy / "exercises" / assignment)
    course.generate(course_copy, assignment)  # registers the assignment in the gradebook
    full = course.autograde(course_copy, assignment, "solution")
    assert full.max_score > 0, f"{assignment} has no autograded points"
    assert full.score == full.max_score, f"the solution of {assignment} scores {full.score}/{full.max_score}"
    blank = course.autograde(course_copy, assignment, "blank")
    assert blank.score == 0, f"the untouched release of {assignment} scores {blank.score}/{blank.max_score}"


POINTS = re.compile(r"Points: ([^=]+?) = (\d+)\.")  # "Points: 3 + 3 + 2 + 4 = 12."
POINTS_IN_ALL = re.compile(r"(\d+) points in all: (.+?)\.")  # "15 points in all: part 1 (2 points), part 2 (3)."
WORKING_TIME = re.compile(r"Expected working time|\*\*Time and points\*\*: about")


@pytest.mark.parametrize("assignment", assignments())
def test_stated_working_time_and_points_match_the_grades(assignment: str) -> None:
    """The header states the expected working time and the points of each part, and they add up to
    the graded cells' points."""
    nb = nbformat.read(ROOT / "solutions" / assignment / f"{assignment}.ipynb", as_version=4)
    header = " ".join(c.source for c in nb.cells[:3] if c.cell_type == "markdown").replace("\n", " ")
    graded = [
        c.metadata["nbgrader"]["points"]
        for c in nb.cells
        if c.metadata.get("nbgrader", {}).get("grade") and "points" in c.metadata["nbgrader"]
    ]
    if (stated := POINTS.search(header)) is not None:
        parts, total = [int(p) for p in re.findall(r"\d+", stated.group(1))], int(stated.group(2))
    elif (stated := POINTS_IN_ALL.search(header)) is not None:
        parts = [
            int(p) for part in re.findall(r"part \d+ \(([\d + ]+)", stated.group(2)) for p in re.findall(r"\d+", part)
        ]
        total = int(stated.group(1))
    else:
        raise AssertionError(
            f"{assignment}'s first cell must state its points: 'Points: a + b + ... = total.' "
            "or 'N points in all: part 1 (a points), part 2 (b), ...'"
        )
    assert sum(parts) == total == sum(graded), (
        f"{assignment}: the header states {stated.group(0)!r}, the graded cells give {graded} (sum {sum(graded)})"
    )
    assert WORKING_TIME.search(header), f"{assignment}: state the expected working time in the first cell"


def test_the_instructor_appendix_lists_every_assignment_with_its_points() -> None:
    text = (ROOT / "book" / "appendix" / "instructors.md").read_text()
    rows = dict(re.findall(r"^\| `(ex\d\d_\w+)` \| [^|]+ \| (\d+) \|", text, re.M))
    assert set(rows) == set(assignments()), f"the appendix's table of assignments lists {sorted(rows)}"
    for assignment, points in rows.items():
        graded = 0
        for nb_path in (ROOT / "solutions" / assignment).glob("*.ipynb"):
            graded += sum(
                c.metadata.get("nbgrader", {}).get("points", 0)
                for c in nbformat.read(nb_path, as_version=4).cells
                if c.metadata.get("nbgrader", {}).get("grade")
            )
        assert int(points) == graded, f"{assignment}: the appendix says {points} points, its graded cells hold {graded}"
