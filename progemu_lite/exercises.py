"""Case data for the graded exercises (``exercises/``): small, deterministic, fast to load.

Every case comes from a fixed seed or from data shipped with the package, so a student's
notebook, the instructor's solution and the autograder all see the same cases and grades are
stable. Nothing imported at the top is heavy: a notebook that uses these runs in about a second,
which keeps autograding a class quick; only :func:`regenerate_audit` (an instructor's tool)
loads torch and a model.

Two kinds of interpretations to grade
-------------------------------------
``grading_interpretations`` (assignment 2) grades *simulated model outputs*
(:func:`grading_cases`): the expert annotation of a simulated pair (from
:mod:`progemu_lite.phantom.progression`) rewritten in fresh words, with one documented
perturbation (:data:`AUDIT_LABELS`):

* ``consistent``: every annotated finding, same direction and severity (only the wording differs);
* ``hallucinated``: one new finding that the annotation does not have is added;
* ``omitted``: the sentence of one changed finding is left out;
* ``wrong_severity``: one new/worse/better finding is described at another severity of the same
  direction (``now large`` instead of ``now moderate``).

Pertinent negatives are drawn only from findings absent from both the annotation and any added
finding, so a text never contradicts itself.

``auditing_counterfactuals`` (assignment 4) audits the shipped lite model's *own* generations
(:func:`audit_cases`), labelled by :func:`audit_label` (see there for the rule and its
precedence). They are generated once, by :func:`regenerate_audit`
(``python -m progemu_lite.exercises regenerate-audit``), and shipped as data in
``progemu_lite/exercise_data/auditing_counterfactuals/`` (texts, annotation, key, the prior and
the generated image as PNGs, seeds, sampling settings, the weights' sha256), so grades never
depend on a student's CPU reproducing the same tokens.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from progemu_lite.files import staged_folder
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
        return _student_fields(self)


def _student_fields(case) -> dict:
    """The fields of a grading or audit case that students may see (never the key)."""
    return {
        "case_id": case.case_id,
        "prompt": case.prompt,
        "reference": case.reference,
        "generated": case.generated,
        "annotation": [dict(entry) for entry in case.annotation],
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


def answer_key(cases) -> dict[str, str]:
    """``{case_id: label}`` of graded cases (:class:`PerturbedCase` or :class:`AuditCase`)."""
    return {case.case_id: case.label for case in cases}


def metrics_case(seed: int = SEQUENCE_SEED) -> dict:
    """One reference interpretation with its annotation, for the text-metrics assignment."""
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(3,)))
    case = simulated_case(rng)
    return {
        "reference": case.interpretation,
        "annotation": [e.to_dict() for e in case.annotation],
    }


# -- assignment 4: auditing the lite model's own counterfactuals ---------------------------------
# Where the shipped cases live, and the format of their index file.
AUDIT_DATA = Path(__file__).resolve().parent / "exercise_data" / "auditing_counterfactuals"
AUDIT_INDEX = "cases.json"
AUDIT_FORMAT = "progemu-lite-audit/1"
# The simulated dataset the lite model is trained on (`make train-lite`); its test split is held
# out from training, so the audited pairs are new to the model.
AUDIT_DATASET = {"patients": 2000, "pairs_per_patient": 3, "size": 128, "seed": 0}
# At most this many generated pairs to choose the 12 cases from, and how often each label should
# appear among the cases when the model produces it.
AUDIT_POOL = 192
AUDIT_MIN_PER_LABEL = 2
# When several errors apply, the label is the first of these that does (else "consistent").
AUDIT_PRECEDENCE: tuple[str, ...] = ("hallucinated", "omitted", "wrong_severity")
AUDIT_COMMAND = "python -m progemu_lite.exercises regenerate-audit"
# The interpretation is written greedily unless asked otherwise: the model card measures the
# model's text that way, so the audited texts are the ones its numbers describe.
AUDIT_TEXT_TEMPERATURE = 0.0
# The generation settings regenerate-audit's command line takes (as --temperature, --top-k, ...).
AUDIT_CLI_SAMPLING = ("temperature", "text_temperature", "top_k", "max_text_tokens")
# The generation settings a case records: the keyword arguments of ProgEmuPipeline.__call__.
SAMPLING_KEYS = (
    "temperature",
    "text_temperature",
    "top_k",
    "top_p",
    "guidance_scale",
    "text_guidance_scale",
    "seed",
    "max_text_tokens",
    "unconditional",
)


@dataclass(frozen=True)
class AuditVerdict:
    """How a generated interpretation compares with its expert annotation.

    ``issues`` maps each error kind of :data:`AUDIT_PRECEDENCE` that applies to short
    descriptions of the claims or annotation entries concerned; ``label`` is the first kind
    that applies, in the order of :data:`AUDIT_PRECEDENCE`, else ``consistent``.
    """

    label: str
    issues: dict[str, list[str]]

    @property
    def reason(self) -> str:
        if not self.issues:
            return "every annotated change stated, nothing else claimed, severities agree"
        return "; ".join(f"{kind}: {', '.join(items)}" for kind, items in self.issues.items())


def _said(finding: str, location: str | None, direction: str | None, severity: str | None) -> str:
    where = "" if location is None else f"{location.replace('_', ' ')} "
    how = direction or "stated without comparison"
    now = f" ({severity})" if severity else ""
    return f"{how} {where}{FINDINGS[finding].text}{now}"


def audit_verdict(generated: str | None, annotation) -> AuditVerdict:
    """Label ``generated`` against ``annotation`` with the project's grader
    (:func:`progemu_lite.evaluation.finding_scores.score_case`, strict matching):

    * ``hallucinated``: a claim that matches no annotation entry;
    * ``omitted``: an annotation entry (a change, or a stable finding) no claim matches;
    * ``wrong_severity``: a matched pair where both give a severity after the change (the
      annotated one not ``absent``) and they differ;
    * ``consistent``: none of these.

    Precedence when several apply: hallucinated, then omitted, then wrong severity (a claim with
    no support is the error most likely to mislead a reader; a missing change next; a wrong
    severity is at least about the right finding). Every kind that applies is in ``issues``.
    """
    from progemu_lite.evaluation.finding_scores import score_case

    result = score_case(generated, annotation)
    if result.status != "scored":
        raise ValueError(f"annotation cannot be scored: {result.reason}")
    found = {
        "hallucinated": [
            _said(c.finding, c.location, c.direction, c.severity_after) for c in result.hallucinated
        ],
        "omitted": [
            _said(a.finding, a.location, a.direction, a.severity_after) for a in result.omitted
        ],
        "wrong_severity": [
            f"{_said(a.finding, a.location, a.direction, None)}: said {c.severity_after}, "
            f"annotated {a.severity_after}"
            for a, c in result.matched
            if a.severity_after not in (None, "absent")
            and c.severity_after
            and c.severity_after != a.severity_after
        ],
    }
    issues = {kind: found[kind] for kind in AUDIT_PRECEDENCE if found[kind]}
    label = next(iter(issues), "consistent")
    return AuditVerdict(label, issues)


def audit_label(generated: str | None, annotation) -> str:
    """The label of :func:`audit_verdict`: one of :data:`AUDIT_LABELS`."""
    return audit_verdict(generated, annotation).label


@dataclass(frozen=True)
class AuditCase:
    """One shipped case of ``auditing_counterfactuals``: a counterfactual the lite model
    generated for a held-out simulated pair, with its expert annotation and answer key.

    ``label``/``reason`` are the key (not for students); ``sampling`` (``seed`` included)
    reproduces the generation with ``pipeline(prior, prompt, **sampling)`` from the shipped prior
    PNG, on the same weights and the same kind of machine.
    """

    case_id: str
    pair_id: str
    prompt: str
    reference: str
    generated: str
    annotation: list[dict] = field(repr=False)
    label: str
    reason: str
    seed: int
    sampling: dict = field(repr=False)
    truncated: bool
    prior_path: Path = field(repr=False)
    counterfactual_path: Path = field(repr=False)

    def for_student(self) -> dict:
        """What a student sees: everything but the answer key (``label``, ``reason``)."""
        return _student_fields(self)

    def images(self) -> tuple[np.ndarray, np.ndarray]:
        """``(prior, counterfactual)`` as uint8 grayscale arrays."""
        from PIL import Image

        pictures = []
        for path in (self.prior_path, self.counterfactual_path):
            with Image.open(path) as image:
                pictures.append(np.asarray(image.convert("L")))
        return pictures[0], pictures[1]

    def side_by_side(self, scale: int = 2):
        """A PIL image: the prior | the generated counterfactual, enlarged ``scale`` times."""
        from PIL import Image

        prior, counterfactual = self.images()
        gap = np.full((prior.shape[0], 4), 255, dtype=np.uint8)
        row = Image.fromarray(np.hstack([prior, gap, counterfactual]))
        return row.resize((row.width * scale, row.height * scale), Image.Resampling.NEAREST)


_CASE_FIELDS = ("case_id", "pair_id", "prompt", "reference", "generated", "annotation", "label")


def load_audit_data(folder: str | os.PathLike | None = None) -> dict:
    """The index of the shipped audit cases (``cases.json``), checked: its format, every case's
    fields and label, and that its images are there."""
    folder = Path(AUDIT_DATA if folder is None else folder)
    index = folder / AUDIT_INDEX
    if not index.is_file():
        raise FileNotFoundError(
            f"no audit cases at {index}; an instructor creates them with `{AUDIT_COMMAND}`"
        )
    try:
        data = json.loads(index.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{index} is not valid JSON: {err}") from None
    if not isinstance(data, dict) or data.get("format") != AUDIT_FORMAT:
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise ValueError(f"{index} has format {found!r}; this library reads {AUDIT_FORMAT!r}")
    cases = data.get("cases")
    if not isinstance(cases, list) or not cases:
        raise ValueError(f"{index} lists no cases")
    for k, case in enumerate(cases):
        missing = [name for name in _CASE_FIELDS if name not in case]
        if missing:
            raise ValueError(f"{index}: case {k} lacks {', '.join(missing)}")
        if case["label"] not in AUDIT_LABELS:
            raise ValueError(f"{index}: case {case['case_id']} has unknown label {case['label']!r}")
        for name in case["images"].values():
            if not (folder / name).is_file():
                raise FileNotFoundError(f"{index}: image {name} of {case['case_id']} is missing")
    return data


def audit_cases(folder: str | os.PathLike | None = None) -> list[AuditCase]:
    """The cases of the ``auditing_counterfactuals`` assignment, from the shipped data."""
    folder = Path(AUDIT_DATA if folder is None else folder)
    return [
        AuditCase(
            case_id=case["case_id"],
            pair_id=case["pair_id"],
            prompt=case["prompt"],
            reference=case["reference"],
            generated=case["generated"],
            annotation=case["annotation"],
            label=case["label"],
            reason=case.get("reason", ""),
            seed=case["sampling"]["seed"],
            sampling=case["sampling"],
            truncated=bool(case.get("truncated", False)),
            prior_path=folder / case["images"]["prior"],
            counterfactual_path=folder / case["images"]["counterfactual"],
        )
        for case in load_audit_data(folder)["cases"]
    ]


def select_audit_cases(labels: Sequence[str], n: int = AUDIT_CASES) -> list[int]:
    """Which of a pool's generations become the ``n`` cases (indices into ``labels``, ascending).

    Deterministic rule: each label of :data:`AUDIT_LABELS` gets its first
    ``n // len(AUDIT_LABELS)`` generations in pool order (fewer if the pool has fewer); the
    slots left are filled with the earliest unused generations, whatever their label. So every
    label the pool has at least :data:`AUDIT_MIN_PER_LABEL` times appears at least that often,
    and the cases keep pool order (their position says nothing about their label).
    """
    labels = list(labels)
    unknown = sorted(set(labels) - set(AUDIT_LABELS))
    if unknown:
        raise ValueError(f"unknown labels {unknown}; use {', '.join(AUDIT_LABELS)}")
    if n < 1 or len(labels) < n:
        raise ValueError(f"cannot choose {n} cases from a pool of {len(labels)} generations")
    quota = n // len(AUDIT_LABELS)
    chosen: list[int] = []
    for label in AUDIT_LABELS:
        chosen += [i for i, have in enumerate(labels) if have == label][:quota]
    rest = [i for i in range(len(labels)) if i not in set(chosen)]
    chosen += rest[: n - len(chosen)]
    return sorted(chosen)


def audit_source_cases(count: int, *, dataset: dict | None = None, progress: bool = False):
    """The first ``count`` test-split pairs of the simulated dataset (:data:`AUDIT_DATASET`),
    patients in index order, each patient's pairs in order, as evaluation
    :class:`~progemu_lite.evaluation.baselines.Case` objects (rendered in memory, the same pairs
    ``progemu-lite phantom`` writes)."""
    from tqdm.auto import tqdm

    from progemu_lite.evaluation.baselines import Case
    from progemu_lite.phantom.dataset import PhantomConfig, patient_split, simulate_patient

    config = PhantomConfig(**(AUDIT_DATASET if dataset is None else dataset))
    if count < 1:
        raise ValueError(f"need at least one pair, got {count}")
    cases = []
    with tqdm(total=count, desc="test pairs", unit="pair", disable=not progress) as bar:
        for index in range(config.patients):
            if patient_split(config.seed, index) != "test":
                continue
            for pair in simulate_patient(config, index):
                cases.append(
                    Case(
                        pair_id=pair.record.pair_id,
                        prior=pair.prior.image,
                        prompt=pair.record.prompt,
                        followup=pair.followup.image,
                        reference=pair.record.interpretation,
                        annotation=[entry.to_dict() for entry in pair.annotation],
                        progression=pair.progression.to_dict(),
                    )
                )
                bar.update()
                if len(cases) == count:
                    return cases
    raise ValueError(f"the test split of {config} has only {len(cases)} pairs; asked for {count}")


@dataclass
class AuditCandidate:
    """One generation of the pool: the pair, what the model made of it, and its verdict."""

    pool_index: int
    case: object  # progemu_lite.evaluation.baselines.Case
    result: object  # progemu_lite.model.pipeline.Counterfactual
    verdict: AuditVerdict

    @property
    def label(self) -> str:
        return self.verdict.label


def generate_audit_pool(
    pipeline,
    cases,
    *,
    seed: int = AUDIT_SEED,
    enough: int | None = None,
    chunk: int = 12,
    progress: bool = False,
    **sampling,
) -> list[AuditCandidate]:
    """Generate a counterfactual for the cases in order and label each (:func:`audit_verdict`).

    Case ``k`` is sampled alone with seed ``seed + k``, so it can be reproduced by itself:
    ``pipeline(case.prior, case.prompt, **sampling_of(result))``. With ``enough``, generation stops
    after the first ``chunk`` of cases at which every label has at least ``enough``
    generations (the pool is then the first cases, still deterministic); else every case is
    generated. ``sampling``: the other keyword arguments of ``pipeline.batch`` (temperature,
    top_k, max_text_tokens, ...).
    """
    from tqdm.auto import tqdm

    if seed is None:
        raise ValueError("the audit needs a fixed seed")
    if chunk < 1:
        raise ValueError(f"chunk must be at least 1, got {chunk}")
    pool: list[AuditCandidate] = []
    with tqdm(total=len(cases), desc="audit pool", unit="pair", disable=not progress) as bar:
        for start in range(0, len(cases), chunk):
            part = cases[start : start + chunk]
            # batch_size=1: batch() seeds its k-th chunk with seed + k, so pair k gets seed + k.
            results = pipeline.batch(
                [case.prior for case in part],
                [case.prompt for case in part],
                seed=seed + start,
                batch_size=1,
                **sampling,
            )
            for k, (case, result) in enumerate(zip(part, results, strict=True), start=start):
                verdict = audit_verdict(result.interpretation, case.annotation)
                pool.append(AuditCandidate(k, case, result, verdict))
            bar.update(len(part))
            labels = [c.label for c in pool]
            if enough is not None and all(labels.count(x) >= enough for x in AUDIT_LABELS):
                break
    return pool


def sampling_of(result) -> dict:
    """The settings a generated ``Counterfactual`` was made with, as ``pipeline(...)`` takes them."""
    return {name: result.settings[name] for name in SAMPLING_KEYS if name in result.settings}


def _png_bytes(image: np.ndarray) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.asarray(image, dtype=np.uint8)).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def audit_data(
    candidates: list[AuditCandidate], *, n: int = AUDIT_CASES, info: dict | None = None
) -> tuple[dict, dict[str, bytes]]:
    """The index (``cases.json`` content) and PNG files of the ``n`` cases chosen from a pool
    by :func:`select_audit_cases`. ``info``: provenance to record (weights, dataset, ...)."""
    import hashlib

    labels = [c.label for c in candidates]
    in_pool = {label: labels.count(label) for label in AUDIT_LABELS}
    scarce = [label for label in AUDIT_LABELS if in_pool[label] < AUDIT_MIN_PER_LABEL]
    files: dict[str, bytes] = {}
    cases = []
    for number, k in enumerate(select_audit_cases(labels, n), start=1):
        cand = candidates[k]
        case_id = f"audit{number:02d}"
        images = {
            "prior": f"{case_id}-prior.png",
            "counterfactual": f"{case_id}-counterfactual.png",
        }
        files[images["prior"]] = _png_bytes(cand.result.prior)
        files[images["counterfactual"]] = _png_bytes(cand.result.image)
        cases.append(
            {
                "case_id": case_id,
                "pair_id": cand.case.pair_id,
                "pool_index": cand.pool_index,
                "prompt": cand.case.prompt,
                "reference": cand.case.reference,
                "generated": cand.result.interpretation,
                "truncated": bool(cand.result.truncated),
                "annotation": cand.case.annotation,
                "label": cand.label,
                "issues": cand.verdict.issues,
                "reason": cand.verdict.reason,
                "sampling": sampling_of(cand.result),
                "images": images,
                "image_sha256": {
                    role: hashlib.sha256(files[name]).hexdigest() for role, name in images.items()
                },
            }
        )
    note = f"every label appears at least {AUDIT_MIN_PER_LABEL} times"
    if scarce:
        note = "; ".join(
            f"the pool of {len(candidates)} generations has only {in_pool[label]} {label}, "
            f"so the cases have {in_pool[label]}"
            for label in scarce
        )
    index = {
        "format": AUDIT_FORMAT,
        **(info or {}),
        "label_rule": "score_case (strict); precedence " + " > ".join(AUDIT_PRECEDENCE),
        "pool": {
            "size": len(candidates),
            "labels": in_pool,
            "selection": f"select_audit_cases: first {n // len(AUDIT_LABELS)} of each label in "
            "pool order, then the earliest unused; cases in pool order",
            "labels_under_minimum": scarce,
            "note": note,
        },
        "cases": cases,
    }
    return index, files


def write_audit_data(folder: str | os.PathLike, index: dict, files: dict[str, bytes]) -> Path:
    """Write the audit folder (``cases.json`` and the PNGs) atomically: a sibling temporary
    folder, then renamed over the old one, so readers see the old cases or the new, never a mix.
    Refuses to replace a non-empty folder that holds no ``cases.json``."""
    with staged_folder(folder, marker=AUDIT_INDEX, foreign=f"holds no {AUDIT_INDEX}") as staging:
        for name, data in files.items():
            (staging / name).write_bytes(data)
        text = json.dumps(index, indent=2, ensure_ascii=False) + "\n"
        (staging / AUDIT_INDEX).write_text(text, encoding="utf-8")
    return folder


def weights_sha256(folder: str | os.PathLike) -> dict[str, str]:
    """``{file name: sha256}`` of the ``*.safetensors`` files of a checkpoint folder."""
    import hashlib

    hashes = {}
    for path in sorted(Path(folder).glob("*.safetensors")):
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        hashes[path.name] = digest.hexdigest()
    if not hashes:
        raise FileNotFoundError(f"no *.safetensors weights in {folder}")
    return hashes


def regenerate_audit(
    weights: str | os.PathLike = "lite",
    *,
    out: str | os.PathLike | None = None,
    pool: int = AUDIT_POOL,
    n: int = AUDIT_CASES,
    seed: int = AUDIT_SEED,
    note: str | None = None,
    progress: bool = True,
    **sampling,
) -> Path:
    """Generate the pool with ``weights`` (default: the shipped lite model), choose the cases and
    write the audit folder (default: the package's :data:`AUDIT_DATA`). ``sampling``: keyword
    arguments of ``pipeline.batch`` (defaults: the pipeline's, except the interpretation's
    temperature, :data:`AUDIT_TEXT_TEMPERATURE`)."""
    from progemu_lite.model.pipeline import checkpoint_folder, load

    sampling = {"text_temperature": AUDIT_TEXT_TEMPERATURE, **sampling}
    if pool < n:
        raise ValueError(f"--pool {pool} is smaller than the {n} cases to choose")
    folder = checkpoint_folder(weights, download=False, progress=progress)
    pipeline = load(folder, download=False, progress=progress)
    cases = audit_source_cases(pool, progress=progress)
    candidates = generate_audit_pool(
        pipeline,
        cases,
        seed=seed,
        enough=n // len(AUDIT_LABELS),
        progress=progress,
        **sampling,
    )
    import platform

    import torch
    import transformers

    from progemu_lite import __version__

    info = {
        "weights": {
            "name": str(weights),
            "preset": pipeline.preset,
            "sha256": weights_sha256(folder),
            "metadata": pipeline.metadata,  # progemu.json's extra fields (e.g. training step)
        },
        "dataset": {**AUDIT_DATASET, "split": "test"},
        "generation": {
            "first_seed": seed,
            "seed_rule": "pool pair k is sampled alone with seed first_seed + k",
            "max_pool": pool,
            "stop_rule": f"chunks of 12 pairs until every label has {n // len(AUDIT_LABELS)}",
            **sampling,
        },
        "command": audit_command(weights, pool=pool, seed=seed, **sampling),
        # Sampling reproduces token for token only with the same libraries and kind of CPU.
        "machine": {
            "progemu_lite": __version__,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "cpu": platform.machine(),
            "device": str(pipeline.device),
        },
        **({"note": note} if note else {}),
    }
    index, files = audit_data(candidates, n=n, info=info)
    return write_audit_data(AUDIT_DATA if out is None else out, index, files)


def audit_command(weights: str | os.PathLike, *, pool: int, seed: int, **sampling) -> str | None:
    """The command line that regenerates a pool with these settings (recorded in cases.json);
    None when a setting has no command-line flag (``regenerate_audit`` called from Python with,
    e.g., ``guidance_scale``): the generation settings in cases.json still say what was used."""
    import shlex

    if not set(sampling) <= set(AUDIT_CLI_SAMPLING):
        return None
    settings = {"weights": weights, "pool": pool, "seed": seed, **sampling}
    flags = [
        f"--{name.replace('_', '-')} {shlex.quote(str(value))}" for name, value in settings.items()
    ]
    return " ".join([AUDIT_COMMAND, *flags])


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m progemu_lite.exercises regenerate-audit [--weights lite] ...``"""
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m progemu_lite.exercises", description="Instructor tools for exercises/."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    regen = commands.add_parser(
        "regenerate-audit",
        help="generate the auditing_counterfactuals cases with the lite model",
        description="Generate a pool of counterfactuals for held-out simulated pairs, label them "
        "and write the 12 shipped cases of auditing_counterfactuals (atomically).",
    )
    regen.add_argument("--weights", default="lite", help="checkpoint folder or name (lite)")
    regen.add_argument("--out", type=Path, default=AUDIT_DATA, help=f"default {AUDIT_DATA}")
    regen.add_argument(
        "--pool",
        type=int,
        default=AUDIT_POOL,
        help="most pairs to generate (stops earlier once every label has n/4 generations)",
    )
    regen.add_argument("--seed", type=int, default=AUDIT_SEED, help="seed of the first pair")
    regen.add_argument("--temperature", type=float, help="default: the pipeline's (1.0)")
    regen.add_argument(
        "--text-temperature",
        type=float,
        help=f"the interpretation's (default {AUDIT_TEXT_TEMPERATURE:g}: greedy, as the model card "
        "measures it)",
    )
    regen.add_argument("--top-k", type=int, help="default: the pipeline's (2048)")
    regen.add_argument("--max-text-tokens", type=int, help="default: the pipeline's (195)")
    regen.add_argument("--note", help="a remark recorded in cases.json (e.g. provisional)")
    regen.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    sampling = {
        name: getattr(args, name) for name in AUDIT_CLI_SAMPLING if getattr(args, name) is not None
    }
    try:
        folder = regenerate_audit(
            args.weights,
            out=args.out,
            pool=args.pool,
            seed=args.seed,
            note=args.note,
            progress=not args.no_progress,
            **sampling,
        )
    except (ValueError, FileNotFoundError, FileExistsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    data = load_audit_data(folder)
    print(f"wrote {len(data['cases'])} cases to {folder}: {data['pool']['note']}")
    print("key:", json.dumps({c["case_id"]: c["label"] for c in data["cases"]}))
    return 0


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


if __name__ == "__main__":
    sys.exit(main())
