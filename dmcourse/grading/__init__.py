"""Tools for instructors: what nbgrader lacks for this course (see the instructors' appendix)."""
