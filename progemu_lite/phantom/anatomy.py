"""Per-patient chest anatomy for the simulated PA radiograph.

Every length is in centimetres in the *canonical frame*: the 43 cm x 43 cm detector seen from
the X-ray tube of a PA view, origin at the detector centre, ``x`` to the image right (the
patient's LEFT) and ``y`` down. The renderer samples these shapes at any pixel size, so a
patient has the same geometry at 64 and 512 pixels.

``PatientAnatomy`` only holds numbers; the shape functions below turn them into fields on a
coordinate grid (lung outline, diaphragm domes, lobe territories, the pulmonary vessel tree).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

FIELD_OF_VIEW_CM = 43.0
SIDES = ("right", "left")  # patient sides; right lung is on the image LEFT (x < 0)


def side_sign(side: str) -> float:
    """+1 for the patient's left (image right, x > 0), -1 for the patient's right."""
    return 1.0 if side == "left" else -1.0


@dataclass(frozen=True)
class PatientAnatomy:
    """The anatomy of one simulated patient (all lengths in cm, canonical frame)."""

    patient_seed: int
    sex: str  # "female" or "male"
    body_half_width: float  # outer soft-tissue half width at mid chest
    body_depth: float  # antero-posterior thickness of the chest
    shoulder_half_width: float  # soft tissue half width at shoulder level
    thorax_half_width: float  # inner rib cage (lung lateral edge) half width at its widest
    lung_apex_y: float
    right_dome_y: float  # top of the right hemidiaphragm dome (higher = smaller y)
    left_dome_y: float
    dome_drop: float  # costophrenic angle lies this far below the dome top
    heart_center: tuple[float, float]
    heart_axes: tuple[float, float]  # semi-axes of the projected heart ellipse (long, short)
    heart_angle_deg: float  # long axis tilt below the horizontal, toward the patient's left
    heart_depth: float  # AP depth of the heart at its centre
    aortic_knob: tuple[float, float, float]  # x, y, radius
    mediastinum_half_width: float  # lung medial edge above the heart
    spine_half_width: float
    rib_first_y: float  # where the first posterior rib leaves the spine
    rib_spacing: float
    rib_drop: float  # how far a rib descends from its head to its anterior end
    rib_hump: float  # rise of the posterior rib just lateral to the spine
    clavicle_y: float
    clavicle_rise: float  # lateral end of the clavicle lies this much higher
    scapula_offset: float  # lateral shift of the scapulae (arms rotated out: larger)
    hilum_right: tuple[float, float]
    hilum_left: tuple[float, float]
    vessel_seed: int
    breast_size: float  # 0 for none
    chest_wall: float  # soft tissue of the chest wall (adds uniform thickness)
    lung_density: float  # water-equivalent fraction of aerated lung

    def dome_y(self, side: str) -> float:
        return self.right_dome_y if side == "right" else self.left_dome_y

    def hilum(self, side: str) -> tuple[float, float]:
        return self.hilum_right if side == "right" else self.hilum_left

    @property
    def normal_ctr(self) -> float:
        return heart_half_extent(self.heart_axes, self.heart_angle_deg) / self.thorax_half_width


def heart_half_extent(axes: tuple[float, float], angle_deg: float) -> float:
    """Horizontal half extent of a rotated ellipse: half the transverse cardiac diameter."""
    a, b = axes
    t = np.deg2rad(angle_deg)
    return float(np.sqrt((a * np.cos(t)) ** 2 + (b * np.sin(t)) ** 2))


def sample_patient(rng: np.random.Generator) -> PatientAnatomy:
    """Draw one patient: habitus, heart, diaphragm, ribs, shoulders, hila, soft tissue, sex."""
    seed = int(rng.integers(0, 2**31 - 1))
    sex = "female" if rng.random() < 0.5 else "male"
    habitus = float(np.clip(rng.normal(0.0, 1.0), -2.0, 2.2))  # thin .. broad
    scale = 1.0 + 0.03 * habitus + (-0.04 if sex == "female" else 0.0)
    thorax = 14.0 * scale + rng.normal(0, 0.3)
    body = thorax + 2.2 + 0.6 * max(habitus, -1.0) + rng.normal(0, 0.3)
    apex = -15.8 + rng.normal(0, 0.5)
    right_dome = 5.8 + rng.normal(0, 0.8)
    left_dome = right_dome + 1.6 + rng.normal(0, 0.35)  # the right dome sits higher
    ctr = float(np.clip(rng.normal(0.455, 0.02), 0.41, 0.49))
    angle = 36.0 + rng.normal(0, 4.0)
    ratio = 0.72 + rng.normal(0, 0.03)
    # choose the semi-axes so the transverse diameter gives the drawn cardiothoracic ratio
    unit = heart_half_extent((1.0, ratio), angle)
    long_axis = ctr * thorax / unit
    heart_x = 1.3 + rng.normal(0, 0.3)
    heart_y = right_dome - 2.6 + rng.normal(0, 0.4)
    spacing = 2.35 * (1.0 + 0.02 * habitus) + rng.normal(0, 0.06)
    hilum_y = apex + 12.0 + rng.normal(0, 0.5)
    return PatientAnatomy(
        patient_seed=seed,
        sex=sex,
        body_half_width=float(body),
        body_depth=float(21.0 * scale + 1.5 * max(habitus, 0.0) + rng.normal(0, 0.7)),
        shoulder_half_width=float(body + 2.5 + rng.normal(0, 0.5)),
        thorax_half_width=float(thorax),
        lung_apex_y=float(apex),
        right_dome_y=float(right_dome),
        left_dome_y=float(left_dome),
        dome_drop=float(4.2 + rng.normal(0, 0.4)),
        heart_center=(float(heart_x), float(heart_y)),
        heart_axes=(float(long_axis), float(long_axis * ratio)),
        heart_angle_deg=float(angle),
        heart_depth=float(11.0 + rng.normal(0, 0.6)),
        aortic_knob=(
            float(3.2 + rng.normal(0, 0.25)),
            float(apex + 8.8 + rng.normal(0, 0.4)),
            float(1.7 + rng.normal(0, 0.15)),
        ),
        mediastinum_half_width=float(2.6 + rng.normal(0, 0.2)),
        spine_half_width=float(2.1 * scale + rng.normal(0, 0.1)),
        rib_first_y=float(apex + 1.2 + rng.normal(0, 0.3)),
        rib_spacing=float(spacing),
        rib_drop=float(9.0 + rng.normal(0, 0.6)),
        rib_hump=float(0.9 + rng.normal(0, 0.15)),
        clavicle_y=float(apex + 5.2 + rng.normal(0, 0.4)),
        clavicle_rise=float(3.4 + rng.normal(0, 0.5)),
        scapula_offset=float(rng.normal(0, 0.8)),
        hilum_right=(float(-4.6 + rng.normal(0, 0.3)), float(hilum_y + 1.0)),
        hilum_left=(float(4.4 + rng.normal(0, 0.3)), float(hilum_y - 0.4)),
        vessel_seed=int(rng.integers(0, 2**31 - 1)),
        breast_size=float(np.clip(rng.normal(1.0, 0.3), 0.4, 1.6)) if sex == "female" else 0.0,
        chest_wall=float(np.clip(1.5 + 1.2 * habitus + rng.normal(0, 0.4), 0.3, 5.0)),
        lung_density=float(np.clip(rng.normal(0.22, 0.015), 0.17, 0.27)),
    )


# ----------------------------------------------------------------------------------------
# Shape functions on a canonical grid (x, y in cm; arrays broadcast against each other)


def _apex_y(anat: PatientAnatomy, side: str) -> float:
    return anat.lung_apex_y + (0.3 if side == "left" else 0.0)


def lateral_edge(anat: PatientAnatomy, side: str, y: np.ndarray) -> np.ndarray:
    """Distance from the midline of the lung's lateral edge (inner rib cage) at height y."""
    apex = _apex_y(anat, side)
    widest = anat.dome_y(side) + anat.dome_drop
    apex_u = anat.mediastinum_half_width + 2.2
    t = np.clip((widest - y) / (widest - apex), 0.0, 1.0)
    return apex_u + (anat.thorax_half_width - apex_u) * np.sqrt(1.0 - t**2.2)


def medial_edge(anat: PatientAnatomy, side: str, y: np.ndarray) -> np.ndarray:
    """Distance from the midline of the lung's medial edge (mediastinum) at height y."""
    apex = _apex_y(anat, side)
    apex_u = anat.mediastinum_half_width + 2.2
    height = 3.0
    t = np.clip((apex + height - y) / height, 0.0, 1.0)
    return anat.mediastinum_half_width + (apex_u - anat.mediastinum_half_width) * (
        1.0 - np.sqrt(1.0 - t**2)
    )


def dome_height(anat: PatientAnatomy, side: str, u: np.ndarray) -> np.ndarray:
    """y of the hemidiaphragm surface at lateral distance u (larger y = lower)."""
    top = anat.dome_y(side)
    peak = 0.42 * anat.thorax_half_width
    lateral = np.clip((u - peak) / (anat.thorax_half_width - peak), 0.0, None)
    medial = np.clip((peak - u) / (peak - anat.mediastinum_half_width), 0.0, None)
    return top + anat.dome_drop * lateral**2 + 0.9 * medial**2


def lung_level(anat: PatientAnatomy, side: str, x: np.ndarray, y: np.ndarray) -> dict:
    """Signed distances (cm, positive inside) to each edge of one lung field."""
    u = side_sign(side) * x
    return {
        "lateral": lateral_edge(anat, side, y) - u,
        "medial": u - medial_edge(anat, side, y),
        "base": dome_height(anat, side, u) - y,
        "apex": y - _apex_y(anat, side),
    }


def lung_phi(anat: PatientAnatomy, side: str, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """One signed distance-like field of the lung field: > 0 inside."""
    lv = lung_level(anat, side, x, y)
    return np.minimum(np.minimum(lv["lateral"], lv["medial"]), np.minimum(lv["base"], lv["apex"]))


# ----------------------------------------------------------------------------------------
# The pulmonary vessel tree (centre lines in cm), grown from each hilum


@dataclass(frozen=True)
class TubeSet:
    """Tube centre lines: per sample point its position (cm), unit tangent and radius (cm)."""

    points: np.ndarray  # (P, 2) x, y
    tangents: np.ndarray  # (P, 2)
    radii: np.ndarray  # (P,)
    weights: np.ndarray  # (P,) density multiplier

    @staticmethod
    def concat(sets: list[TubeSet]) -> TubeSet:
        return TubeSet(
            np.concatenate([s.points for s in sets]),
            np.concatenate([s.tangents for s in sets]),
            np.concatenate([s.radii for s in sets]),
            np.concatenate([s.weights for s in sets]),
        )


def polyline_tubes(xy: np.ndarray, radii: np.ndarray, weights: np.ndarray, step: float) -> TubeSet:
    """Resample a polyline (N, 2) with per-vertex radius/weight every ``step`` cm."""
    seg = np.diff(xy, axis=0)
    seg_len = np.hypot(seg[:, 0], seg[:, 1])
    cum = np.concatenate([[0.0], np.cumsum(seg_len)])
    total = cum[-1]
    n = max(int(np.ceil(total / step)) + 1, 2)
    s = np.linspace(0.0, total, n)
    px = np.interp(s, cum, xy[:, 0])
    py = np.interp(s, cum, xy[:, 1])
    tx = np.gradient(px)
    ty = np.gradient(py)
    norm = np.maximum(np.hypot(tx, ty), 1e-9)
    return TubeSet(
        np.stack([px, py], axis=1),
        np.stack([tx / norm, ty / norm], axis=1),
        np.interp(s, cum, radii),
        np.interp(s, cum, weights),
    )


@lru_cache(maxsize=64)
def vessel_segments(anat: PatientAnatomy, side: str) -> tuple[np.ndarray, np.ndarray]:
    """Branching pulmonary vessels of one lung, grown generation by generation from the hilum.

    Returns ``points`` (S, 3, 2): each segment a slightly bent 3-point polyline in cm, and
    ``radii`` (S, 2): radius at its start and end. Radii taper at each branching; lower-zone
    trunks start wider than upper-zone ones (the normal upright gravity distribution).
    """
    rng = np.random.default_rng([anat.vessel_seed, 0 if side == "right" else 1])
    s = side_sign(side)
    hx, hy = anat.hilum(side)
    # main trunks: angle from the lateral direction, positive = downward
    ang = np.deg2rad(np.array([-80, -55, -30, -5, 20, 45, 70, 95]) + rng.normal(0, 6, 8))
    r = 0.42 + 0.2 * (np.sin(ang) + 1.0) / 2.0
    x = np.full(ang.shape, hx)
    y = np.full(ang.shape, hy)
    all_points, all_radii = [], []
    for _generation in range(13):
        m = ang.size
        if m == 0:
            break
        length = np.clip(3.2 * (r / 0.45) ** 0.8 + rng.normal(0, 0.3, m), 0.4, 4.5)
        bend = rng.normal(0, 0.12, m)
        a1 = ang + bend
        x1 = x + s * np.cos(a1) * length / 2
        y1 = y + np.sin(a1) * length / 2
        a2 = a1 + bend
        x2 = x1 + s * np.cos(a2) * length / 2
        y2 = y1 + np.sin(a2) * length / 2
        inside = lung_phi(anat, side, x2, y2)
        r_end = r * 0.88
        keep = inside >= -0.3
        pts = np.stack([np.stack([x, y], 1), np.stack([x1, y1], 1), np.stack([x2, y2], 1)], 1)
        all_points.append(pts[keep])
        all_radii.append(np.stack([r, r_end], 1)[keep])
        split = np.deg2rad(22 + rng.normal(0, 8, m))
        share = rng.uniform(0.55, 0.8, m)
        sign = np.where(rng.random(m) < 0.5, 1.0, -1.0)
        grow = keep & (r_end >= 0.035) & (inside >= 0.6)
        x = np.concatenate([x2[grow], x2[grow]])
        y = np.concatenate([y2[grow], y2[grow]])
        ang = np.concatenate(
            [(a2 + sign * split * (1 - share))[grow], (a2 - sign * split * share * 2)[grow]]
        )
        r = np.concatenate([(r_end * share**0.33)[grow], (r_end * (1 - share) ** 0.4)[grow]])
    return np.concatenate(all_points), np.concatenate(all_radii)


def segment_tubes(points: np.ndarray, radii: np.ndarray, step: float) -> TubeSet:
    """Sample 3-point polylines (S, 3, 2) every ``step`` cm, radius linear along each."""
    starts = np.concatenate([points[:, 0], points[:, 1]])
    ends = np.concatenate([points[:, 1], points[:, 2]])
    mid_r = radii.mean(axis=1)
    r_a = np.concatenate([radii[:, 0], mid_r])
    r_b = np.concatenate([mid_r, radii[:, 1]])
    d = ends - starts
    length = np.hypot(d[:, 0], d[:, 1])
    count = np.maximum(np.ceil(length / step).astype(np.int64), 1) + 1
    owner = np.repeat(np.arange(len(count)), count)
    first = np.cumsum(count) - count
    t = (np.arange(owner.size) - first[owner]) / (count[owner] - 1)
    pts = starts[owner] + d[owner] * t[:, None]
    tangent = d[owner] / np.maximum(length[owner], 1e-9)[:, None]
    rad = r_a[owner] + (r_b - r_a)[owner] * t
    return TubeSet(pts, tangent, rad, np.ones_like(rad))


def vessel_tubes(anat: PatientAnatomy, step: float) -> tuple[TubeSet, TubeSet]:
    """Vessel tree (both lungs) and the bronchi that run beside the larger branches."""
    vessels, bronchi = [], []
    for side in SIDES:
        points, radii = vessel_segments(anat, side)
        vessels.append(segment_tubes(points, radii, step))
        # the main pulmonary artery branch and hilar veins: the bulk of the hilar shadow
        hx, hy = anat.hilum(side)
        s = side_sign(side)
        for dy, r in ((-1.2, 0.75), (0.9, 0.6)):
            start = (s * (anat.mediastinum_half_width - 0.3), hy + dy * 0.6)
            mid = ((start[0] + hx) / 2, hy + dy * 0.8)
            hilar = np.array([[start, mid, (hx, hy + dy)]])
            vessels.append(segment_tubes(hilar, np.array([[r, 0.85 * r]]), step))
        big = radii[:, 0] > 0.14
        d = points[big, 2] - points[big, 0]
        normal = (
            np.stack([-d[:, 1], d[:, 0]], 1) / np.maximum(np.hypot(d[:, 0], d[:, 1]), 1e-9)[:, None]
        )
        offset = points[big] + (normal * radii[big, :1] * 1.9)[:, None, :]
        bronchi.append(segment_tubes(offset, 0.7 * radii[big], step))
    return TubeSet.concat(vessels), TubeSet.concat(bronchi)


# ----------------------------------------------------------------------------------------
# Ribs, clavicles (centre lines in cm)


def rib_tubes(anat: PatientAnatomy, step: float, count: int = 12) -> tuple[TubeSet, TubeSet]:
    """Posterior and anterior rib arcs of both sides, projected from a ring model of each rib.

    Rib k leaves the spine at level y_k, rises slightly, sweeps laterally and down to the lateral
    chest wall (posterior arc), then runs medially and downward as the anterior arc, fading at
    the costochondral junction (cartilage is not radio-opaque).
    """
    posterior, anterior = [], []
    for k in range(count):
        y_k = anat.rib_first_y + k * anat.rib_spacing * (1.0 + 0.025 * k)
        drop = anat.rib_drop * (0.45 + 0.55 * min(k, 5) / 5)
        # the lateral point lies half the drop below the head; the rib sits just outside the lung
        lateral_y = y_k + drop / 2
        for side in SIDES:
            s = side_sign(side)
            half = float(lateral_edge(anat, side, np.asarray(lateral_y))) + 0.7
            if k == 0:
                half = anat.mediastinum_half_width + 3.2
            phi_end = 0.80 * np.pi if k > 0 else 0.86 * np.pi
            if k >= 10:  # floating ribs 11 and 12 end in the flank
                phi_end = (0.42 if k == 10 else 0.3) * np.pi
            phi = np.linspace(0.1, phi_end, 90)
            hump = anat.rib_hump * (0.6 if k == 0 else 1.0)
            x = s * half * np.sin(phi)
            # posterior arc: flat by the spine, bending down laterally (convex upward);
            # anterior arc: straight-ish, running medially and downward
            post_drop = 0.5 * drop
            sin_phi = np.sin(phi)
            y = np.where(
                phi <= np.pi / 2,
                y_k + post_drop * sin_phi**2.2 - hump * np.sin(2 * np.minimum(phi, np.pi / 2)),
                y_k + post_drop + (drop - post_drop) * (1 - sin_phi) / (1 - np.sin(phi_end)),
            )
            radius = np.where(phi < np.pi / 2, 0.55 + 0.1 * np.sin(phi), 0.45)
            if k == 0:
                radius = radius * 0.9
            fade = np.clip((phi_end - phi) / (0.5 if k < 10 else 0.25), 0.0, 1.0)
            weight = np.where(phi < np.pi / 2, 1.0, 0.75) * fade
            back = phi <= np.pi / 2 + 1e-9
            front = phi >= np.pi / 2 - 0.02
            xy = np.stack([x, y], axis=1)
            posterior.append(polyline_tubes(xy[back], radius[back], weight[back], step))
            if front.sum() >= 2:
                anterior.append(polyline_tubes(xy[front], radius[front], weight[front], step))
    return TubeSet.concat(posterior), TubeSet.concat(anterior)


def clavicle_tubes(anat: PatientAnatomy, step: float) -> TubeSet:
    """S-shaped clavicles from the sternal notch to the acromion."""
    parts = []
    for side in SIDES:
        s = side_sign(side)
        t = np.linspace(0.0, 1.0, 60)
        u = anat.mediastinum_half_width - 0.6 + t * (anat.thorax_half_width + 1.6)
        # medial third bows upward, lateral third curves back down to the acromion
        y = (
            anat.clavicle_y
            - anat.clavicle_rise * t
            - 0.5 * np.sin(np.pi * np.clip(t / 0.7, 0, 1)) * (1 - t)
            + 0.6 * np.clip((t - 0.75) / 0.25, 0, 1) ** 2
        )
        radius = 0.8 - 0.2 * t
        weight = np.ones_like(t)
        parts.append(polyline_tubes(np.stack([s * u, y], axis=1), radius, weight, step))
    return TubeSet.concat(parts)


def nodule_center(anat: PatientAnatomy, lobe: str) -> tuple[float, float]:
    """Where a nodule of this lobe sits for this patient (inside the lobe, off the heart)."""
    rng = np.random.default_rng([anat.patient_seed, 7, list(_LOBE_SPOT).index(lobe)])
    side = "left" if lobe in ("left_upper_lobe", "lingula", "left_lower_lobe") else "right"
    s = side_sign(side)
    fu, fy = _LOBE_SPOT[lobe]
    apex, dome = _apex_y(anat, side), anat.dome_y(side)
    y = apex + fy * (dome - apex) + rng.normal(0, 0.6)
    lat = float(lateral_edge(anat, side, np.asarray(y)))
    med = anat.mediastinum_half_width
    u = med + fu * (lat - med) + rng.normal(0, 0.4)
    return float(s * u), float(y)


# fractional (medial->lateral, apex->dome) position of each lobe's nodule
_LOBE_SPOT = {
    "right_upper_lobe": (0.55, 0.25),
    "right_middle_lobe": (0.55, 0.72),
    "right_lower_lobe": (0.65, 0.86),
    "left_upper_lobe": (0.55, 0.27),
    "lingula": (0.72, 0.66),
    "left_lower_lobe": (0.68, 0.88),
}
