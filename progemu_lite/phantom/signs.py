"""The radiological signs of each finding, as changes of material along the beam.

A sign is computed once per (patient, size, finding, location, severity) in the canonical frame
and cached by the renderer. It says how much aerated lung becomes water (``replace``: pleural
fluid, alveolar filling, collapse) or air (``air``: pneumothorax), how much water-equivalent
tissue is added (``water``: nodules, pleural line, Kerley lines, hilar haze), how vessels change,
and how structures move (heart size, mediastinal shift, hemidiaphragm, hilum).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from .anatomy import lateral_edge, lung_phi, medial_edge, nodule_center, side_sign
from .findings import check_location, check_severity, laterality

if TYPE_CHECKING:
    from .render import StaticAnatomy

# Target cardiothoracic ratios per cardiomegaly severity (normal < 0.5).
CARDIOMEGALY_CTR = {1: 0.55, 2: 0.60, 3: 0.68}


@dataclass(frozen=True)
class Conspicuity:
    """How strongly the subtlest signs are drawn: what a generator version changes.

    Version 1 draws every sign at its physical size and density. At 128x128 (0.34 cm a pixel)
    an 8 mm nodule then changes one or two pixels by more than 8 gray levels, a 2 cm nodule
    about 25, mild edema (vessel redistribution) 3 gray levels on average over the upper
    zones, and a plate of atelectasis is a line a pixel or two thick: findings the annotation
    names that a reader of these images hardly sees (the model card's "What the tokenizer lets
    a reader see": a CNN trained on the pixels sees 9% of the nodules, 11% of mild edemas).
    Version 2 draws them so that every annotated grade shows at 128x128, as a teaching set
    should: nodules of 2, 3 and 4.5 cm at twice soft-tissue density, mild edema with a faint
    perihilar haze besides the redistribution, and thicker plates of atelectasis. Every other
    sign, and every patient, state and text, is the same in both.
    """

    nodule_diameter_cm: dict[int, float]  # by severity
    nodule_density: float  # water-equivalent density of the nodule (1: soft tissue)
    mild_edema_vessel_gain: float  # upper-zone vessel gain at severity 1 (redistribution)
    mild_edema_haze: float  # perihilar haze at severity 1 (0: redistribution only)
    mild_atelectasis_half_width_cm: float  # the plate's Gaussian half-width
    mild_atelectasis_water: float  # the plate's water per cm of aerated lung it replaces


GENERATOR_VERSIONS = {
    1: Conspicuity(
        nodule_diameter_cm={1: 0.8, 2: 2.0, 3: 4.5},  # ~8 mm, ~2 cm, a 4-5 cm mass
        nodule_density=1.0,
        mild_edema_vessel_gain=1.6,
        mild_edema_haze=0.0,
        mild_atelectasis_half_width_cm=0.32,
        mild_atelectasis_water=2.6,
    ),
    2: Conspicuity(
        nodule_diameter_cm={1: 2.0, 2: 3.0, 3: 4.5},
        nodule_density=2.0,
        mild_edema_vessel_gain=2.4,
        mild_edema_haze=1.0,
        mild_atelectasis_half_width_cm=0.5,
        mild_atelectasis_water=3.6,
    ),
}
DEFAULT_GENERATOR_VERSION = 1


def check_generator_version(version: int) -> int:
    if version not in GENERATOR_VERSIONS:
        raise ValueError(
            f"unknown generator version {version!r}; known: "
            + ", ".join(str(v) for v in GENERATOR_VERSIONS)
        )
    return version


@dataclass
class Sign:
    """What one finding at one severity does (canonical frame, float32 maps or None)."""

    mask: np.ndarray
    water: np.ndarray | None = None
    replace: np.ndarray | None = None
    air: np.ndarray | None = None
    vessel_gain: np.ndarray | None = None
    vessel_keep: np.ndarray | None = None
    density_add: float = 0.0
    heart_scale: float = 1.0
    heart_shift: tuple[float, float] = (0.0, 0.0)
    mediastinal_shift: float = 0.0  # cm, + = toward the image right (patient's left)
    dome_shift: dict[str, float] = field(default_factory=dict)  # cm, - = elevated
    hilum_shift: dict[str, float] = field(default_factory=dict)  # cm, - = elevated


def _sig(t: np.ndarray) -> np.ndarray:
    return (1.0 / (1.0 + np.exp(-np.clip(t, -30, 30)))).astype(np.float32)


def _ramp(t: np.ndarray) -> np.ndarray:
    return np.clip(t, 0.0, 1.0).astype(np.float32)


def _side_of(location: str | None) -> str:
    side = laterality(location)
    if side not in ("left", "right"):
        raise ValueError(f"location {location!r} has no side")
    return side


def _triangle(u, y, verts, soft: float) -> np.ndarray:
    """Soft inside-indicator of a triangle given as three (u, y) vertices."""
    (u0, y0), (u1, y1), (u2, y2) = verts
    area = (u1 - u0) * (y2 - y0) - (u2 - u0) * (y1 - y0)
    orient = 1.0 if area > 0 else -1.0
    inside = None
    for (ua, ya), (ub, yb) in (((u0, y0), (u1, y1)), ((u1, y1), (u2, y2)), ((u2, y2), (u0, y0))):
        ex, ey = ub - ua, yb - ya
        length = max(np.hypot(ex, ey), 1e-6)
        d = orient * ((u - ua) * ey - (y - ya) * ex) / length  # > 0 inside (left of edge)
        term = _sig(-d / soft)
        inside = term if inside is None else np.minimum(inside, term)
    return inside


# ----------------------------------------------------------------------------------------
# Lobe territories: the fraction of the lung's path length that belongs to a lobe


def lobe_weight(st: StaticAnatomy, lobe: str, fissure_shift: float = 0.0) -> np.ndarray:
    anat = st.anatomy
    side = "left" if lobe in ("left_upper_lobe", "lingula", "left_lower_lobe") else "right"
    s = side_sign(side)
    x, y = st.grid.x, st.grid.y
    u = s * x
    hu, hy = anat.hilum(side)
    hu = s * hu
    dome = anat.dome_y(side)
    med = medial_edge(anat, side, y)
    lat = lateral_edge(anat, side, y)
    un = np.clip((u - med) / np.maximum(lat - med, 1.0), 0.0, 1.0)
    inside = st.field_soft[side]
    if lobe == "right_upper_lobe":
        fis = hy + fissure_shift + 0.08 * (u - hu)
        w = _sig((fis - y) / 0.12) * (1.0 - 0.55 * _ramp((y - (fis - 5.0)) / 5.0))
    elif lobe == "right_middle_lobe":
        fis = hy + fissure_shift + 0.08 * (u - hu)
        w = (
            _sig((y - fis) / 0.12)
            * 0.92
            * (1.0 - 0.65 * un)
            * (1.0 - 0.6 * _ramp((y - (dome - 1.0)) / 3.0))
        )
    elif lobe == "left_upper_lobe":
        w = _sig((hy - 0.5 - y) / 0.9) * (1.0 - 0.5 * _ramp((y - (hy - 5.0)) / 5.0))
    elif lobe == "lingula":
        w = (
            _sig((y - hy + 0.5) / 0.9)
            * 0.92
            * (1.0 - 0.65 * un)
            * (1.0 - 0.6 * _ramp((y - (dome - 1.0)) / 3.0))
        )
    else:  # lower lobes: posterior, deepest at the base, reach up behind the hilum
        top = hy - 4.0
        w = _sig((y - top) / 1.0) * (0.3 + 0.65 * _ramp((y - top) / (dome + 1.0 - top)))
        w = np.maximum(w, 0.95 * _sig((y - dome + 0.5) / 0.5))
    return (w * inside * st.side_cols_mask[side]).astype(np.float32)


# ----------------------------------------------------------------------------------------
# The findings


def pleural_effusion(st: StaticAnatomy, side: str, severity: int) -> Sign:
    """Fluid layering at the base: a meniscus higher laterally, blunting the costophrenic angle
    (small), obscuring the hemidiaphragm (moderate), filling most of the hemithorax (large)."""
    anat = st.anatomy
    s = side_sign(side)
    x, y = st.grid.x, st.grid.y
    u = s * x
    height = {1: 3.2, 2: 8.5, 3: 15.0}[severity]
    cp = anat.dome_y(side) + anat.dome_drop
    med = medial_edge(anat, side, y)
    lat = lateral_edge(anat, side, y)
    un = np.clip((u - med) / np.maximum(lat - med, 1.0), 0.0, 1.0)
    # concave-upward meniscus: flat medially, climbing the lateral chest wall
    meniscus = cp - 0.55 * height - 0.45 * height * un**1.8
    ramp = 1.8 + 0.15 * height  # fluid thins toward the top: a hazy upper edge
    frac = _ramp((y - meniscus) / ramp) ** 0.85
    if severity == 1:  # a small effusion collects posteriorly/laterally first
        frac = frac * (0.55 + 0.45 * un)
    within = st.thorax_soft[side]
    replace = (0.97 * frac * within).astype(np.float32)
    mask = (replace > 0.3) & st.thorax_mask[side]
    shift = {1: 0.0, 2: 0.0, 3: 0.9}[severity] * -s
    return Sign(mask=mask, replace=replace, mediastinal_shift=shift)


def cardiomegaly(st: StaticAnatomy, severity: int) -> Sign:
    """An enlarged heart: transverse diameter to the target cardiothoracic ratio, mostly to the
    left (ventricle) and down."""
    anat = st.anatomy
    scale = CARDIOMEGALY_CTR[severity] / anat.normal_ctr
    half = anat.normal_ctr * anat.thorax_half_width
    shift = ((scale - 1.0) * half * 0.35, (scale - 1.0) * 1.6)
    heart = st.heart(scale, shift)
    return Sign(mask=heart.mask, heart_scale=scale, heart_shift=shift)


def pneumothorax(st: StaticAnatomy, side: str, severity: int) -> Sign:
    """Air in the pleural space: the lung retracts toward the hilum and base, a thin visceral
    pleural line, no vessels beyond it, mediastinal shift away when large."""
    anat = st.anatomy
    s = side_sign(side)
    x, y = st.grid.x, st.grid.y
    u = s * x
    scale = {1: 0.87, 2: 0.72, 3: 0.52}[severity]
    cu = anat.mediastinum_half_width + 1.0
    cy = anat.dome_y(side) + 1.0
    uc = cu + (u - cu) / scale
    yc = cy + (y - cy) / scale
    phi_c = lung_phi(anat, side, s * uc, yc) * scale
    field = st.phi[side]
    inside = _ramp(field / 0.15)
    gap = (inside * _sig(-phi_c / 0.04)).astype(np.float32)
    collapsed = inside * _sig(phi_c / 0.04)
    sigma = max(0.04, 0.45 * st.grid.pixel_cm)
    line = (0.9 * 0.05 / sigma) * np.exp(-((phi_c / sigma) ** 2)) * inside
    denser = collapsed * st.lung_path * anat.lung_density * (1.0 / scale - 1.0) * 0.6
    mask = (gap > 0.5) & st.field_mask[side]
    shift = {1: 0.0, 2: 0.25, 3: 1.8}[severity] * -s
    return Sign(
        mask=mask,
        water=(line + denser).astype(np.float32),
        air=gap,
        vessel_keep=(1.0 - gap).astype(np.float32),
        mediastinal_shift=shift,
        dome_shift={side: {1: 0.0, 2: 0.3, 3: 1.2}[severity]},
    )


def consolidation(st: StaticAnatomy, lobe: str, severity: int) -> Sign:
    """Airspace opacity in the lobe's territory, patchy to homogeneous, with air bronchograms
    (the bronchi stay aerated) and silhouette signs where the lobe touches heart or diaphragm."""
    w = st.lobe(lobe)
    tex = st.texture(("consolidation", lobe), cells=34)
    fine = st.texture(("consolidation-fine", lobe), cells=40)
    strength = {1: 0.8, 2: 0.9, 3: 0.96}[severity]
    # an ill-defined blob over part of the lobe (a segment when patchy, the whole lobe when
    # extensive), mottled by a smooth texture: fluffy acinar shadows that coalesce as it grows
    extent = {1: 0.55, 2: 0.9, 3: None}[severity]
    focus = np.ones_like(w) if extent is None else st.lobe_focus(lobe, extent)
    core = (w * focus) > 0.3
    lo, hi = np.quantile(tex[core], [0.05, 0.95]) if core.any() else (0.0, 1.0)
    t = np.clip((tex - lo) / max(float(hi - lo), 1e-3), 0.0, 1.0)
    mottle = {1: 0.25 + 1.1 * t, 2: 0.55 + 0.8 * t, 3: 0.9 + 0.2 * t}[severity]
    patch = np.clip(focus * mottle, 0.0, 1.0)
    replace = strength * w * patch * (0.85 + 0.15 * fine)
    replace = np.clip(replace, 0.0, 0.97).astype(np.float32)
    mask = replace > 0.22
    return Sign(mask=mask, replace=replace)


def pulmonary_edema(st: StaticAnatomy, severity: int, look: Conspicuity) -> Sign:
    """Mild: upper-zone vessels prominent (redistribution; version 2 adds a faint perihilar
    haze). Moderate: + Kerley B lines, peribronchial cuffing and hazy hila. Severe: +
    perihilar bat-wing airspace opacity."""
    anat = st.anatomy
    y = st.grid.y
    field = st.field_soft["right"] + st.field_soft["left"]
    gain = np.ones((st.grid.size, st.grid.size), np.float32)
    upper = np.zeros_like(gain)
    for side in ("right", "left"):
        hy = anat.hilum(side)[1]
        up = _ramp((hy + 0.5 - y) / 6.0) * st.side_cols_mask[side]
        low = _ramp((y - hy) / 6.0) * st.side_cols_mask[side]
        upper = np.maximum(upper, up * st.field_soft[side])
        gain = gain + ({1: look.mild_edema_vessel_gain, 2: 1.8, 3: 1.8}[severity]) * up - 0.2 * low
    # mild: redistribution only, so its region is the upper-zone vessels and their surround
    vessels = st.vessel_maps[0]
    near_vessels = st.lowpass_static(vessels, 0.3) > 0.08
    envelope = np.where(near_vessels, upper, 0.0)
    water = None
    replace = None
    density = 0.0
    if severity == 1 and look.mild_edema_haze > 0:
        haze = st.perihilar(2.6)
        water = (look.mild_edema_haze * haze * field).astype(np.float32)
        density = 0.02
        envelope = np.maximum(envelope, haze)
    if severity >= 2:
        density = 0.05 if severity == 2 else 0.08
        haze = st.perihilar(2.6)
        kerley = st.kerley_lines()
        water = (2.2 * haze * field + kerley).astype(np.float32)
        envelope = np.maximum(envelope, np.maximum(haze, 4.0 * kerley))
    if severity == 3:
        tex = st.texture(("edema", None), cells=30)
        bat = st.perihilar(5.2) ** 1.3
        replace = np.clip(0.85 * bat * (0.65 + 0.35 * tex) * field, 0, 0.95).astype(np.float32)
        envelope = np.maximum(envelope, 1.2 * bat)
    mask = (envelope > 0.3) & st.field_mask_any
    return Sign(
        mask=mask,
        water=water,
        replace=replace,
        vessel_gain=gain.astype(np.float32),
        density_add=density,
    )


def atelectasis(st: StaticAnatomy, lobe: str, severity: int, look: Conspicuity) -> Sign:
    """Mild: plate-like band. Moderate: partial collapse with fissure/hilar shift. Severe: lobar
    collapse into a dense wedge against mediastinum/hilum, with volume loss (hemidiaphragm
    elevated, mediastinum and hilum pulled toward it)."""
    anat = st.anatomy
    side = _side_of(lobe)
    s = side_sign(side)
    x, y = st.grid.x, st.grid.y
    u = s * x
    hu, hy = anat.hilum(side)
    hu = s * hu
    dome = anat.dome_y(side)
    apex = anat.lung_apex_y
    med = anat.mediastinum_half_width

    def lat_at(yy: float) -> float:
        return float(lateral_edge(anat, side, np.asarray(yy)))

    inside = st.field_soft[side] * st.side_cols_mask[side]
    if severity == 1:
        level = {
            "right_upper_lobe": hy - 3.5,
            "right_middle_lobe": hy + 2.8,
            "right_lower_lobe": dome - 2.4,
            "left_lower_lobe": dome - 2.2,
        }[lobe]
        u0 = hu + 0.5 if lobe != "right_middle_lobe" else hu - 0.5
        u1 = lat_at(level) - 1.2
        band_y = level + 0.12 * (u - u0)
        along = _ramp((u - u0) / 1.0) * _ramp((u1 - u) / 1.0)
        wobble = 0.25 * np.sin(1.3 * u + anat.patient_seed % 7)
        width = look.mild_atelectasis_half_width_cm
        band = np.exp(-(((y - band_y - wobble) / width) ** 2)) * along * inside
        # a plate seen edge-on: a few cm of collapsed lung along the beam, not the full depth
        water = look.mild_atelectasis_water * band * (1.0 - anat.lung_density)
        water = water.astype(np.float32)
        return Sign(mask=band > 0.3, water=water)
    if lobe == "right_upper_lobe":
        tri = [(med - 0.3, apex - 0.5), (lat_at(apex + 5.0) - 0.8, apex + 4.5), (hu, hy - 0.6)]
        shifts = {"dome": -0.6, "hilum": -1.6, "mediastinum": 0.9}
    elif lobe == "right_middle_lobe":
        tri = [(hu - 0.3, hy + 0.4), (med + 0.4, dome - 0.2), (hu + 4.5, dome - 1.0)]
        shifts = {"dome": -0.3, "hilum": 0.5, "mediastinum": 0.3}
    else:  # lower lobes: wedge against the spine, sharp oblique lateral border
        tri = [(hu - 0.6, hy - 0.3), (med - 0.5, dome + 1.8), (hu + 4.6, dome + 1.0)]
        shifts = {"dome": -1.6, "hilum": 1.2, "mediastinum": 0.7}
    if severity == 2:  # partial collapse: a larger, less dense wedge; half the shifts
        cu, cy = tri[0]
        tri = [(cu + 1.6 * (a - cu), cy + 1.6 * (b - cy)) for a, b in tri]
        shifts = {k: v * 0.5 for k, v in shifts.items()}
    wedge = _triangle(u, y, tri, 0.25)
    density = 0.9 if severity == 3 else 0.72
    replace = np.clip(density * wedge * st.thorax_soft[side], 0, 0.97).astype(np.float32)
    return Sign(
        mask=replace > 0.25,
        replace=replace,
        mediastinal_shift=shifts["mediastinum"] * s,
        dome_shift={side: shifts["dome"]},
        hilum_shift={side: shifts["hilum"]},
    )


def nodule(st: StaticAnatomy, lobe: str, severity: int, look: Conspicuity) -> Sign:
    """A rounded density, small, medium, or a lobulated mass (sizes: ``Conspicuity``)."""
    cx, cy = nodule_center(st.anatomy, lobe)
    r = look.nodule_diameter_cm[severity] / 2
    x, y = st.grid.x, st.grid.y
    blobs = [(cx, cy, r)]
    if severity == 3:  # lobulated mass
        blobs += [(cx + 0.45 * r, cy - 0.35 * r, 0.7 * r), (cx - 0.5 * r, cy + 0.3 * r, 0.65 * r)]
    path = np.zeros((st.grid.size, st.grid.size), np.float32)
    for bx, by, br in blobs:
        d2 = (x - bx) ** 2 + (y - by) ** 2
        path = np.maximum(path, 2.0 * np.sqrt(np.maximum(br * br - d2, 0.0)))
    # a sub-pixel nodule keeps its projected area instead of vanishing
    px = st.grid.pixel_cm
    if r < 0.8 * px:
        d2 = (x - cx) ** 2 + (y - cy) ** 2
        sigma = 0.8 * px
        path = (4.0 / 3.0 * r**3 / sigma**2) * np.exp(-d2 / (2 * sigma**2)) / 2.0
    water = (look.nodule_density * path * (1.0 - st.anatomy.lung_density)).astype(np.float32)
    mask = water > 0.1 * float(water.max()) if water.max() > 0 else water > 0
    return Sign(mask=mask, water=water)


def compute_sign(
    st: StaticAnatomy,
    name: str,
    location: str | None,
    severity: int,
    generator_version: int = DEFAULT_GENERATOR_VERSION,
) -> Sign:
    look = GENERATOR_VERSIONS[check_generator_version(generator_version)]
    check_location(name, location)
    check_severity(name, severity)
    if severity == 0:
        raise ValueError(f"{name} at severity 0 is absent and has no sign")
    if name == "pleural_effusion":
        return pleural_effusion(st, location, severity)
    if name == "cardiomegaly":
        return cardiomegaly(st, severity)
    if name == "pneumothorax":
        return pneumothorax(st, location, severity)
    if name == "consolidation":
        return consolidation(st, location, severity)
    if name == "pulmonary_edema":
        return pulmonary_edema(st, severity, look)
    if name == "atelectasis":
        return atelectasis(st, location, severity, look)
    if name == "nodule":
        return nodule(st, location, severity, look)
    raise ValueError(f"no radiological sign implemented for {name!r}")
