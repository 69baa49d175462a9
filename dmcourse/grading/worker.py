"""One autograde process: ``nbgrader autograde`` (through its API) over a list of students.

Started by :mod:`dmcourse.grading.batch`, one per shard, so that a submission that kills or hangs
the grading process costs only that submission. Writes ``start <student>`` / ``done <student>``
lines to a progress file (nbgrader's pre/post convert hooks) and nbgrader's log to a log file.

    python -m dmcourse.grading.worker ROOT ASSIGNMENT STUDENTS_FILE PROGRESS_FILE LOG_FILE [TIMEOUT]
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from traitlets.config import Config


def _student_of(notebooks: list[str]) -> str:
    return Path(notebooks[0]).parent.parent.name if notebooks else "?"


def run(root: Path, assignment: str, students: list[str], progress: Path, log: Path, timeout: int | None) -> bool:
    from dmcourse.grading import course
    from dmcourse.grading.safety import grading_config

    submitted = {p.parent.name for p in (Path(root) / "submitted").glob(f"*/{assignment}")}
    others = sorted(submitted - set(students))

    def mark(word: str):
        def hook(assignment: str, student: str, notebooks: list[str]) -> None:  # noqa: ARG001 - nbgrader's signature
            with open(progress, "a") as f:
                f.write(f"{word} {_student_of(notebooks)} {time.time():.3f}\n")

        return hook

    cfg = grading_config(timeout)
    if others:
        cfg.CourseDirectory.student_id_exclude = ",".join(others)
    extra = Config()
    extra.Autograde.pre_convert_hook = mark("start")
    extra.Autograde.post_convert_hook = mark("done")
    cfg.merge(extra)
    result = course.api(root, cfg).autograde(assignment, "*", force=True, create=True)
    log.write_text(
        json.dumps(
            {"success": bool(result.get("success")), "log": result.get("log") or "", "error": result.get("error") or ""}
        )
    )
    return bool(result.get("success"))


def main(argv: list[str]) -> int:
    if len(argv) not in (5, 6):
        print(__doc__, file=sys.stderr)
        return 2
    root, assignment, students_file, progress, log = argv[:5]
    timeout = int(argv[5]) if len(argv) == 6 else None
    students = [s for s in Path(students_file).read_text().split() if s]
    run(Path(root), assignment, students, Path(progress), Path(log), timeout)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
