"""Put a damaged submission's answers back into a fresh copy of the release, or flag it.

nbgrader finds answers and tests through cell metadata (``nbgrader.grade_id``). A notebook that
lost it (an editor that strips metadata, cells copied into a new notebook, deleted test cells)
would be graded without its tests: a silent zero. :func:`check` says whether a submission is
intact; if not, :func:`rebuild` matches the student's cells to the release:

1. by ``grade_id`` where the metadata survived, then by nbformat cell id;
2. cells whose text equals a release cell (instructions, locked tests, untouched stubs);
3. each remaining answer cell: the student's cell that defines the same functions/classes/names
   as the release stub, else the student's cell between the matched neighbours (the locked text
   before and after it), else the cell at the same position when the notebook has the release's
   shape.

Only the first two steps and a defined-name match are sure. An answer placed by its neighbours or
its position (a renamed function, a scratch cell between two tests), an answer whose names another
answer's cell already defines (two answers pasted into one cell: its slot is left empty, so the
definitions stand) and an answer that cannot be found (the stub stays) mark the submission
``manual-review``. Cells of the student's own that match nothing are kept, in their place, so
helper code still runs. Introduced in the appendix *For instructors*.
"""

from __future__ import annotations

import ast
import copy
import re
from dataclasses import dataclass, field
from pathlib import Path

import nbformat

from dmcourse.grading import nbfile

#: where recover keeps originals and notes: inside submitted/ (git-ignored, private to the
#: instructor) but in a hidden folder, so nbgrader's ``submitted/*/<assignment>`` globs skip it
#: and nothing of it is copied into autograded/ or feedback/
KEEP_DIR = ".recovered"
NOTES_FILE = "recovery.txt"
_DEF = re.compile(r"^(?:async\s+)?def\s+(\w+)|^class\s+(\w+)", re.M)


@dataclass
class Recovery:
    """What recovery found: ``intact``, ``rebuilt`` or ``manual-review`` (with the reasons)."""

    status: str
    notes: list[str] = field(default_factory=list)
    notebook: nbformat.NotebookNode | None = None


def _gid(cell) -> str | None:
    return (cell.get("metadata", {}).get("nbgrader") or {}).get("grade_id")


def _norm(source: str) -> str:
    return "\n".join(line.rstrip() for line in source.strip().splitlines())


def defined_names(source: str) -> set[str]:
    """Top-level functions, classes and assigned names of a code cell (regex if it does not parse)."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return {a or b for a, b in _DEF.findall(source)}
    found = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            found.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                found |= {n.id for n in ast.walk(target) if isinstance(n, ast.Name)}
    return found


def check(sub: nbformat.NotebookNode, release: nbformat.NotebookNode) -> list[str]:
    """Why ``sub`` cannot be graded as it is (empty list: nbgrader can grade it)."""
    from nbgrader.utils import (  # here: importing nbgrader takes seconds; collect needs none
        is_grade,
        is_solution,
    )

    have: dict[str, nbformat.NotebookNode] = {}
    for cell in sub.cells:
        gid = _gid(cell)
        if gid is not None:
            have.setdefault(gid, cell)
    problems = []
    for cell in release.cells:
        gid = _gid(cell)
        if gid is None:
            continue
        if gid not in have:
            kind = "answer" if is_solution(cell) else "test" if is_grade(cell) else "locked"
            problems.append(f"{kind} cell {gid} missing or without nbgrader metadata")
        elif is_grade(cell) and not is_grade(have[gid]):
            problems.append(f"cell {gid} lost its grade flag")
    return problems


def rebuild(sub: nbformat.NotebookNode, release: nbformat.NotebookNode) -> Recovery:
    """A fresh copy of ``release`` holding the student's answers and own cells (see module doc)."""
    from nbgrader.utils import is_locked, is_solution

    rel, cells = release.cells, sub.cells
    pin: dict[int, int] = {}  # submission cell index -> release cell index
    taken: set[int] = set()

    def pin_to(j: int, i: int) -> None:
        pin[j] = i
        taken.add(i)

    rel_by_gid = {_gid(c): i for i, c in enumerate(rel) if _gid(c)}
    rel_by_id = {c.get("id"): i for i, c in enumerate(rel) if c.get("id")}
    for j, cell in enumerate(cells):  # 1. metadata, then cell ids
        i = rel_by_gid.get(_gid(cell))
        if i is not None and i not in taken:
            pin_to(j, i)
    for j, cell in enumerate(cells):
        i = rel_by_id.get(cell.get("id"))
        if j not in pin and i is not None and i not in taken and rel[i].cell_type == cell.cell_type:
            pin_to(j, i)
    for j, cell in enumerate(cells):  # 2. same text as a release cell
        if j in pin or not cell.source.strip():
            continue
        for i, r in enumerate(rel):
            if i not in taken and r.cell_type == cell.cell_type and _norm(r.source) == _norm(cell.source):
                pin_to(j, i)
                break

    structural = len(pin)
    how: dict[int, str] = {}
    shared_with: dict[int, int] = {}  # release answer -> the answer whose student cell holds it too
    solutions = [i for i, c in enumerate(rel) if is_solution(c)]
    for i in solutions:  # 3. answers not found yet
        if i in taken:
            continue
        free = [j for j in range(len(cells)) if j not in pin and cells[j].cell_type == rel[i].cell_type]
        wanted = defined_names(rel[i].source) if rel[i].cell_type == "code" else set()
        by_name = [j for j in free if wanted and wanted <= defined_names(cells[j].source)]
        lo = max((j for j, r in pin.items() if r < i), default=-1)
        hi = min((j for j, r in pin.items() if r > i), default=len(cells))
        between = [j for j in free if lo < j < hi]
        if wanted:  # a cell that defines something before a scratch cell (a print)
            between.sort(key=lambda j: not defined_names(cells[j].source))
        shared = [
            j
            for j in pin
            if wanted
            and rel[pin[j]].cell_type == "code"
            and pin[j] in solutions
            and wanted <= defined_names(cells[j].source)
        ]
        if by_name:
            pin_to(by_name[-1], i)
            how[i] = ""  # the usual case: not worth a note
        elif shared:
            shared_with[i] = pin[shared[0]]
            how[i] = (
                f"{', '.join(sorted(wanted))} found in the cell of answer {_gid(rel[pin[shared[0]]])} "
                "(two answers in one cell; this slot left empty): check it"
            )
        elif between and structural:
            pin_to(between[0], i)
            how[i] = "placed by its neighbouring cells, not by its names: check it"
        elif len(cells) == len(rel) and i in free:
            pin_to(i, i)
            how[i] = "placed by its position, not by its names: check it"
        else:
            how[i] = "NOT FOUND in the submission (graded as unanswered)"

    out = []
    extras: dict[int, list[int]] = {}  # release index -> student's own cells that follow it
    last = -1
    for j in range(len(cells)):
        if j in pin:
            last = pin[j]
        elif cells[j].source.strip():
            extras.setdefault(last, []).append(j)
    for j in extras.get(-1, []):
        out.append(_own_cell(cells[j]))
    for i, r in enumerate(rel):
        cell = copy.deepcopy(r)
        src = next((k for k, ri in pin.items() if ri == i), None)
        if src is not None and not is_locked(r):  # is_locked: False for answers, True for tests
            cell.source = cells[src].source  # the student's text: answers and editable cells
        elif i in shared_with:
            cell.source = f"# (recovery) this answer is in the cell of answer {_gid(rel[shared_with[i]])}"
        out.append(cell)
        for k in extras.get(i, []):
            out.append(_own_cell(cells[k]))

    notes = [f"answer {_gid(rel[i])}: {how[i]}" for i in solutions if how.get(i)]
    n_own = sum(len(v) for v in extras.values())
    if n_own:
        notes.append(f"{n_own} cell(s) of the student's own kept in place")
    if not structural:
        notes.insert(0, "no cell of the release found: is this the right notebook?")
    result = copy.deepcopy(release)
    result.cells = out
    lost = not structural or any(how.get(i) for i in solutions)  # anything but a sure match
    return Recovery("manual-review" if lost else "rebuilt", notes, result)


def _own_cell(cell) -> nbformat.NotebookNode:
    new = (
        nbformat.v4.new_code_cell
        if cell.cell_type == "code"
        else nbformat.v4.new_markdown_cell
        if cell.cell_type == "markdown"
        else nbformat.v4.new_raw_cell
    )(cell.source)
    return new


def recover_file(path: Path, release_path: Path, dry_run: bool = False) -> Recovery:
    """Check one submitted notebook; rebuild it in place when needed (original kept beside it)."""
    path = Path(path)
    try:
        sub = nbfile.read(path)
    except nbfile.InvalidNotebook as e:
        return Recovery("manual-review", [str(e)])
    release = nbformat.read(release_path, as_version=4)
    problems = check(sub, release)
    if not problems:
        stored = _stored(keep_dir(path))
        return Recovery(stored[0], stored[1], sub) if stored else Recovery("intact", [], sub)
    result = rebuild(sub, release)
    example = problems[0] + (f" and {len(problems) - 1} more" if len(problems) > 1 else "")
    result.notes = [f"rebuilt from the release ({example})"] + result.notes
    if not dry_run:
        keep = keep_dir(path)
        keep.mkdir(parents=True, exist_ok=True)
        if not (keep / path.name).exists():
            path.replace(keep / path.name)
        nbformat.write(result.notebook, path)
        (keep / NOTES_FILE).write_text("\n".join([f"status: {result.status}"] + result.notes) + "\n")
    return result


def keep_dir(path: Path) -> Path:
    """``submitted/.recovered/<student>/<assignment>/`` for ``submitted/<student>/<assignment>/<nb>.ipynb``."""
    path = Path(path).resolve()
    return path.parents[2] / KEEP_DIR / path.parent.parent.name / path.parent.name


def recover(
    root: Path, assignment: str, students: list[str] | None = None, dry_run: bool = False
) -> dict[str, Recovery]:
    """Check (and rebuild where needed) every ``submitted/<student>/<assignment>`` notebook."""
    root = Path(root).resolve()
    release_dir = root / "exercises" / assignment
    releases = sorted(release_dir.glob("*.ipynb"))
    if len(releases) != 1:
        raise FileNotFoundError(
            f"expected one release notebook in {release_dir}, found {len(releases)}: run `make release`"
        )
    results: dict[str, Recovery] = {}
    for student_dir in sorted((root / "submitted").glob(f"*/{assignment}")):
        student = student_dir.parent.name
        if students and student not in students:
            continue
        path = student_dir / releases[0].name
        if not path.exists():
            results[student] = Recovery("manual-review", [f"no {path.name} in submitted/{student}/{assignment}"])
        else:
            results[student] = recover_file(path, releases[0], dry_run)
    return results


def _stored(folder: Path) -> tuple[str, list[str]] | None:
    f = folder / NOTES_FILE
    if not f.exists():
        return None
    lines = f.read_text().splitlines()
    return lines[0].removeprefix("status: "), lines[1:]
