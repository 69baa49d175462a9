"""One grading process: ``nbgrader autograde`` for ONE submission (the appendix for instructors).

Started by :mod:`dmcourse.grading.batch`, one process per submission, so that a submission that
kills or hangs its grading costs only itself. It runs nbgrader's ``Autograde`` converter (what
``NbGraderAPI.autograde`` runs) and writes ``{"success", "log", "error"}`` as JSON to LOG_FILE.

    python -m dmcourse.grading.worker ROOT ASSIGNMENT STUDENT LOG_FILE [TIMEOUT]

With ``-`` as STUDENT the process imports what it needs, then reads the student's id from a line
of its standard input (the batch starts the next process while the current ones grade); it
exits without grading when its input ends empty.

Every submission pays this process's start-up, so it imports only what autograding needs
(:func:`lean_imports`; measured by ``benchmarks/autograde_throughput.py --breakdown``): never torch
nor the course's teaching modules.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import sys
import types
from pathlib import Path


def lean_imports() -> None:
    """Skip two imports that grading never uses and that cost about 1.3 s per process.

    * ``import nbgrader`` runs its package ``__init__``, which loads nbgrader's Jupyter server
      extensions (jupyter_server, the formgrader's handlers); a bare package module with the same
      ``__path__`` lets ``nbgrader.converters`` & co. import without it.
    * ``jsonschema`` (imported by ``nbformat``) imports ``rfc3987_syntax`` when installed, which
      builds a Lark grammar at import (~0.9 s), only to check the ``iri`` string format that
      nbformat's schema does not use; ``None`` in ``sys.modules`` makes that optional import fail
      and jsonschema goes on without it.

    Call it first thing in a fresh process, before anything imports ``nbgrader`` or ``nbformat``;
    it does nothing to modules already imported."""
    sys.modules.setdefault("rfc3987_syntax", None)  # type: ignore[arg-type]
    if "nbgrader" not in sys.modules:
        spec = importlib.util.find_spec("nbgrader")
        if spec is None or not spec.submodule_search_locations:
            raise ModuleNotFoundError("nbgrader is not installed: pip install 'dmcourse[grading]'")
        pkg = types.ModuleType("nbgrader", "nbgrader without its server extensions (dmcourse.grading.worker)")
        pkg.__path__ = list(spec.submodule_search_locations)
        pkg.__file__ = spec.origin
        sys.modules["nbgrader"] = pkg
        from nbgrader._version import __version__

        pkg.__version__ = __version__  # type: ignore[attr-defined]


def run(root: Path, assignment: str, student: str | None, timeout: int | None = None) -> dict | None:
    """Autograde ``submitted/<student>/<assignment>`` of the course at ``root``; return nbgrader's
    result dict (``success``; ``log`` and ``error`` as text), as ``NbGraderAPI.autograde`` does.
    ``student=None``: read it from standard input once imported; None if the input is empty."""
    from nbgrader.converters import Autograde
    from nbgrader.coursedir import CourseDirectory
    from nbgrader.utils import capture_log

    from dmcourse.grading import course
    from dmcourse.grading.safety import grading_config

    course.ensure_scripts_on_path()
    cfg = course.load_config(root)
    cfg.merge(grading_config(timeout))
    # Once the last cell has replied, every output is in the notebook: kill the kernel rather than
    # ask it to shut down (a kernel that imported torch takes seconds to exit; see the benchmark).
    cfg.Execute.shutdown_kernel = "immediate"
    if student is None:
        from sqlalchemy.orm import configure_mappers

        configure_mappers()  # the gradebook's ORM set-up, done while waiting rather than while grading
        student = sys.stdin.buffer.readline().decode().strip()
        if not student:
            return None
    cfg.CourseDirectory.assignment_id = assignment
    cfg.CourseDirectory.student_id = student
    log = logging.getLogger("dmcourse.grading.worker")
    log.setLevel(logging.INFO)  # as NbGraderAPI: the captured log holds nbgrader's info lines too
    app = Autograde(coursedir=CourseDirectory(config=cfg), config=cfg, log=log)
    app.force = True
    app.create_student = True
    return capture_log(app)


def main(argv: list[str]) -> int:
    if len(argv) not in (4, 5):
        print(__doc__, file=sys.stderr)
        return 2
    root, assignment, student, log = argv[:4]
    timeout = int(argv[4]) if len(argv) == 5 else None
    result = run(Path(root), assignment, None if student == "-" else student, timeout)
    if result is None:
        return 0
    Path(log).write_text(
        json.dumps(
            {"success": bool(result.get("success")), "log": result.get("log") or "", "error": result.get("error") or ""}
        )
    )
    return 0 if result.get("success") else 1


if __name__ == "__main__":
    lean_imports()
    sys.exit(main(sys.argv[1:]))
