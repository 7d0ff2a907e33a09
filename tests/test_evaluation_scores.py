"""Finding-level scores against expert annotations: hand-made cases with known counts."""

import pytest

from progemu_lite.evaluation.finding_scores import (
    missed_stable_findings,
    parse_annotation,
    prompted_change_reported,
    score_case,
    score_corpus,
    stable_findings_by_severity,
    stable_findings_reported,
)


def entry(finding, location, direction, before=None, after=None):
    return {
        "finding": finding,
        "location": location,
        "direction": direction,
        "severity_before": before,
        "severity_after": after,
    }


EFFUSION_WORSE = entry("pleural_effusion", "left", "worse", "small", "moderate")
PTX_NEW = entry("pneumothorax", "right", "new", "absent", "small")


def test_perfect_interpretation_and_pertinent_negatives():
    text = (
        "The left pleural effusion has increased from small to moderate. "
        "A new small right pneumothorax. No consolidation. Heart size is normal."
    )
    case = score_case(text, [EFFUSION_WORSE, PTX_NEW])
    assert (case.tp, case.fp, case.fn) == (2, 0, 0)
    # "No consolidation" and "heart size is normal" are not claims
    assert {c.finding for c in case.claims} == {"pleural_effusion", "pneumothorax"}


def test_hallucination_and_omission_counts():
    text = "The left pleural effusion has increased. New right lower lobe consolidation."
    case = score_case(text, [EFFUSION_WORSE, PTX_NEW])
    assert (case.tp, case.fp, case.fn) == (1, 1, 1)
    assert [c.finding for c in case.hallucinated] == ["consolidation"]
    assert [a.finding for a in case.omitted] == ["pneumothorax"]
    scores = score_corpus([text], [[EFFUSION_WORSE, PTX_NEW]])
    assert scores["micro"] == pytest.approx({"precision": 0.5, "recall": 0.5, "f1": 0.5})
    assert scores["hallucination_rate"] == 0.5 and scores["omission_rate"] == 0.5
    per = scores["per_finding"]
    assert per["pleural_effusion"]["f1"] == 1.0
    assert (per["pneumothorax"]["recall"], per["pneumothorax"]["fn"]) == (0.0, 1)
    assert (per["consolidation"]["precision"], per["consolidation"]["fp"]) == (0.0, 1)
    assert scores["macro"]["f1"] == pytest.approx(1 / 3)


def test_wrong_side_or_direction_is_both_a_hallucination_and_an_omission():
    wrong_side = score_case("The right pleural effusion has increased.", [EFFUSION_WORSE])
    assert (wrong_side.tp, wrong_side.fp, wrong_side.fn) == (0, 1, 1)
    wrong_way = score_case("The left pleural effusion has decreased.", [EFFUSION_WORSE])
    assert (wrong_way.tp, wrong_way.fp, wrong_way.fn) == (0, 1, 1)
    assert wrong_way.lenient_tp == 1  # the right finding at the right side, wrong direction
    scores = score_corpus(["The left pleural effusion has decreased."], [[EFFUSION_WORSE]])
    assert scores["micro"]["f1"] == 0.0 and scores["finding_level"]["f1"] == 1.0


def test_side_matching_rules():
    # no side named: matches either side
    assert score_case("The effusion has increased.", [EFFUSION_WORSE]).tp == 1
    # a lobe matches by its side; edema and cardiomegaly have one place only
    lobe = entry("consolidation", "lingula", "new")
    assert score_case("New left lower lobe consolidation.", [lobe]).tp == 1
    edema = entry("pulmonary_edema", "bilateral", "better")
    heart = entry("cardiomegaly", None, "stable")
    case = score_case("Pulmonary edema has improved. Stable cardiomegaly.", [edema, heart])
    assert (case.tp, case.fp, case.fn) == (2, 0, 0)
    # a bilateral one-sided finding is two claims: one matches, one is a hallucination
    case = score_case("Bilateral pleural effusions have increased.", [EFFUSION_WORSE])
    assert (case.tp, case.fp, case.fn) == (1, 1, 0)


def test_repeated_claims_count_once():
    text = "Increased left pleural effusion. The left pleural effusion has increased."
    case = score_case(text, [EFFUSION_WORSE])
    assert (case.tp, case.fp, case.fn) == (1, 0, 0)


def test_severity_accuracy_is_separate():
    right = "The left pleural effusion has increased, now moderate."
    wrong = "The left pleural effusion has increased, now large."
    silent = "The left pleural effusion has increased."
    scores = score_corpus([right, wrong, silent], [[EFFUSION_WORSE]] * 3)
    assert scores["micro"]["f1"] == 1.0
    assert scores["severity_pairs"] == 2
    assert scores["severity_accuracy"] == 0.5


def test_empty_foreign_and_malformed_input_is_scored_and_counted():
    texts = [
        "",  # empty: every annotated change is an omission
        "Der linke Pleuraerguss hat zugenommen.",  # another language
        None,
        "The left pleural effusion has increased.",  # annotation missing
        "The left pleural effusion has increased.",  # annotation not a list
        "The left pleural effusion has increased.",  # every entry malformed
        "The left pleural effusion has increased.",  # one good entry, one malformed
    ]
    annotations = [
        [EFFUSION_WORSE],
        [EFFUSION_WORSE],
        [PTX_NEW],
        None,
        "pleural effusion worse",
        [{"finding": "fracture"}, 7],
        [EFFUSION_WORSE, entry("pleural_effusion", "left", "worse", "tiny", "huge")],
    ]
    scores = score_corpus(texts, annotations)
    assert scores["n_cases"] == 7
    assert scores["unscorable"] == 3 and scores["n_scored"] == 4
    assert scores["empty_text"] == 2 and scores["no_findings_text"] == 1
    assert scores["malformed_entries"] == 3
    assert scores["annotated"] == 4 and scores["micro"]["recall"] == 0.25
    assert scores["omission_rate"] == 0.75 and scores["cases_with_omission"] == 0.75
    assert sum(scores["unscorable_reasons"].values()) == 3


def test_parse_annotation_reports_each_problem():
    valid, problems = parse_annotation(
        [EFFUSION_WORSE, entry("nodule", "left", "new"), entry("atelectasis", "lingula", "worse")]
    )
    assert len(valid) == 1
    assert "nodule cannot be at 'left'" in problems[0]
    assert "atelectasis cannot be at 'lingula'" in problems[1]
    valid, problems = parse_annotation([entry("pneumothorax", "left", "absent")])
    assert valid == [] and "direction 'absent'" in problems[0]
    # an empty annotation is valid: nothing changed, so every claim is a hallucination
    case = score_case("New right pneumothorax.", [])
    assert (case.status, case.tp, case.fp, case.fn) == ("scored", 0, 1, 0)
    assert score_case("No change.", []).status == "scored"


def test_corpus_length_mismatch_is_a_clear_error():
    with pytest.raises(ValueError, match="2 texts but 1 annotations"):
        score_corpus(["a", "b"], [[]])


def test_annotation_words_are_normalised():
    valid, problems = parse_annotation(
        [
            {"finding": "Pleural effusion", "location": "Left ", "direction": "WORSE"},
            {"finding": "pulmonary_edema", "direction": "better"},  # one possible place
        ]
    )
    assert problems == []
    assert [(a.finding, a.location, a.direction) for a in valid] == [
        ("pleural_effusion", "left", "worse"),
        ("pulmonary_edema", "bilateral", "better"),
    ]


def test_generated_interpretations_of_the_phantom_score_perfectly():
    """Texts written by the phantom's generator from an annotation score F1 = 1 against it."""
    np = pytest.importorskip("numpy")
    from progemu_lite.phantom.progression import AnnotationEntry
    from progemu_lite.phantom.text import interpretation_text

    rng = np.random.default_rng(3)
    entries = [
        AnnotationEntry("pleural_effusion", "left", "worse", "small", "large"),
        AnnotationEntry("pneumothorax", "right", "new", "absent", "moderate"),
        AnnotationEntry("consolidation", "right_lower_lobe", "resolved", "patchy", "absent"),
        AnnotationEntry("cardiomegaly", None, "stable", "mild", "mild"),
        AnnotationEntry("nodule", "lingula", "better", "large", "small"),
    ]
    texts, annotations = [], []
    for k in range(40):
        chosen = [entries[j] for j in rng.choice(len(entries), size=1 + k % 4, replace=False)]
        texts.append(interpretation_text(chosen, rng))
        annotations.append(chosen)
    scores = score_corpus(texts, annotations)
    assert scores["unscorable"] == 0
    assert scores["micro"]["f1"] == 1.0, [t for t in texts]
    assert scores["severity_accuracy"] == 1.0


CARDIOMEGALY_STABLE = entry("cardiomegaly", None, "stable", "moderate", "moderate")
REQUEST_EFFUSION = {"finding": "pleural_effusion", "location": "left", "direction": "worse"}


def test_prompted_change_needs_finding_side_and_direction():
    annotation = [EFFUSION_WORSE, CARDIOMEGALY_STABLE]
    right = score_case("The left pleural effusion has increased.", annotation)
    assert prompted_change_reported(right, REQUEST_EFFUSION) is True
    for text in (
        "The right pleural effusion has increased.",  # wrong side
        "The left pleural effusion has decreased.",  # wrong direction
        "Stable cardiomegaly.",  # not named at all
        "",
    ):
        assert prompted_change_reported(score_case(text, annotation), REQUEST_EFFUSION) is False
    # cannot be judged: no request, unscorable annotation, request not in the annotation
    assert prompted_change_reported(right, None) is None
    assert prompted_change_reported(score_case("x", None), REQUEST_EFFUSION) is None
    other = {"finding": "pneumothorax", "location": "right", "direction": "new"}
    assert prompted_change_reported(right, other) is None


def test_stable_findings_are_reported_only_when_stated():
    annotation = [EFFUSION_WORSE, CARDIOMEGALY_STABLE]
    echo = score_case("The left pleural effusion has increased.", annotation)
    assert stable_findings_reported(echo) == (0, 1)
    full = score_case(
        "The left pleural effusion has increased. Stable moderate cardiomegaly.", annotation
    )
    assert stable_findings_reported(full) == (1, 1)
    worse = score_case(
        "The left pleural effusion has increased. Cardiomegaly is worse.", annotation
    )
    assert stable_findings_reported(worse) == (0, 1)
    assert stable_findings_reported(score_case("x", None)) == (0, 0)


def test_missed_stable_findings_say_how_they_were_missed():
    effusion_stable = entry("pleural_effusion", "left", "stable", "small", "small")
    annotation = [PTX_NEW, effusion_stable, CARDIOMEGALY_STABLE]
    prompt_echo = "A small right pneumothorax has developed."

    def how(text):
        return dict(missed_stable_findings(score_case(f"{prompt_echo} {text}", annotation)))

    assert how("") == {"pleural_effusion": "not mentioned", "cardiomegaly": "not mentioned"}
    assert how("No pleural effusion. The heart is normal in size.") == {
        "pleural_effusion": "denied",
        "cardiomegaly": "denied",
    }
    # the other side's effusion denied is not this one denied; claimed on the wrong side or
    # with another direction is misstated
    assert how("No right pleural effusion. Stable cardiomegaly.") == {
        "pleural_effusion": "not mentioned"
    }
    assert how("Stable small right pleural effusion. Stable cardiomegaly.") == {
        "pleural_effusion": "misstated"
    }
    assert how("The left pleural effusion has increased. Cardiomegaly is worse.") == {
        "pleural_effusion": "misstated",
        "cardiomegaly": "misstated",
    }
    assert how("Stable small left pleural effusion. Stable cardiomegaly.") == {}
    # the same counts per annotated severity: which sizes a model sees
    by_severity = stable_findings_by_severity(
        score_case(f"{prompt_echo} Stable cardiomegaly.", annotation)
    )
    assert by_severity == {
        ("pleural_effusion", "small"): (0, 1),
        ("cardiomegaly", "moderate"): (1, 1),
    }
    assert missed_stable_findings(score_case("x", None)) == []
