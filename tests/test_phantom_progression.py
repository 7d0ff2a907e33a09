import json

import numpy as np
import pytest

from progemu_lite.phantom.findings import UnknownFindingError
from progemu_lite.phantom.progression import (
    AnnotationEntry,
    Progression,
    annotate,
    apply_progression,
    possible_progressions,
    sample_prior_state,
    sample_progression,
    state_from_annotation,
)
from progemu_lite.phantom.state import ChestState, FindingState


def state(*findings):
    return ChestState(tuple(FindingState(*f) for f in findings))


def test_unknown_finding_and_location_are_named():
    with pytest.raises(UnknownFindingError, match="pleural_efusion"):
        Progression("pleural_efusion", "left", "new", 2)
    with pytest.raises(UnknownFindingError, match="'middle'"):
        Progression("pleural_effusion", "middle", "new", 2)
    with pytest.raises(ValueError, match="direction 'sideways'"):
        Progression("pleural_effusion", "left", "sideways", 2)


@pytest.mark.parametrize("severity", [0, 4, -1])
def test_target_severity_outside_1_to_3(severity):
    with pytest.raises(ValueError, match="outside 1..3"):
        Progression("pleural_effusion", "left", "new", severity)


def test_resolved_target_must_be_zero():
    with pytest.raises(ValueError, match="severity 0"):
        Progression("pneumothorax", "right", "resolved", 1)


def test_impossible_combinations_against_the_prior():
    prior = state(("pleural_effusion", "left", 2))
    with pytest.raises(ValueError, match="already present"):
        Progression("pleural_effusion", "left", "new", 1).check_applies_to(prior)
    with pytest.raises(ValueError, match="target must be more severe"):
        Progression("pleural_effusion", "left", "worse", 1).check_applies_to(prior)
    with pytest.raises(ValueError, match="target must be less severe"):
        Progression("pleural_effusion", "left", "better", 3).check_applies_to(prior)
    with pytest.raises(ValueError, match="absent"):
        Progression("pleural_effusion", "right", "resolved", 0).check_applies_to(prior)
    with pytest.raises(ValueError, match="absent; use new"):
        Progression("pleural_effusion", "right", "worse", 2).check_applies_to(prior)
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="already present"):
        apply_progression(prior, Progression("pleural_effusion", "left", "new", 3), rng)


def test_sampled_priors_are_realistic():
    rng = np.random.default_rng(1)
    counts = [len(sample_prior_state(rng).findings) for _ in range(400)]
    assert 0.1 < counts.count(0) / 400 < 0.35  # sometimes normal
    assert sum(c <= 2 for c in counts) / 400 > 0.75  # often 0-2 findings
    assert max(counts) <= 4  # 3 plus a possible coupled atelectasis


def test_sampled_progressions_are_valid_and_varied():
    rng = np.random.default_rng(2)
    directions = set()
    findings = set()
    for _ in range(300):
        prior = sample_prior_state(rng)
        progression = sample_progression(prior, rng)
        progression.check_applies_to(prior)  # raises if invalid
        assert progression in possible_progressions(prior)
        directions.add(progression.direction)
        findings.add(progression.finding)
    assert directions == {"new", "worse", "better", "resolved"}
    assert len(findings) == 7


def test_apply_keeps_others_stable_and_annotates_everything():
    prior = state(("cardiomegaly", None, 1), ("nodule", "lingula", 2))
    followup, entries = apply_progression(
        prior, Progression("pneumothorax", "right", "new", 2), np.random.default_rng(0)
    )
    assert followup.severity("pneumothorax", "right") == 2
    assert followup.severity("cardiomegaly", None) == 1
    assert followup.severity("nodule", "lingula") == 2
    assert entries[0] == AnnotationEntry("pneumothorax", "right", "new", "absent", "moderate")
    assert {(e.finding, e.direction) for e in entries[1:]} == {
        ("cardiomegaly", "stable"),
        ("nodule", "stable"),
    }
    assert entries[1].severity_after in ("mild", "medium")


def test_large_effusion_brings_compressive_atelectasis():
    prior = state(("pleural_effusion", "right", 1))
    followup, entries = apply_progression(
        prior, Progression("pleural_effusion", "right", "worse", 3), np.random.default_rng(0)
    )
    assert followup.severity("atelectasis", "right_lower_lobe") == 1
    assert AnnotationEntry("atelectasis", "right_lower_lobe", "new", "absent", "mild") in entries


def test_edema_with_cardiomegaly_can_bring_bilateral_effusions():
    prior = state(("cardiomegaly", None, 2))
    progression = Progression("pulmonary_edema", "bilateral", "new", 2)
    outcomes = set()
    for seed in range(40):
        followup, entries = apply_progression(prior, progression, np.random.default_rng(seed))
        effusions = (
            followup.severity("pleural_effusion", "left"),
            followup.severity("pleural_effusion", "right"),
        )
        outcomes.add(effusions)
        # Whatever happened is in the annotation.
        assert state_from_annotation(entries) == (prior, followup)
    assert outcomes == {(0, 0), (1, 1)}
    # Without cardiomegaly there is no congestive coupling.
    followup, _ = apply_progression(ChestState(), progression, np.random.default_rng(0))
    assert followup.keys() == [("pulmonary_edema", "bilateral")]


def test_requested_change_is_never_overridden_by_a_coupling():
    prior = state(("pleural_effusion", "left", 3), ("atelectasis", "left_lower_lobe", 1))
    followup, entries = apply_progression(
        prior,
        Progression("atelectasis", "left_lower_lobe", "resolved", 0),
        np.random.default_rng(0),
    )
    assert followup.severity("atelectasis", "left_lower_lobe") == 0
    assert entries[0].direction == "resolved"


def test_every_change_in_random_pairs_is_annotated():
    rng = np.random.default_rng(3)
    for _ in range(300):
        prior = sample_prior_state(rng)
        progression = sample_progression(prior, rng)
        followup, entries = apply_progression(prior, progression, rng)
        assert state_from_annotation(entries) == (prior, followup)
        assert (entries[0].finding, entries[0].location) == progression.key
        assert entries[0].direction == progression.direction


def test_annotation_is_json_serialisable_and_round_trips():
    prior = state(("consolidation", "right_lower_lobe", 2), ("cardiomegaly", None, 2))
    followup = prior.with_severity("consolidation", "right_lower_lobe", 0)
    entries = annotate(prior, followup)
    text = json.dumps([e.to_dict() for e in entries])
    assert [AnnotationEntry.from_dict(d) for d in json.loads(text)] == entries
    assert json.loads(text)[0] == {
        "finding": "consolidation",
        "location": "right_lower_lobe",
        "direction": "resolved",
        "severity_before": "moderate",
        "severity_after": "absent",
    }


def test_annotation_entry_rejects_inconsistent_direction():
    with pytest.raises(ValueError, match="says worse"):
        AnnotationEntry("pleural_effusion", "left", "worse", "large", "small")
    with pytest.raises(UnknownFindingError, match="huge"):
        AnnotationEntry("pleural_effusion", "left", "worse", "small", "huge")


def test_determinism():
    def run(seed):
        rng = np.random.default_rng(seed)
        prior = sample_prior_state(rng)
        progression = sample_progression(prior, rng)
        return prior, progression, apply_progression(prior, progression, rng)

    assert run(7) == run(7)
