"""The book: every toc page built and executed; failing cells and broken references fail a build."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import ROOT, toc_files

JUPYTER_BOOK = str(Path(sys.executable).parent / "jupyter-book")
pytestmark = pytest.mark.book


def test_every_toc_page_was_built(built_book: Path) -> None:
    for page in toc_files():
        assert (built_book / f"{page}.html").exists(), f"{page} was not built"


def test_notebooks_were_executed(built_book: Path) -> None:
    for page in toc_files():
        if (ROOT / f"{page}.ipynb").exists():
            html = (built_book / f"{page}.html").read_text()
            assert "cell_output" in html, f"{page}.ipynb has no outputs in the book: was it executed?"


def test_build_log_is_clean(built_book: Path) -> None:
    log = built_book.parent / "build.log"
    if not log.exists():
        pytest.skip("book built outside `make book`: no build.log to inspect")
    found = re.findall(r"^.*: (?:WARNING|ERROR|CRITICAL): .*$", log.read_text(), re.M)
    assert not found, f"the book build printed Sphinx warnings or errors: {found[:5]}"


def _mini_book(tmp_path: Path, notebook_source: str, toc_extra: str = "", page: str = "") -> Path:
    (tmp_path / "_config.yml").write_text(
        textwrap.dedent("""\
        title: mini
        only_build_toc_files: true
        execute:
          execute_notebooks: force
          allow_errors: false
          timeout: 60
        """)
    )
    (tmp_path / "_toc.yml").write_text("format: jb-book\nroot: intro\nchapters:\n  - file: nb\n" + toc_extra)
    (tmp_path / "intro.md").write_text("# Intro\n\n" + page)
    import nbformat

    nb = nbformat.v4.new_notebook(
        cells=[nbformat.v4.new_markdown_cell("# NB"), nbformat.v4.new_code_cell(notebook_source)]
    )
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, tmp_path / "nb.ipynb")
    return tmp_path


def _build(book: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [JUPYTER_BOOK, "build", str(book), "-W", "-n", "--keep-going"], capture_output=True, text=True, timeout=300
    )


@pytest.mark.slow
def test_a_healthy_mini_book_builds(tmp_path: Path) -> None:
    result = _build(_mini_book(tmp_path, "print(1 + 1)"))
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]


@pytest.mark.slow
@pytest.mark.parametrize("case", ["failing cell", "broken reference", "missing toc file"])
def test_the_build_fails_on(case: str, tmp_path: Path) -> None:
    source, toc_extra, page = "print(1 + 1)", "", ""
    if case == "failing cell":
        source = "raise RuntimeError('boom')"
    elif case == "broken reference":
        page = "See {ref}`no-such-label`.\n"
    else:
        toc_extra = "  - file: not_there\n"
    result = _build(_mini_book(tmp_path, source, toc_extra, page))
    assert result.returncode != 0, f"a {case} did not fail the build"
