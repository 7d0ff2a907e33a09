"""Case data for the graded exercises (``exercises/``): small, deterministic, fast to build.

Every function here takes a fixed seed, so a student's notebook, the instructor's solution and the
autograder all see the same cases and grades are stable. Nothing imports torch: a notebook that
calls these runs in well under a second, which keeps autograding a class quick.

"Generated" interpretations
---------------------------
The trained ProgEmu model is not part of the exercises yet, so the interpretations to audit are
*simulated model outputs*: the expert annotation of a simulated pair (from
:mod:`progemu_lite.phantom.progression`) rewritten in fresh words, with one documented
perturbation (:data:`AUDIT_LABELS`):

* ``consistent``: every annotated finding, same direction and severity (only the wording differs);
* ``hallucinated``: one new finding that the annotation does not have is added;
* ``omitted``: the sentence of one changed finding is left out;
* ``wrong_severity``: one new/worse/better finding is described at another severity of the same
  direction (``now large`` instead of ``now moderate``).

Pertinent negatives are drawn only from findings absent from both the annotation and any added
finding, so a text never contradicts itself. A later version of the exercises uses the model's
own outputs in place of these.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from progemu_lite.phantom.findings import FINDINGS, MAX_SEVERITY, finding_spec
from progemu_lite.phantom.progression import (
    AnnotationEntry,
    apply_progression,
    sample_prior_state,
    sample_progression,
)
from progemu_lite.phantom.text import (
    NEGATIVES,
    interpretation_sentences,
    interpretation_text,
    prompt_text,
)

AUDIT_LABELS: tuple[str, ...] = ("consistent", "hallucinated", "omitted", "wrong_severity")
# The seeds the course uses; changing one changes every student's cases and the grades.
SEQUENCE_SEED = 2025
GRADING_SEED = 7
AUDIT_SEED = 11
AUDIT_CASES = 12
# The Emu3 VQ: one visual token per 8x8 pixels, 32768 codes.
SPATIAL_FACTOR = 8
CODEBOOK_SIZE = 32768
# Attempts per case before giving up on a perturbation that does not apply to a sampled pair.
_MAX_ATTEMPTS = 50


@dataclass(frozen=True)
class SimulatedCase:
    """A simulated prior/follow-up pair reduced to its texts and expert annotation."""

    prompt: str
    interpretation: str
    annotation: list[AnnotationEntry]


@dataclass(frozen=True)
class PerturbedCase:
    """One case to grade: a simulated "generated" interpretation and its expert annotation.

    ``label`` is the answer key (one of :data:`AUDIT_LABELS`); ``change`` says what was done to
    the text, for the instructor.
    """

    case_id: str
    prompt: str
    reference: str
    generated: str
    annotation: list[dict] = field(repr=False)
    label: str
    change: str

    def for_student(self) -> dict:
        """What a student sees: everything but the answer key (``label``, ``change``)."""
        return {
            "case_id": self.case_id,
            "prompt": self.prompt,
            "reference": self.reference,
            "generated": self.generated,
            "annotation": [dict(entry) for entry in self.annotation],
        }


def simulated_case(rng: np.random.Generator) -> SimulatedCase:
    """A simulated pair's prompt, expert interpretation and annotation (no images)."""
    prior = sample_prior_state(rng)
    progression = sample_progression(prior, rng)
    _, annotation = apply_progression(prior, progression, rng)
    prompt = prompt_text(progression, prior, rng)
    return SimulatedCase(prompt, interpretation_text(annotation, rng), annotation)


def grid_shape(height: int, width: int, spatial_factor: int = SPATIAL_FACTOR) -> tuple[int, int]:
    """The (rows, columns) of VQ codes of an image; both sides must be multiples of the factor."""
    for name, side in (("height", height), ("width", width)):
        if isinstance(side, bool) or not isinstance(side, int) or side < spatial_factor:
            raise ValueError(f"image {name} must be an integer >= {spatial_factor}, got {side!r}")
        if side % spatial_factor:
            raise ValueError(
                f"image {name} {side} is not a multiple of the VQ spatial factor {spatial_factor}"
            )
    return height // spatial_factor, width // spatial_factor


def sequence_case(seed: int = SEQUENCE_SEED, image_size: int = 32) -> dict:
    """A case for the sequence exercise: random VQ code grids for a prior and a follow-up image
    of ``image_size`` pixels, and the prompt and interpretation of a simulated pair.

    Returns ``{"prior_codes", "followup_codes", "prompt", "interpretation", "image_size"}``; the
    code grids are ``(image_size // 8, image_size // 8)`` int64 arrays with values below 32768.
    """
    h, w = grid_shape(image_size, image_size)
    rng = np.random.default_rng(seed)
    case = simulated_case(rng)
    return {
        "prior_codes": rng.integers(0, CODEBOOK_SIZE, size=(h, w), dtype=np.int64),
        "followup_codes": rng.integers(0, CODEBOOK_SIZE, size=(h, w), dtype=np.int64),
        "prompt": case.prompt,
        "interpretation": case.interpretation,
        "image_size": image_size,
    }


# -- perturbations -----------------------------------------------------------------------------
def _other_severities(entry: AnnotationEntry) -> list[int]:
    """Target severities with the same direction as ``entry`` but a different value."""
    before, after = entry.severity_before_int, entry.severity_after_int
    if entry.direction == "new":
        options = range(1, MAX_SEVERITY + 1)
    elif entry.direction == "worse":
        options = range(before + 1, MAX_SEVERITY + 1)
    elif entry.direction == "better":
        options = range(1, before)
    else:  # resolved (always absent) and stable (any change would change the direction)
        options = ()
    return [s for s in options if s != after]


def _with_severity(entry: AnnotationEntry, severity: int) -> AnnotationEntry:
    spec = finding_spec(entry.finding)
    return AnnotationEntry(
        entry.finding,
        entry.location,
        entry.direction,
        entry.severity_before,
        spec.severity_word(severity),
    )


def _pick(items: list, rng: np.random.Generator):
    return items[int(rng.integers(len(items)))]


def _hallucination(annotation: list[AnnotationEntry], rng) -> AnnotationEntry | None:
    present = {e.finding for e in annotation}
    candidates = [name for name in FINDINGS if name not in present]
    if not candidates:
        return None
    name = _pick(candidates, rng)
    spec = FINDINGS[name]
    severity = 1 + int(rng.integers(MAX_SEVERITY))
    return AnnotationEntry(
        name, _pick(list(spec.locations), rng), "new", "absent", spec.severity_word(severity)
    )


def perturb(
    annotation: list[AnnotationEntry], label: str, rng: np.random.Generator
) -> tuple[str, str] | None:
    """A "generated" interpretation of ``annotation`` with the perturbation ``label``, and a
    description of the change; None when the perturbation cannot apply (e.g. no finding with
    another severity of the same direction)."""
    if label not in AUDIT_LABELS:
        raise ValueError(f"unknown perturbation {label!r}; use one of {', '.join(AUDIT_LABELS)}")
    entries = list(annotation)
    mentioned = {e.finding for e in annotation}
    changed = [k for k, e in enumerate(entries) if e.changed]
    if label == "consistent":
        change = "none (reworded)"
    elif label == "omitted":
        if not changed:
            return None
        dropped = entries.pop(_pick(changed, rng))
        change = f"omitted: {dropped.direction} {_describe(dropped)}"
    elif label == "wrong_severity":
        options = [k for k in changed if _other_severities(entries[k])]
        if not options:
            return None
        k = _pick(options, rng)
        true_entry = entries[k]
        entries[k] = _with_severity(true_entry, _pick(_other_severities(true_entry), rng))
        change = (
            f"severity: {_describe(true_entry)} said {entries[k].severity_after}, "
            f"annotated {true_entry.severity_after}"
        )
    else:  # hallucinated
        extra = _hallucination(annotation, rng)
        if extra is None:
            return None
        entries.insert(len(changed), extra)  # after the true changes, before stable findings
        mentioned.add(extra.finding)
        change = f"hallucinated: new {extra.severity_after} {_describe(extra)}"
    sentences = interpretation_sentences(entries, rng, max_negatives=0)
    # One pertinent negative, never about a finding the text or the annotation mentions.
    absent = [name for name in NEGATIVES if name not in mentioned]
    if absent:
        sentences.append(_pick(list(NEGATIVES[absent[0]]), rng))
    return " ".join(sentences), change


def _describe(entry: AnnotationEntry) -> str:
    where = "" if entry.location is None else f"{entry.location.replace('_', ' ')} "
    return f"{where}{FINDINGS[entry.finding].text}"


def perturbed_cases(n: int, seed: int, prefix: str = "case") -> list[PerturbedCase]:
    """``n`` cases, the labels of :data:`AUDIT_LABELS` in turn (shuffled with ``seed``).

    Case ``i`` draws its simulated pair from ``SeedSequence(seed, spawn_key=(i, attempt))``,
    taking the first attempt the perturbation applies to, so the cases never depend on ``n``
    beyond the label order.
    """
    if n < 1:
        raise ValueError(f"need at least one case, got n={n}")
    order_rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(2**31,)))
    labels = [AUDIT_LABELS[i % len(AUDIT_LABELS)] for i in range(n)]
    labels = [labels[i] for i in order_rng.permutation(n)]
    cases = []
    for i, label in enumerate(labels):
        for attempt in range(_MAX_ATTEMPTS):
            rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(i, attempt)))
            case = simulated_case(rng)
            result = perturb(case.annotation, label, rng)
            if result is not None:
                break
        else:  # pragma: no cover - every label applies to most sampled pairs
            raise RuntimeError(f"no simulated pair for a {label} case in {_MAX_ATTEMPTS} tries")
        generated, change = result
        cases.append(
            PerturbedCase(
                case_id=f"{prefix}{i + 1:02d}",
                prompt=case.prompt,
                reference=case.interpretation,
                generated=generated,
                annotation=[e.to_dict() for e in case.annotation],
                label=label,
                change=change,
            )
        )
    return cases


def grading_cases(n: int = 8, seed: int = GRADING_SEED) -> list[PerturbedCase]:
    """The cases of the ``grading_interpretations`` assignment."""
    return perturbed_cases(n, seed, prefix="grade")


def audit_cases(n: int = AUDIT_CASES, seed: int = AUDIT_SEED) -> list[PerturbedCase]:
    """The 12 cases of the ``auditing_counterfactuals`` assignment (3 of each label)."""
    return perturbed_cases(n, seed, prefix="audit")


def answer_key(cases: list[PerturbedCase]) -> dict[str, str]:
    """``{case_id: label}``: what the hidden tests of an assignment compare with."""
    return {case.case_id: case.label for case in cases}


def metrics_case(seed: int = SEQUENCE_SEED) -> dict:
    """One reference interpretation with its annotation, for the text-metrics assignment."""
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(3,)))
    case = simulated_case(rng)
    return {
        "reference": case.interpretation,
        "annotation": [e.to_dict() for e in case.annotation],
    }


# -- instructor tooling: submissions for testing an assignment -----------------------------------
_SOLUTION_MARKERS = ("### BEGIN SOLUTION", "### END SOLUTION")


def instructor_solution(source_cell) -> str:
    """The text a perfect student would write in a solution cell: the instructor's source cell
    without nbgrader's solution markers (a written answer is used as it is)."""
    if source_cell["cell_type"] != "code":
        return source_cell["source"]
    lines = source_cell["source"].splitlines()
    return "\n".join(line for line in lines if line.strip() not in _SOLUTION_MARKERS)


def solution_cells(notebook) -> dict[str, dict]:
    """The solution cells of a notebook by grade id."""
    return {
        cell["metadata"]["nbgrader"]["grade_id"]: cell
        for cell in notebook["cells"]
        if cell.get("metadata", {}).get("nbgrader", {}).get("solution")
    }


def fill_solutions(release_notebook, source_notebook, only: set[str] | None = None):
    """A copy of a released notebook with the instructor's solutions pasted into its solution
    cells: all of them, or those whose grade id is in ``only``. This is what a perfect (or partly
    right) student submits; tests and the autograding benchmark grade such submissions."""
    import copy

    submission = copy.deepcopy(release_notebook)
    sources = solution_cells(source_notebook)
    wanted = set(sources) if only is None else set(only)
    unknown = wanted - set(sources)
    if unknown:
        raise ValueError(f"no solution cells {sorted(unknown)}; known: {sorted(sources)}")
    for grade_id, cell in solution_cells(submission).items():
        if grade_id in wanted:
            cell["source"] = instructor_solution(sources[grade_id])
    return submission
