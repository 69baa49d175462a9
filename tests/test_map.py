"""README's map of the course is true: every module, notebook, exercise and test file is in it, and
everything it names exists. The chapter markers (`pytest -m ch03`) are read from the same table."""

from __future__ import annotations

import pytest
from conftest import ROOT, assignments, chapter_marker, course_map, toc_files


def _named(column: str) -> set[str]:
    return {name for row in course_map() for name in row[column]}


def test_every_module_is_on_the_map() -> None:
    modules = {p.stem for p in (ROOT / "dmcourse").glob("*.py") if not p.name.startswith("_")}
    modules |= {p.name for p in (ROOT / "dmcourse").iterdir() if (p / "__init__.py").exists()}
    named = _named("modules")
    assert modules - named == set(), f"add these modules to README's map of the course: {sorted(modules - named)}"
    assert named - modules == set(), f"README's map names modules that do not exist: {sorted(named - modules)}"


def test_every_test_file_is_on_the_map() -> None:
    files = {p.stem for p in (ROOT / "tests").glob("test_*.py")}
    named = _named("tests")
    assert files - named == set(), f"add these test files to README's map of the course: {sorted(files - named)}"
    assert named - files == set(), f"README's map names test files that do not exist: {sorted(named - files)}"


def test_every_chapter_and_exercise_is_on_the_map() -> None:
    chapters = {f + (".md" if (ROOT / f"{f}.md").exists() else ".ipynb") for f in toc_files()[1:]}
    assert chapters == _named("notebook"), "README's map and _toc.yml list different chapters"
    assert set(assignments()) == _named("exercises"), "README's map and solutions/ list different exercises"


def test_markers_come_from_the_map(pytestconfig: pytest.Config) -> None:
    markers = " ".join(pytestconfig.getini("markers"))
    for row in course_map():
        assert f"{chapter_marker(str(row['chapter']))}:" in markers
