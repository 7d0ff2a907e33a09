import pytest

from progemu_lite.phantom.findings import (
    FINDINGS,
    UnknownFindingError,
    direction_between,
    finding_spec,
    laterality,
    severity_from_word,
)
from progemu_lite.phantom.state import ChestState, FindingState


def test_every_finding_has_three_severity_words_that_round_trip():
    for name, spec in FINDINGS.items():
        assert len(set(spec.severity_words)) == 3
        for severity in range(4):
            assert severity_from_word(name, spec.severity_word(severity)) == severity


def test_unknown_finding_error_lists_known_names():
    with pytest.raises(UnknownFindingError, match="pleural_effusion"):
        finding_spec("effusion")


@pytest.mark.parametrize("severity", [-1, 4, 1.5, True])
def test_impossible_severity_is_refused(severity):
    with pytest.raises(UnknownFindingError, match="impossible severity"):
        FindingState("pleural_effusion", "left", severity)


def test_location_must_fit_the_finding():
    with pytest.raises(UnknownFindingError, match="allowed locations"):
        FindingState("cardiomegaly", "left", 1)
    with pytest.raises(UnknownFindingError, match="allowed locations"):
        FindingState("pleural_effusion", "lingula", 1)


def test_laterality_of_lobes():
    assert laterality("lingula") == "left"
    assert laterality("right_middle_lobe") == "right"
    assert laterality(None) is None


@pytest.mark.parametrize(
    ("before", "after", "direction"),
    [
        (0, 2, "new"),
        (1, 3, "worse"),
        (3, 1, "better"),
        (2, 0, "resolved"),
        (2, 2, "stable"),
        (0, 0, "absent"),
    ],
)
def test_direction_between(before, after, direction):
    assert direction_between(before, after) == direction


def test_chest_state_is_canonical_and_editable():
    a = ChestState((FindingState("nodule", "lingula", 1), FindingState("cardiomegaly", None, 2)))
    b = ChestState((FindingState("cardiomegaly", None, 2), FindingState("nodule", "lingula", 1)))
    assert a == b
    c = a.with_severity("nodule", "lingula", 0).with_severity("pleural_effusion", "left", 3)
    assert c.severity("nodule", "lingula") == 0
    assert c.severity("pleural_effusion", "left") == 3
    assert a.severity("nodule", "lingula") == 1  # the original is untouched
    with pytest.raises(ValueError, match="twice"):
        ChestState((FindingState("nodule", "lingula", 1), FindingState("nodule", "lingula", 2)))
