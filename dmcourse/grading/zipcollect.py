"""nbgrader's own ``zip_collect``, reading LMS file names the way ``collect`` does.

nbgrader's extension point for LMS downloads is a ``FileNameCollectorPlugin``: ``nbgrader
zip_collect`` unpacks ``downloaded/<assignment>/archive/`` and asks the plugin, for each file,
which student and which notebook it is. :class:`LmsFileNames` answers with the rules of
:mod:`dmcourse.grading.names` (Canvas, Moodle, Blackboard, plain names), so an instructor who
prefers nbgrader's command gets the same student ids:

    nbgrader zip_collect ex00_warmup --collector=dmcourse.grading.zipcollect.LmsFileNames

``python -m dmcourse.grading collect`` does more (duplicates, invalid notebooks, hand edits,
LATE marks, a line for every file). Introduced in the appendix *For instructors*.
"""

from __future__ import annotations

import os

from nbgrader.plugins import FileNameCollectorPlugin

from dmcourse.grading import collect, names


class LmsFileNames(FileNameCollectorPlugin):
    """File-name plugin of ``ZipCollectApp``: (student id, notebook) of an LMS download file."""

    def collect(self, submitted_file: str) -> dict | None:
        """``{"student_id", "file_id"}`` for a notebook of this assignment, None to skip the file
        (nbgrader logs it). ``submitted_file``: absolute path under the extracted folder."""
        if not submitted_file.lower().endswith(".ipynb"):
            return None
        app = self.parent
        root, assignment = app.coursedir.root, app.coursedir.assignment_id
        extracted = app._format_collect_path(app.extracted_directory)
        rel = os.path.relpath(submitted_file, extracted).replace(os.sep, "/")
        try:
            parsed = names.parse(rel, collect.known_assignments(root))
        except names.UnparsableName as e:
            self.log.warning("skipped %s: %s", rel, e)
            return None
        if parsed.assignment != assignment:
            self.log.warning("skipped %s: a file of %s, not %s", rel, parsed.assignment, assignment)
            return None
        return {"student_id": parsed.student, "file_id": collect.notebook_name(root, assignment)}
