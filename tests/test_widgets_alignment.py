"""Lesson 7 widgets (progemu_lite.widgets.alignment), driven headless on a tiny simulated set."""

from __future__ import annotations

import numpy as np
import pytest

from progemu_lite.evaluation.baselines import Case, CopyPrior, TrueFollowup
from progemu_lite.evaluation.classifier import auroc
from progemu_lite.evaluation.report import evaluate, load_cases
from progemu_lite.widgets import course_dataset
from progemu_lite.widgets.alignment import (
    NOT_COMPARABLE,
    PAPER_RESULTS,
    AlignmentExplorer,
    alignment_study,
    alignment_table,
    classifier_summary,
    comparability_html,
    course_classifier,
    course_systems,
    failure_gallery,
    head_probability_figure,
    paper_comparison,
    roc_curve,
    roc_figure,
)


@pytest.fixture(scope="module")
def lesson(tmp_path_factory):
    """A tiny dataset, a one-epoch classifier and the study of the three baselines."""
    import os

    old = os.environ.get("PROGEMU_HOME")
    os.environ["PROGEMU_HOME"] = str(tmp_path_factory.mktemp("alignment_home"))
    try:
        root = course_dataset(40, 2, 64, seed=1)
        classifier = course_classifier(root, epochs=1, max_pairs=40, seed=0)
        test = load_cases(root, "test", progress=False)
        train = load_cases(root, "train", progress=False)
        if not test.cases:  # a tiny run may draw no test patient: score val instead
            test = load_cases(root, "val", progress=False)
        systems, model = course_systems(train.cases)
        study = alignment_study(test, systems, classifier)
        yield {
            "root": root,
            "classifier": classifier,
            "test": test,
            "systems": systems,
            "study": study,
            "model": model,
        }
    finally:
        if old is None:
            os.environ.pop("PROGEMU_HOME", None)
        else:
            os.environ["PROGEMU_HOME"] = old


# ---------------------------------------------------------------------------------------------
# ROC


def test_roc_curve_area_is_the_auroc_with_ties():
    rng = np.random.default_rng(0)
    scores = np.round(rng.random(200), 1)  # many ties
    labels = (rng.random(200) < scores).astype(int)
    fpr, tpr = roc_curve(scores, labels)
    assert fpr[0] == 0 and tpr[0] == 0 and fpr[-1] == 1 and tpr[-1] == 1
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
    assert np.trapezoid(tpr, fpr) == pytest.approx(auroc(scores, labels), abs=1e-12)
    with pytest.raises(ValueError, match="both positives and negatives"):
        roc_curve([0.1, 0.2], [1, 1])


# ---------------------------------------------------------------------------------------------
# Classifier


def test_course_classifier_is_cached_and_reloaded(lesson):
    again = course_classifier(lesson["root"], epochs=1, max_pairs=40, seed=0)
    image = lesson["test"].cases[0].followup
    assert np.array_equal(again.predict([image]), lesson["classifier"].predict([image]))
    assert again.info == lesson["classifier"].info  # loaded from disk, not retrained
    summary = classifier_summary(again)
    assert "1 epochs" in summary and "Validation" in summary


def test_course_classifier_refuses_a_missing_dataset(tmp_path):
    with pytest.raises(FileNotFoundError, match="no dataset folder"):
        course_classifier(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="epochs"):
        course_classifier(tmp_path, epochs=0)


def test_summary_flags_a_weak_classifier(lesson):
    clf = lesson["classifier"]
    info = dict(clf.info)
    clf_weak = type(clf)(
        clf.network,
        clf.size,
        {
            **info,
            "val_severity_accuracy": 0.9,
            "val_majority_accuracy": 0.9,
            "val_presence_auroc": 0.55,
        },
    )
    assert "WEAK CLASSIFIER" in classifier_summary(clf_weak)
    clf_good = type(clf)(
        clf.network,
        clf.size,
        {
            **info,
            "val_severity_accuracy": 0.97,
            "val_majority_accuracy": 0.9,
            "val_presence_auroc": 0.95,
        },
    )
    assert "WEAK" not in classifier_summary(clf_good)


# ---------------------------------------------------------------------------------------------
# Study


def test_study_matches_the_evaluation_report(lesson):
    study = lesson["study"]
    assert set(study.readings) == {"true-follow-up", "copy-prior", "nearest-neighbour"}
    result = evaluate(
        lesson["test"],
        lesson["systems"],
        lesson["classifier"],
        n_boot=5,
        include_meteor=False,
        progress=False,
    )
    for row in result["rows"]:
        reading = study.readings[row["system"]]
        assert reading.auroc == pytest.approx(row["metrics"]["auroc"]["value"], nan_ok=True)
        assert reading.f1 == pytest.approx(row["metrics"]["f1"]["value"], nan_ok=True)
    table = alignment_table(study)
    assert table.splitlines()[0].split() == ["system", "AUROC", "F1", "aligned", "cases"]
    assert len(table.splitlines()) == 4


def test_positive_score_is_the_probability_of_the_asked_severity(lesson):
    study = lesson["study"]
    assert study.known, "the tiny set has cases with a known expectation"
    i = study.known[0]
    head, severity = study.expected[i]
    probs = lesson["classifier"].predict([study.cases[i].followup])[0]
    reading = study.readings["true-follow-up"]
    assert reading.positive[i] == pytest.approx(probs[head, severity], abs=1e-6)
    # copy-prior's image is the prior itself
    assert np.array_equal(study.readings["copy-prior"].outputs[i].image, study.cases[i].prior)


def test_failures_split_the_scored_cases(lesson):
    study = lesson["study"]
    for name, reading in study.readings.items():
        good = study.failures(name, aligned=True)
        bad = study.failures(name, aligned=False)
        assert sorted(good + bad) == study.known
        assert all(reading.positive[i] >= 0.5 for i in good)
        assert all(reading.positive[i] < 0.5 for i in bad)
        assert [reading.positive[i] for i in bad] == sorted(reading.positive[i] for i in bad)
        for aligned, picks in ((True, good), (False, bad)):
            figure = failure_gallery(study, name, aligned=aligned, limit=2)
            if not picks:
                assert figure is None
                continue
            assert figure.png.startswith(b"\x89PNG")
            for i in picks[:2]:
                assert study.cases[i].pair_id in figure.alt
            assert ("reads as aligned" if aligned else "reads as misaligned") in figure.caption


def test_study_refuses_empty_input(lesson):
    with pytest.raises(ValueError, match="no cases"):
        alignment_study([], [CopyPrior()], lesson["classifier"])
    with pytest.raises(ValueError, match="no systems"):
        alignment_study(lesson["test"], [], lesson["classifier"])


def test_unscored_case_is_left_out_of_the_pairs(lesson):
    case = lesson["test"].cases[0]
    bare = Case("bare", case.prior, case.prompt, case.followup, case.reference, None, None)
    study = alignment_study([case, bare], [TrueFollowup()], lesson["classifier"])
    assert study.expected[1] is None and study.known == [0]
    assert len(study.readings["true-follow-up"].scores) == 4  # one positive, three negatives
    assert np.isnan(study.readings["true-follow-up"].positive[1])


# ---------------------------------------------------------------------------------------------
# Figures and tables


def test_figures_have_alt_text_and_captions(lesson):
    study = lesson["study"]
    i = study.known[0]
    bars = head_probability_figure(lesson["classifier"], study.cases[i].prior, study.expected[i])
    assert bars.png.startswith(b"\x89PNG")
    assert "left pleural effusion" in bars.alt and "cardiomegaly" in bars.alt
    assert "★" in bars.caption and "prompt asks" in bars.caption
    roc = roc_figure(study)
    for name, reading in study.readings.items():
        assert f"{name}: AUROC {reading.auroc:.3f}" in roc.alt
    assert "line style" in roc.caption


def test_paper_table_sits_beside_ours_with_its_caveats(lesson):
    rows = [{"system": "copy-prior", "metrics": {"auroc": {"value": 0.5}, "f1": {"value": 0.25}}}]
    text = paper_comparison(rows).splitlines()
    assert text[0].split()[:2] == ["system", "gFID"]
    assert "29.210" in text[1] and "0.792" in text[1] and "0.891" in text[1]
    assert text[2].startswith("copy-prior (ours, simulated)")
    assert "0.500" in text[2] and "n/a" in text[2]  # METEOR etc. missing -> n/a
    assert PAPER_RESULTS["meteor"] == 0.410
    notes = comparability_html()
    assert "not comparable" in notes and "Inception" in notes and "simulated" in notes
    assert notes.count("<li>") == len(NOT_COMPARABLE)


# ---------------------------------------------------------------------------------------------
# Explorer


def test_explorer_shows_the_picked_case_and_system(lesson):
    study = lesson["study"]
    explorer = AlignmentExplorer(study)
    assert explorer.output_panel.updates == 1
    i = study.known[-1]
    explorer.system.value = "copy-prior"
    explorer.case.value = i
    case = study.cases[i]
    assert np.array_equal(explorer.prior_panel.image(), case.prior)
    assert np.array_equal(explorer.output_panel.image(), case.prior)  # copy-prior = the prior
    assert np.array_equal(explorer.followup_panel.image(), case.followup)
    verdict = "aligned" if study.readings["copy-prior"].aligned[i] else "misaligned"
    assert f"✔ {verdict}" in explorer.reading.value or f"✘ {verdict}" in explorer.reading.value
    assert "(asked)" in explorer.reading.value
    before = explorer.output_panel.updates
    explorer.system.value = "true-follow-up"
    assert np.array_equal(explorer.output_panel.image(), case.followup)
    assert explorer.output_panel.updates == before + 1  # one change, one redraw


def test_model_row_appears_by_itself_only_with_the_trained_lite_weights(lesson):
    from progemu_lite.widgets import lite_weights_shipped

    cases = lesson["test"].cases[:2]  # the nearest-neighbour baseline's pool
    systems, model = course_systems(cases, include_model=None, fast=True)
    assert model is None and len(systems) == 3  # fast mode (CI) never adds a random-weights row
    systems, model = course_systems(cases, include_model=None)
    if lite_weights_shipped():
        assert model is not None and model.trained and systems[-1].name == "model:lite"
        assert len(systems) == 4
    else:
        assert model is None and len(systems) == 3


@pytest.mark.slow
def test_the_course_model_plugs_into_the_same_protocol(lesson):
    import warnings

    from progemu_lite.widgets import UntrainedWeightsWarning

    train = load_cases(lesson["root"], "train", progress=False, limit=4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UntrainedWeightsWarning)
        systems, model = course_systems(
            train.cases, include_model=True, fast=True, max_text_tokens=8
        )
    assert model is not None and not model.trained and "UNTRAINED" in model.notice
    model_system = systems[-1]
    assert model_system.name == f"model:{model.name}"
    assert "RANDOM" in model_system.description
    cases = lesson["test"].cases[:2]
    study = alignment_study(cases, [systems[1], model_system], lesson["classifier"])
    reading = study.readings[model_system.name]
    assert [o.image.shape for o in reading.outputs] == [c.prior.shape for c in cases]
    assert reading.probabilities.shape == (2, 12, 4)
    np.testing.assert_allclose(reading.probabilities.sum(-1), 1.0, rtol=1e-5)
