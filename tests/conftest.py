"""Shared fixtures: the repository root, the built book, and throwaway copies of the course."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
# unit tests do not run dmcourse.matmul's kernel probe (tests/test_matmul.py asks for it, with fakes)
os.environ.setdefault("DMCOURSE_MATMUL", "F.linear")
BUILD_HTML = ROOT / "_build" / "html"
COURSE_FILES = ("nbgrader_config.py", "solutions", "exercises")


def toc_files() -> list[str]:
    """Every file named in _toc.yml (root first), without extension."""
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [toc["root"]]

    def walk(node):
        if isinstance(node, dict):
            if "file" in node:
                files.append(node["file"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(toc.get("parts", []))
    walk(toc.get("chapters", []))
    return files


def assignments() -> list[str]:
    return sorted(p.name for p in (ROOT / "solutions").iterdir() if p.is_dir() and not p.name.startswith("."))


def tracked_files() -> list[str]:
    """The files git tracks (what `pip install git+<repo>` sees of the working tree)."""
    out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return [rel for rel in out.split() if (ROOT / rel).is_file()]


def build_wheel(dest: Path, env: dict[str, str] | None = None) -> tuple[Path, list[str]]:
    """Copy the tracked tree to ``dest/src`` and build dmcourse's wheel from it into ``dest/dist``
    (no dependencies, no build isolation: offline, as CI runs). Returns (wheel, tracked files)."""
    tracked = tracked_files()
    for rel in tracked:
        (dest / "src" / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, dest / "src" / rel)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(dest / "dist"),
         str(dest / "src")],
        check=True, timeout=600, env=env,
    )  # fmt: skip
    return next((dest / "dist").glob("dmcourse-*.whl")), tracked


def run_benchmark(script: str, *args: str, timeout: int = 600) -> str:
    """Run ``benchmarks/<script>`` with ``args`` from the repository root; its stdout (fails the
    test, showing stderr's end, when it exits non-zero)."""
    proc = subprocess.run(
        [sys.executable, f"benchmarks/{script}", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, f"benchmarks/{script} exited {proc.returncode}:\n{proc.stderr[-2000:]}"
    return proc.stdout


def table_rows(stdout: str) -> list[list[str]]:
    """The data rows of the tables a script printed: rows whose first cell is a whole number,
    Markdown (``| 1 | 2.0 |``) or whitespace-separated (``1 2.0``), as lists of stripped cells."""
    rows = []
    for line in stdout.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")] if line.startswith("|") else line.split()
        if cells and cells[0].isdigit():
            rows.append(cells)
    return rows


@pytest.fixture(scope="session")
def built_book() -> Path:
    """_build/html from `make book`; built here (once) when a developer runs pytest alone."""
    if not (BUILD_HTML / "index.html").exists():
        subprocess.run(
            [str(Path(sys.executable).parent / "jupyter-book"), "build", str(ROOT), "-W", "-n", "--keep-going"],
            check=True,
            cwd=ROOT,
            env={**os.environ, "DMCOURSE_PROGRESS": "0"},  # as `make book`
        )
    return BUILD_HTML


@pytest.fixture
def course_copy(tmp_path: Path) -> Path:
    """A temporary copy of the course directory (nbgrader config, solutions, exercises)."""
    for name in COURSE_FILES:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, tmp_path / name, ignore=shutil.ignore_patterns(".ipynb_checkpoints", "__pycache__"))
        else:
            shutil.copy2(src, tmp_path / name)
    return tmp_path


@pytest.fixture
def one_thread():
    """Tiny models: on a shared 2-core CPU extra torch threads only wait on each other (up to 100x
    slower), so these tests run with one and restore the setting afterwards."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


# ----------------------------------------------------------------------------------------------
# One marker per chapter: `pytest -m ch03` runs chapter 3's module, exercise and notebook tests.
# The map they come from is the table under "## Map of the course" in README.md (one source).
# ----------------------------------------------------------------------------------------------

MAP_HEADING = "## Map of the course"


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def course_map() -> list[dict[str, list[str] | str]]:
    """README's map as rows: {"chapter": "03", "notebook": "book/03_moe.ipynb", "modules": [...],
    "exercises": [...], "tests": [...]} (names without backticks; "-" means none)."""
    text = (ROOT / "README.md").read_text()
    if MAP_HEADING not in text:
        raise ValueError(f"README.md has no '{MAP_HEADING}' table; the chapter markers are read from it")
    section = text.split(MAP_HEADING, 1)[1].split("\n## ", 1)[0]
    lines = [ln for ln in section.splitlines() if ln.startswith("|")]
    header, rows = _cells(lines[0]), lines[2:]
    keys = ("chapter", "notebook", "modules", "exercises", "tests")
    if len(header) != len(keys):
        raise ValueError(f"README map needs the columns {keys}, has {header}")

    def names(cell: str) -> list[str]:
        return [n.strip(" `") for n in cell.split(",") if n.strip(" `") not in ("", "-", "–")]

    out = []
    for line in rows:
        cells = _cells(line)
        row: dict[str, list[str] | str] = {k: names(v) for k, v in zip(keys, cells)}
        row["chapter"] = cells[0].strip(" `")
        out.append(row)
    return out


def chapter_marker(chapter: str) -> str:
    return f"ch{chapter}" if chapter.isdigit() else chapter


def pytest_configure(config: pytest.Config) -> None:
    for row in course_map():
        config.addinivalue_line(
            "markers",
            f"{chapter_marker(str(row['chapter']))}: tests of chapter {row['chapter']} (README's map of the course)",
        )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    rows = course_map()
    for item in items:
        file = Path(str(item.fspath)).name
        for row in rows:
            notebooks = [Path(str(n)).stem for n in row["notebook"]]
            words = [*notebooks, *row["exercises"]]
            if file in [f"{t}.py" if not t.endswith(".py") else t for t in row["tests"]] or any(
                w and w in item.nodeid for w in words
            ):
                item.add_marker(chapter_marker(str(row["chapter"])))
