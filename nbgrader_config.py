"""nbgrader configuration for the course (https://nbgrader.readthedocs.io).

Layout: solutions/<assignment>/  (instructor source, with solutions and hidden tests)
        exercises/<assignment>/  (student release, generated: never edit by hand)
Regenerate a release with:  nbgrader generate_assignment <assignment> --force
"""

from dmcourse.grading.safety import configure

c = get_config()  # noqa: F821 - provided by nbgrader

c.CourseDirectory.course_id = "dmcourse"
c.CourseDirectory.source_directory = "solutions"
c.CourseDirectory.release_directory = "exercises"
c.CourseDirectory.submitted_directory = "submitted"
c.CourseDirectory.autograded_directory = "autograded"
c.CourseDirectory.feedback_directory = "feedback"
c.CourseDirectory.db_url = "sqlite:///gradebook.db"
# The jupytext twins of the sources (tools/notebooks.py) hold the solutions: never release them.
c.CourseDirectory.ignore = [".ipynb_checkpoints", "*.pyc", "__pycache__", "feedback", "*.pct.py"]

# A cell that runs longer than this is stopped and the rest of the notebook graded without it.
c.Execute.timeout = 60
c.Execute.interrupt_on_timeout = True

c.ClearSolutions.code_stub = {"python": "# YOUR CODE HERE\nraise NotImplementedError()"}
c.ClearSolutions.text_stub = "YOUR ANSWER HERE"

# Released notebooks carry no outputs.
c.ClearOutput.enabled = True

# Bounded outputs and no hidden-test code in feedback, also for plain `nbgrader` commands.
configure(c)
