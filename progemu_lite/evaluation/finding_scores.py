"""Finding-level scores of generated interpretations against an expert annotation of the changes.

An annotation is a list of entries ``{finding, location, direction, severity_before,
severity_after}`` in the words of :mod:`progemu_lite.phantom.findings` (direction: new, worse,
better, resolved or stable). The interpretation is read by :func:`labeler.label_report`.

Matching rule
-------------
* A *claim* is every finding the text states except pertinent negatives (``No pneumothorax`` is
  no claim). Hedged statements (``possible small effusion``) are claims too. A finding stated
  with no comparison (``Small left effusion.``, direction None) is a claim that cannot match a
  change: it counts as a hallucination under the strict rule (and matches under the lenient one).
  The same claim stated twice counts once.
* Strict match (the headline scores): same finding, same laterality, same direction. Laterality
  is the side (``left``/``right``/``bilateral``/none) of the location, so a claim at the left
  lower lobe matches an annotation at the lingula. For findings with one possible place
  (cardiomegaly: none; pulmonary edema: bilateral) laterality is not compared. A claim whose
  text names no side matches an annotation on either side. A bilateral claim of a one-sided
  finding (``bilateral effusions``) is two claims, left and right.
* Each annotation entry matches at most one claim and vice versa (same-side claims first).
* Lenient match: the same without the direction (``finding_level`` in the results).
* Severity is scored separately, over strictly matched pairs where both the annotation and the
  text give a severity after the change: ``severity_accuracy`` is the fraction that agree.

Scores
------
Per finding type: precision, recall and F1 from the matches summed over the corpus. ``micro``
sums all finding types; ``macro`` averages the per-finding F1 over the finding types that occur
(annotated or claimed). ``hallucination_rate`` = unmatched claims / claims (1 - micro precision),
``omission_rate`` = unmatched annotation entries / entries (1 - micro recall); the fractions of
cases with at least one hallucination / omission are given too. 0/0 counts as 1.0 when a case
neither claims nor annotates anything, else as 0.0.

Robustness: empty or missing text and text in another language are scored (everything annotated
is then an omission) and counted (``empty_text``, ``no_findings_text``). A missing annotation
(None), one that is not a list, or one whose entries are all malformed makes the case
``unscorable``: counted, left out of the scores, never an exception. Malformed entries in an
otherwise good annotation are dropped and counted (``malformed_entries``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, is_dataclass

from progemu_lite.phantom.findings import (
    FINDINGS,
    UnknownFindingError,
    check_location,
    laterality,
    severity_from_word,
)

from .labeler import LabeledFinding, label_report

ANNOTATED_DIRECTIONS = ("new", "worse", "better", "resolved", "stable")


@dataclass(frozen=True)
class AnnotatedChange:
    """One entry of an expert annotation, validated."""

    finding: str
    location: str | None
    direction: str
    severity_before: str | None = None
    severity_after: str | None = None

    @property
    def laterality(self) -> str | None:
        return laterality(self.location)

    @property
    def severity(self) -> str | None:
        """The severity word that grades the entry: the prior's, else the follow-up's (a new
        finding has only the latter)."""
        return self.severity_before or self.severity_after


def parse_annotation(entries) -> tuple[list[AnnotatedChange] | None, list[str]]:
    """Valid entries of an annotation and one message per problem.

    Returns ``(None, [reason])`` when the annotation as a whole is unusable (missing, not a list).
    """
    if entries is None:
        return None, ["annotation missing"]
    if isinstance(entries, dict):
        entries = [entries]
    if isinstance(entries, (str, bytes)) or not isinstance(entries, Sequence):
        return None, [f"annotation must be a list of entries, got {type(entries).__name__}"]
    valid: list[AnnotatedChange] = []
    problems: list[str] = []
    for k, entry in enumerate(entries):
        try:
            valid.append(_parse_entry(entry))
        except (UnknownFindingError, ValueError, TypeError) as err:
            problems.append(f"entry {k}: {err}")
    return valid, problems


def _parse_entry(entry) -> AnnotatedChange:
    if is_dataclass(entry) and not isinstance(entry, type):
        entry = asdict(entry)  # e.g. progemu_lite.phantom.progression.AnnotationEntry
    if not isinstance(entry, dict):
        raise TypeError(f"an entry must be a dict, got {type(entry).__name__}")
    finding = _word(entry.get("finding"))
    if finding not in FINDINGS:
        raise ValueError(f"unknown finding {entry.get('finding')!r}")
    direction = _word(entry.get("direction"))
    if direction not in ANNOTATED_DIRECTIONS:
        raise ValueError(
            f"direction {entry.get('direction')!r} is not one of {ANNOTATED_DIRECTIONS}"
        )
    location = _word(entry.get("location")) or None
    allowed = FINDINGS[finding].locations
    if location is None and len(allowed) == 1:
        location = allowed[0]  # edema is bilateral, cardiomegaly has no place: nothing to state
    check_location(finding, location)
    severities = []
    for key in ("severity_before", "severity_after"):
        word = entry.get(key)
        if word in (None, ""):
            severities.append(None)
            continue
        if not isinstance(word, str):
            raise TypeError(f"{key} must be a word, got {word!r}")
        word = word.strip().lower()
        severity_from_word(finding, word)  # raises for a word not on the finding's scale
        severities.append(word)
    return AnnotatedChange(finding, location, direction, *severities)


def _word(value):
    """Annotation words as the vocabulary spells them ("Pleural effusion " -> pleural_effusion)."""
    if isinstance(value, str):
        return "_".join(value.strip().lower().split())
    return value


@dataclass
class CaseScore:
    """How one interpretation fared against its annotation."""

    status: str  # "scored" or "unscorable"
    reason: str | None = None
    claims: list[LabeledFinding] = field(default_factory=list)
    annotation: list[AnnotatedChange] = field(default_factory=list)
    matched: list[tuple[AnnotatedChange, LabeledFinding]] = field(default_factory=list)
    hallucinated: list[LabeledFinding] = field(default_factory=list)
    omitted: list[AnnotatedChange] = field(default_factory=list)
    denials: list[LabeledFinding] = field(default_factory=list)  # "No pneumothorax."
    lenient_tp: int = 0
    malformed_entries: int = 0
    empty_text: bool = False
    no_findings_text: bool = False

    @property
    def tp(self) -> int:
        return len(self.matched)

    @property
    def fp(self) -> int:
        return len(self.hallucinated)

    @property
    def fn(self) -> int:
        return len(self.omitted)


def _claims(findings: list[LabeledFinding]) -> list[LabeledFinding]:
    """Claims of a labelled text: no negatives, bilateral one-sided findings split, no repeats."""
    out: list[LabeledFinding] = []
    seen = set()
    for f in findings:
        if not f.is_claim:
            continue
        parts = [f]
        if f.laterality == "bilateral" and "bilateral" not in FINDINGS[f.finding].locations:
            parts = [_with_location(f, "left"), _with_location(f, "right")]
        for p in parts:
            key = (p.finding, _side(p.finding, p.laterality), p.direction)
            if key not in seen:
                seen.add(key)
                out.append(p)
    return out


def _with_location(f: LabeledFinding, location: str) -> LabeledFinding:
    return LabeledFinding(
        f.finding,
        location,
        f.direction,
        f.certainty,
        f.severity_words,
        f.severity_before,
        f.severity_after,
        f.sentence,
    )


def _side(finding: str, side: str | None) -> str | None:
    """The laterality compared for a finding: none for findings with a single possible place."""
    return "*" if len(FINDINGS[finding].locations) == 1 else side


def _match(
    annotation: list[AnnotatedChange], claims: list[LabeledFinding], *, use_direction: bool
) -> list[tuple[AnnotatedChange, LabeledFinding]]:
    used: set[int] = set()
    pairs: dict[int, LabeledFinding] = {}
    for wildcard in (False, True):  # exact sides first, then claims that name no side
        for a_idx, a in enumerate(annotation):
            if a_idx in pairs:
                continue
            a_side = _side(a.finding, a.laterality)
            for c_idx, c in enumerate(claims):
                if c_idx in used or c.finding != a.finding:
                    continue
                if use_direction and c.direction != a.direction:
                    continue
                c_side = _side(c.finding, c.laterality)
                if c_side == a_side or (wildcard and c_side is None):
                    used.add(c_idx)
                    pairs[a_idx] = c
                    break
    return [(annotation[k], pairs[k]) for k in sorted(pairs)]


def score_case(text: str | None, annotation) -> CaseScore:
    """Score one interpretation against its annotation (see the module docstring)."""
    entries, problems = parse_annotation(annotation)
    if entries is None:
        return CaseScore(status="unscorable", reason=problems[0])
    if problems and not entries:
        return CaseScore(
            status="unscorable",
            reason="every annotation entry is malformed: " + "; ".join(problems[:3]),
            malformed_entries=len(problems),
        )
    empty = not isinstance(text, str) or not text.strip()
    findings = [] if empty else label_report(text)
    claims = _claims(findings)
    matched = _match(entries, claims, use_direction=True)
    matched_claims = {id(c) for _, c in matched}
    matched_entries = {id(a) for a, _ in matched}
    return CaseScore(
        status="scored",
        claims=claims,
        annotation=entries,
        matched=matched,
        hallucinated=[c for c in claims if id(c) not in matched_claims],
        omitted=[a for a in entries if id(a) not in matched_entries],
        denials=[f for f in findings if f.direction == "absent"],
        lenient_tp=len(_match(entries, claims, use_direction=False)),
        malformed_entries=len(problems),
        empty_text=empty,
        no_findings_text=not empty and not findings,
    )


def prompted_change_reported(result: CaseScore, progression: dict | None) -> bool | None:
    """Whether the interpretation states the change the prompt asked for: the annotation entry
    of the requested finding (same finding and side) is matched with the right direction.

    ``None`` when it cannot be judged: no requested progression (e.g. a real ICG-CXR pair), an
    unscorable annotation, or no annotation entry for the requested finding.
    """
    if not progression or result.status != "scored":
        return None
    finding = _word(progression.get("finding"))
    if finding not in FINDINGS:
        return None
    try:
        side = _side(finding, laterality(_word(progression.get("location")) or None))
    except UnknownFindingError:
        return None
    requested = [
        a
        for a in result.annotation
        if a.finding == finding and _side(a.finding, a.laterality) == side
    ]
    if not requested:
        return None
    matched = {id(a) for a, _ in result.matched}
    return any(id(a) in matched for a in requested)


def stable_findings_by_severity(result: CaseScore) -> dict[tuple[str, str], tuple[int, int]]:
    """:func:`stable_findings_reported` per finding type and annotated severity:
    ``{(finding, severity): (reported, annotated)}`` (a small effusion is harder to see than a
    large one); severity "unknown" where the annotation gives none."""
    if result.status != "scored":
        return {}
    matched = {id(a) for a, _ in result.matched}
    counts: dict[tuple[str, str], tuple[int, int]] = {}
    for a in result.annotation:
        if a.direction == "stable":
            key = (a.finding, a.severity or "unknown")
            reported, annotated = counts.get(key, (0, 0))
            counts[key] = (reported + (id(a) in matched), annotated + 1)
    return counts


def stable_findings_by_finding(result: CaseScore) -> dict[str, tuple[int, int]]:
    """:func:`stable_findings_reported` per finding type: ``{finding: (reported, annotated)}``
    (which findings a model reads off the prior, and which it misses)."""
    counts: dict[str, tuple[int, int]] = {}
    for (finding, _), (reported, annotated) in stable_findings_by_severity(result).items():
        before = counts.get(finding, (0, 0))
        counts[finding] = (before[0] + reported, before[1] + annotated)
    return counts


MISSED_STABLE_KINDS = ("not mentioned", "denied", "misstated")


def missed_stable_findings(result: CaseScore) -> list[tuple[str, str]]:
    """``(finding, how)`` for each of the prior's unchanged findings the interpretation does not
    report, ``how`` one of :data:`MISSED_STABLE_KINDS`: "denied" (the text says it is absent,
    "No pneumothorax.", naming its side or no side), "misstated" (the text claims that finding
    type with another place or direction, "New right pleural effusion" for a stable left one) or
    "not mentioned". A model that never sees a finding omits or denies it; one that sees it but
    places it wrongly misstates it."""
    if result.status != "scored":
        return []
    matched = {id(a) for a, _ in result.matched}
    missed = []
    for a in result.annotation:
        if a.direction != "stable" or id(a) in matched:
            continue
        side = _side(a.finding, a.laterality)
        if any(
            d.finding == a.finding and _side(d.finding, d.laterality) in (None, side)
            for d in result.denials
        ):
            how = "denied"
        elif any(c.finding == a.finding for c in result.hallucinated):
            how = "misstated"
        else:
            how = "not mentioned"
        missed.append((a.finding, how))
    return missed


def stable_findings_reported(result: CaseScore) -> tuple[int, int]:
    """``(reported, annotated)`` for the annotation's ``stable`` entries: the prior's findings
    that did not change. Only reading the prior image can give them (the prompt never names
    them), so a model that just echoes its prompt scores 0 here."""
    counts = stable_findings_by_finding(result).values()
    return sum(r for r, _ in counts), sum(n for _, n in counts)


def _prf(tp: int, fp: int, fn: int) -> dict[str, float]:
    if tp + fp + fn == 0:
        return {"precision": 1.0, "recall": 1.0, "f1": 1.0}
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


def score_corpus(
    texts: Sequence[str | None], annotations: Sequence, *, progress: bool = False
) -> dict:
    """Scores of a corpus of interpretations against their annotations, and counts of problems.

    Returns a JSON-ready dict: ``micro``, ``macro``, ``per_finding`` (precision/recall/F1 and
    counts), ``finding_level`` (lenient, direction ignored), ``hallucination_rate``,
    ``omission_rate``, ``cases_with_hallucination``, ``cases_with_omission``,
    ``severity_accuracy`` (None when no pair states a severity) with ``severity_pairs``, and the
    counts ``n_cases``, ``n_scored``, ``unscorable``, ``empty_text``, ``no_findings_text``,
    ``malformed_entries``, ``claims``, ``uncertain_claims``, ``annotated``.
    """
    texts = list(texts)
    annotations = list(annotations)
    if len(texts) != len(annotations):
        raise ValueError(
            f"{len(texts)} texts but {len(annotations)} annotations: one annotation per text needed"
        )
    indices = range(len(texts))
    if progress:
        from tqdm.auto import tqdm

        indices = tqdm(indices, desc="scoring interpretations", unit="case")
    results = [score_case(texts[i], annotations[i]) for i in indices]
    return summarize(results)


def summarize(results: Sequence[CaseScore]) -> dict:
    """Corpus scores from per-case results (what :func:`score_corpus` returns)."""
    scored = [r for r in results if r.status == "scored"]
    tp, fp, fn = Counter(), Counter(), Counter()
    for r in scored:
        for a, _ in r.matched:
            tp[a.finding] += 1
        for c in r.hallucinated:
            fp[c.finding] += 1
        for a in r.omitted:
            fn[a.finding] += 1
    names = [n for n in FINDINGS if tp[n] + fp[n] + fn[n] > 0]
    per_finding = {
        n: {**_prf(tp[n], fp[n], fn[n]), "tp": tp[n], "fp": fp[n], "fn": fn[n]} for n in names
    }
    total_tp, total_fp, total_fn = sum(tp.values()), sum(fp.values()), sum(fn.values())
    micro = _prf(total_tp, total_fp, total_fn)
    macro_f1 = sum(per_finding[n]["f1"] for n in names) / len(names) if names else None
    macro = {
        "precision": _mean([per_finding[n]["precision"] for n in names]),
        "recall": _mean([per_finding[n]["recall"] for n in names]),
        "f1": macro_f1,
    }
    n_claims = sum(len(r.claims) for r in scored)
    n_annotated = sum(len(r.annotation) for r in scored)
    lenient_tp = sum(r.lenient_tp for r in scored)
    severity_pairs = [
        (a.severity_after, c.severity_after)
        for r in scored
        for a, c in r.matched
        if a.severity_after and a.severity_after != "absent" and c.severity_after
    ]
    return {
        "n_cases": len(results),
        "n_scored": len(scored),
        "unscorable": len(results) - len(scored),
        "unscorable_reasons": dict(Counter(r.reason for r in results if r.status != "scored")),
        "empty_text": sum(r.empty_text for r in scored),
        "no_findings_text": sum(r.no_findings_text for r in scored),
        "malformed_entries": sum(r.malformed_entries for r in results),
        "claims": n_claims,
        "uncertain_claims": sum(c.certainty == "uncertain" for r in scored for c in r.claims),
        "annotated": n_annotated,
        "micro": micro,
        "macro": macro,
        "per_finding": per_finding,
        "finding_level": _prf(lenient_tp, n_claims - lenient_tp, n_annotated - lenient_tp),
        "hallucination_rate": total_fp / n_claims if n_claims else 0.0,
        "omission_rate": total_fn / n_annotated if n_annotated else 0.0,
        "cases_with_hallucination": _mean([float(r.fp > 0) for r in scored]),
        "cases_with_omission": _mean([float(r.fn > 0) for r in scored]),
        "severity_accuracy": (
            sum(a == c for a, c in severity_pairs) / len(severity_pairs) if severity_pairs else None
        ),
        "severity_pairs": len(severity_pairs),
    }


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None
