"""How a simulated chest changes between a prior and a follow-up radiograph.

A :class:`Progression` is what a prompt asks for ("moderate left pleural effusion develops"). Applying
it to a prior :class:`ChestState` gives the follow-up state and the *expert annotation*: one
:class:`AnnotationEntry` per finding present at either time point, so every visual change (the
asked-for one and any clinically coupled one) is recorded, and unchanged findings are listed as
``stable``.

Everything here is deterministic given a ``numpy.random.Generator``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from .findings import (
    FINDINGS,
    MAX_SEVERITY,
    PROGRESSION_DIRECTIONS,
    REPORT_DIRECTIONS,
    check_location,
    direction_between,
    finding_spec,
    laterality,
    severity_from_word,
)
from .state import ChestState, FindingState

# How often each finding appears in a simulated prior (relative weights): effusion, cardiomegaly
# and atelectasis are the commonest findings on inpatient follow-up radiographs.
_PRIOR_FINDING_WEIGHTS: dict[str, float] = {
    "pleural_effusion": 3.0,
    "cardiomegaly": 2.5,
    "atelectasis": 2.0,
    "consolidation": 1.5,
    "pulmonary_edema": 1.5,
    "nodule": 1.0,
    "pneumothorax": 0.7,
}
# Number of findings in a prior: 0 (normal study) .. 3.
_PRIOR_COUNT_PROBS = (0.2, 0.4, 0.28, 0.12)
# Severity 1..3 of a prior finding: mild findings are commoner than severe ones.
_PRIOR_SEVERITY_PROBS = (0.45, 0.35, 0.2)
# Which kind of change a sampled prompt asks for, when more than one is possible.
_DIRECTION_WEIGHTS = {"new": 0.35, "worse": 0.3, "better": 0.2, "resolved": 0.15}


@dataclass(frozen=True)
class Progression:
    """One requested change: ``finding`` at ``location`` goes ``direction`` to ``severity``.

    ``severity`` is the target (follow-up) severity: 1..3 for new/worse/better, 0 for resolved.
    """

    finding: str
    location: str | None
    direction: str
    severity: int

    def __post_init__(self) -> None:
        finding_spec(self.finding)
        check_location(self.finding, self.location)
        if self.direction not in PROGRESSION_DIRECTIONS:
            raise ValueError(
                f"unknown progression direction {self.direction!r}; "
                f"use one of {', '.join(PROGRESSION_DIRECTIONS)}"
            )
        if isinstance(self.severity, bool) or not isinstance(self.severity, int):
            raise ValueError(f"severity must be an integer, got {self.severity!r}")
        if self.direction == "resolved":
            if self.severity != 0:
                raise ValueError(f"a resolved {self.finding} has severity 0, not {self.severity}")
        elif not 1 <= self.severity <= MAX_SEVERITY:
            raise ValueError(
                f"target severity {self.severity} of a {self.direction} {self.finding} is "
                f"outside 1..{MAX_SEVERITY}"
            )

    @property
    def key(self) -> tuple[str, str | None]:
        return (self.finding, self.location)

    @property
    def severity_word(self) -> str:
        return finding_spec(self.finding).severity_word(self.severity)

    def check_applies_to(self, prior: ChestState) -> None:
        """Raise ValueError if this change is impossible from ``prior``."""
        before = prior.severity(self.finding, self.location)
        where = describe_key(self.finding, self.location)
        spec = finding_spec(self.finding)
        if self.direction == "new" and before > 0:
            raise ValueError(
                f"cannot make a new {where}: it is already present "
                f"({spec.severity_word(before)}); use worse or better"
            )
        if self.direction in ("worse", "better", "resolved") and before == 0:
            hint = "; use new" if self.direction == "worse" else ""
            raise ValueError(f"cannot make {where} {self.direction}: it is absent{hint}")
        if self.direction == "worse" and self.severity <= before:
            raise ValueError(
                f"{where} cannot get worse from {spec.severity_word(before)} to "
                f"{spec.severity_word(self.severity)}: the target must be more severe"
            )
        if self.direction == "better" and self.severity >= before:
            raise ValueError(
                f"{where} cannot get better from {spec.severity_word(before)} to "
                f"{spec.severity_word(self.severity)}: the target must be less severe"
            )

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class AnnotationEntry:
    """One line of the expert annotation: how one finding changed between the two images.

    Severities are words from the findings vocabulary (``absent``, ``small``, ``moderate``, ...).
    """

    finding: str
    location: str | None
    direction: str
    severity_before: str
    severity_after: str

    def __post_init__(self) -> None:
        check_location(self.finding, self.location)
        before = severity_from_word(self.finding, self.severity_before)
        after = severity_from_word(self.finding, self.severity_after)
        if self.direction not in REPORT_DIRECTIONS or self.direction == "absent":
            raise ValueError(
                f"unknown annotation direction {self.direction!r}; "
                f"use one of new, worse, better, resolved, stable"
            )
        if direction_between(before, after) != self.direction:
            raise ValueError(
                f"annotation of {self.finding} says {self.direction} but goes from "
                f"{self.severity_before} to {self.severity_after}"
            )

    @property
    def changed(self) -> bool:
        return self.direction != "stable"

    @property
    def severity_before_int(self) -> int:
        return severity_from_word(self.finding, self.severity_before)

    @property
    def severity_after_int(self) -> int:
        return severity_from_word(self.finding, self.severity_after)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> AnnotationEntry:
        fields = ("finding", "location", "direction", "severity_before", "severity_after")
        missing = [f for f in fields if f not in data]
        if missing:
            raise ValueError(f"annotation entry {data!r} lacks {', '.join(missing)}")
        return cls(**{f: data[f] for f in fields})


def describe_key(finding: str, location: str | None) -> str:
    """``left pleural_effusion`` style label for error messages."""
    return finding if location is None else f"{location} {finding}"


def all_keys() -> list[tuple[str, str | None]]:
    """Every (finding, location) the vocabulary allows, in a fixed order."""
    return [(name, loc) for name, spec in FINDINGS.items() for loc in spec.locations]


def sample_prior_state(rng: np.random.Generator) -> ChestState:
    """A realistic prior: usually 0-2 findings, sometimes a normal study."""
    count = int(rng.choice(len(_PRIOR_COUNT_PROBS), p=_PRIOR_COUNT_PROBS))
    names = list(_PRIOR_FINDING_WEIGHTS)
    weights = np.array([_PRIOR_FINDING_WEIGHTS[n] for n in names])
    chosen = rng.choice(len(names), size=count, replace=False, p=weights / weights.sum())
    state = ChestState()
    for index in sorted(int(i) for i in chosen):
        name = names[index]
        locations = FINDINGS[name].locations
        location = locations[int(rng.integers(len(locations)))]
        severity = 1 + int(rng.choice(MAX_SEVERITY, p=_PRIOR_SEVERITY_PROBS))
        state = state.with_severity(name, location, severity)
    # A large effusion compresses the adjacent lower lobe (same coupling as in a follow-up).
    return _couple_compressive_atelectasis(state)


def possible_progressions(prior: ChestState) -> list[Progression]:
    """Every valid progression from ``prior``, in a fixed order."""
    options: list[Progression] = []
    for name, location in all_keys():
        before = prior.severity(name, location)
        if before == 0:
            options += [Progression(name, location, "new", s) for s in range(1, MAX_SEVERITY + 1)]
            continue
        options += [
            Progression(name, location, "worse", s) for s in range(before + 1, MAX_SEVERITY + 1)
        ]
        options += [Progression(name, location, "better", s) for s in range(1, before)]
        options.append(Progression(name, location, "resolved", 0))
    return options


def sample_progression(prior: ChestState, rng: np.random.Generator) -> Progression:
    """A valid progression from ``prior``: first a direction, then a finding and target."""
    options = possible_progressions(prior)
    directions = [d for d in PROGRESSION_DIRECTIONS if any(o.direction == d for o in options)]
    weights = np.array([_DIRECTION_WEIGHTS[d] for d in directions])
    direction = directions[int(rng.choice(len(directions), p=weights / weights.sum()))]
    candidates = [o for o in options if o.direction == direction]
    if direction == "new":
        # Pick the finding type first so lobar findings (six locations) do not crowd out the rest,
        # then the location, then a severity (small new findings are commoner).
        names = sorted({o.finding for o in candidates}, key=list(FINDINGS).index)
        name = names[int(rng.integers(len(names)))]
        candidates = [o for o in candidates if o.finding == name]
        locations = list(dict.fromkeys(o.location for o in candidates))
        location = locations[int(rng.integers(len(locations)))]
        severity = 1 + int(rng.choice(MAX_SEVERITY, p=_PRIOR_SEVERITY_PROBS))
        return Progression(name, location, "new", severity)
    return candidates[int(rng.integers(len(candidates)))]


def apply_progression(
    prior: ChestState, progression: Progression, rng: np.random.Generator
) -> tuple[ChestState, list[AnnotationEntry]]:
    """The follow-up state and the expert annotation of every finding at either time point.

    Other findings stay stable unless clinically coupled to the change:

    - new or worsening pulmonary edema with cardiomegaly present (congestive failure) brings new
      small bilateral pleural effusions with probability 0.6;
    - a large pleural effusion brings compressive atelectasis of the adjacent lower lobe
      (always);
    - consolidation becoming extensive in a lower lobe brings a small parapneumonic effusion on
      that side with probability 0.4.

    A resolving finding just disappears. The annotation lists the requested change first, then
    the coupled changes, then the stable findings.
    """
    progression.check_applies_to(prior)
    followup = prior.with_severity(progression.finding, progression.location, progression.severity)
    followup = _apply_couplings(followup, progression, rng)
    return followup, annotate(prior, followup, first=progression.key)


def annotate(
    prior: ChestState, followup: ChestState, first: tuple[str, str | None] | None = None
) -> list[AnnotationEntry]:
    """One entry per finding present at either time point: ``first``, other changes, stables."""
    keys = list(dict.fromkeys(prior.keys() + followup.keys()))
    entries = []
    for name, location in keys:
        spec = finding_spec(name)
        before, after = prior.severity(name, location), followup.severity(name, location)
        entries.append(
            AnnotationEntry(
                name,
                location,
                direction_between(before, after),
                spec.severity_word(before),
                spec.severity_word(after),
            )
        )

    def order(entry: AnnotationEntry) -> int:
        if (entry.finding, entry.location) == first:
            return 0
        return 1 if entry.changed else 2

    return sorted(entries, key=order)  # stable sort keeps the state's order within groups


def _apply_couplings(
    state: ChestState, progression: Progression, rng: np.random.Generator
) -> ChestState:
    # Draw every coupling's random number unconditionally, so one coupling firing never shifts
    # the random stream of another.
    chf_draw, parapneumonic_draw = rng.random(), rng.random()
    locked = progression.key  # never override the change the prompt asked for

    def set_if_absent(name: str, location: str, severity: int) -> None:
        nonlocal state
        if (name, location) != locked and state.severity(name, location) == 0:
            state = state.with_severity(name, location, severity)

    if (
        progression.finding == "pulmonary_edema"
        and progression.direction in ("new", "worse")
        and state.severity("cardiomegaly", None) > 0
        and chf_draw < 0.6
    ):
        set_if_absent("pleural_effusion", "left", 1)
        set_if_absent("pleural_effusion", "right", 1)

    if (
        progression.finding == "consolidation"
        and progression.severity == MAX_SEVERITY
        and progression.location in ("right_lower_lobe", "left_lower_lobe")
        and parapneumonic_draw < 0.4
    ):
        set_if_absent("pleural_effusion", laterality(progression.location), 1)

    return _couple_compressive_atelectasis(state, locked=locked)


def _couple_compressive_atelectasis(
    state: ChestState, locked: tuple[str, str | None] | None = None
) -> ChestState:
    """A large effusion collapses the adjacent lower lobe (at least mild atelectasis)."""
    for side in ("left", "right"):
        lobe = f"{side}_lower_lobe"
        if (
            state.severity("pleural_effusion", side) == MAX_SEVERITY
            and ("atelectasis", lobe) != locked
            and state.severity("atelectasis", lobe) == 0
        ):
            state = state.with_severity("atelectasis", lobe, 1)
    return state


def state_from_annotation(entries: list[AnnotationEntry]) -> tuple[ChestState, ChestState]:
    """The (prior, follow-up) states an annotation describes: its inverse, for checks."""
    prior = ChestState(
        tuple(
            FindingState(e.finding, e.location, e.severity_before_int)
            for e in entries
            if e.severity_before_int
        )
    )
    followup = ChestState(
        tuple(
            FindingState(e.finding, e.location, e.severity_after_int)
            for e in entries
            if e.severity_after_int
        )
    )
    return prior, followup
