import re

import numpy as np
import pytest

from progemu_lite.phantom.findings import CHEXPERT_LABELS, FINDINGS, LOCATION_TEXT
from progemu_lite.phantom.progression import (
    AnnotationEntry,
    Progression,
    apply_progression,
    sample_prior_state,
    sample_progression,
)
from progemu_lite.phantom.state import ChestState, FindingState
from progemu_lite.phantom.text import (
    chexpert_labels,
    interpretation_sentences,
    interpretation_text,
    prompt_text,
    sentence_for,
)

# Words that show a sentence describes each kind of change (written here, not taken from the
# module, so the test checks the texts rather than the templates against themselves).
DIRECTION_CUES = {
    "new": ("new", "appeared", "development", "appearance", "now seen"),
    "worse": ("worse", "increase", "progressed", "pronounced", "more"),
    "better": ("decrease", "improv", "diminished", "less"),
    "resolved": ("resol", "cleared", "no longer"),
    "stable": ("stable", "unchanged", "persistent"),
}
FINDING_WORDS = {
    "pleural_effusion": ("effusion", "pleural fluid"),
    "cardiomegaly": ("cardiomegaly", "cardiac"),
    "pneumothorax": ("pneumothorax", "pleural air"),
    "consolidation": ("consolidation", "airspace"),
    "pulmonary_edema": ("edema",),
    "atelectasis": ("atelectasis", "atelectatic", "volume loss"),
    "nodule": ("nodule", "nodular"),
}


def location_words(location):
    if location is None:
        return ("",)
    if location == "bilateral":
        return ("bilateral", "both")
    if location in ("left", "right"):
        return (location,)
    return (LOCATION_TEXT[location],)


def describes(sentence: str, entry: AnnotationEntry) -> bool:
    text = sentence.lower()
    return (
        any(w in text for w in FINDING_WORDS[entry.finding])
        and any(w in text for w in location_words(entry.location))
        and any(w in text for w in DIRECTION_CUES[entry.direction])
        and (entry.direction == "resolved" or entry.severity_after in text)
    )


def test_every_change_in_the_annotation_is_in_the_interpretation():
    rng = np.random.default_rng(0)
    for _ in range(300):
        prior = sample_prior_state(rng)
        progression = sample_progression(prior, rng)
        _, entries = apply_progression(prior, progression, rng)
        sentences = interpretation_sentences(entries, rng)
        for entry in entries:
            assert any(describes(s, entry) for s in sentences), (entry, sentences)
        # Changes first, one sentence each, and none of them droppable by the augmentation.
        changed = [e for e in entries if e.changed]
        for sentence in sentences[: len(changed)]:
            assert not re.match(r"(No|Unchanged|Persistent)\b", sentence), sentence


def test_stables_and_negatives_are_separate_sentences():
    prior = ChestState((FindingState("cardiomegaly", None, 1),))
    _, entries = apply_progression(
        prior, Progression("pleural_effusion", "left", "new", 2), np.random.default_rng(0)
    )
    for seed in range(20):
        sentences = interpretation_sentences(entries, np.random.default_rng(seed))
        assert len(sentences) >= 3
        assert re.match(r"(Stable|Unchanged|Persistent) mild", sentences[1])
        assert all(s.startswith("No ") for s in sentences[2:])
        assert all(s.endswith(".") and s[0].isupper() for s in sentences)
        # The effusion is present, so no negative may deny it.
        assert not any("effusion" in s for s in sentences[2:])


@pytest.mark.parametrize("finding", list(FINDINGS))
@pytest.mark.parametrize("direction", ["new", "worse", "better", "resolved", "stable"])
def test_at_least_five_phrasings_per_finding_and_direction(finding, direction):
    location = FINDINGS[finding].locations[0]
    before, after = {
        "new": ("absent", 2),
        "worse": (1, 3),
        "better": (3, 1),
        "resolved": (2, "absent"),
        "stable": (2, 2),
    }[direction]
    words = FINDINGS[finding].severity_words

    def word(s):
        return s if s == "absent" else words[s - 1]

    entry = AnnotationEntry(finding, location, direction, word(before), word(after))
    rng = np.random.default_rng(0)
    phrasings = {sentence_for(entry, rng) for _ in range(200)}
    assert len(phrasings) >= 5, phrasings
    assert all(describes(s, entry) for s in phrasings)
    if direction != "stable":
        progression_before = 0 if before == "absent" else before
        progression_after = 0 if after == "absent" else after
        prior = ChestState(
            (FindingState(finding, location, progression_before),) if progression_before else ()
        )
        progression = Progression(finding, location, direction, progression_after)
        prompts = {prompt_text(progression, prior, rng) for _ in range(200)}
        assert len(prompts) >= 5, prompts


def test_synonyms_are_used():
    entry = AnnotationEntry("pleural_effusion", "left", "worse", "small", "moderate")
    rng = np.random.default_rng(0)
    text = " ".join(sentence_for(entry, rng) for _ in range(200)).lower()
    assert "pleural fluid" in text and "pleural effusion" in text
    assert "increased" in text and "has worsened" in text


def test_texts_are_deterministic_given_the_rng():
    rng_state = sample_prior_state(np.random.default_rng(4))
    progression = sample_progression(rng_state, np.random.default_rng(4))
    _, entries = apply_progression(rng_state, progression, np.random.default_rng(4))
    first = interpretation_text(entries, np.random.default_rng(9))
    assert first == interpretation_text(entries, np.random.default_rng(9))
    assert prompt_text(progression, rng_state, np.random.default_rng(9)) == prompt_text(
        progression, rng_state, np.random.default_rng(9)
    )


def test_prompt_reads_like_icg_cxr():
    progression = Progression("pleural_effusion", "left", "new", 2)
    prompts = {prompt_text(progression, ChestState(), np.random.default_rng(s)) for s in range(100)}
    assert "Moderate pleural effusion has developed in the left lower lung." in prompts
    with pytest.raises(ValueError, match="already present"):
        prompt_text(
            progression,
            ChestState((FindingState("pleural_effusion", "left", 1),)),
            np.random.default_rng(0),
        )


def test_chexpert_labels():
    normal = chexpert_labels(ChestState())
    assert len(normal) == len(CHEXPERT_LABELS) == 14
    labels = dict(zip(CHEXPERT_LABELS, normal, strict=True))
    assert labels["No Finding"] == 1
    assert labels["Pleural Effusion"] == 0
    assert labels["Fracture"] == labels["Support Devices"] == labels["Pneumonia"] == -100

    sick = ChestState(
        (
            FindingState("cardiomegaly", None, 2),
            FindingState("consolidation", "lingula", 1),
            FindingState("pleural_effusion", "right", 1),
        )
    )
    labels = dict(zip(CHEXPERT_LABELS, chexpert_labels(sick), strict=True))
    assert labels["No Finding"] == 0
    assert labels["Cardiomegaly"] == labels["Enlarged Cardiomediastinum"] == 1
    assert labels["Consolidation"] == labels["Lung Opacity"] == labels["Pleural Effusion"] == 1
    assert labels["Edema"] == labels["Pneumothorax"] == labels["Lung Lesion"] == 0
