"""Lesson 8: domain shift, the simulated population, seeds, and the safety checklist.

Runs on the real tiny ProgEmu pipeline (random weights, transformers' Emu3 classes) and the
real pydicom-data radiograph, headless.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from progemu_lite.phantom.dataset import PhantomConfig, simulate_patient
from progemu_lite.phantom.findings import FINDINGS
from progemu_lite.widgets import (
    SeedComparison,
    course_pipeline,
    domain_shift_study,
    histogram_figure,
    intensity_stats,
    reading_check,
    real_radiograph,
    safety_checklist_html,
    simulated_population,
    simulated_priors,
)
from progemu_lite.widgets.safety import INTENDED_USE, DomainShift

PROMPT = "The left pleural effusion is new and moderate."


@pytest.fixture(scope="module")
def model():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return course_pipeline(fast=True)


@pytest.fixture(scope="module")
def priors(model):
    return [p.image for p in simulated_priors(2, model.pipe.image_size, seed=3)]


def test_real_radiograph_is_the_model_input_size():
    image = real_radiograph(64)
    assert image.shape == (64, 64) and image.dtype == np.uint8
    assert image.std() > 10  # a radiograph, not a blank frame


def test_intensity_stats_and_bad_input():
    image = np.zeros((4, 4), np.uint8)
    image[:2] = 255
    stats = intensity_stats(image)
    assert stats["mean"] == pytest.approx(127.5)
    assert stats["black"] == pytest.approx(0.5) and stats["bright"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="2-D"):
        intensity_stats(np.zeros((2, 2, 2)))


def test_histogram_figure_has_alt_text_and_rejects_empty_groups(priors):
    figure = histogram_figure({"simulated": priors, "real": [real_radiograph(64)]})
    assert figure.png.startswith(b"\x89PNG") and "histograms" in figure.alt
    assert "vermillion = real" in figure.caption
    with pytest.raises(ValueError, match="at least one image"):
        histogram_figure({"real": []})


def test_domain_shift_runs_real_and_simulated_through_the_same_model(model, priors):
    study = domain_shift_study(model, priors, PROMPT, seed=1, max_text_tokens=8)
    assert len(study.simulated_results) == 2 and study.real_result is not None
    assert study.real_result.prompt == PROMPT
    assert study.real_result.image.shape == (model.pipe.image_size,) * 2
    # The real radiograph's gray levels differ from the simulated ones (measured, not assumed).
    assert intensity_stats(study.real)["mean"] != intensity_stats(priors[0])["mean"]
    assert np.isfinite(study.real_vq_psnr) and len(study.simulated_vq_psnr) == 2
    table = study.table()
    assert table.splitlines()[0].split()[:2] == ["image", "mean"]
    assert table.splitlines()[0].endswith("VQ SSIM") and len(table.splitlines()) == 4
    assert all(-1.0 <= v <= 1.0 for v in [*study.simulated_vq_ssim, study.real_vq_ssim])
    comparison = study.tokenizer_comparison()
    assert f"PSNR {np.mean(study.simulated_vq_psnr):.2f} dB" in comparison
    assert f"PSNR {study.real_vq_psnr:.2f} dB, SSIM {study.real_vq_ssim:.3f}" in comparison
    page = study._repr_html_()
    assert "UNTRAINED WEIGHTS" in page and page.count("<figure") == 6
    with pytest.raises(ValueError, match="at least one simulated"):
        domain_shift_study(model, [], PROMPT)


def test_tokenizer_comparison_says_which_images_survive_better(model, priors):
    from dataclasses import replace

    study = DomainShift(model, PROMPT, 0, list(priors), priors[0])
    kept = dict(simulated_vq_ssim=[0.9, 0.8], real_vq_ssim=0.5)
    better = replace(study, simulated_vq_psnr=[30.0, 28.0], real_vq_psnr=22.0, **kept)
    assert "simulated images better than the real one (PSNR difference +7.00 dB)" in (
        better.tokenizer_comparison()
    )
    assert "SSIM 0.850" in better.tokenizer_comparison()
    worse = replace(study, simulated_vq_psnr=[20.0, 20.0], real_vq_psnr=25.0, **kept)
    assert "worse than the real one" in worse.tokenizer_comparison()
    same = replace(study, simulated_vq_psnr=[25.2, 25.0], real_vq_psnr=25.0, **kept)
    assert "about as well as the real one" in same.tokenizer_comparison()


def test_population_matches_the_phantom_generator():
    population = simulated_population(12, seed=5)
    config = PhantomConfig(patients=12, pairs_per_patient=1, size=64, seed=5)
    for index in (0, 7):
        pair = next(simulate_patient(config, index))
        assert population.split[index] == pair.record.split
        present = {f.name for f in pair.prior_state.findings}
        assert {n for n in FINDINGS if population.findings[n][index]} == present
    table = population.table().splitlines()
    assert table[-1].split()[:2] == ["all", "12"]
    assert population.figure().alt.startswith("Left:")
    with pytest.raises(ValueError, match="at least 1"):
        simulated_population(0)


def test_seed_comparison_headless(model, priors):
    widget = SeedComparison(model, priors[0], PROMPT, samples=2, max_text_tokens=8)
    widget.first_seed.value = 4
    widget.samples.value = 3
    widget.button.click()
    assert widget.seeds() == [4, 5, 6]
    assert len(widget.results) == 3 and len(widget.panels_box.children) == 3
    assert "Seed 5" in widget.panels[1].caption
    # Same prior and prompt, different seeds: different images.
    assert widget.pixel_spread() > 0
    assert "gray levels" in widget.status.value
    # The same seed reproduces the same image.
    again = model.pipe(widget.prior, PROMPT, seed=4, max_text_tokens=8)
    np.testing.assert_array_equal(again.image, widget.results[0].image)


def test_reading_check_interprets_three_follow_ups_of_one_simulated_pair(model):
    check = reading_check(model, seed=0, max_text_tokens=6)
    index = next(
        i
        for i in range(50)
        if any(
            e.direction == "stable"
            for e in next(simulate_patient(PhantomConfig(50, 1, 64, 0), i)).annotation
        )
    )
    pair = next(simulate_patient(PhantomConfig(50, 1, 64, 0), index))
    assert check.prompt == pair.record.prompt and check.reference == pair.record.interpretation
    labels = [label for label, _, _ in check.readings]
    assert labels == ["its own drawing", "the true follow-up", "the unchanged prior"]
    # Each image is the follow-up as the model read it: the unchanged prior's VQ round trip.
    prior_codes = model.pipe.encode_images(pair.prior.image[None])
    assert np.array_equal(check.readings[2][1], model.pipe.decode_codes(prior_codes)[0])
    expected = model.pipe.interpret(
        pair.prior.image, pair.record.prompt, pair.followup.image, max_text_tokens=6
    )
    assert check.readings[1][2] == expected.interpretation
    table = check.table()
    assert pair.record.prompt in table and "the unchanged prior" in table
    page = check._repr_html_()
    assert page.count("<img") == 3 and "untrained weights" in page


def test_safety_checklist_says_not_for_clinical_use():
    page = safety_checklist_html()
    assert "NOT for clinical use" in page and INTENDED_USE[:20] in page
    assert page.count("<li>") >= 6
