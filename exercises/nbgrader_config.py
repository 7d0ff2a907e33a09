"""nbgrader configuration of the ProgEmu-Lite course. Run every nbgrader command from this folder
(``cd exercises``): all paths are relative to it, so the folder can be copied anywhere.

See INSTRUCTORS.md for the commands and for the JupyterHub setup (exchange, formgrader).
"""

c = get_config()  # noqa: F821 (provided by traitlets when nbgrader loads this file)

# One id per course on a hub: the exchange keeps each course's files under this name.
c.CourseDirectory.course_id = "progemu-lite"
# The course root is the folder the commands run in (nbgrader's default): source/<assignment>/,
# release/, submitted/<student>/<assignment>/, autograded/, feedback/ and gradebook.db all live
# next to this file.
c.CourseDirectory.source_directory = "source"
c.CourseDirectory.release_directory = "release"
c.CourseDirectory.submitted_directory = "submitted"
c.CourseDirectory.autograded_directory = "autograded"
c.CourseDirectory.feedback_directory = "feedback"

# A notebook cell that runs longer than this (e.g. an endless loop) is interrupted, recorded as an
# error, and grading goes on with the next cell. Every solution runs in about a second.
c.Execute.timeout = 60
# A student who deletes a test cell does not escape it: autograding puts it back and runs it.
c.OverwriteCells.add_missing_cells = True
# Keep a runaway print loop from bloating autograded notebooks and feedback.
c.LimitOutput.max_lines = 200
c.LimitOutput.max_traceback = 50

c.ClearSolutions.code_stub = {"python": "# YOUR CODE HERE\nraise NotImplementedError()"}
c.ClearSolutions.text_stub = "YOUR ANSWER HERE"
