"""Lesson 3: the course tokenizer, the round trip, the codebook explorer, what the VQ loses.

Runs on a real ``Emu3VQVAE`` (the fast stand-in, trained for a few seconds with ``train_vq``),
headless: widgets are built, values set and buttons clicked as a student would.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from progemu_lite.tokenization.vq import SPATIAL_FACTOR, decode_codes
from progemu_lite.widgets import (
    CodebookExplorer,
    codebook_summary,
    course_vq,
    finding_radiograph,
    round_trip,
    round_trip_figures,
    tokenizer_loss,
    training_images,
)
from progemu_lite.widgets.vq_explorer import code_grid_image


@pytest.fixture(scope="module")
def vq():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny model: one thread is faster on a busy 2-core machine
    try:
        yield course_vq(fast=True, progress=False)
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def radiograph(vq):
    return finding_radiograph(vq.image_size, seed=0)


def test_stand_in_says_it_is_one_and_is_cached(vq):
    from progemu_lite.paths import progemu_home

    # Fast mode always trains the stand-in, shipped lite weights or not, and says why.
    assert not vq.trained
    assert "STAND-IN" in vq.notice and "STAND-IN" in vq._repr_html_()
    assert "fast mode" in vq.notice and "not shipped" not in vq.notice
    assert 'role="alert"' in vq.notice_html()
    assert vq.grid == vq.image_size // SPATIAL_FACTOR
    cached = list((progemu_home() / "course_vq").glob("*/config.json"))
    assert cached, "the trained stand-in is saved under PROGEMU_HOME"


def test_round_trip_shapes_and_quality_beat_a_flat_image(vq, radiograph):
    trip = round_trip(vq, radiograph.image)
    assert trip.codes.shape == (vq.grid, vq.grid)
    assert trip.reconstruction.shape == radiograph.image.shape
    assert trip.codes.min() >= 0 and trip.codes.max() < vq.codebook_size
    flat = np.full_like(radiograph.image, int(radiograph.image.mean()))
    from progemu_lite.tokenization.vq import psnr

    # Even a briefly trained VQ must reconstruct better than the image's mean gray.
    assert trip.psnr > psnr(radiograph.image, flat)
    assert len(trip.codes_text().splitlines()) == vq.grid
    box = round_trip_figures(vq, trip)
    assert all("alt=" in p.value and "<figcaption" in p.value for p in box.children)


def test_round_trip_refuses_a_wrong_size(vq):
    with pytest.raises(ValueError, match="wants"):
        round_trip(vq, np.zeros((vq.image_size + 8, vq.image_size + 8), np.uint8))


def test_code_grid_image_is_one_colour_per_cell(vq):
    codes = np.arange(4).reshape(2, 2)
    rgb = code_grid_image(codes, vq.codebook_size, cell=3)
    assert rgb.shape == (6, 6, 3)
    assert (rgb[:3, :3] == rgb[0, 0]).all()
    assert len({tuple(rgb[r, c]) for r in (0, 3) for c in (0, 3)}) == 4


def test_swap_changes_the_image_mostly_at_that_cell(vq, radiograph):
    explorer = CodebookExplorer(vq, radiograph.image)
    assert explorer.status.value.startswith("No codes edited")
    row, col = 2, 5
    explorer.row.value, explorer.col.value = row, col
    original = int(explorer.trip.codes[row, col])
    assert f"<b>{original}</b>" in explorer.current.value
    # The code whose embedding is farthest from the current one: a visible edit.
    table = vq.vqmodel.quantize.embedding.weight.detach()
    new = int(torch.cdist(table[original : original + 1], table).argmax())
    explorer.code.value = new
    before = explorer.edited_panel.updates
    explorer.swap_button.click()

    assert explorer.edited_panel.updates == before + 1
    assert explorer.edited_codes[row, col] == new
    assert (explorer.edited_codes != explorer.trip.codes).sum() == 1
    assert f"now {new}" in explorer.current.value
    np.testing.assert_array_equal(
        explorer.edited, decode_codes(vq.vqmodel, explorer.edited_codes[None])[0]
    )
    diff = np.abs(explorer.edited.astype(int) - explorer.trip.reconstruction.astype(int))
    assert diff.max() > 0
    # The largest change is at the edited cell or its neighbours, and the change per pixel
    # within one cell of it is several times that of the rest of the image (the decoder's
    # convolutions and its attention layer spread an edit a little, but only a little).
    y, x = np.unravel_index(diff.argmax(), diff.shape)
    assert abs(y // SPATIAL_FACTOR - row) <= 1 and abs(x // SPATIAL_FACTOR - col) <= 1
    near = np.zeros(diff.shape, dtype=bool)
    near[
        max(0, (row - 1) * SPATIAL_FACTOR) : (row + 2) * SPATIAL_FACTOR,
        max(0, (col - 1) * SPATIAL_FACTOR) : (col + 2) * SPATIAL_FACTOR,
    ] = True
    assert diff[near].mean() > 3 * diff[~near].mean()
    # The panels show what the student sees: the edit outlined, the difference map in colour.
    assert explorer.difference_panel.image().shape[-1] == 3
    assert "(2, 5)" in explorer.edited_panel.alt

    explorer.reset_button.click()
    np.testing.assert_array_equal(explorer.edited_codes, explorer.trip.codes)
    np.testing.assert_array_equal(explorer.edited, explorer.trip.reconstruction)
    assert explorer.status.value.startswith("No codes edited")


def test_swapping_in_the_same_code_changes_nothing(vq, radiograph):
    explorer = CodebookExplorer(vq, radiograph.image)
    explorer.code.value = int(explorer.trip.codes[explorer.position])
    explorer.swap_button.click()
    np.testing.assert_array_equal(explorer.edited, explorer.trip.reconstruction)


def test_code_input_is_bounded_by_the_codebook(vq, radiograph):
    explorer = CodebookExplorer(vq, radiograph.image)
    assert explorer.code.max == vq.codebook_size - 1
    assert explorer.row.max == vq.grid - 1 and explorer.col.max == vq.grid - 1


def test_tokenizer_loss_reports_findings(vq, radiograph):
    assert {"nodule", "pneumothorax"} <= {name for name, _ in radiograph.masks}
    loss = tokenizer_loss(vq, radiograph)
    assert set(loss.region_errors) == {
        "whole image",
        "nodule (left_upper_lobe)",
        "pneumothorax (right)",
    }
    error = np.abs(radiograph.image.astype(float) - loss.trip.reconstruction.astype(float))
    assert loss.region_errors["whole image"] == pytest.approx(error.mean(), rel=1e-5)
    html = loss._repr_html_()
    assert "alt=" in html and "PSNR" in html and "pneumothorax (right)" in html


def test_codebook_summary_counts_codes(vq):
    text = codebook_summary(vq, training_images(2, vq.image_size, seed=5))
    assert f"-> {vq.grid}x{vq.grid} codes" in text
    assert f"codebook_size: {vq.codebook_size}" in text
