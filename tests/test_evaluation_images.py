"""Image fidelity metrics, the Fréchet distance and the changed region."""

import json
import math

import numpy as np
import pytest

from progemu_lite.data.icgcxr import iter_pairs, load_pair_images
from progemu_lite.evaluation.image_metrics import (
    PSNR_CAP,
    change_ratio,
    changed_region,
    changed_region_from_difference,
    frechet_distance,
    mae,
    psnr,
    simulated_changed_region,
    ssim,
)
from progemu_lite.phantom.dataset import PhantomConfig, generate


def random_image(seed=0, size=64):
    rng = np.random.default_rng(seed)
    smooth = rng.normal(128, 40, (size // 8, size // 8)).repeat(8, 0).repeat(8, 1)
    return np.clip(smooth + rng.normal(0, 5, (size, size)), 0, 255).astype(np.uint8)


def test_identical_images():
    a = random_image()
    assert ssim(a, a) == pytest.approx(1.0)
    assert mae(a, a) == 0.0
    assert psnr(a, a) == PSNR_CAP


def test_known_shift():
    a = np.full((32, 32), 100, np.uint8)
    b = a + np.uint8(10)
    assert mae(a, b) == pytest.approx(10.0)
    assert psnr(a, b) == pytest.approx(20 * math.log10(255 / 10))
    # constant images: SSIM is the luminance term (2*100*110 + C1) / (100^2 + 110^2 + C1)
    c1 = (0.01 * 255) ** 2
    assert ssim(a, b) == pytest.approx((2 * 100 * 110 + c1) / (100**2 + 110**2 + c1))


def test_masked_metrics_only_see_the_mask():
    a = random_image(1)
    b = a.copy()
    b[:16] = 0  # damage the top rows only
    mask = np.zeros(a.shape, bool)
    mask[40:] = True
    assert mae(a, b, mask) == 0.0
    assert mae(a, b, ~mask) > 0
    assert ssim(a, b, mask) > ssim(a, b) > ssim(a, b, ~mask)
    assert math.isnan(mae(a, b, np.zeros(a.shape, bool)))
    with pytest.raises(ValueError, match="mask shape"):
        mae(a, b, mask[:10])
    with pytest.raises(ValueError, match="shapes differ"):
        ssim(a, b[:10])


def test_change_ratio():
    prior = random_image(2)
    image = prior.astype(int)
    mask = np.zeros(prior.shape, bool)
    mask[20:40, 20:40] = True
    image[mask] += 30
    image[~mask] += 3
    assert change_ratio(image, prior, mask) == pytest.approx(10.0)
    assert math.isnan(change_ratio(prior, prior, mask))


def test_frechet_distance_self_and_shift():
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(200, 8))
    assert frechet_distance(feats, feats) == pytest.approx(0.0, abs=1e-9)
    # a mean shift of d in every dimension adds 8 d^2
    assert frechet_distance(feats, feats + 0.5) == pytest.approx(8 * 0.25, rel=1e-9)
    distances = [frechet_distance(feats, feats + s) for s in (0.1, 0.5, 1.0)]
    assert distances == sorted(distances)
    # matches the textbook formula with a matrix square root
    from scipy import linalg

    other = rng.normal(size=(150, 8)) @ rng.normal(size=(8, 8)) * 0.5 + 0.3
    ca, cb = np.cov(feats, rowvar=False), np.cov(other, rowvar=False)
    expected = np.sum((feats.mean(0) - other.mean(0)) ** 2) + np.trace(
        ca + cb - 2 * linalg.sqrtm(ca @ cb).real
    )
    assert frechet_distance(feats, other) == pytest.approx(expected, rel=1e-8)
    # fewer samples than dimensions (singular covariances) still works
    assert frechet_distance(feats[:5], other[:4]) > 0
    with pytest.raises(ValueError, match="at least 2"):
        frechet_distance(feats[:1], feats)


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("phantom")
    generate(root, PhantomConfig(patients=4, pairs_per_patient=2, size=64, seed=5), progress=False)
    return root


def test_changed_region_from_the_renderer(tiny_dataset):
    for record in iter_pairs(tiny_dataset):
        prior, followup = load_pair_images(record)
        mask, method = changed_region(tiny_dataset, record, prior, followup)
        assert method == "renderer"
        assert mask.shape == prior.shape and mask.any() and not mask.all()
        # where the image really changed a lot, the renderer's region is (mostly) there
        big = changed_region_from_difference(prior, followup)
        if big.sum() > 20:
            assert (mask & big).sum() > 0.3 * big.sum() or change_ratio(followup, prior, mask) > 1


def test_changed_region_falls_back_to_the_difference(tiny_dataset, tmp_path):
    record = next(iter_pairs(tiny_dataset))
    prior, followup = load_pair_images(record)
    # an edited annotation no longer matches the simulation: use the image difference
    record.annotation = record.annotation[:0]
    assert simulated_changed_region(tiny_dataset, record) is None
    mask, method = changed_region(tiny_dataset, record, prior, followup)
    assert method == "difference"
    # no manifest (e.g. real ICG-CXR): difference too
    real = next(iter_pairs(tiny_dataset))
    manifest = json.loads((tiny_dataset / "manifest.json").read_text())
    assert manifest["args"]["seed"] == 5
    _, method = changed_region(tmp_path, real, prior, followup)
    assert method == "difference"
