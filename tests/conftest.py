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


@pytest.fixture(scope="session")
def built_book() -> Path:
    """_build/html from `make book`; built here (once) when a developer runs pytest alone."""
    if not (BUILD_HTML / "index.html").exists():
        subprocess.run(
            [str(Path(sys.executable).parent / "jupyter-book"), "build", str(ROOT), "-W", "-n", "--keep-going"],
            check=True, cwd=ROOT, env={**os.environ, "DMCOURSE_PROGRESS": "0"},  # as `make book`
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
