"""Synthetic submissions built from an assignment's solution and release (tests, benchmarks).

A *student's correct notebook* is the release with every answer cell holding the solution's code
(the ``### BEGIN/END SOLUTION`` marker lines removed), as a student would hand it in.
"""

from __future__ import annotations

import copy
import html
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
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


# ---------------------------------------------------------------- grading tests' building blocks


@dataclass
class Info:
    """An assignment's solution, release and points, to build submissions and expected scores."""

    name: str
    solution: nbformat.NotebookNode
    release: nbformat.NotebookNode

    @property
    def answers(self) -> list[str]:
        return answer_cells(self.release)

    @property
    def max(self) -> float:
        return sum(p for _, p, _ in test_points(self.release))

    def index(self, grade_id: str) -> int:
        return next(
            i
            for i, c in enumerate(self.release.cells)
            if (c.metadata.get("nbgrader") or {}).get("grade_id") == grade_id
        )

    def points_before(self, grade_id: str) -> float:
        """Points of the tests above an answer cell: what is left when it and all later answers are blank."""
        return sum(p for _, p, i in test_points(self.release) if i < self.index(grade_id))

    def points_between(self, grade_id: str) -> float:
        """Points of the tests between an answer cell and the next one (the tests of that answer)."""
        later = [self.index(a) for a in self.answers if self.index(a) > self.index(grade_id)]
        end = min(later, default=len(self.release.cells))
        return sum(p for _, p, i in test_points(self.release) if self.index(grade_id) < i < end)

    def correct(self, answered: list[str] | None = None) -> nbformat.NotebookNode:
        return correct(self.solution, self.release, answered)

    def partial(self) -> tuple[nbformat.NotebookNode, float]:
        """First half of the answers written, the rest left as released; and the score it deserves."""
        k = max(1, len(self.answers) // 2)
        if k >= len(self.answers):
            return self.correct(), self.max
        return self.correct(self.answers[:k]), self.points_before(self.answers[k])


def to_bytes(nb) -> bytes:
    """A notebook (or a JSON-able dict, e.g. one with broken metadata) as the bytes of a file."""
    return (nbformat.writes(nb) if isinstance(nb, nbformat.NotebookNode) else json.dumps(nb, indent=1)).encode()


def edit(nb: nbformat.NotebookNode, grade_id: str, fn: Callable[[str], str]) -> nbformat.NotebookNode:
    """A copy of ``nb`` whose cell ``grade_id`` holds ``fn(its source)``."""
    nb = copy.deepcopy(nb)
    target = cell(nb, grade_id)
    target.source = fn(target.source)
    return nb


def test_cells(nb: nbformat.NotebookNode) -> list:
    """The autograded test cells of ``nb``."""
    return [
        c
        for c in nb.cells
        if (c.metadata.get("nbgrader") or {}).get("grade") and not c.metadata.nbgrader.get("solution")
    ]


def hidden_lines(root: Path) -> dict[str, list[str]]:
    """Hidden-test lines per assignment, read here independently of dmcourse.grading.leaks
    (lines that the release shows anyway, in another cell, are no secret)."""
    out = {}
    for a in sorted(p.name for p in (root / "solutions").iterdir() if p.is_dir()):
        lines = []
        for src in (root / "solutions" / a).glob("*.ipynb"):
            released = re.sub(
                r"\s+",
                " ",
                "\n".join(c.source for c in nbformat.read(root / "exercises" / a / src.name, as_version=4).cells),
            )
            for cell in nbformat.read(src, as_version=4).cells:
                for block in re.findall(r"BEGIN HIDDEN TESTS[^\n]*\n(.*?)\n[^\n]*END HIDDEN TESTS", cell.source, re.S):
                    lines += [
                        ln.strip()
                        for ln in block.splitlines()
                        if len(ln.strip()) >= 12 and re.sub(r"\s+", " ", ln.strip()) not in released
                    ]
        out[a] = lines
    return out


def leaks_in(path: Path, lines: list[str]) -> list[str]:
    """The ``lines`` (hidden-test lines) that a feedback or notebook file at ``path`` shows."""
    text = path.read_text(errors="replace")
    if path.suffix == ".html":
        text = html.unescape(re.sub(r"<[^>]+>", "", text))
    elif path.suffix == ".ipynb":
        text = "\n".join(c.source for c in nbformat.reads(text, as_version=4).cells) + text
    flat = re.sub(r"\s+", " ", text)
    return [ln for ln in lines if re.sub(r"\s+", " ", ln) in flat]
