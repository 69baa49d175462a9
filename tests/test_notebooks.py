"""Every notebook is Colab-ready (setup cell from _config.yml, GPU runtime) and committed clean."""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat
import pytest
from conftest import ROOT, toc_files

sys.path.insert(0, str(ROOT / "tools"))
import notebooks as nbtool  # noqa: E402

ALL = nbtool.notebooks(nbtool.CHECKED_DIRS)


def test_there_are_notebooks() -> None:
    assert any(p.parts[-2] == "book" for p in ALL) and any("exercises" in p.parts for p in ALL)


@pytest.mark.parametrize("path", ALL, ids=lambda p: str(p.relative_to(ROOT)))
def test_notebook_is_stamped_and_clean(path: Path) -> None:
    problems = nbtool.problems(nbformat.read(path, as_version=4), nbtool.install_target())
    assert not problems, f"{path.relative_to(ROOT)}: {problems}; run `make stamp` (or `make release`)"


def test_setup_cell_uses_the_configured_repository(tmp_path: Path) -> None:
    config = tmp_path / "_config.yml"
    config.write_text("repository:\n  url: https://example.org/someone/fork/\n  branch: dev\n")
    target = nbtool.install_target(config)
    assert target == "dmcourse @ git+https://example.org/someone/fork.git@dev"
    nb = nbtool.stamp(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x = 1")]), target)
    assert nbtool.problems(nb, target) == []
    assert nbtool.problems(nb, nbtool.install_target()) != [], "a stale URL must be reported"


def test_check_catches_outputs_and_missing_setup() -> None:
    target = nbtool.install_target()
    cell = nbformat.v4.new_code_cell("1 + 1")
    cell.outputs = [nbformat.v4.new_output("execute_result", {"text/plain": "2"}, execution_count=1)]
    problems = nbtool.problems(nbformat.v4.new_notebook(cells=[cell]), target)
    assert any("setup cell" in p for p in problems) and any("outputs" in p for p in problems)


def test_every_book_page_is_in_the_toc() -> None:
    listed = set(toc_files())
    pages = {
        str(p.relative_to(ROOT).with_suffix(""))
        for p in (ROOT / "book").rglob("*")
        if p.suffix in (".ipynb", ".md") and ".ipynb_checkpoints" not in p.parts
    }
    assert pages - listed == set(), f"pages under book/ missing from _toc.yml: {sorted(pages - listed)}"
    missing = [f for f in listed if not any((ROOT / (f + ext)).exists() for ext in (".ipynb", ".md"))]
    assert not missing, f"_toc.yml names files that do not exist: {missing}"


def test_every_authored_notebook_has_its_twin_in_sync() -> None:
    problems = nbtool.twin_problems()
    assert not problems, f"{problems[:5]}: run `python tools/notebooks.py sync` (or `make stamp`)"


def test_twin_check_catches_missing_stale_and_orphaned_twins(tmp_path: Path, monkeypatch) -> None:
    import jupytext

    monkeypatch.setattr(nbtool, "ROOT", tmp_path)
    (tmp_path / "book").mkdir()
    (tmp_path / "solutions").mkdir()
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# A"), nbformat.v4.new_code_cell("x = 1")])
    nbformat.write(nb, tmp_path / "book" / "a.ipynb")
    assert nbtool.twin_problems() == ["book/a.pct.py is missing"]
    (tmp_path / "book" / "a.pct.py").write_text(jupytext.writes(nb, fmt=nbtool.TWIN_FORMAT))
    assert nbtool.twin_problems() == []
    (tmp_path / "book" / "a.pct.py").write_text(jupytext.writes(nb, fmt=nbtool.TWIN_FORMAT).replace("x = 1", "x = 2"))
    assert nbtool.twin_problems() == ["book/a.pct.py differs from book/a.ipynb"]
    (tmp_path / "solutions" / "old.pct.py").write_text("# %%\n")
    assert "solutions/old.pct.py has no notebook" in nbtool.twin_problems()
