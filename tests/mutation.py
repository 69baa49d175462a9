"""Mutation check of an assignment's tests: each known student mistake must lose points.

A mutants file (``tests/mutants/<assignment>.py``) holds ``MUTANTS = [{"name", "cell", "old",
"new"}, ...]``: in the solution cell whose grade_id is ``cell``, ``old`` is replaced by ``new``.
Two engines, both with the unchanged solution as a control that must score full marks:

* :func:`run` grades every mutant with nbgrader, as one batch of students in a copy of the
  course: the authoritative score, about 2-3 s of CPU per mutant (a fresh kernel and
  ``import torch`` each time);
* :func:`run_in_one_kernel` executes each mutated solution notebook in one reused kernel (user
  namespace reset, torch's RNG and global settings restored) and scores its test cells with
  nbgrader's own rules (``IgnorePattern``, ``utils.determine_grade``): a few hundredths of a
  second per mutant, for CI. Cross-checked against nbgrader in tests/test_grading.py.
"""

from __future__ import annotations

import copy
import importlib.util
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import nbformat
import synth

from dmcourse.grading import batch, course

COURSE_FILES = ("nbgrader_config.py", "solutions", "exercises")


@dataclass(frozen=True)
class Result:
    """One mutant graded: caught when it scores below the control (the unchanged solution)."""

    assignment: str
    name: str
    score: float | None
    max_score: float
    failure: str | None = None

    @property
    def caught(self) -> bool:
        return self.failure is None and self.score is not None and self.score < self.max_score


def load_mutants(path: Path) -> list[dict]:
    """The ``MUTANTS`` list of a mutants file, checked for the four keys."""
    spec = importlib.util.spec_from_file_location(f"_mutants_{Path(path).stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    mutants = getattr(module, "MUTANTS", None)
    if not isinstance(mutants, list) or not mutants:
        raise ValueError(f"{path} must define a non-empty list MUTANTS")
    names = [m.get("name") for m in mutants]
    if len(set(names)) != len(names):
        raise ValueError(f"{path}: mutant names must be unique")
    for m in mutants:
        if set(m) != {"name", "cell", "old", "new"}:
            raise ValueError(f"{path}: mutant {m.get('name')!r} needs exactly the keys name, cell, old, new")
    return mutants


def copy_course(src: Path, dest: Path) -> Path:
    """Copy the course files (config, solutions, exercises) of ``src`` into ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in COURSE_FILES:
        s = Path(src) / name
        if s.is_dir():
            shutil.copytree(s, dest / name, ignore=shutil.ignore_patterns(".ipynb_checkpoints", "__pycache__"))
        else:
            shutil.copy2(s, dest / name)
    return dest


def student_id(index: int, name: str) -> str:
    return f"m{index:02d}_" + re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_")[:40]


def run(
    root: Path, assignment: str, mutants: list[dict], jobs: int = 2, timeout: int = 120, workdir: Path | None = None
) -> tuple[list[Result], float]:
    """Grade every mutant of ``assignment`` in a copy of the course; return (results, control score)."""
    tmp = Path(tempfile.mkdtemp(prefix="dmcourse-mutants-")) if workdir is None else Path(workdir)
    try:
        copy = copy_course(root, tmp / "course")
        solution, _ = synth.load(copy, assignment)
        (nb_name,) = [p.name for p in (copy / "solutions" / assignment).glob("*.ipynb")]
        students = {"control": solution}
        for i, m in enumerate(mutants):
            students[student_id(i, m["name"])] = synth.apply_mutant(solution, m)
        for s, nb in students.items():
            d = copy / "submitted" / s / assignment
            d.mkdir(parents=True)
            nbformat.write(nb, d / nb_name)
        course.register(copy, assignment)
        outcome = batch.autograde_all(copy, assignment, sorted(students), timeout, jobs=jobs)
        if outcome["control"]:
            raise RuntimeError(f"the unchanged solution of {assignment} could not be graded: {outcome['control']}")
        control = course.score(copy, assignment, "control")
        if control.score != control.max_score:
            raise RuntimeError(f"the unchanged solution of {assignment} scores {control.score}/{control.max_score}")
        results = []
        for i, m in enumerate(mutants):
            s = student_id(i, m["name"])
            sc = None if outcome[s] else course.score(copy, assignment, s).score
            results.append(Result(assignment, m["name"], sc, control.max_score, outcome[s]))
        return results, control.score
    finally:
        if workdir is None:
            shutil.rmtree(tmp, ignore_errors=True)


_RESET = """\
_ip = get_ipython()  # like %reset -f, without its slow garbage collection
for _k in [k for k in _ip.user_ns if k not in _ip.user_ns_hidden]:
    del _ip.user_ns[_k]
del _ip, _k
import sys as _sys
_saved = _sys.modules.get("_dmcourse_mutation_state")
if _saved is None:
    import types as _types, torch as _torch
    _saved = _sys.modules["_dmcourse_mutation_state"] = _types.ModuleType("_dmcourse_mutation_state")
    _saved.rng = _torch.get_rng_state()
else:
    import torch as _torch
    _torch.set_rng_state(_saved.rng)
    _torch.set_default_dtype(_torch.float32)
    _torch.set_grad_enabled(True)
_sys.setprofile(None)
del _sys, _saved, _torch
"""


def _score(nb: nbformat.NotebookNode) -> tuple[float, float]:
    """(score, max) of an executed notebook by nbgrader's rules for autograded test cells."""
    from nbgrader import utils
    from nbgrader.preprocessors import IgnorePattern

    nb, _ = IgnorePattern().preprocess(nb, {})
    got = total = 0.0
    for cell in nb.cells:
        if utils.is_grade(cell):
            score, points = utils.determine_grade(cell)
            got += points if score is None else score
            total += points
    return got, total


def run_in_one_kernel(
    root: Path, assignment: str, mutants: list[dict], timeout: int = 120
) -> tuple[list[Result], float]:
    """Score every mutant by executing it in one reused kernel (see the module doc)."""
    from nbclient import NotebookClient
    from nbclient.exceptions import DeadKernelError
    from nbgrader.utils import setenv

    solution, _ = synth.load(root, assignment)
    notebooks = [("control", solution)] + [(m["name"], synth.apply_mutant(solution, m)) for m in mutants]
    scores: dict[str, tuple[float | None, float, str | None]] = {}
    tmp = Path(tempfile.mkdtemp(prefix="dmcourse-mutants-"))
    try:
        work = tmp / assignment
        shutil.copytree(Path(root) / "solutions" / assignment, work)  # the files a notebook may read
        pending = list(notebooks)
        while pending:
            client = NotebookClient(
                nbformat.v4.new_notebook(),
                timeout=timeout,
                allow_errors=True,
                interrupt_on_timeout=True,
                kernel_name="python3",
                error_on_timeout={"ename": "CellTimeoutError", "evalue": "", "traceback": []},
                resources={"metadata": {"path": str(work)}},
            )
            with setenv(NBGRADER_EXECUTION="autograde"), client.setup_kernel():
                while pending:
                    name, nb = pending[0]
                    nb = copy.deepcopy(nb)
                    for cell in nb.cells:
                        if cell.cell_type == "code":
                            cell.outputs, cell.execution_count = [], None
                    client.nb = nb
                    try:
                        client.execute_cell(nbformat.v4.new_code_cell(_RESET), 0)
                        for i, cell in enumerate(nb.cells):
                            if cell.cell_type == "code":
                                client.execute_cell(cell, i)
                    except DeadKernelError:
                        scores[name] = (None, 0.0, "the kernel died")
                        pending.pop(0)
                        break  # a fresh kernel for the rest
                    scores[name] = (*_score(nb), None)
                    pending.pop(0)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    control, max_score, failure = scores["control"]
    if failure or control != max_score:
        raise RuntimeError(f"the unchanged solution of {assignment} scores {control}/{max_score} ({failure})")
    return [
        Result(assignment, m["name"], scores[m["name"]][0], max_score, scores[m["name"]][2]) for m in mutants
    ], control


def format_table(results: list[Result]) -> str:
    """Per-mutant lines and a caught/total line per assignment (Markdown)."""
    lines = ["| assignment | mutant | score | caught |", "|---|---|---|---|"]
    for r in results:
        score = f"{r.score:g}/{r.max_score:g}" if r.score is not None else f"failed ({r.failure})"
        lines.append(f"| {r.assignment} | {r.name} | {score} | {'yes' if r.caught else 'NO'} |")
    lines += ["", "| assignment | caught | total |", "|---|---|---|"]
    for a in sorted({r.assignment for r in results}):
        rs = [r for r in results if r.assignment == a]
        lines.append(f"| {a} | {sum(r.caught for r in rs)} | {len(rs)} |")
    lines.append(f"| all | {sum(r.caught for r in results)} | {len(results)} |")
    return "\n".join(lines)


def mutants_of(assignment: str) -> list[dict]:
    """The mutants of ``assignment`` (``tests/mutants/<assignment>.py``); [] when it has none."""
    path = Path(__file__).resolve().parent / "mutants" / f"{assignment}.py"
    return load_mutants(path) if path.exists() else []
