"""Synthetic submissions built from an assignment's solution and release (tests, benchmarks).

A *student's correct notebook* is the release with every answer cell holding the solution's code
(the ``### BEGIN/END SOLUTION`` marker lines removed), as a student would hand it in.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import nbformat

_MARKER = re.compile(r"^\s*### (BEGIN|END) SOLUTION\s*$")


def _gid(cell) -> str | None:
    return (cell.get("metadata", {}).get("nbgrader") or {}).get("grade_id")


def load(root: Path, assignment: str) -> tuple[nbformat.NotebookNode, nbformat.NotebookNode]:
    """(solution notebook, release notebook) of a single-notebook assignment."""
    root = Path(root)
    (sol,) = sorted((root / "solutions" / assignment).glob("*.ipynb"))
    (rel,) = sorted((root / "exercises" / assignment).glob("*.ipynb"))
    return nbformat.read(sol, as_version=4), nbformat.read(rel, as_version=4)


def answer_text(solution_source: str) -> str:
    """The code a student writes: the solution cell without nbgrader's marker lines."""
    return "\n".join(ln for ln in solution_source.split("\n") if not _MARKER.match(ln))


def answer_cells(release: nbformat.NotebookNode) -> list[str]:
    """grade_ids of the release's answer (solution) cells, in order."""
    return [_gid(c) for c in release.cells if (c.metadata.get("nbgrader") or {}).get("solution")]


def test_points(release: nbformat.NotebookNode) -> list[tuple[str, float, int]]:
    """(grade_id, points, cell index) of each autograded test cell, in order."""
    out = []
    for i, c in enumerate(release.cells):
        meta = c.metadata.get("nbgrader") or {}
        if meta.get("grade") and not meta.get("solution"):
            out.append((meta["grade_id"], float(meta.get("points", 0)), i))
    return out


def correct(
    solution: nbformat.NotebookNode, release: nbformat.NotebookNode, answered: list[str] | None = None
) -> nbformat.NotebookNode:
    """The release with the solution's code in the answer cells (only those in ``answered`` if given)."""
    sol = {_gid(c): c for c in solution.cells if _gid(c)}
    nb = copy.deepcopy(release)
    for cell in nb.cells:
        gid = _gid(cell)
        if gid in sol and (cell.metadata.nbgrader.get("solution")) and (answered is None or gid in answered):
            cell.source = answer_text(sol[gid].source)
    return nb


def cell(nb: nbformat.NotebookNode, grade_id: str) -> nbformat.NotebookNode:
    """The cell of ``nb`` with ``grade_id``."""
    for c in nb.cells:
        if _gid(c) == grade_id:
            return c
    raise KeyError(f"no cell with grade_id {grade_id!r}")


def apply_mutant(solution: nbformat.NotebookNode, mutant: dict) -> nbformat.NotebookNode:
    """A copy of the solution notebook with one mutant applied (``old`` must occur in the cell)."""
    for key in ("name", "cell", "old", "new"):
        if key not in mutant:
            raise ValueError(f"mutant {mutant!r} lacks {key!r}")
    nb = copy.deepcopy(solution)
    target = cell(nb, mutant["cell"])
    if mutant["old"] not in target.source:
        raise ValueError(f"mutant {mutant['name']!r}: {mutant['old']!r} not found in cell {mutant['cell']!r}")
    target.source = target.source.replace(mutant["old"], mutant["new"])
    return nb


def strip_metadata(nb: nbformat.NotebookNode, colab: bool = False) -> dict:
    """``nb`` as a plain JSON dict without cell metadata and ids (an editor that drops them).

    ``colab=True`` imitates a Colab download instead: nbformat 4.0 without cell ids, Colab's own
    ids in ``metadata.id``, other cell metadata kept."""
    data = nbformat.from_dict(copy.deepcopy(nb))
    data["nbformat_minor"] = 0 if colab else 4
    for i, c in enumerate(data["cells"]):
        c.pop("id", None)
        c["metadata"] = {**c["metadata"], "id": f"Zc{i:06d}aB"} if colab else {}
    if colab:
        data["metadata"]["colab"] = {"provenance": [], "name": "submission.ipynb"}
    return data


def tiny_assignment(root: Path, name: str, manual: bool = False) -> str:
    """Add a tiny assignment ``name`` to the course at ``root`` and generate its release (which
    registers it in the gradebook): one answer cell ``double`` and one autograded test (1 point,
    one hidden assert); with ``manual``, also a Markdown answer graded by hand (``why``, 2 points).
    Its kernels import nothing heavy, so grading it takes about a second."""
    from dmcourse.grading import course

    def meta(**kw):
        return {
            "nbgrader": {"grade": False, "locked": False, "schema_version": 3, "solution": False, "task": False, **kw}
        }

    cells = [
        nbformat.v4.new_code_cell(
            "def double(x):\n    ### BEGIN SOLUTION\n    return 2 * x\n    ### END SOLUTION",
            metadata=meta(grade_id="double", solution=True),
            id="double",
        ),
        nbformat.v4.new_code_cell(
            "assert double(2) == 4\n### BEGIN HIDDEN TESTS\nassert double(21) == 42\n### END HIDDEN TESTS",
            id="test_double",
            metadata=meta(grade_id="test_double", grade=True, locked=True, points=1),
        ),
    ]
    if manual:
        cells.append(
            nbformat.v4.new_markdown_cell(
                "Doubling is a linear map.",
                id="why",
                metadata=meta(grade_id="why", grade=True, solution=True, points=2),
            )
        )
    nb = nbformat.v4.new_notebook(
        cells=cells, metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}}
    )
    (Path(root) / "solutions" / name).mkdir(parents=True)
    nbformat.write(nb, Path(root) / "solutions" / name / f"{name}.ipynb")
    course.generate(root, name)
    return name
