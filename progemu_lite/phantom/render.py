"""Simulated PA chest radiographs with physically motivated image formation.

For each pixel the renderer sums the projected path length of each material along the beam
(soft tissue/water, aerated lung, bone, air), attenuates ``I = I0 exp(-sum mu_i t_i)``, adds a
little scatter and Poisson-like quantum noise set by the exposure, blurs like a detector, takes
the log and windows it to 8 bits. Findings add or remove material (pleural fluid, alveolar
filling, collapse, pleural air, nodules) and move structures (heart size, mediastinal shift,
hemidiaphragm, hila). Everything that does not depend on the findings or the acquisition is
cached per (patient, size) in :class:`PatientRenderer`; a render at 256x256 is a few ms.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from . import signs as _signs
from ._raster import (
    Grid,
    LowPass,
    Warp,
    chord,
    shift_columns,
    shift_rows_where,
    smooth_field,
    tube_path_length,
)
from .anatomy import (
    FIELD_OF_VIEW_CM,
    SIDES,
    PatientAnatomy,
    clavicle_tubes,
    dome_height,
    lateral_edge,
    lung_level,
    rib_tubes,
    side_sign,
    vessel_tubes,
)
from .findings import check_location, finding_spec
from .state import ChestState

NATIVE_SIZE = 512
MIN_SIZE, MAX_SIZE = 64, 1024
# How far in front of / behind the rotation axis anterior and posterior structures lie (cm):
# a rotated patient shows the heart and clavicle heads shifted against the spinous processes.
ANTERIOR_CM, POSTERIOR_CM = 7.0, 5.0
PHOTONS_PER_CM2 = 2.5e6  # detected quanta per cm^2 behind air at the reference exposure
REFERENCE_MAS = 3.2


def check_size(size: int) -> int:
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)):
        raise ValueError(f"image size must be an integer, got {size!r}")
    if not (MIN_SIZE <= size <= MAX_SIZE and size % 16 == 0):
        raise ValueError(
            f"image size {size} is not supported: use a multiple of 16 from {MIN_SIZE} to "
            f"{MAX_SIZE} (model sizes are 64, 128, 256, 512)"
        )
    return int(size)


# ----------------------------------------------------------------------------------------
# Acquisition


@dataclass(frozen=True)
class Acquisition:
    """How one radiograph was taken."""

    exposure_mas: float = REFERENCE_MAS  # tube current x time; more = less quantum noise
    kvp: float = 110.0  # tube voltage: higher = less bone/soft-tissue contrast, more scatter
    noise_level: float = 1.0  # detector/processing noise multiplier on top of quantum noise
    rotation_deg: float = 0.0  # patient rotation about the vertical axis
    shift_x_px: float = 0.0  # positioning shift, in pixels of a 512 image
    shift_y_px: float = 0.0
    inspiration: float = 1.0  # vertical thoracic scale: > 1 deeper breath, < 1 poor inspiration
    noise_seed: int = 0

    def __post_init__(self) -> None:
        limits = {
            "exposure_mas": (0.2, 50.0),
            "kvp": (50.0, 150.0),
            "noise_level": (0.0, 5.0),
            "rotation_deg": (-15.0, 15.0),
            "shift_x_px": (-64.0, 64.0),
            "shift_y_px": (-64.0, 64.0),
            "inspiration": (0.8, 1.2),
        }
        for name, (lo, hi) in limits.items():
            value = getattr(self, name)
            if not np.isfinite(value) or not lo <= value <= hi:
                raise ValueError(f"acquisition {name}={value!r} is outside [{lo}, {hi}]")


def sample_acquisition(rng: np.random.Generator) -> Acquisition:
    """A random but plausible PA acquisition."""
    return Acquisition(
        exposure_mas=float(np.clip(REFERENCE_MAS * np.exp(rng.normal(0, 0.45)), 0.8, 12.0)),
        kvp=float(rng.uniform(85.0, 125.0)),
        noise_level=float(rng.uniform(0.8, 1.5)),
        rotation_deg=float(np.clip(rng.normal(0, 2.5), -7, 7)),
        shift_x_px=float(np.clip(rng.normal(0, 8.0), -24, 24)),
        shift_y_px=float(np.clip(rng.normal(0, 8.0), -24, 24)),
        inspiration=float(np.clip(rng.normal(1.0, 0.035), 0.9, 1.1)),
        noise_seed=int(rng.integers(0, 2**31 - 1)),
    )


def followup_acquisition(prior: Acquisition, rng: np.random.Generator) -> Acquisition:
    """The follow-up study of a registered pair: its own exposure, kVp and noise, but only a
    small residual positioning difference from the prior (like ICG-CXR's ``*-reg.png``)."""
    fresh = sample_acquisition(rng)
    return Acquisition(
        exposure_mas=fresh.exposure_mas,
        kvp=fresh.kvp,
        noise_level=fresh.noise_level,
        rotation_deg=float(np.clip(prior.rotation_deg + rng.normal(0, 0.3), -15, 15)),
        shift_x_px=float(np.clip(prior.shift_x_px + rng.normal(0, 1.0), -64, 64)),
        shift_y_px=float(np.clip(prior.shift_y_px + rng.normal(0, 1.0), -64, 64)),
        inspiration=float(np.clip(prior.inspiration + rng.normal(0, 0.006), 0.8, 1.2)),
        noise_seed=fresh.noise_seed,
    )


def attenuation_coefficients(kvp: float) -> tuple[float, float]:
    """Effective linear attenuation (1/cm) of water and cortical bone at a kVp-like setting."""
    mu_water = 0.20 * (100.0 / kvp) ** 0.35
    mu_bone = 0.62 * (100.0 / kvp) ** 0.9
    return mu_water, mu_bone


# ----------------------------------------------------------------------------------------
# Static anatomy per (patient, size)


@dataclass
class HeartLayer:
    path: np.ndarray  # cm of heart + great vessels displacing lung
    mask: np.ndarray  # projected cardiac silhouette (above the diaphragm)


class StaticAnatomy:
    """Path-length maps of everything that does not depend on findings or acquisition."""

    def __init__(self, anatomy: PatientAnatomy, size: int):
        self.anatomy = anatomy
        self.grid = Grid(size)
        self._hearts: dict[tuple, HeartLayer] = {}
        self._lobes: dict[str, np.ndarray] = {}
        self._textures: dict[tuple, np.ndarray] = {}
        self._cache: dict[tuple, np.ndarray] = {}
        g = self.grid
        n = size
        x, y = g.x, g.y  # (1, n) and (n, 1): edge functions of one coordinate stay cheap
        self.side_cols = {"right": slice(0, n // 2), "left": slice(n // 2, n)}
        self.side_cols_mask = {
            "right": (g.x < 0).astype(np.float32),
            "left": (g.x >= 0).astype(np.float32),
        }
        self.levels = {s: lung_level(anatomy, s, x, y) for s in SIDES}
        self.phi = {}
        for s in SIDES:
            lv = self.levels[s]
            phi = np.minimum(np.minimum(lv["lateral"], lv["medial"]), lv["base"])
            self.phi[s] = np.minimum(phi, lv["apex"]).astype(np.float32)
        self.field_soft = {s: np.clip(self.phi[s] / 0.25, 0, 1) for s in SIDES}
        self.field_mask = {s: self.phi[s] > 0 for s in SIDES}
        self.field_mask_any = self.field_mask["right"] | self.field_mask["left"]
        self.thorax_soft, self.thorax_mask = {}, {}
        for s in SIDES:
            lv = self.levels[s]
            inner = np.minimum(np.minimum(lv["lateral"] + 0.6, lv["medial"]), lv["apex"])
            below = anatomy.dome_y(s) + anatomy.dome_drop + 1.5 - y
            t = np.minimum(inner, below)
            self.thorax_soft[s] = (np.clip(t / 0.25, 0, 1) * self.side_cols_mask[s]).astype(
                np.float32
            )
            self.thorax_mask[s] = self.thorax_soft[s] > 0.5

    # -- body, lungs, bones, vessels -------------------------------------------------------
    @cached_property
    def body_water(self) -> np.ndarray:
        """Water-equivalent thickness of the body if it were all soft tissue (cm)."""
        a = self.anatomy
        g = self.grid
        x, y = g.x, g.y
        shoulder = np.exp(-(((y - (a.lung_apex_y + 3.5)) / 5.5) ** 2))
        half = a.body_half_width + (a.shoulder_half_width - a.body_half_width) * shoulder
        half = half + 0.8 * np.clip((y - a.left_dome_y) / 12.0, 0, 1)  # abdomen/flanks
        neck = 6.2 + 0.5 * (a.body_half_width - 16.0)
        neck_w = 1.0 / (1.0 + np.exp(-(y - (a.lung_apex_y - 0.8 - 0.22 * np.abs(x))) / 0.9))
        half = neck + (half - neck) * neck_w
        abdomen = 1.0 + 0.08 * np.clip((y - a.right_dome_y) / 6.0, 0, 1)  # liver, bowel
        depth = a.body_depth * (0.55 + 0.45 * neck_w) * abdomen
        r = np.clip(np.abs(x) / half, 0, 1)
        body = depth * (1.0 - r**2) ** 0.4 * (r < 1)
        edge = np.clip((half - np.abs(x)) / 0.6, 0, 1)  # the skin edge itself
        body = body * edge + a.chest_wall * np.sqrt(edge) * (1 - r**2) ** 0.5
        if a.breast_size > 0:
            b = a.breast_size
            for s in (-1.0, 1.0):
                cx = s * 0.6 * a.thorax_half_width
                cy = a.right_dome_y - 2.5 + 0.8 * b
                ax, ay, dz = 6.0 * b**0.4, 4.2 * b**0.4, 2.6 * b
                q = ((x - cx) / ax) ** 2 + ((y - cy) / ay) ** 2
                upper = np.clip((y - (cy - 1.4 * ay)) / (1.4 * ay), 0, 1)
                body = body + dz * np.sqrt(np.clip(1 - q, 0, 1)) * upper
        body = body - self._airway_path()
        return body.astype(np.float32)

    def _airway_path(self) -> np.ndarray:
        """Air in the trachea and main bronchi (cm)."""
        a = self.anatomy
        g = self.grid
        x, y = g.x, g.y
        carina = (-0.2, min(a.hilum_right[1], a.hilum_left[1]) - 2.2)
        top = (-0.1, -22.0)
        out = np.zeros((g.size, g.size), np.float32)
        segments = [
            (top, carina, 0.85),
            (carina, (a.hilum_right[0] + 1.6, a.hilum_right[1] - 0.6), 0.6),
            (carina, (a.hilum_left[0] - 1.6, a.hilum_left[1] - 0.2), 0.55),
        ]
        for (x0, y0), (x1, y1), r in segments:
            ex, ey = x1 - x0, y1 - y0
            t = np.clip(((x - x0) * ex + (y - y0) * ey) / (ex * ex + ey * ey), 0, 1)
            d2 = (x - x0 - t * ex) ** 2 + (y - y0 - t * ey) ** 2
            out = np.maximum(out, 0.9 * chord(r, d2))
        return out

    @cached_property
    def depth(self) -> np.ndarray:
        """AP path length of the thoracic cavity occupied by lung, before heart/vessels (cm)."""
        a = self.anatomy
        g = self.grid
        n = g.size
        y = g.y
        out = np.zeros((n, n), np.float32)
        for s in SIDES:
            lv = self.levels[s]
            dmax = 0.78 * a.body_depth * np.clip((y - a.lung_apex_y) / 13.0, 0.15, 1.0) ** 0.6
            t = lv["base"]
            base = np.where(
                t > 0,
                0.25 + 0.75 * np.sqrt(np.clip(t / 4.0, 0, 1)),
                0.25 * np.clip(1 + t / 4.0, 0, 1) ** 2,  # posterior costophrenic recess
            )
            lateral = np.sqrt(np.clip(lv["lateral"] / 3.0, 0, 1))
            medial = np.sqrt(np.clip(lv["medial"] / 2.0, 0, 1))
            apex = np.sqrt(np.clip(lv["apex"] / 2.5, 0, 1))
            d = dmax * base * lateral * medial * apex
            out += (d * self.side_cols_mask[s]).astype(np.float32)
        return out

    def heart(self, scale: float = 1.0, shift: tuple[float, float] = (0.0, 0.0)) -> HeartLayer:
        """Heart, aortic knob, pulmonary trunk, descending aorta and SVC (cached per size)."""
        key = (round(scale, 4), round(shift[0], 4), round(shift[1], 4))
        if key in self._hearts:
            return self._hearts[key]
        a = self.anatomy
        g = self.grid
        x, y = g.x, g.y
        cx, cy = a.heart_center[0] + shift[0], a.heart_center[1] + shift[1]
        ax, bx = a.heart_axes[0] * scale, a.heart_axes[1] * scale
        t = np.deg2rad(a.heart_angle_deg)
        xr = (x - cx) * np.cos(t) + (y - cy) * np.sin(t)
        yr = -(x - cx) * np.sin(t) + (y - cy) * np.cos(t)
        q = (xr / ax) ** 2 + (yr / bx) ** 2
        depth = a.heart_depth * min(scale, 1.25)
        path = depth * np.sqrt(np.clip(1 - q, 0, 1))
        kx, ky, kr = a.aortic_knob
        path = path + 1.1 * chord(kr, (x - kx) ** 2 + (y - ky) ** 2)
        # pulmonary trunk: the second bump of the left mediastinal border
        path = path + chord(1.3, (x - (kx + 0.4)) ** 2 + (y - (ky + 3.0)) ** 2)
        along = np.clip((y - ky) / 1.0, 0, 1) * np.clip((a.left_dome_y + 2 - y) / 1.0, 0, 1)
        path = path + chord(1.15, (x - (kx - 0.7)) ** 2) * along
        svc = np.clip((y - (a.lung_apex_y + 3.0)) / 2.0, 0, 1) * np.clip((cy - y) / 2.0, 0, 1)
        path = path + chord(1.1, (x + a.mediastinum_half_width - 0.2) ** 2) * svc
        dome = np.where(
            x < 0, dome_height(a, "right", -x), dome_height(a, "left", np.maximum(x, 0))
        )
        mask = (q < 1.0) & (y < dome + 0.3)
        layer = HeartLayer(path.astype(np.float32), np.broadcast_to(mask, (g.size, g.size)))
        self._hearts[key] = layer
        return layer

    @cached_property
    def lung_path(self) -> np.ndarray:
        return np.maximum(self.depth - self.heart().path, 0.0)

    @cached_property
    def vessel_maps(self) -> tuple[np.ndarray, np.ndarray]:
        step = 0.45 * self.grid.pixel_cm
        vessels, bronchi = vessel_tubes(self.anatomy, step)
        field = np.clip((self.phi["right"] + 0.3) / 0.4, 0, 1) + np.clip(
            (self.phi["left"] + 0.3) / 0.4, 0, 1
        )
        v = tube_path_length(self.grid, vessels) * field
        b = tube_path_length(self.grid, bronchi) * field
        return v.astype(np.float32), b.astype(np.float32)

    @cached_property
    def bones(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(posterior, anterior, spine) bone path lengths in cm of cortical-bone equivalent."""
        a = self.anatomy
        g = self.grid
        step = 0.45 * g.pixel_cm
        post_ribs, ant_ribs = rib_tubes(a, step)
        post = 0.42 * tube_path_length(g, post_ribs, shell=0.72)
        ant = 0.3 * tube_path_length(g, ant_ribs, shell=0.72)
        ant = ant + 0.7 * tube_path_length(g, clavicle_tubes(a, step), shell=0.7)
        post = post + self._scapulae_and_humeri()
        return post.astype(np.float32), ant.astype(np.float32), self._spine()

    @cached_property
    def ribcage_bone(self) -> np.ndarray:
        """All bone except the spine (which moves against it when the patient is rotated)."""
        post, ant, _ = self.bones
        return post + ant

    @cached_property
    def spine_band(self) -> slice:
        """Columns that hold the spine, with room for a rotation shift."""
        half = (self.anatomy.spine_half_width + 3.0) / self.grid.pixel_cm
        c = self.grid.size / 2
        return slice(max(int(c - half), 0), min(int(np.ceil(c + half)), self.grid.size))

    def _scapulae_and_humeri(self) -> np.ndarray:
        a = self.anatomy
        g = self.grid
        x, y = g.x, g.y
        out = np.zeros((g.size, g.size), np.float32)
        for side in SIDES:
            s = side_sign(side)
            u = s * x
            off = a.scapula_offset
            tri = [
                (8.6 + off, a.lung_apex_y + 1.0),
                (16.6, a.lung_apex_y + 3.2),
                (10.8 + off, a.lung_apex_y + 15.0),
            ]
            plate = _signs._triangle(u, y, tri, 0.06)
            (u0, y0), (u1, y1) = tri[2], tri[1]
            ex, ey = u1 - u0, y1 - y0
            tt = np.clip(((u - u0) * ex + (y - y0) * ey) / (ex * ex + ey * ey), 0, 1)
            d2 = (u - u0 - tt * ex) ** 2 + (y - y0 - tt * ey) ** 2
            lateral_border = chord(0.5, d2) * 0.3
            hx, hy = (
                min(a.thorax_half_width + 4.2, a.shoulder_half_width - 2.4),
                a.lung_apex_y + 4.2,
            )
            head = chord(2.6, (u - hx) ** 2 + (y - hy) ** 2) * 0.22
            out += (0.18 * plate + lateral_border + head).astype(np.float32)
        return out

    def _spine(self) -> np.ndarray:
        """Vertebral bodies with end plates, pedicles and spinous processes."""
        a = self.anatomy
        g = self.grid
        x, y = g.x, g.y
        pitch = a.rib_spacing * 1.02
        y0 = a.rib_first_y - 0.6
        pos = (y - y0) / pitch
        level = np.floor(pos)
        frac = pos - level
        hw = a.spine_half_width * (0.9 + 0.14 * np.clip(level / 10.0, -0.4, 1.0))
        body_v = np.clip((frac - 0.1) / 0.06, 0, 1) * np.clip((0.92 - frac) / 0.06, 0, 1)
        xn2 = (x / hw) ** 2
        cancellous = 3.0 * np.sqrt(np.clip(1 - xn2, 0, 1)) * 0.13
        cortex = (chord(1.0, xn2) - chord(0.86, xn2)) * 0.25
        endplate = np.exp(-(((frac - 0.13) / 0.04) ** 2)) + np.exp(-(((frac - 0.89) / 0.04) ** 2))
        body = (cancellous + cortex + 0.08 * endplate * (xn2 < 1)) * (0.35 + 0.65 * body_v)
        ped_y = (frac - 0.35) * pitch
        ped = np.zeros_like(body)
        for s in (-1.0, 1.0):
            q = ((x - s * (hw - 0.45)) / 0.42) ** 2 + (ped_y / 0.62) ** 2
            ped = ped + 0.15 * (chord(1.0, q) - chord(0.7, q))
        sp_q = (x / 0.32) ** 2 + (((frac - 0.72) * pitch) / 0.55) ** 2
        spinous = 0.5 * chord(1.0, sp_q)
        return (body + ped + spinous).astype(np.float32)

    # -- helpers used by the signs ---------------------------------------------------------
    def lobe(self, lobe: str) -> np.ndarray:
        if lobe not in self._lobes:
            self._lobes[lobe] = _signs.lobe_weight(self, lobe)
        return self._lobes[lobe]

    def lobe_focus(self, lobe: str, extent: float) -> np.ndarray:
        """A soft (Gaussian) blob over the centre of the lobe: ``extent`` ~0.5 = a segment,
        > 1.5 = nearly all of it."""
        w = self.lobe(lobe)
        g = self.grid
        total = float(w.sum()) + 1e-6
        cx = float((w * g.x).sum()) / total
        cy = float((w * g.y).sum()) / total
        sx = np.sqrt(float((w * (g.x - cx) ** 2).sum()) / total)
        sy = np.sqrt(float((w * (g.y - cy) ** 2).sum()) / total)
        q = ((g.x - cx) / (extent * sx * 1.6)) ** 2 + ((g.y - cy) / (extent * sy * 1.6)) ** 2
        return np.exp(-q).astype(np.float32)

    def texture(self, key: tuple, cells: int = 20) -> np.ndarray:
        full = (key, cells)
        if full not in self._textures:
            seed = [self.anatomy.patient_seed, cells] + [ord(c) for c in repr(key)][:48]
            self._textures[full] = smooth_field(seed, self.grid.size, cells)
        return self._textures[full]

    def perihilar(self, sigma: float) -> np.ndarray:
        key = ("perihilar", sigma)
        if key not in self._cache:
            g = self.grid
            out = np.zeros((g.size, g.size), np.float32)
            for s in SIDES:
                hx, hy = self.anatomy.hilum(s)
                hx = hx + side_sign(s) * 0.8
                d2 = (g.x - hx) ** 2 + ((g.y - hy) * 0.85) ** 2
                out += np.exp(-d2 / (2 * sigma**2)) * self.field_soft[s]
            self._cache[key] = out.astype(np.float32)
        return self._cache[key]

    def kerley_lines(self) -> np.ndarray:
        """Short horizontal septal lines at the lateral lung bases, reaching the pleura (cm)."""
        key = ("kerley",)
        if key not in self._cache:
            a = self.anatomy
            g = self.grid
            rng = np.random.default_rng([a.patient_seed, 11])
            sigma = max(0.05, 0.5 * g.pixel_cm)
            amp = 1.6 * 0.05 / sigma
            out = np.zeros((g.size, g.size), np.float32)
            for side in SIDES:
                s = side_sign(side)
                u = s * g.x
                for _ in range(14):
                    yl = a.dome_y(side) + rng.uniform(-6.0, 0.8 * a.dome_drop)
                    lat = float(lateral_edge(a, side, np.asarray(yl)))
                    length = rng.uniform(1.0, 2.0)
                    along = np.clip((u - (lat - length)) / 0.2, 0, 1)
                    out += amp * np.exp(-(((g.y - yl) / sigma) ** 2)) * along
            field = self.field_soft["right"] + self.field_soft["left"]
            self._cache[key] = (out * field).astype(np.float32)
        return self._cache[key]

    def lowpass_static(self, a: np.ndarray, sigma_cm: float) -> np.ndarray:
        low = LowPass(self.grid.size)
        return low.up(low.blur(low.down(a), sigma_cm)).astype(np.float32)

    @cached_property
    def dome_line(self) -> np.ndarray:
        """Per column: y of the hemidiaphragm top edge (cm)."""
        a = self.anatomy
        x = self.grid.coords
        return np.where(x < 0, dome_height(a, "right", -x), dome_height(a, "left", np.abs(x)))

    @cached_property
    def window_reference(self) -> tuple[float, float]:
        """Median water-equivalent path in the lungs and over the heart of the normal chest;
        the display window is anchored to them so that findings never move the window."""
        water = self.body_water - self.lung_path * (1 - self.anatomy.lung_density)
        lung = self.field_mask_any & ~self.heart().mask
        return float(np.median(water[lung])), float(np.median(water[self.heart().mask]))


# ----------------------------------------------------------------------------------------
# Rendering


@dataclass
class Radiograph:
    image: np.ndarray  # uint8 (size, size), 0 = black (air), bright = bone
    masks: dict[tuple[str, str | None], np.ndarray]  # bool region of each PRESENT finding
    lung_mask: np.ndarray  # bool (size, size)
    heart_mask: np.ndarray | None = None  # bool projected cardiac silhouette

    def cardiothoracic_ratio(self) -> float:
        """Transverse cardiac diameter over the widest inner thoracic diameter (lung masks)."""
        return _width(self.heart_mask) / max(_width(self.lung_mask), 1)


def _width(mask: np.ndarray) -> int:
    cols = np.nonzero(mask.any(axis=0))[0]
    return int(cols[-1] - cols[0] + 1) if cols.size else 0


class PatientRenderer:
    """Renders one patient at one size; caches static anatomy and each finding's sign."""

    def __init__(
        self,
        patient: PatientAnatomy,
        size: int = NATIVE_SIZE,
        generator_version: int = _signs.DEFAULT_GENERATOR_VERSION,
    ):
        if not isinstance(patient, PatientAnatomy):
            raise TypeError(f"patient must be a PatientAnatomy, got {type(patient).__name__}")
        self.patient = patient
        self.size = check_size(size)
        # How the subtlest signs are drawn (signs.GENERATOR_VERSIONS).
        self.generator_version = _signs.check_generator_version(generator_version)
        self.static = StaticAnatomy(patient, self.size)
        self._signs: dict[tuple, _signs.Sign] = {}
        self._warps: dict[tuple, Warp | None] = {}

    # -- public API -----------------------------------------------------------------------
    def region(
        self, name: str, location: str | None, acquisition: Acquisition | None = None
    ) -> np.ndarray:
        """Where a finding shows (bool, size x size): its region at the largest severity, joined
        with the smaller severities' regions (a collapsing lobe shrinks as atelectasis grows, so
        severity 3 alone would miss where moderate atelectasis shows). In the frame of
        ``acquisition`` if given, else the canonical (unshifted, normal inspiration) frame."""
        finding_spec(name)
        check_location(name, location)
        mask = self._sign(name, location, 3).mask
        for severity in (1, 2):
            mask = mask | self._sign(name, location, severity).mask
        warp = self._warp(acquisition) if acquisition is not None else None
        return warp.apply_mask(mask) if warp is not None else mask.copy()

    def render(self, state: ChestState, acquisition: Acquisition) -> Radiograph:
        if not isinstance(state, ChestState):
            raise TypeError(f"state must be a ChestState, got {type(state).__name__}")
        if not isinstance(acquisition, Acquisition):
            raise TypeError(f"acquisition must be an Acquisition, got {type(acquisition).__name__}")
        st = self.static
        a = self.patient
        g = st.grid
        px = g.pixel_cm
        signs = [(f.key, self._sign(f.name, f.location, f.severity)) for f in state.findings]

        heart_scale, heart_shift = 1.0, (0.0, 0.0)
        med_shift = 0.0
        dome = {"right": 0.0, "left": 0.0}
        hilum = {"right": 0.0, "left": 0.0}
        density = a.lung_density
        for _, sg in signs:
            if sg.heart_scale != 1.0:
                heart_scale, heart_shift = sg.heart_scale, sg.heart_shift
            med_shift += sg.mediastinal_shift
            density += sg.density_add
            for side, v in sg.dome_shift.items():
                dome[side] += v
            for side, v in sg.hilum_shift.items():
                hilum[side] += v
        rot = float(np.sin(np.deg2rad(acquisition.rotation_deg)))
        heart = st.heart(heart_scale, heart_shift)
        displacer = shift_columns(heart.path, med_shift / px)
        heart_mask = heart.mask
        if abs(med_shift) > 1e-3:
            heart_mask = shift_columns(heart.mask.astype(np.float32), med_shift / px) > 0.5

        depth = st.depth
        vessels, bronchi = st.vessel_maps
        for side in SIDES:
            if dome[side] or hilum[side]:
                offset = self._vertical_offset(side, dome[side], hilum[side])
                cols = st.side_cols[side]
                if dome[side]:
                    depth = shift_rows_where(depth, self._dome_offset(side, dome[side]), cols, g)
                vessels = shift_rows_where(vessels, offset, cols, g)
        lung = np.maximum(depth - displacer, 0.0)

        keep = None
        air = None
        water_add = None
        vgain = None
        for _, sg in signs:
            if sg.replace is not None:
                keep = 1.0 - sg.replace if keep is None else keep * (1.0 - sg.replace)
            if sg.air is not None:
                air = sg.air if air is None else np.maximum(air, sg.air)
            if sg.water is not None:
                water_add = sg.water if water_add is None else water_add + sg.water
            if sg.vessel_gain is not None:
                vgain = sg.vessel_gain if vgain is None else vgain * sg.vessel_gain
            if sg.vessel_keep is not None:
                vgain = sg.vessel_keep if vgain is None else vgain * sg.vessel_keep

        aerated = lung * (1.0 - density)
        water = st.body_water - aerated
        vessel_water = vessels * (1.0 - density)
        if vgain is not None:
            vessel_water = vessel_water * vgain
        if keep is not None:
            filled = 1.0 - keep
            water = water + aerated * filled - bronchi * filled
            vessel_water = vessel_water * keep
        if air is not None:
            water = water - lung * density * air
        water = water + vessel_water
        if water_add is not None:
            water = water + water_add

        # rotation: the spinous processes move against the anterior structures (clavicle heads,
        # heart); up to a global translation that is a shift of the spine band alone
        bone = st.ribcage_bone
        spine_shift = -rot * (ANTERIOR_CM + POSTERIOR_CM) / px
        band = st.spine_band
        if abs(spine_shift) > 1e-3:
            bone = bone.copy()
            bone[:, band] += shift_columns(st.bones[2][:, band], spine_shift)
        else:
            bone = bone + st.bones[2]
        mu_w, mu_b = attenuation_coefficients(acquisition.kvp)
        atten = water * np.float32(mu_w) + bone * np.float32(mu_b)

        lung_mask = st.field_mask_any & ~heart_mask
        masks = {key: sg.mask for key, sg in signs}
        warp = self._warp(acquisition)
        if warp is not None:
            atten = warp.apply(atten)
            lung_mask = warp.apply_mask(lung_mask)
            heart_mask = warp.apply_mask(heart_mask)
            masks = {k: warp.apply_mask(m) for k, m in masks.items()}
        else:
            masks = {k: m.copy() for k, m in masks.items()}
        image = self._expose(atten.astype(np.float32), acquisition)
        return Radiograph(
            image=image, masks=masks, lung_mask=lung_mask, heart_mask=np.array(heart_mask)
        )

    # -- internals -------------------------------------------------------------------------
    def _sign(self, name: str, location: str | None, severity: int) -> _signs.Sign:
        key = (name, location, severity)
        if key not in self._signs:
            self._signs[key] = _signs.compute_sign(
                self.static, name, location, severity, self.generator_version
            )
        return self._signs[key]

    def _dome_offset(self, side: str, shift: float) -> np.ndarray:
        """Row offsets moving the lung base by ``shift`` cm (- = up), fading out by the hilum."""
        a = self.patient
        y = self.static.grid.coords
        hy = a.hilum(side)[1]
        ramp = np.clip((y - hy) / (a.dome_y(side) - hy), 0, 1)
        return (-shift * ramp).astype(np.float32)

    def _vertical_offset(self, side: str, dome: float, hilum: float) -> np.ndarray:
        a = self.patient
        y = self.static.grid.coords
        hy = a.hilum(side)[1]
        bump = np.exp(-(((y - hy) / 5.0) ** 2))
        return self._dome_offset(side, dome) - hilum * bump

    def _warp(self, acq: Acquisition) -> Warp | None:
        key = (acq.shift_x_px, acq.shift_y_px, acq.inspiration)
        if key not in self._warps:
            if len(self._warps) > 16:
                self._warps.clear()
            g = self.static.grid
            if key == (0.0, 0.0, 1.0):
                self._warps[key] = None
            else:
                # canonical position seen at each output pixel: inspiration stretches the chest
                # below the apex, positioning translates everything (shift in px of a 512 image)
                cm_per_px512 = FIELD_OF_VIEW_CM / NATIVE_SIZE
                c = g.coords
                top = self.patient.lung_apex_y
                yc = top + (c - acq.shift_y_px * cm_per_px512 - top) / acq.inspiration
                xc = c - acq.shift_x_px * cm_per_px512
                self._warps[key] = Warp.make(g.to_pixel(yc), g.to_pixel(xc), g.size)
        return self._warps[key]

    def _expose(self, atten: np.ndarray, acq: Acquisition) -> np.ndarray:
        """Exposure, scatter, quantum noise, detector blur, log, unsharp-mask processing (as
        digital radiography systems do) and the display window."""
        g = self.static.grid
        n = g.size
        low = self._lowpass
        primary = np.exp(-atten)
        # scatter: produced where photons interact, spread over several cm, attenuated on exit
        p_low = low.down(primary)
        source = (1.0 - p_low) * np.sqrt(p_low)
        scatter_low = (0.05 + 0.1 * (acq.kvp - 70.0) / 60.0) * low.blur(source, 3.5)
        signal = primary + low.up(scatter_low)
        photons = PHOTONS_PER_CM2 * g.pixel_cm**2 * acq.exposure_mas / REFERENCE_MAS
        rng = np.random.default_rng([acq.noise_seed, n])
        noise = rng.standard_normal((n, n), dtype=np.float32)
        noise *= np.float32(acq.noise_level / np.sqrt(photons))
        signal += np.sqrt(signal) * noise
        signal = _detector_blur(signal, 0.045 / g.pixel_cm)
        np.maximum(signal, np.float32(1e-5), out=signal)
        measured = np.log(signal)  # = minus the measured attenuation
        detail = measured - low.up(low.blur(low.down(measured), 1.1))
        w_lung, w_heart = self.static.window_reference
        mu_w, _ = attenuation_coefficients(acq.kvp)
        s_ref = float(np.median(scatter_low[source > 0.5 * source.max()]))
        a_lung = -float(np.log(np.exp(-mu_w * w_lung) + s_ref))
        a_heart = -float(np.log(np.exp(-mu_w * w_heart) + s_ref))
        offset = 0.05 * float(np.log(acq.exposure_mas / REFERENCE_MAS))  # imperfect auto-range
        # display value v = 0.34 - offset + 0.42 (processed - a_lung) / (a_heart - a_lung),
        # processed = -(measured + 0.6 detail); folded into one scale and bias for speed
        gain = 0.42 / (a_heart - a_lung)
        bias = 0.34 - offset - gain * a_lung
        v = measured + np.float32(0.6) * detail
        v *= np.float32(-gain * _LUT_SCALE)
        v += np.float32((bias - _LUT_LOW) * _LUT_SCALE)
        np.clip(v, 0, _LUT.size - 1, out=v)
        return _LUT[v.astype(np.int32)]

    @cached_property
    def _lowpass(self) -> LowPass:
        return LowPass(self.size)


def _display_lut() -> tuple[np.ndarray, float, float]:
    """Display value -> uint8: a soft toe (dark lung keeps some grey; only air outside the
    body goes black) and a film-like shoulder."""
    low, high, steps = -0.6, 1.4, 8192
    v = np.linspace(low, high, steps)
    toe, knee = 0.1, 0.68
    v = np.where(v < toe, toe * np.exp((v - toe) / toe), v)
    v = np.where(v > knee, knee + (0.99 - knee) * np.tanh((v - knee) / (0.99 - knee)), v)
    v = np.clip(v, 0.0, 1.0)
    return (v * 255.0 + 0.5).astype(np.uint8), low, (steps - 1) / (high - low)


_LUT, _LUT_LOW, _LUT_SCALE = _display_lut()


def _detector_blur(a: np.ndarray, sigma_px: float) -> np.ndarray:
    """Separable 3-tap Gaussian-like blur (scintillator spread), edges replicated."""
    w = float(np.exp(-1.0 / (2 * max(sigma_px, 1e-3) ** 2)))
    k = w / (1 + 2 * w)
    if k < 1e-3:
        return a
    p = np.pad(a, 1, mode="edge")
    a = (1 - 2 * k) * p[1:-1, :] + k * (p[:-2, :] + p[2:, :])
    a = (1 - 2 * k) * a[:, 1:-1] + k * (a[:, :-2] + a[:, 2:])
    return a


def render_radiograph(
    patient: PatientAnatomy,
    state: ChestState,
    acquisition: Acquisition,
    size: int = NATIVE_SIZE,
    generator_version: int = _signs.DEFAULT_GENERATOR_VERSION,
) -> Radiograph:
    """One-off render (builds the static anatomy; use PatientRenderer to render many)."""
    return PatientRenderer(patient, size, generator_version).render(state, acquisition)


__all__ = [
    "Acquisition",
    "Grid",  # cm <-> pixel mapping of a rendered image (defined in _raster)
    "PatientRenderer",
    "Radiograph",
    "attenuation_coefficients",
    "followup_acquisition",
    "render_radiograph",
    "sample_acquisition",
]
