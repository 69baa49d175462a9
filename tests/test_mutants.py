"""Mutation suite: every mistake listed in tests/mutants/<assignment>.py must lose points.

Every mutant is executed in one reused kernel per assignment and scored by nbgrader's rules
(``mutation.run_in_one_kernel``: seconds instead of minutes); tests/test_grading.py grades a sample
of mutants of every assignment with nbgrader and checks both give the same score. The table of
mutants caught vs total is printed to the terminal even without ``-s``;
``python benchmarks/mutation_table.py`` prints it from nbgrader's grading of every mutant.
"""

from __future__ import annotations

import time
from pathlib import Path

import mutation
import pytest
import synth
from conftest import ROOT, assignments

from dmcourse.grading import pipeline

MUTANT_FILES = sorted((ROOT / "tests" / "mutants").glob("*.py"))


def _graded_assignments() -> list[str]:
    have = set(assignments())
    return [p.stem for p in MUTANT_FILES if p.stem in have]


def test_every_assignment_has_mutants() -> None:
    missing = [a for a in assignments() if not (ROOT / "tests" / "mutants" / f"{a}.py").exists()]
    assert not missing, f"no tests/mutants/<assignment>.py for {missing}"
    strays = [p.name for p in MUTANT_FILES if p.stem not in assignments()]
    assert not strays, f"mutants for assignments that do not exist: {strays}"


@pytest.mark.parametrize("assignment", _graded_assignments())
def test_mutants_apply_to_the_solution(assignment: str) -> None:
    """Fast check of the mutants file: each names a solution cell and changes text that is there."""
    solution, release = synth.load(ROOT, assignment)
    answers = set(synth.answer_cells(release))
    for m in mutation.load_mutants(ROOT / "tests" / "mutants" / f"{assignment}.py"):
        assert m["cell"] in answers, f"{m['name']}: {m['cell']!r} is not an answer cell of {assignment}"
        assert m["old"] != m["new"], m["name"]
        synth.apply_mutant(solution, m)


@pytest.mark.slow
@pytest.mark.parametrize("assignment", _graded_assignments())
def test_every_mutant_loses_points(assignment: str, capsys) -> None:
    mutants = mutation.load_mutants(ROOT / "tests" / "mutants" / f"{assignment}.py")
    start = time.perf_counter()
    results, _ = mutation.run_in_one_kernel(ROOT, assignment, mutants, timeout=pipeline.effective_timeout(ROOT, None))
    seconds = time.perf_counter() - start
    with capsys.disabled():
        print(f"\n{mutation.format_table(results)}\n({len(results)} mutants of {assignment} graded in {seconds:.0f} s)")
    survivors = [
        r.name + (f" (grading failed: {r.failure})" if r.failure else f" scored {r.score}/{r.max_score}")
        for r in results
        if not r.caught
    ]
    assert not survivors, f"mutants of {assignment} that keep full marks: {survivors}"


def test_mutation_table_script_exists() -> None:
    assert Path(ROOT / "benchmarks" / "mutation_table.py").exists()
