"""The nbgrader course in exercises/, graded by the real nbgrader.

One temporary copy of the course is released, filled with submissions and autograded once per
module (the ``course`` fixture, ~1 min); the tests then read the gradebook, the autograded
notebooks, the feedback and the exported CSV. Submissions per assignment: the instructor's
solution (``solution``), the unchanged release (``blank``) and one part solved (``partial``); on
``tokens_and_sequences`` also an endless loop (``looper``), edited and deleted test cells
(``tamperer``) and a first cell that raises (``crasher``).
"""

from __future__ import annotations

import csv
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from progemu_lite.evaluation.finding_scores import score_case
from progemu_lite.exercises import (
    AUDIT_LABELS,
    AUDIT_SEED,
    answer_key,
    audit_cases,
    audit_label,
    fill_solutions,
    grading_cases,
    grid_shape,
    metrics_case,
    perturbed_cases,
    sequence_case,
    solution_cells,
)

nbformat = pytest.importorskip("nbformat")
# nbgrader 0.9.6's gradebook trips SQLAlchemy's autoflush warnings on every autograde, and the
# test cells it puts back into a submission have no cell id.
pytestmark = [
    pytest.mark.filterwarnings("ignore:Object of type:Warning"),
    pytest.mark.filterwarnings("ignore:Cell is missing an id field:Warning"),
]

EXERCISES = Path(__file__).resolve().parents[1] / "exercises"
ASSIGNMENTS = (
    "tokens_and_sequences",
    "grading_interpretations",
    "text_metrics_vs_clinical",
    "auditing_counterfactuals",
)
# The one solution cell a "partial" student gets right, and the automatic points that earns.
PARTIAL = {
    "tokens_and_sequences": ("q1-solution", 2),
    "grading_interpretations": ("q2-solution", 2),
    "text_metrics_vs_clinical": ("q1-solution", 2),
    "auditing_counterfactuals": ("q1-solution", 4),
}
ROBUST = "tokens_and_sequences"  # the assignment the robustness submissions are made for
LOOP_TIMEOUT_S = 8  # the tests' cell timeout (the course uses 60 s)


def source_notebook(assignment: str):
    return nbformat.read(EXERCISES / "source" / assignment / f"{assignment}.ipynb", as_version=4)


def points(assignment: str) -> tuple[float, float]:
    """(automatic, manual) points of an assignment, from its cell metadata."""
    auto = manual = 0.0
    for cell in source_notebook(assignment).cells:
        meta = cell.metadata.get("nbgrader", {})
        if meta.get("grade"):
            if meta.get("solution"):
                manual += meta["points"]
            else:
                auto += meta["points"]
    return auto, manual


# -- library helpers (fast) ----------------------------------------------------------------------
def test_perturbed_cases_are_fixed_balanced_and_read_as_keyed():
    cases = perturbed_cases(12, AUDIT_SEED)
    assert sorted(answer_key(cases).values()) == sorted(AUDIT_LABELS * 3)
    # Same seed, same cases: grades are stable.
    assert [c.generated for c in perturbed_cases(12, AUDIT_SEED)] == [c.generated for c in cases]
    for case in cases + grading_cases():
        assert audit_label(case.generated, case.annotation) == case.label, case
        assert "label" not in case.for_student()
    consistent = [c for c in cases if c.label == "consistent"]
    assert any(c.generated != c.reference for c in consistent), "consistent texts are reworded"


@pytest.mark.parametrize("seed", range(5))
def test_perturbations_hold_for_other_seeds(seed):
    for case in perturbed_cases(12, 100 + seed):
        assert audit_label(case.generated, case.annotation) == case.label, case


def test_hidden_audit_tests_grade_against_the_shipped_key():
    # The key is the shipped data (tests/test_exercises_audit.py checks it against the grader),
    # so regenerating the cases never leaves a stale key in the notebook.
    cells = {
        c.metadata["nbgrader"]["grade_id"]: c.source
        for c in source_notebook("auditing_counterfactuals").cells
    }
    for grade_id in ("q1-tests", "q2-tests"):
        hidden = "\n".join(
            _between(cells[grade_id], "### BEGIN HIDDEN TESTS", "### END HIDDEN TESTS")
        )
        assert "_answer_key(_audit_cases())" in hidden, grade_id
    assert not re.search(r'"audit\d\d": "\w+"', cells["q1-tests"]), "no literal key to go stale"
    assert len(audit_cases()) == 12


def test_sequence_case_and_grid_shape():
    case = sequence_case()
    assert case["prior_codes"].shape == case["followup_codes"].shape == (4, 4)
    assert case["prior_codes"].max() < 32768 and case["prompt"] and case["interpretation"]
    assert (sequence_case()["prior_codes"] == case["prior_codes"]).all()
    assert sequence_case(seed=3, image_size=48)["prior_codes"].shape == (6, 6)
    assert grid_shape(512, 256) == (64, 32)
    with pytest.raises(ValueError, match="multiple of the VQ spatial factor 8"):
        grid_shape(100, 64)
    with pytest.raises(ValueError, match="height"):
        grid_shape(0, 64)


def test_metrics_case_annotation_matches_reference():
    case = metrics_case()
    result = score_case(case["reference"], case["annotation"])
    assert result.fp == result.fn == 0 and result.tp == len(case["annotation"])


def test_fill_solutions_only_fills_named_cells():
    source = source_notebook("tokens_and_sequences")
    release = nbformat.v4.new_notebook(cells=[c.copy() for c in source.cells])
    for cell in solution_cells(release).values():
        cell.source = "# YOUR CODE HERE"
    filled = solution_cells(fill_solutions(release, source, only={"q1-solution"}))
    assert "BEGIN SOLUTION" not in filled["q1-solution"].source
    assert "return h * w + h + 4" in filled["q1-solution"].source
    assert filled["q2-solution"].source == "# YOUR CODE HERE"
    with pytest.raises(ValueError, match="no solution cells"):
        fill_solutions(release, source, only={"nope"})


# -- the course, graded by nbgrader (slow) -------------------------------------------------------
@dataclass
class Course:
    root: Path
    api: object
    results: dict  # (assignment, student) -> nbgrader API result dict

    def release(self, assignment: str):
        return nbformat.read(
            self.root / "release" / assignment / f"{assignment}.ipynb", as_version=4
        )

    def autograded(self, assignment: str, student: str):
        path = self.root / "autograded" / student / assignment / f"{assignment}.ipynb"
        return nbformat.read(path, as_version=4)

    def feedback(self, assignment: str, student: str) -> Path:
        return self.root / "feedback" / student / assignment / f"{assignment}.html"

    def submission_path(self, assignment: str, student: str) -> Path:
        return self.root / "submitted" / student / assignment / f"{assignment}.ipynb"

    def gradebook(self):
        from nbgrader.api import Gradebook

        return Gradebook(self.api.coursedir.db_url, self.api.coursedir.course_id)

    def auto_scores(self, assignment: str, student: str) -> dict[str, float | None]:
        with self.gradebook() as gb:
            notebook = gb.find_submission_notebook(assignment, assignment, student)
            return {grade.name: grade.auto_score for grade in notebook.grades}


def _write(notebook, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(notebook, path)


def _cell(notebook, grade_id: str):
    return next(
        c for c in notebook.cells if c.metadata.get("nbgrader", {}).get("grade_id") == grade_id
    )


def _make_submissions(course: Course) -> list[tuple[str, str]]:
    jobs = []
    for assignment in ASSIGNMENTS:
        source, release = source_notebook(assignment), course.release(assignment)
        partial_cell, _ = PARTIAL[assignment]
        notebooks = {
            "solution": fill_solutions(release, source),
            "blank": release,
            "partial": fill_solutions(release, source, only={partial_cell}),
        }
        if assignment == ROBUST:
            looper = fill_solutions(release, source)
            _cell(looper, "q1-solution").source = "while True:\n    pass"
            tamperer = fill_solutions(release, source, only={"q2-solution"})
            _cell(tamperer, "q1-tests").source = "assert True  # tests are for other people"
            tamperer.cells.remove(_cell(tamperer, "q3-tests"))
            crasher = fill_solutions(release, source)
            crasher.cells.insert(0, nbformat.v4.new_code_cell("raise RuntimeError('oops')"))
            notebooks |= {"looper": looper, "tamperer": tamperer, "crasher": crasher}
        for student, notebook in notebooks.items():
            _write(notebook, course.submission_path(assignment, student))
            jobs.append((assignment, student))
    return jobs


def _api(root: Path):
    from nbgrader.apps.api import NbGraderAPI
    from traitlets.config.loader import PyFileConfigLoader

    config = PyFileConfigLoader("nbgrader_config.py", path=str(root)).load_config()
    config.CourseDirectory.root = str(root)
    config.Execute.timeout = LOOP_TIMEOUT_S
    config.Exchange.root = str(root / "exchange")  # never the hub's /srv/nbgrader/exchange
    return NbGraderAPI(config=config)


@pytest.fixture(scope="module")
def course(tmp_path_factory):
    root = tmp_path_factory.mktemp("course")
    shutil.copy(EXERCISES / "nbgrader_config.py", root)
    shutil.copytree(EXERCISES / "source", root / "source")
    with pytest.MonkeyPatch.context() as mp:
        # nbgrader runs `alembic` (installed next to this Python) when it creates the gradebook.
        mp.setenv("PATH", str(Path(sys.executable).parent) + os.pathsep + os.environ["PATH"])
        mp.chdir(root)
        api = _api(root)
        course = Course(root, api, {})
        for assignment in ASSIGNMENTS:
            result = api.generate_assignment(assignment)
            assert result["success"], result.get("error") or result["log"]
        for assignment, student in _make_submissions(course):
            course.results[(assignment, student)] = api.autograde(assignment, student)
        for assignment in ASSIGNMENTS:
            result = api.generate_feedback(assignment)
            assert result["success"], result.get("error") or result["log"]
        # The instructor grades the written answers of the solution students by hand (what the
        # formgrader stores), then exports with the real command line.
        with course.gradebook() as gb:
            for assignment in ASSIGNMENTS:
                for grade in gb.find_submission_notebook(assignment, assignment, "solution").grades:
                    if grade.auto_score is None:
                        grade.manual_score = grade.max_score
            gb.db.commit()
        subprocess.run(
            [str(Path(sys.executable).parent / "nbgrader"), "export"],
            cwd=root,
            check=True,
            capture_output=True,
            timeout=120,
        )
        yield course


def _between(text: str, begin: str, end: str) -> list[str]:
    """The stripped lines of ``text`` between ``begin`` and ``end`` markers, bar bare brackets."""
    lines, inside = [], False
    for line in text.splitlines():
        if line.strip() in (begin, end):
            inside = line.strip() == begin
        elif inside and len(line.strip()) > 3:
            lines.append(line.strip())
    return lines


@pytest.mark.slow
@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_release_has_no_solution_and_no_hidden_test(course, assignment):
    release = course.release(assignment)
    text = "\n".join(cell.source for cell in release.cells)
    for marker in ("BEGIN SOLUTION", "END SOLUTION", "BEGIN HIDDEN TESTS", "END HIDDEN TESTS"):
        assert marker not in text
    source = source_notebook(assignment)
    released_lines = {line.strip() for line in text.splitlines()}
    for grade_id, cell in solution_cells(source).items():
        released = _cell(release, grade_id).source
        if cell.cell_type == "markdown":
            assert released == "YOUR ANSWER HERE"
            continue
        assert "raise NotImplementedError()" in released
        leaked = (
            set(_between(cell.source, "### BEGIN SOLUTION", "### END SOLUTION")) & released_lines
        )
        assert not leaked, f"{grade_id}: solution lines in the release: {leaked}"
    hidden_tests = 0
    for cell in source.cells:
        hidden = _between(cell.source, "### BEGIN HIDDEN TESTS", "### END HIDDEN TESTS")
        if hidden:
            hidden_tests += 1
            released = {
                line.strip()
                for line in _cell(release, cell.metadata.nbgrader.grade_id).source.splitlines()
            }
            assert not set(hidden) & released, cell.metadata.nbgrader.grade_id
    assert hidden_tests >= 2


@pytest.mark.slow
@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_solution_full_blank_zero_partial_expected(course, assignment):
    auto_total, manual_total = points(assignment)
    assert auto_total >= 6 and manual_total >= 2  # autograded parts and a written answer
    for student in ("solution", "blank", "partial"):
        result = course.results[(assignment, student)]
        assert result["success"], result.get("error") or result["log"]
    solution = course.auto_scores(assignment, "solution")
    blank = course.auto_scores(assignment, "blank")
    partial = course.auto_scores(assignment, "partial")
    assert sum(v for v in solution.values() if v is not None) == auto_total
    assert sum(v for v in blank.values() if v is not None) == 0
    assert sum(v for v in partial.values() if v is not None) == PARTIAL[assignment][1]
    written = [
        g
        for g, cell in solution_cells(source_notebook(assignment)).items()
        if cell.cell_type == "markdown"
    ]
    # A written answer is left to the instructor; nbgrader gives an untouched one 0 by itself.
    assert all(solution[g] is None and blank[g] == 0 for g in written)
    with course.gradebook() as gb:
        assert gb.find_submission(assignment, "solution").score == auto_total + manual_total


@pytest.mark.slow
@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_feedback_html_for_every_submission(course, assignment):
    auto_total, manual_total = points(assignment)
    total = auto_total + manual_total
    # Feedback is written before the written answers are graded by hand.
    expected = {"solution": auto_total, "blank": 0, "partial": PARTIAL[assignment][1]}
    for student, score in expected.items():
        html = course.feedback(assignment, student).read_text(encoding="utf-8")
        assert f"{assignment} (Score: {score:.1f} / {total:.1f})" in html, student
    html = course.feedback(assignment, "blank").read_text(encoding="utf-8")
    assert "NotImplementedError" in html


@pytest.mark.slow
def test_export_writes_grades_csv(course):
    with open(course.root / "grades.csv", newline="", encoding="utf-8") as f:
        rows = {(r["assignment"], r["student_id"]): r for r in csv.DictReader(f)}
    for assignment in ASSIGNMENTS:
        auto_total, manual_total = points(assignment)
        full = rows[(assignment, "solution")]
        assert float(full["score"]) == float(full["max_score"]) == auto_total + manual_total
        assert float(rows[(assignment, "blank")]["score"]) == 0
        assert float(rows[(assignment, "partial")]["score"]) == PARTIAL[assignment][1]


@pytest.mark.slow
def test_endless_loop_is_stopped_and_the_rest_graded(course):
    result = course.results[(ROBUST, "looper")]
    assert result["success"], result.get("error") or result["log"]
    scores = course.auto_scores(ROBUST, "looper")
    auto_total, _ = points(ROBUST)
    assert scores["q1-tests"] == 0
    assert sum(v for v in scores.values() if v is not None) == auto_total - 2
    looped = _cell(course.autograded(ROBUST, "looper"), "q1-solution")
    assert any(o.output_type == "error" for o in looped.outputs)
    assert course.feedback(ROBUST, "looper").is_file()


@pytest.mark.slow
def test_edited_or_deleted_test_cells_are_caught(course):
    from nbgrader.validator import Validator

    result = course.results[(ROBUST, "tamperer")]
    assert result["success"], result.get("error") or result["log"]
    scores = course.auto_scores(ROBUST, "tamperer")
    # The edited test is replaced by the original and fails; the deleted one is put back and
    # fails; only the honestly solved part scores.
    assert scores["q1-tests"] == 0 and scores["q3-tests"] == 0 and scores["q2-tests"] == 2
    graded = course.autograded(ROBUST, "tamperer")
    assert _cell(graded, "q1-tests").source == _cell(source_notebook(ROBUST), "q1-tests").source
    assert "was missing from the submission" in _cell(graded, "q3-tests").source
    # The validator (the gate students can run) reports the edit, where `nbgrader validate`
    # would exit 0 anyway.
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(course.root)
        report = Validator(config=course.api.config).validate(
            str(course.submission_path(ROBUST, "tamperer"))
        )
    assert report.get("changed"), report


@pytest.mark.slow
def test_validator_passes_the_solution_and_fails_the_release(course):
    from nbgrader.validator import Validator

    validator = Validator(config=course.api.config)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(course.root)
        good = validator.validate(str(course.submission_path(ROBUST, "solution")))
        bad = validator.validate(str(course.submission_path(ROBUST, "blank")))
    assert not good.get("failed") and not good.get("changed"), good
    assert len(bad["failed"]) == 5  # four test cells and the unanswered written answer


@pytest.mark.slow
def test_submission_raising_in_first_cell_still_gets_feedback(course):
    result = course.results[(ROBUST, "crasher")]
    assert result["success"], result.get("error") or result["log"]
    scores = course.auto_scores(ROBUST, "crasher")
    assert sum(v for v in scores.values() if v is not None) == points(ROBUST)[0]
    html = course.feedback(ROBUST, "crasher").read_text(encoding="utf-8")
    assert "RuntimeError" in html and "oops" in html
