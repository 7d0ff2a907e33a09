"""The simulated PA chest radiograph: determinism, sizes, anatomy, and each finding's signs."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from scipy import ndimage

from progemu_lite.phantom.anatomy import PatientAnatomy, sample_patient
from progemu_lite.phantom.findings import FINDINGS, UnknownFindingError
from progemu_lite.phantom.render import (
    Acquisition,
    PatientRenderer,
    Radiograph,
    followup_acquisition,
    render_radiograph,
    sample_acquisition,
)
from progemu_lite.phantom.state import ChestState

SIZE = 128
QUIET = Acquisition(noise_level=0.0)  # no noise: differences come from the findings only


@pytest.fixture(scope="module")
def patient() -> PatientAnatomy:
    return sample_patient(np.random.default_rng(1))


@pytest.fixture(scope="module")
def renderer(patient) -> PatientRenderer:
    return PatientRenderer(patient, SIZE)


@pytest.fixture(scope="module")
def normal(renderer) -> Radiograph:
    return renderer.render(ChestState(), QUIET)


def _state(name, location, severity) -> ChestState:
    return ChestState().with_severity(name, location, severity)


def test_same_inputs_give_identical_pixels(patient):
    acq = sample_acquisition(np.random.default_rng(5))
    state = _state("pleural_effusion", "left", 2)
    a = PatientRenderer(patient, 64).render(state, acq)
    b = render_radiograph(patient, state, acq, size=64)
    assert np.array_equal(a.image, b.image)
    assert sample_patient(np.random.default_rng(9)) == sample_patient(np.random.default_rng(9))
    assert sample_acquisition(np.random.default_rng(9)) == sample_acquisition(
        np.random.default_rng(9)
    )


def test_noise_seed_changes_pixels_but_not_anatomy(renderer):
    a = renderer.render(ChestState(), Acquisition(noise_seed=1))
    b = renderer.render(ChestState(), Acquisition(noise_seed=2))
    assert not np.array_equal(a.image, b.image)
    assert np.abs(a.image.astype(int) - b.image.astype(int)).mean() < 8
    assert np.array_equal(a.lung_mask, b.lung_mask)


@pytest.mark.parametrize("size", [64, 128, 256, 512])
def test_shape_and_dtype(patient, size):
    state = _state("nodule", "right_upper_lobe", 2)
    rg = PatientRenderer(patient, size).render(state, Acquisition())
    assert rg.image.shape == (size, size) and rg.image.dtype == np.uint8
    assert rg.lung_mask.shape == (size, size) and rg.lung_mask.dtype == bool
    assert set(rg.masks) == {("nodule", "right_upper_lobe")}
    assert rg.masks[("nodule", "right_upper_lobe")].dtype == bool
    assert 0.12 < rg.lung_mask.mean() < 0.5


def test_geometry_is_the_same_at_every_size(patient):
    """Rendered directly at each size, the lung fields agree after resampling."""
    small = PatientRenderer(patient, 64).render(ChestState(), QUIET).lung_mask
    big = PatientRenderer(patient, 256).render(ChestState(), QUIET).lung_mask
    pooled = big.reshape(64, 4, 64, 4).mean(axis=(1, 3)) > 0.5
    iou = (small & pooled).sum() / (small | pooled).sum()
    assert iou > 0.9


def test_lungs_darker_than_mediastinum_and_bone(renderer, normal):
    img = normal.image.astype(float)
    lung = img[normal.lung_mask].mean()
    n = SIZE
    mediastinum = img[int(0.35 * n) : int(0.55 * n), n // 2 - 2 : n // 2 + 2].mean()
    post, ant, spine = renderer.static.bones
    clavicle_and_ribs = (ant > 0.3) & ~normal.lung_mask
    assert lung + 60 < mediastinum
    assert lung + 40 < img[clavicle_and_ribs].mean()
    assert img[:, :3].mean() < 10  # air beside the patient is black


def test_ribs_show_through_the_lungs(renderer, normal):
    post, _, _ = renderer.static.bones
    lung = normal.lung_mask
    img = normal.image.astype(float)
    on_rib = lung & (post > 0.25)
    between = lung & (post < 0.03)
    assert img[on_rib].mean() > img[between].mean() + 8


def test_right_hemidiaphragm_higher_than_left(renderer, patient):
    img = renderer.render(ChestState(), QUIET).image.astype(float)
    grid = renderer.static.grid

    def dome_row(x_cm: float) -> int:
        """First row below the hilum where the column turns from lung grey to abdomen white."""
        col = int(round(float(grid.to_pixel(np.asarray(x_cm)))))
        profile = img[:, col - 1 : col + 2].mean(axis=1)
        start = int(grid.to_pixel(np.asarray(patient.hilum_right[1])))
        lung, abdomen = np.median(profile[start : start + 8]), profile[-4:].mean()
        return start + int(np.argmax(profile[start:] > (lung + abdomen) / 2))

    # lateral to the heart: image left = patient's right
    right = dome_row(-0.7 * patient.thorax_half_width)
    left = dome_row(0.7 * patient.thorax_half_width)
    assert right < left


ALL_FINDINGS = [(name, loc) for name, spec in FINDINGS.items() for loc in spec.locations]


@pytest.mark.parametrize(("name", "location"), ALL_FINDINGS)
def test_each_finding_changes_its_region_far_more_than_outside(renderer, normal, name, location):
    for severity, least in ((1, 2.5), (3, 6.0)):
        rg = renderer.render(_state(name, location, severity), QUIET)
        mask = rg.masks[(name, location)]
        assert mask.any()
        diff = np.abs(rg.image.astype(float) - normal.image.astype(float))
        inside, outside = diff[mask].mean(), diff[~mask].mean()
        assert inside > least, (severity, inside)
        assert inside > 5 * outside, (severity, inside, outside)
    region = renderer.region(name, location)
    assert region.shape == (SIZE, SIZE) and region.dtype == bool
    for severity in (1, 2, 3):
        mask = renderer.render(_state(name, location, severity), QUIET).masks[(name, location)]
        assert not (mask & ~region).any()  # every severity shows inside the region


SUBTLE = [("nodule", "right_upper_lobe"), ("pulmonary_edema", "bilateral"),
          ("atelectasis", "right_lower_lobe")]  # fmt: skip


@pytest.mark.parametrize(("name", "location"), SUBTLE)
def test_version_2_draws_the_mildest_grade_visibly(patient, name, location):
    # At 128x128, version 1 draws the mildest grade at its physical size (an 8 mm nodule changes
    # a pixel or two); version 2 changes many more pixels clearly, keeps the grades in order,
    # and leaves everything outside the finding alone.
    def change(version, severity):
        renderer = PatientRenderer(patient, SIZE, generator_version=version)
        before = renderer.render(ChestState(), QUIET).image.astype(float)
        after = renderer.render(_state(name, location, severity), QUIET)
        diff = np.abs(after.image.astype(float) - before)
        mask = after.masks[(name, location)]
        return {"visible": int((diff > 8).sum()), "inside": diff[mask].mean(),
                "outside": diff[~mask].mean()}  # fmt: skip

    mild_1, mild_2, severe_2 = change(1, 1), change(2, 1), change(2, 3)
    assert mild_2["visible"] >= max(20, 1.5 * mild_1["visible"]), (mild_1, mild_2)
    assert mild_2["inside"] > mild_1["inside"]
    assert mild_2["inside"] < severe_2["inside"]
    assert mild_2["inside"] > 5 * mild_2["outside"]
    if name == "nodule":
        assert mild_1["visible"] <= 4


def test_unknown_generator_version_is_a_clear_error(patient):
    with pytest.raises(ValueError, match="unknown generator version 3; known: 1, 2"):
        PatientRenderer(patient, 64, generator_version=3)


def test_cardiothoracic_ratio_grows_with_cardiomegaly(renderer, normal):
    ctr = [normal.cardiothoracic_ratio()]
    for severity in (1, 2, 3):
        rg = renderer.render(_state("cardiomegaly", None, severity), QUIET)
        heart = rg.masks[("cardiomegaly", None)]
        assert np.array_equal(heart, rg.heart_mask)
        ctr.append(rg.cardiothoracic_ratio())
    assert ctr[0] < 0.5
    assert ctr == sorted(ctr) and len(set(ctr)) == 4
    for got, want in zip(ctr[1:], (0.55, 0.60, 0.68), strict=True):
        assert abs(got - want) < 0.04, ctr


def _detail(img: np.ndarray) -> np.ndarray:
    """Fine detail: the image minus its 5x5 local mean."""
    f = img.astype(float)
    p = np.pad(f, 2, mode="edge")
    local = sum(p[i : i + f.shape[0], j : j + f.shape[1]] for i in range(5) for j in range(5))
    return f - local / 25


@pytest.mark.parametrize("side", ["left", "right"])
def test_pneumothorax_removes_vessel_markings_beyond_the_pleural_line(patient, side):
    r = PatientRenderer(patient, 256)
    base = r.render(ChestState(), QUIET)
    ptx = r.render(_state("pneumothorax", side, 3), QUIET)
    gap = ptx.masks[("pneumothorax", side)]
    post, ant, _ = r.static.bones
    vessels = r.static.vessel_maps[0]
    # in the pleural space, away from ribs and the pleural line: vessel vs non-vessel pixels
    probe = ndimage.binary_erosion(gap, iterations=3) & (post + ant < 0.03)
    on_vessel, off_vessel = probe & (vessels > 0.1), probe & (vessels < 0.01)
    assert on_vessel.sum() > 20 and off_vessel.sum() > 20

    def markings(img):
        d = _detail(img)
        return d[on_vessel].mean() - d[off_vessel].mean()

    assert markings(base.image) > 1.5
    assert markings(ptx.image) < 0.5 * markings(base.image)
    # the vessel pixels lost their extra brightness: they darkened more than the rest
    drop = base.image.astype(float) - ptx.image.astype(float)
    assert drop[on_vessel].mean() > drop[off_vessel].mean() + 3
    assert ptx.image[gap].mean() < base.image[gap].mean()  # hyperlucent


def test_large_pneumothorax_shifts_the_mediastinum_away(renderer, normal):
    def heart_center(rg):
        return np.nonzero(rg.heart_mask.any(axis=0))[0].mean()

    right = renderer.render(_state("pneumothorax", "right", 3), QUIET)
    left = renderer.render(_state("pneumothorax", "left", 3), QUIET)
    assert heart_center(right) > heart_center(normal) > heart_center(left)


@pytest.mark.parametrize("side", ["left", "right"])
def test_effusion_whitens_the_costophrenic_angle_with_severity(renderer, patient, side):
    grid = renderer.static.grid
    s = 1.0 if side == "left" else -1.0
    x = s * (patient.thorax_half_width - 1.5)
    y = patient.dome_y(side) + patient.dome_drop - 1.5
    col, row = (int(round(float(grid.to_pixel(np.asarray(v))))) for v in (x, y))
    means = []
    for severity in range(4):
        state = ChestState() if severity == 0 else _state("pleural_effusion", side, severity)
        img = renderer.render(state, QUIET).image.astype(float)
        means.append(img[row - 3 : row + 4, col - 3 : col + 4].mean())
    assert means == sorted(means) and means[3] > means[0] + 30, means


def test_consolidation_silhouettes_the_heart_border(renderer, patient, normal):
    """Right middle lobe consolidation erases the right heart border (silhouette sign)."""
    rg = renderer.render(_state("consolidation", "right_middle_lobe", 3), QUIET)
    grid = renderer.static.grid
    row = int(round(float(grid.to_pixel(np.asarray(patient.right_dome_y - 2.0)))))

    def border_step(img):
        line = img[row - 2 : row + 3].astype(float).mean(axis=0)
        heart_cols = np.nonzero(rg.heart_mask[row])[0]
        edge = heart_cols.min()
        return line[edge + 2 : edge + 5].mean() - line[edge - 5 : edge - 2].mean()

    assert border_step(rg.image) < 0.4 * border_step(normal.image)


def test_lower_lobe_consolidation_obscures_the_hemidiaphragm(renderer, patient, normal):
    grid = renderer.static.grid
    col = int(round(float(grid.to_pixel(np.asarray(-0.45 * patient.thorax_half_width)))))
    dome = int(round(float(grid.to_pixel(np.asarray(patient.right_dome_y)))))

    def dome_step(img):
        profile = img[:, col - 1 : col + 2].astype(float).mean(axis=1)
        return profile[dome + 2 : dome + 5].mean() - profile[dome - 5 : dome - 2].mean()

    rg = renderer.render(_state("consolidation", "right_lower_lobe", 3), QUIET)
    assert dome_step(rg.image) < 0.4 * dome_step(normal.image)


def test_lobar_collapse_pulls_the_mediastinum_toward_it(renderer, normal):
    def heart_center(rg):
        return np.nonzero(rg.heart_mask.any(axis=0))[0].mean()

    left = renderer.render(_state("atelectasis", "left_lower_lobe", 3), QUIET)
    right = renderer.render(_state("atelectasis", "right_upper_lobe", 3), QUIET)
    assert heart_center(left) > heart_center(normal) > heart_center(right)  # image x: patient left


def test_masks_only_for_present_findings(renderer):
    state = (
        ChestState().with_severity("nodule", "lingula", 1).with_severity("cardiomegaly", None, 2)
    )
    rg = renderer.render(state, QUIET)
    assert set(rg.masks) == {("nodule", "lingula"), ("cardiomegaly", None)}
    assert renderer.render(ChestState(), QUIET).masks == {}


def test_followup_acquisition_keeps_positioning(renderer):
    rng = np.random.default_rng(3)
    prior = sample_acquisition(rng)
    follow = followup_acquisition(prior, rng)
    assert follow.noise_seed != prior.noise_seed
    assert abs(follow.shift_x_px - prior.shift_x_px) < 5
    assert abs(follow.rotation_deg - prior.rotation_deg) < 1.5
    a = renderer.render(ChestState(), prior).lung_mask
    b = renderer.render(ChestState(), follow).lung_mask
    assert (a & b).sum() / (a | b).sum() > 0.9


def test_acquisitions_differ_between_patients_studies(renderer):
    rng = np.random.default_rng(0)
    acqs = [sample_acquisition(rng) for _ in range(8)]
    assert len({a.noise_seed for a in acqs}) == 8
    assert np.std([a.rotation_deg for a in acqs]) > 0.5
    assert np.std([a.inspiration for a in acqs]) > 0.005
    images = [renderer.render(ChestState(), a).image.astype(float) for a in acqs[:2]]
    assert np.abs(images[0] - images[1]).mean() > 3


@pytest.mark.parametrize("size", [0, 48, 100, 2048, 256.0, "512", True])
def test_bad_size_is_a_clear_error(patient, size):
    with pytest.raises(ValueError, match="size"):
        PatientRenderer(patient, size)


def test_unknown_finding_is_a_clear_error(renderer):
    with pytest.raises(UnknownFindingError, match="unknown finding"):
        renderer.region("pneumonia", "left")
    with pytest.raises(UnknownFindingError, match="cannot be at"):
        renderer.region("pleural_effusion", "lingula")
    with pytest.raises(TypeError, match="ChestState"):
        renderer.render({"pleural_effusion": 2}, QUIET)
    with pytest.raises(ValueError, match="rotation_deg"):
        Acquisition(rotation_deg=40.0)
    with pytest.raises(TypeError, match="PatientAnatomy"):
        PatientRenderer(dataclasses.asdict(sample_patient(np.random.default_rng(0))), 64)
