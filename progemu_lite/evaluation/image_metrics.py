"""Image fidelity of a counterfactual against the true follow-up, and where it changed.

* :func:`ssim`, :func:`psnr`, :func:`mae`: over the whole image or inside a boolean mask. SSIM is
  Wang et al. (2004): Gaussian window sigma 1.5 (11 taps), K1 = 0.01, K2 = 0.03, data range 255;
  the SSIM *map* is computed on the whole image (reflected borders, so the map has the image's
  size) and averaged over the mask, so a masked SSIM still sees each pixel's neighbourhood.
* :func:`frechet_distance`: the Fréchet distance between two Gaussians fitted to feature sets.
  In the evaluation report the features are the penultimate layer of OUR small alignment
  classifier (:mod:`progemu_lite.evaluation.classifier`) trained on simulated images. It is NOT
  the paper's gFID (Inception-v3 features on real radiographs): numbers are only comparable
  between rows of the same report.
* :func:`change_ratio`: the "model quality" ratio, mean |image - prior| inside the changed region
  over the same outside it: > 1 when the change is where the finding is.
* :func:`changed_region`: the mask of the changed findings, see its docstring for how it is got.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

DATA_RANGE = 255.0
# Fallback changed-region rule (real data, or a simulated pair that cannot be re-rendered):
# |follow-up - prior| above this many grey levels after a light blur, then dilated.
DIFF_THRESHOLD = 12.0
DIFF_BLUR_SIGMA = 1.0
DIFF_DILATE_FRACTION = 1 / 64  # dilation radius as a fraction of the image side


def _pair(a, b) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"image shapes differ: {a.shape} vs {b.shape}")
    if a.ndim != 2:
        raise ValueError(f"expected a 2-D grayscale image, got shape {a.shape}")
    return a, b


def _mask(mask, shape) -> np.ndarray | None:
    if mask is None:
        return None
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != shape:
        raise ValueError(f"mask shape {mask.shape} differs from image shape {shape}")
    return mask


def ssim_map(reference, test, sigma: float = 1.5) -> np.ndarray:
    """Per-pixel SSIM of two grayscale images (same size as the images)."""
    from scipy.ndimage import gaussian_filter

    a, b = _pair(reference, test)

    def blur(x):
        # truncate 3.5 sigma -> 11 taps for sigma 1.5, Wang et al.'s window
        return gaussian_filter(x, sigma, mode="reflect", truncate=3.5)

    c1, c2 = (0.01 * DATA_RANGE) ** 2, (0.03 * DATA_RANGE) ** 2
    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    return ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / (
        (mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)
    )


def ssim(reference, test, mask=None) -> float:
    """Mean SSIM over the image, or over ``mask`` (NaN for an empty mask)."""
    values = ssim_map(reference, test)
    mask = _mask(mask, values.shape)
    if mask is None:
        return float(values.mean())
    return float(values[mask].mean()) if mask.any() else float("nan")


def mae(reference, test, mask=None) -> float:
    """Mean absolute error in grey levels (0..255), over the image or inside ``mask``."""
    a, b = _pair(reference, test)
    diff = np.abs(a - b)
    mask = _mask(mask, diff.shape)
    if mask is None:
        return float(diff.mean())
    return float(diff[mask].mean()) if mask.any() else float("nan")


# PSNR of identical images is infinite; cap it so that means and bootstraps stay finite.
PSNR_CAP = 100.0


def psnr(reference, test, mask=None) -> float:
    """Peak signal-to-noise ratio in dB (capped at :data:`PSNR_CAP`), image or ``mask``."""
    a, b = _pair(reference, test)
    sq = (a - b) ** 2
    mask = _mask(mask, sq.shape)
    if mask is not None:
        if not mask.any():
            return float("nan")
        sq = sq[mask]
    mse = float(sq.mean())
    if mse == 0:
        return PSNR_CAP
    return float(min(10.0 * np.log10(DATA_RANGE**2 / mse), PSNR_CAP))


def change_ratio(image, prior, mask) -> float:
    """Mean |image - prior| inside ``mask`` over the same outside it (NaN if undefined)."""
    a, b = _pair(image, prior)
    mask = _mask(mask, a.shape)
    if mask is None or not mask.any() or mask.all():
        return float("nan")
    diff = np.abs(a - b)
    outside = float(diff[~mask].mean())
    inside = float(diff[mask].mean())
    if outside == 0:
        return float("nan") if inside == 0 else float("inf")
    return inside / outside


def frechet_distance(features_a, features_b) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets ``(N, D)``:
    ``|mu_a - mu_b|^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2))``.

    With centred, scaled features ``X`` (``S = X^T X``), ``Tr((S_a S_b)^(1/2))`` is the sum of
    the singular values of ``X_a X_b^T``, computed from the R factors of the two QR
    decompositions (``R_a R_b^T``, at most D x D). No matrix square root: exact for the singular
    covariances of small sets, and fast.
    """
    a = np.asarray(features_a, dtype=np.float64)
    b = np.asarray(features_b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"feature sets must be (N, D) with the same D: {a.shape} vs {b.shape}")
    if len(a) < 2 or len(b) < 2:
        raise ValueError("the Fréchet distance needs at least 2 samples in each set")
    mu_a, mu_b = a.mean(0), b.mean(0)
    xa = (a - mu_a) / np.sqrt(len(a) - 1)
    xb = (b - mu_b) / np.sqrt(len(b) - 1)
    ra = np.linalg.qr(xa, mode="r")
    rb = np.linalg.qr(xb, mode="r")
    trace_sqrt = float(np.linalg.svd(ra @ rb.T, compute_uv=False).sum())
    value = float(np.sum((mu_a - mu_b) ** 2) + np.sum(xa**2) + np.sum(xb**2) - 2 * trace_sqrt)
    return max(value, 0.0)


# ----------------------------------------------------------------------------------------------
# Changed region

_SIM_PAIR = re.compile(r"^sim(\d{6})_(\d{2})$")


def changed_region_from_difference(prior, followup) -> np.ndarray:
    """|follow-up - prior| > :data:`DIFF_THRESHOLD` after a blur, dilated (the fallback rule)."""
    from scipy.ndimage import binary_dilation, gaussian_filter

    a, b = _pair(prior, followup)
    diff = np.abs(gaussian_filter(b, DIFF_BLUR_SIGMA) - gaussian_filter(a, DIFF_BLUR_SIGMA))
    mask = diff > DIFF_THRESHOLD
    radius = max(1, round(a.shape[0] * DIFF_DILATE_FRACTION))
    return binary_dilation(mask, iterations=radius)


def simulated_changed_region(dataset_root, record) -> np.ndarray | None:
    """Union of the renderer's regions (:meth:`PatientRenderer.region`) of the findings the
    annotation marks as changed, in the prior's and the follow-up's acquisition frames.

    A simulated pair (``simNNNNNN_KK``) is re-derived without rendering from
    ``<root>/manifest.json`` (seed, size, pairs per patient) following the generator's documented
    determinism (patient ``i`` draws from ``SeedSequence(seed, spawn_key=(i, 0))``, its pair ``k``
    from ``spawn_key=(i, k + 1)``): anatomy, prior state and acquisition, the progressions, then
    the follow-up's acquisition; the regions are drawn by the manifest's generator version.
    Returns None when that is impossible (no manifest, foreign id, unknown generator version)
    or the re-derived annotation differs from the record's (edited files), so the caller falls
    back to :func:`changed_region_from_difference`.
    """
    import json

    from ..phantom import dataset
    from ..phantom.anatomy import sample_patient
    from ..phantom.progression import apply_progression, sample_prior_state
    from ..phantom.render import followup_acquisition, sample_acquisition

    match = _SIM_PAIR.match(record.pair_id)
    manifest_path = Path(dataset_root) / dataset.MANIFEST_NAME
    if match is None or not manifest_path.is_file() or record.annotation is None:
        return None
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        config = dataset.PhantomConfig.from_manifest(manifest)
    except (ValueError, TypeError, KeyError, AttributeError):
        return None
    index, k = int(match.group(1)), int(match.group(2))
    if index >= config.patients or k >= config.pairs_per_patient:
        return None
    rng = np.random.default_rng(np.random.SeedSequence(config.seed, spawn_key=(index, 0)))
    anatomy = sample_patient(rng)
    prior_state = sample_prior_state(rng)
    prior_acq = sample_acquisition(rng)
    progressions = dataset.distinct_progressions(prior_state, config.pairs_per_patient, rng)
    pair_rng = np.random.default_rng(np.random.SeedSequence(config.seed, spawn_key=(index, k + 1)))
    _, annotation = apply_progression(prior_state, progressions[k], pair_rng)
    followup_acq = followup_acquisition(prior_acq, pair_rng)
    if [e.to_dict() for e in annotation] != [e.to_dict() for e in record.annotation]:
        return None
    from ..phantom.render import PatientRenderer

    renderer = PatientRenderer(anatomy, config.size, config.generator_version)
    mask = np.zeros((config.size, config.size), dtype=bool)
    for entry in annotation:
        if entry.changed:
            for acq in (prior_acq, followup_acq):
                mask |= renderer.region(entry.finding, entry.location, acq)
    return mask


def changed_region(dataset_root, record, prior, followup) -> tuple[np.ndarray, str]:
    """The changed region of a pair and how it was got: ``"renderer"`` or ``"difference"``."""
    mask = simulated_changed_region(dataset_root, record)
    if mask is not None and mask.shape == np.shape(followup) and mask.any():
        return mask, "renderer"
    return changed_region_from_difference(prior, followup), "difference"
