"""ICG-CXR-style texts for a simulated pair: the progression prompt, the radiologist-style
interpretation of the changes, and the 14 CheXpert labels of a state.

Every sentence is drawn from several phrasings (templates x synonyms x location wordings) so that
text metrics (BLEU, ROUGE, METEOR) measure something. Negative and stable findings are separate
sentences starting with "No", "Unchanged", "Persistent" or "Stable": ProgEmu's training drops
one "No"/"Unchanged"/"Persistent" sentence with p=0.05, so such sentences must stand alone and
never carry a change. Deterministic given a ``numpy.random.Generator``.
"""

from __future__ import annotations

import re

import numpy as np

from .findings import CHEXPERT_LABELS, FINDINGS, LOCATION_TEXT, finding_spec
from .progression import AnnotationEntry, Progression
from .state import ChestState

# Synonyms of each finding's noun; each must read after a severity word ("moderate ...").
NOUNS: dict[str, tuple[str, ...]] = {
    "pleural_effusion": ("pleural effusion", "pleural fluid", "effusion"),
    "cardiomegaly": (
        "cardiomegaly",
        "cardiac enlargement",
        "enlargement of the cardiac silhouette",
    ),
    "pneumothorax": ("pneumothorax", "pleural air collection"),
    "consolidation": ("consolidation", "airspace consolidation", "airspace opacity"),
    "pulmonary_edema": ("pulmonary edema", "edema", "pulmonary interstitial edema"),
    "atelectasis": ("atelectasis", "atelectatic change", "volume loss"),
    "nodule": ("nodule", "pulmonary nodule", "nodular opacity"),
}


def _where_phrases(finding: str, location: str | None) -> tuple[str, ...]:
    """Ways to say where a finding is, placed after the noun ("... in the left hemithorax")."""
    if location is None:
        return ("",)
    if location == "bilateral":
        return ("bilaterally", "in both lungs")
    if location in ("left", "right"):
        if finding == "pneumothorax":
            return (
                f"in the {location} hemithorax",
                f"at the {location} apex",
                f"on the {location}",
            )
        return (
            f"in the {location} hemithorax",
            f"at the {location} lung base",
            f"on the {location}",
            f"in the {location} lower lung",
        )
    return (f"in the {LOCATION_TEXT[location]}",)


# Interpretation sentences (changes-of-findings). Fields: {sev} severity word at the time the
# sentence describes, {before}/{after} severities, {noun}, {adj} location as an adjective
# ("left", "left lower lobe", "" for cardiomegaly), {where} location as a phrase.
INTERPRETATION_TEMPLATES: dict[str, tuple[str, ...]] = {
    "new": (
        "New {after} {adj} {noun}.",
        "{after} {noun} has appeared {where}.",
        "Interval development of {after} {noun} {where}.",
        "There is new {after} {noun} {where}.",
        "{after} {noun} is now seen {where}.",
        "Interval appearance of {after} {adj} {noun}.",
    ),
    "worse": (
        "{adj} {noun} has worsened, now {after}.",
        "Increased {adj} {noun}, now {after}.",
        "Interval increase in {noun} {where}, from {before} to {after}.",
        "Worsening {noun} {where}, now {after}.",
        "The {noun} {where} has progressed from {before} to {after}.",
        "{adj} {noun} is more pronounced, now {after}.",
    ),
    "better": (
        "Decreased {adj} {noun}, now {after}.",
        "{adj} {noun} has improved, now {after}.",
        "Interval decrease in {noun} {where}, from {before} to {after}.",
        "Improving {noun} {where}, now {after}.",
        "The {noun} {where} has diminished from {before} to {after}.",
        "{adj} {noun} is less pronounced, now {after}.",
    ),
    "resolved": (
        "Interval resolution of the {adj} {noun}.",
        "The previously seen {before} {noun} {where} has resolved.",
        "{adj} {noun} has cleared.",
        "Previously noted {noun} {where} is no longer seen.",
        "Complete resolution of {noun} {where}.",
        "Resolved {adj} {noun}.",
    ),
    "stable": (
        "Stable {after} {adj} {noun}.",
        "Unchanged {after} {noun} {where}.",
        "Persistent {after} {adj} {noun}.",
        "Unchanged {after} {adj} {noun}.",
        "Persistent {after} {noun} {where}.",
        "Stable {after} {noun} {where}.",
    ),
}

# Progression descriptions (the prompt): what the follow-up should show.
PROMPT_TEMPLATES: dict[str, tuple[str, ...]] = {
    "new": (
        "{after} {noun} has developed {where}.",
        "New {after} {adj} {noun} appears.",
        "{after} {adj} {noun} develops.",
        "Development of {after} {noun} {where}.",
        "{after} {noun} appears {where}.",
    ),
    "worse": (
        "The {adj} {noun} worsens to {after}.",
        "{adj} {noun} increases to {after}.",
        "{adj} {noun} progresses from {before} to {after}.",
        "Worsening of the {noun} {where} to {after}.",
        "The {noun} {where} becomes {after}.",
    ),
    "better": (
        "The {adj} {noun} improves to {after}.",
        "{adj} {noun} decreases to {after}.",
        "{adj} {noun} regresses from {before} to {after}.",
        "Improvement of the {noun} {where} to {after}.",
        "The {noun} {where} becomes {after}.",
    ),
    "resolved": (
        "The {adj} {noun} resolves.",
        "{adj} {noun} clears completely.",
        "Resolution of the {noun} {where}.",
        "The {noun} {where} disappears.",
        "{adj} {noun} is no longer present.",
    ),
}

# Pertinent negatives, for a finding absent at every location in both images.
NEGATIVES: dict[str, tuple[str, ...]] = {
    "pneumothorax": (
        "No pneumothorax.",
        "No pneumothorax is seen.",
        "No evidence of pneumothorax.",
    ),
    "pleural_effusion": (
        "No pleural effusion.",
        "No pleural effusion is seen.",
        "No evidence of pleural effusion.",
    ),
    "consolidation": ("No focal consolidation.", "No consolidation.", "No airspace consolidation."),
    "pulmonary_edema": ("No pulmonary edema.", "No evidence of pulmonary edema."),
    "cardiomegaly": ("No cardiomegaly.", "No cardiac enlargement."),
    "atelectasis": ("No atelectasis.", "No significant atelectasis."),
    "nodule": ("No pulmonary nodule.", "No suspicious nodule."),
}
# The negatives a radiologist mentions first.
_PERTINENT_ORDER = (
    "pneumothorax",
    "pleural_effusion",
    "consolidation",
    "pulmonary_edema",
    "cardiomegaly",
    "nodule",
    "atelectasis",
)

# CheXpert labels we never model: the phantom has no pneumonia diagnosis (only its imaging sign,
# consolidation), no pleural thickening, fractures or devices. ICG-CXR marks such labels missing.
MISSING_LABEL = -100
UNMODELLED_LABELS = ("Pneumonia", "Pleural Other", "Fracture", "Support Devices")
# Parent labels of CheXpert's hierarchy, present when any child finding is present.
_LUNG_OPACITY_CHILDREN = ("consolidation", "pulmonary_edema", "atelectasis", "nodule")


# Locations whose noun does not read as an adjective ("lingular nodule", not "lingula nodule").
_ADJECTIVES = {"lingula": "lingular"}


def _pick(options: tuple[str, ...], rng: np.random.Generator) -> str:
    return options[int(rng.integers(len(options)))]


def _tidy(sentence: str) -> str:
    """Collapse the gaps an empty field leaves, and capitalise the first letter."""
    sentence = re.sub(r"\s+", " ", sentence).strip()
    sentence = re.sub(r"\s+([.,])", r"\1", sentence)
    return sentence[:1].upper() + sentence[1:]


def _fill(template: str, finding: str, location: str | None, before: str, after: str, rng) -> str:
    noun = _pick(NOUNS[finding], rng)
    where = _pick(_where_phrases(finding, location), rng)
    adj = "" if location is None else _ADJECTIVES.get(location, LOCATION_TEXT[location])
    return _tidy(template.format(noun=noun, where=where, adj=adj, before=before, after=after))


def sentence_for(entry: AnnotationEntry, rng: np.random.Generator) -> str:
    """One interpretation sentence describing ``entry`` (a change or a stable finding)."""
    template = _pick(INTERPRETATION_TEMPLATES[entry.direction], rng)
    return _fill(
        template,
        entry.finding,
        entry.location,
        entry.severity_before,
        entry.severity_after,
        rng,
    )


def prompt_text(progression: Progression, prior: ChestState, rng: np.random.Generator) -> str:
    """The progression description (ICG-CXR ``progression-description``) of ``progression``."""
    progression.check_applies_to(prior)
    spec = finding_spec(progression.finding)
    before = spec.severity_word(prior.severity(progression.finding, progression.location))
    template = _pick(PROMPT_TEMPLATES[progression.direction], rng)
    return _fill(
        template,
        progression.finding,
        progression.location,
        before,
        progression.severity_word,
        rng,
    )


def interpretation_sentences(
    entries: list[AnnotationEntry], rng: np.random.Generator, max_negatives: int = 2
) -> list[str]:
    """Sentences for every change, then every stable finding, then 1..max_negatives negatives."""
    changes = [sentence_for(e, rng) for e in entries if e.changed]
    stables = [sentence_for(e, rng) for e in entries if not e.changed]
    mentioned = {e.finding for e in entries}
    absent = [name for name in _PERTINENT_ORDER if name not in mentioned]
    negatives = []
    if absent and max_negatives > 0:
        # The most pertinent one, sometimes a second one.
        count = min(len(absent), 1 + int(rng.integers(max_negatives)))
        negatives = [_pick(NEGATIVES[name], rng) for name in absent[:count]]
    return changes + stables + negatives


def interpretation_text(entries: list[AnnotationEntry], rng: np.random.Generator) -> str:
    """The interpretation (ICG-CXR ``changes-of-findings``) of an expert annotation."""
    return " ".join(interpretation_sentences(entries, rng))


def chexpert_labels(state: ChestState) -> list[int]:
    """The 14 CheXpert labels of ``state`` in :data:`CHEXPERT_LABELS` order.

    1 present, 0 absent, and -100 (missing, as in ICG-CXR) for :data:`UNMODELLED_LABELS`.
    "Enlarged Cardiomediastinum" and "Lung Opacity" follow CheXpert's hierarchy: present with
    cardiomegaly, resp. with any consolidation, edema, atelectasis or nodule (the phantom's
    mediastinum is otherwise always normal). "No Finding" is 1 for a state without findings.
    """
    present = {f.name for f in state.findings}
    by_label = {FINDINGS[name].chexpert: int(name in present) for name in FINDINGS}
    by_label["No Finding"] = int(not present)
    by_label["Enlarged Cardiomediastinum"] = int("cardiomegaly" in present)
    by_label["Lung Opacity"] = int(any(n in present for n in _LUNG_OPACITY_CHILDREN))
    for label in UNMODELLED_LABELS:
        by_label[label] = MISSING_LABEL
    return [by_label[label] for label in CHEXPERT_LABELS]
