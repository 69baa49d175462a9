"""Mutation table: for each assignment, which known student mistakes (tests/mutants/*.py) lose points.

Grades every mutant with nbgrader (default) or, with --fast, in one reused kernel per assignment
as tests/test_mutants.py does, and prints a Markdown table of each mutant's score and a
caught/total line per assignment. Exits 1 if a mutant keeps full marks.

    python benchmarks/mutation_table.py                      # every assignment with a mutants file
    python benchmarks/mutation_table.py ex00_warmup --jobs 2
    python benchmarks/mutation_table.py --fast
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # test tooling: synth, mutation

import mutation  # noqa: E402

from dmcourse.grading import pipeline  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("assignment", nargs="*", help="default: every tests/mutants/<assignment>.py")
    p.add_argument("--jobs", type=int, default=2, help="submissions graded at once (default 2)")
    p.add_argument("--fast", action="store_true", help="one reused kernel per assignment instead of nbgrader")
    args = p.parse_args()
    files = {f.stem: f for f in sorted((ROOT / "tests" / "mutants").glob("*.py"))}
    chosen = args.assignment or [a for a in files if (ROOT / "solutions" / a).is_dir()]
    unknown = [a for a in chosen if a not in files]
    if unknown:
        p.error(f"no tests/mutants/<assignment>.py for {unknown}")
    results = []
    start = time.perf_counter()
    timeout = pipeline.effective_timeout(ROOT, None)
    for a in chosen:
        mutants = mutation.load_mutants(files[a])
        if args.fast:
            got, _ = mutation.run_in_one_kernel(ROOT, a, mutants, timeout=timeout)
        else:
            got, _ = mutation.run(ROOT, a, mutants, jobs=args.jobs, timeout=timeout)
        results += got
    engine = "one reused kernel per assignment" if args.fast else f"nbgrader, {args.jobs} job(s)"
    print(f"mutation table, {dt.date.today()}, graded in {time.perf_counter() - start:.0f} s ({engine})\n")
    print(mutation.format_table(results))
    return 0 if all(r.caught for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
