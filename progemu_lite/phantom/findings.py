"""The vocabulary of findings shared by the phantom, the text generator, the evaluation and the
exercises: one home for finding names, their locations, severity scales and progression
directions.

Severity is an integer: 0 means absent, 1..3 index the finding's own severity words
(``small/moderate/large`` for an effusion, ``mild/moderate/severe`` for cardiomegaly, ...).
"""

from __future__ import annotations

from dataclasses import dataclass

# Progression directions a prompt can ask for, and the extra states a report can describe.
PROGRESSION_DIRECTIONS: tuple[str, ...] = ("new", "worse", "better", "resolved")
REPORT_DIRECTIONS: tuple[str, ...] = PROGRESSION_DIRECTIONS + ("stable", "absent")

# Location keys and how they read in text. Lobes carry their side for laterality.
LOCATION_TEXT: dict[str, str] = {
    "left": "left",
    "right": "right",
    "bilateral": "bilateral",
    "right_upper_lobe": "right upper lobe",
    "right_middle_lobe": "right middle lobe",
    "right_lower_lobe": "right lower lobe",
    "left_upper_lobe": "left upper lobe",
    "lingula": "lingula",
    "left_lower_lobe": "left lower lobe",
}

LOBES: tuple[str, ...] = (
    "right_upper_lobe",
    "right_middle_lobe",
    "right_lower_lobe",
    "left_upper_lobe",
    "lingula",
    "left_lower_lobe",
)


def laterality(location: str | None) -> str | None:
    """The side a location lies on: ``left``, ``right``, ``bilateral`` or None (no side)."""
    if location is None:
        return None
    if location in ("left", "right", "bilateral"):
        return location
    if location.startswith("right_"):
        return "right"
    if location.startswith("left_") or location == "lingula":
        return "left"
    raise UnknownFindingError(f"unknown location {location!r}; known: {sorted(LOCATION_TEXT)}")


@dataclass(frozen=True)
class FindingSpec:
    """One finding type: its key, how it reads, where it can be, and its severity words."""

    name: str
    text: str
    locations: tuple[str | None, ...]
    severity_words: tuple[str, str, str]
    chexpert: str

    def severity_word(self, severity: int) -> str:
        """``absent`` for 0, else the finding's own word for 1..3."""
        check_severity(self.name, severity)
        return "absent" if severity == 0 else self.severity_words[severity - 1]


FINDINGS: dict[str, FindingSpec] = {
    spec.name: spec
    for spec in (
        FindingSpec(
            "pleural_effusion",
            "pleural effusion",
            ("left", "right"),
            ("small", "moderate", "large"),
            "Pleural Effusion",
        ),
        FindingSpec(
            "cardiomegaly", "cardiomegaly", (None,), ("mild", "moderate", "severe"), "Cardiomegaly"
        ),
        FindingSpec(
            "pneumothorax",
            "pneumothorax",
            ("left", "right"),
            ("small", "moderate", "large"),
            "Pneumothorax",
        ),
        FindingSpec(
            "consolidation",
            "consolidation",
            LOBES,
            ("patchy", "moderate", "extensive"),
            "Consolidation",
        ),
        FindingSpec(
            "pulmonary_edema",
            "pulmonary edema",
            ("bilateral",),
            ("mild", "moderate", "severe"),
            "Edema",
        ),
        FindingSpec(
            "atelectasis",
            "atelectasis",
            ("right_upper_lobe", "right_middle_lobe", "right_lower_lobe", "left_lower_lobe"),
            ("mild", "moderate", "severe"),
            "Atelectasis",
        ),
        FindingSpec("nodule", "nodule", LOBES, ("small", "medium", "large"), "Lung Lesion"),
    )
}

# The 14 CheXpert labels, in the order ICG-CXR's reference/followup-diseases use them.
CHEXPERT_LABELS: tuple[str, ...] = (
    "No Finding",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
)

MAX_SEVERITY = 3


class UnknownFindingError(ValueError):
    """A finding name, location or severity that the vocabulary does not know."""


def finding_spec(name: str) -> FindingSpec:
    """The spec of a finding, with an error listing the known names for a typo."""
    try:
        return FINDINGS[name]
    except KeyError:
        raise UnknownFindingError(
            f"unknown finding {name!r}; known findings: {', '.join(FINDINGS)}"
        ) from None


def check_location(name: str, location: str | None) -> None:
    spec = finding_spec(name)
    if location not in spec.locations:
        allowed = ", ".join("none" if loc is None else loc for loc in spec.locations)
        raise UnknownFindingError(f"{name} cannot be at {location!r}; allowed locations: {allowed}")


def check_severity(name: str, severity: int) -> None:
    if (
        not isinstance(severity, int)
        or isinstance(severity, bool)
        or not 0 <= severity <= MAX_SEVERITY
    ):
        raise UnknownFindingError(
            f"impossible severity {severity!r} for {name}: use 0 (absent) to {MAX_SEVERITY}"
        )


def severity_from_word(name: str, word: str) -> int:
    """Inverse of :meth:`FindingSpec.severity_word`."""
    spec = finding_spec(name)
    if word == "absent":
        return 0
    try:
        return spec.severity_words.index(word) + 1
    except ValueError:
        raise UnknownFindingError(
            f"impossible severity {word!r} for {name}; use absent or one of {spec.severity_words}"
        ) from None


def location_text(location: str | None) -> str:
    return "" if location is None else LOCATION_TEXT[location]


def direction_between(severity_before: int, severity_after: int) -> str:
    """The report direction of a change: new, worse, better, resolved, stable or absent."""
    if severity_before == severity_after:
        return "absent" if severity_after == 0 else "stable"
    if severity_before == 0:
        return "new"
    if severity_after == 0:
        return "resolved"
    return "worse" if severity_after > severity_before else "better"
