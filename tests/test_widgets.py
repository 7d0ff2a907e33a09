"""progemu_lite.widgets, driven headless: construct, set values, click buttons, read the images."""

from __future__ import annotations

import numpy as np
import pytest

from progemu_lite.data.dicom import load_dataset, read_radiograph
from progemu_lite.data.icgcxr import iter_pairs, load_pair_images
from progemu_lite.widgets import (
    GRADING_EXAMPLE,
    DicomWindowing,
    FigurePanel,
    FindingsGallery,
    InterpretationGrader,
    PairBrowser,
    anatomy_tour,
    compare_interpretations,
    course_dataset,
    dataset_summary,
    difference_image,
    figure_html,
    header_html,
    load_deidentified,
    png_bytes,
    sample_dicom_path,
    score_table,
)
from progemu_lite.widgets.figures import OKABE_ITO, outline
from progemu_lite.widgets.grading import TYPE_YOUR_OWN

# ---------------------------------------------------------------------------------------------
# Figures


def test_figure_panel_round_trips_the_image_with_alt_and_caption():
    image = np.arange(64 * 48, dtype=np.uint32).reshape(64, 48) % 256
    panel = FigurePanel(width=96)
    panel.show(image.astype(np.uint8), alt='a "gradient" <test>', caption="Caption & more")
    assert np.array_equal(panel.image(), image.astype(np.uint8))
    assert 'alt="a &quot;gradient&quot; &lt;test&gt;"' in panel.value
    assert "<figcaption" in panel.value and "Caption &amp; more" in panel.value
    assert panel.updates == 1


def test_figures_refuse_missing_alt_text_and_bad_images():
    with pytest.raises(ValueError, match="alt text"):
        figure_html(png_bytes(np.zeros((4, 4), np.uint8)), alt=" ", caption="x")
    with pytest.raises(ValueError, match="shape"):
        png_bytes(np.zeros((4, 4, 2), np.uint8))
    with pytest.raises(ValueError, match="dtype"):
        png_bytes(np.zeros((4, 4), np.int16))


def test_difference_image_is_orange_where_denser_and_purple_where_darker():
    prior = np.full((8, 8), 100, np.uint8)
    followup = prior.copy()
    followup[0, 0], followup[7, 7] = 200, 0
    rgb, limit = difference_image(prior, followup)
    assert limit >= 8
    denser, darker, same = rgb[0, 0].astype(int), rgb[7, 7].astype(int), rgb[3, 3].astype(int)
    assert denser[0] > denser[2]  # orange: more red than blue
    assert darker[2] > darker[0]  # purple: more blue than red
    assert same.min() > 200  # no change: near white
    with pytest.raises(ValueError, match="differ in size"):
        difference_image(prior, np.zeros((4, 4), np.uint8))


def test_outline_colours_only_the_boundary():
    mask = np.zeros((20, 20), bool)
    mask[5:15, 5:15] = True
    rgb = outline(np.zeros((20, 20), np.uint8), mask)
    orange = [int(OKABE_ITO["orange"][i : i + 2], 16) for i in (1, 3, 5)]
    assert list(rgb[5, 10]) == orange and list(rgb[6, 10]) == orange
    assert list(rgb[10, 10]) == [0, 0, 0] and list(rgb[0, 0]) == [0, 0, 0]


# ---------------------------------------------------------------------------------------------
# Lesson 1


@pytest.fixture(scope="module")
def deidentified():
    return load_deidentified()


def test_windowing_refuses_a_dataset_that_is_not_deidentified():
    with pytest.raises(ValueError, match="not de-identified"):
        DicomWindowing(load_dataset(sample_dicom_path()))


def test_deidentified_header_shows_no_original_identity(deidentified):
    dataset, report = deidentified
    original = load_dataset(sample_dicom_path())
    table = header_html(dataset)
    assert str(original.PatientName) not in table
    assert report.patient_pseudonym in table
    # A fixed course key: the same pseudonym in every class run.
    assert load_deidentified()[1].patient_pseudonym == report.patient_pseudonym


def test_windowing_matches_the_dicom_reader_and_reacts_to_sliders(deidentified):
    dataset, _ = deidentified
    viewer = DicomWindowing(dataset, display_size=256)
    assert (viewer.center.value, viewer.width.value) == (15000.0, 30000.0)  # the header's
    # MONOCHROME1: the reader's own conversion (header window, inverted), shrunk the same way.
    reference = read_radiograph(dataset, size=256).pixels
    top, left, rows, cols = read_radiograph(dataset, size=256).content_box
    shown = viewer.panel.image().astype(np.float32) / 255
    assert shown.shape == (rows, cols)
    assert np.abs(shown - reference[top : top + rows, left : left + cols]).mean() < 0.02
    before = viewer.panel.image()
    viewer.width.value = 3000.0
    narrow = viewer.panel.image()
    clipped = lambda image: np.mean((image == 0) | (image == 255))  # noqa: E731
    assert clipped(narrow) > clipped(before) + 0.2
    viewer.auto_button.click()
    assert (viewer.center.value, viewer.width.value) == pytest.approx(viewer.auto_window)
    viewer.reset_button.click()
    assert (viewer.center.value, viewer.width.value) == (15000.0, 30000.0)
    assert viewer.panel.updates == 4
    assert "center 15000" in viewer.panel.alt


def test_findings_gallery_renders_what_the_controls_say():
    gallery = FindingsGallery(seed=3, size=64, severity=0)
    normal = gallery.normal_panel.image()
    assert np.array_equal(gallery.finding_panel.image(), normal)  # severity 0: no finding
    renders = gallery.renders
    gallery.severity.value = 3
    assert gallery.renders == renders + 1
    region = gallery.renderer.region("pleural_effusion", "left", gallery.acquisition)
    changed = gallery.finding_panel.image().astype(int) - normal.astype(int)
    assert np.abs(changed[region]).mean() > 5 * np.abs(changed[~region]).mean()
    assert "large left pleural effusion" in gallery.finding_panel.alt

    gallery.finding.value = "consolidation"  # one redraw, locations follow the finding
    assert gallery.renders == renders + 2
    assert gallery.location.value == "right_upper_lobe"
    assert "right middle lobe" in [label for label, _ in gallery.location.options]
    gallery.finding.value = "cardiomegaly"
    assert gallery.location.disabled and gallery.location.value is None

    gallery.outline_region.value = True
    assert gallery.finding_panel.image().ndim == 3  # RGB with the outline

    gallery.new_patient.click()
    assert gallery.seed == 4
    assert not np.array_equal(gallery.normal_panel.image()[..., 0], normal)
    assert "patient 4" in gallery.normal_panel.alt


def test_anatomy_tour_is_a_captioned_figure():
    figure = anatomy_tour(seed=1, size=64)
    assert figure.png.startswith(b"\x89PNG")
    assert "Heart" in figure.alt and "Left hemidiaphragm" in figure.alt
    assert "<figcaption" in figure._repr_html_()


# ---------------------------------------------------------------------------------------------
# Lesson 2


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    import os

    old = os.environ.get("PROGEMU_HOME")
    os.environ["PROGEMU_HOME"] = str(tmp_path_factory.mktemp("home"))
    try:
        yield course_dataset(patients=4, pairs_per_patient=2, size=64, seed=0)
    finally:
        if old is None:
            os.environ.pop("PROGEMU_HOME")
        else:
            os.environ["PROGEMU_HOME"] = old


def test_course_dataset_is_made_once(tiny_dataset):
    json_file = next(tiny_dataset.rglob("*.json"))
    stamp = json_file.stat().st_mtime_ns
    assert course_dataset(patients=4, pairs_per_patient=2, size=64, seed=0) == tiny_dataset
    assert json_file.stat().st_mtime_ns == stamp
    summary = dataset_summary(list(iter_pairs(tiny_dataset)))
    counts = [int(line.split(": ")[1].split()[0]) for line in summary.splitlines()[:-1]]
    assert sum(counts) == 8
    assert summary.splitlines()[-1].startswith("annotated changes:")


def test_course_dataset_keeps_generator_versions_apart(tiny_dataset):
    import json

    versions = {}
    for version in (1, 2):
        root = course_dataset(patients=4, pairs_per_patient=2, size=64, seed=0,
                              generator_version=version)  # fmt: skip
        versions[root] = json.loads((root / "manifest.json").read_text())["generator-version"]
    assert sorted(versions.values()) == [1, 2] and tiny_dataset in versions
    assert all(root.parent == tiny_dataset.parent for root in versions)


def test_pair_browser_follows_split_patient_and_pair(tiny_dataset):
    browser = PairBrowser(tiny_dataset, image_width=64)
    records = browser.records
    assert len(records) == 8
    split = browser.split.options[1]
    browser.split.value = split
    assert browser.shown.split == split
    assert set(browser.patient.options) == {r.subject_id for r in records if r.split == split}

    target = records[-1]
    shown = browser.select(target.pair_id)
    assert shown is browser.shown and browser.pair.value is target
    prior, followup = load_pair_images(target)
    assert np.array_equal(browser.prior_panel.image(), prior)
    assert np.array_equal(browser.followup_panel.image(), followup)
    assert browser.difference_panel.image().shape == (*prior.shape, 3)
    assert target.prompt in browser.texts.value.replace("&#x27;", "'")
    assert "progression-description" in browser.json.value
    with pytest.raises(KeyError, match="no pair"):
        browser.select("nope")


def test_pair_browser_refuses_an_empty_folder(tmp_path):
    with pytest.raises(ValueError, match="no ICG-CXR pairs"):
        PairBrowser(tmp_path)


# ---------------------------------------------------------------------------------------------
# Lesson 6


def test_ngram_scores_and_finding_scores_disagree_where_the_lesson_says():
    grades = compare_interpretations(GRADING_EXAMPLE, include_meteor=False)
    paraphrase = grades["paraphrase (clinically correct)"]
    flip = grades["negation flip (one word)"]
    assert paraphrase.finding_f1 == 1.0 and paraphrase.text_scores["bleu_3"] < 0.1
    assert flip.text_scores["bleu_3"] > 0.8 and flip.finding_f1 < 0.7 and flip.case.fn == 1
    assert grades["hallucination"].case.fp == 1 and grades["omission"].case.fn == 1
    assert grades["copy of the reference"].finding_f1 == 1.0
    table = score_table(grades)
    assert len(table.splitlines()) == 1 + len(GRADING_EXAMPLE.candidates)
    assert "meteor" not in table.splitlines()[0]


def test_grader_grades_picked_and_typed_interpretations():
    grader = InterpretationGrader(include_meteor=False)
    grader.pick.value = "hallucination"
    grader.grade_button.click()
    assert grader.last.case.fp == 1
    assert "hallucinated:" in grader.result.value and "pneumothorax" in grader.result.value

    grader.pick.value = TYPE_YOUR_OWN
    grader.text.value = "A moderate left pleural effusion has developed. Cardiomegaly is unchanged."
    grade = grader.grade()
    assert grade.finding_f1 == 1.0 and "matched:" in grader.result.value
    assert "omitted:" not in grader.result.value

    grader.text.value = "   "
    with pytest.raises(ValueError, match="empty interpretation"):
        grader.grade()
    assert "Type an interpretation" in grader.result.value
