"""Text metrics: known values on hand-made cases, robustness to empty and foreign text."""

import math
import shutil

import pytest

from progemu_lite.evaluation.text_metrics import corpus_text_metrics, normalize_text, tokenize

REPORTS = [
    "The left pleural effusion has increased from small to moderate.",
    "New right lower lobe consolidation. No pneumothorax.",
    "Stable mild cardiomegaly; the pulmonary edema has resolved.",
]


def test_tokenize_lowercases_and_drops_punctuation_but_keeps_compounds():
    assert tokenize("Right-sided effusion, 1.5 cm; NO PTX!") == [
        "right-sided",
        "effusion",
        "1.5",
        "cm",
        "no",
        "ptx",
    ]
    assert normalize_text("  (Stable)  cardiomegaly.\n") == "stable cardiomegaly"
    assert tokenize("") == []


def test_identical_text_scores_one():
    scores = corpus_text_metrics(REPORTS, REPORTS, include_meteor=False, per_case=True)
    assert scores["per_case"]["rouge_l"] == [1.0, 1.0, 1.0]
    for n in range(1, 5):
        assert scores[f"bleu_{n}"] == pytest.approx(1.0)
    assert scores["rouge_l"] == pytest.approx(1.0)
    assert scores["cider"] == pytest.approx(10.0)  # CIDEr-D of a perfect corpus is 10
    assert scores["n_cases"] == 3
    assert "meteor" not in scores


def test_rouge_l_hand_computed_lcs():
    # LCS of the two token lists is "the left effusion has increased": 5 tokens.
    cand = "The left effusion has increased."
    ref = "The left pleural effusion has clearly increased in size."
    precision, recall, beta2 = 5 / 5, 5 / 9, 1.2**2
    expected = (1 + beta2) * precision * recall / (recall + beta2 * precision)
    scores = corpus_text_metrics([cand], [ref], include_meteor=False)
    assert scores["rouge_l"] == pytest.approx(expected, abs=1e-9)
    assert scores["rouge_l"] == pytest.approx(0.679287, abs=1e-6)
    # a non-contiguous LCS: a _ c _ d -> 3 of 4 candidate and 3 of 5 reference tokens
    p, r = 3 / 4, 3 / 5
    scores = corpus_text_metrics(["a b c d"], ["a x c y d"], include_meteor=False)
    assert scores["rouge_l"] == pytest.approx((1 + beta2) * p * r / (r + beta2 * p))


def test_bleu_brevity_penalty_known_value():
    # every candidate n-gram is in the reference; only the brevity penalty exp(1 - 3/2) acts
    scores = corpus_text_metrics(
        ["left effusion"], ["left effusion increased"], include_meteor=False
    )
    assert scores["bleu_1"] == pytest.approx(math.exp(-0.5), abs=1e-6)
    assert scores["bleu_2"] == pytest.approx(math.exp(-0.5), abs=1e-6)
    # no trigram in a 2-token candidate: only pycocoevalcap's tiny smoothing counts remain
    assert scores["bleu_3"] < 0.01


def test_several_references_take_the_best_one():
    single = corpus_text_metrics(
        ["small left effusion"], ["large right pneumothorax"], include_meteor=False
    )
    multi = corpus_text_metrics(
        ["small left effusion"],
        [["large right pneumothorax", "small left effusion"]],
        include_meteor=False,
    )
    assert single["rouge_l"] == 0.0
    assert multi["rouge_l"] == pytest.approx(1.0)


def test_empty_and_foreign_candidates_score_zero_without_crashing():
    cands = ["", "Лёгкие без очаговых изменений. 心影不大。", None]
    scores = corpus_text_metrics(cands, REPORTS, include_meteor=False)
    for name in ("bleu_1", "bleu_2", "bleu_3", "bleu_4", "rouge_l", "cider"):
        assert scores[name] == 0.0, name
    # an empty reference as well
    scores = corpus_text_metrics([""], [""], include_meteor=False)
    assert scores["rouge_l"] == 0.0 and scores["cider"] == 0.0


def test_bad_input_is_a_clear_error():
    with pytest.raises(ValueError, match="2 candidates but 1 references"):
        corpus_text_metrics(["a", "b"], ["a"], include_meteor=False)
    with pytest.raises(ValueError, match="no cases"):
        corpus_text_metrics([], [], include_meteor=False)
    with pytest.raises(ValueError, match="case 0 has no reference"):
        corpus_text_metrics(["a"], [[]], include_meteor=False)
    with pytest.raises(TypeError, match="must be a string"):
        tokenize(3)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("java") is None, reason="METEOR 1.5 needs a Java runtime")
def test_meteor_runs_one_jvm_over_the_corpus():
    cands = REPORTS + ["", "Лёгкие чистые.", "The left effusion has increased."]
    refs = REPORTS + REPORTS
    scores = corpus_text_metrics(cands, refs, per_case=True)
    each = scores["per_case"]["meteor"]
    assert len(each) == 6
    assert all(v > 0.95 for v in each[:3])  # identical text
    assert each[3] == 0.0 and each[4] == 0.0  # empty, another language
    assert 0.0 < each[5] < each[0]
    assert 0.0 < scores["meteor"] < 1.0
