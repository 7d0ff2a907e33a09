"""Grid helpers for the renderer: the canonical pixel grid, projected tube path lengths,
separable interpolation. Everything is float32 and vectorised (no per-pixel Python loops)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .anatomy import FIELD_OF_VIEW_CM, TubeSet


@dataclass(frozen=True)
class Grid:
    """Pixel centres of a size x size image in canonical cm."""

    size: int

    @property
    def pixel_cm(self) -> float:
        return FIELD_OF_VIEW_CM / self.size

    @property
    def coords(self) -> np.ndarray:
        return ((np.arange(self.size, dtype=np.float32) + 0.5) - self.size / 2) * self.pixel_cm

    @property
    def x(self) -> np.ndarray:
        return self.coords[None, :]

    @property
    def y(self) -> np.ndarray:
        return self.coords[:, None]

    def to_pixel(self, cm: np.ndarray) -> np.ndarray:
        return cm / self.pixel_cm + self.size / 2 - 0.5


def chord(radius: float | np.ndarray, dist2: np.ndarray) -> np.ndarray:
    """Path length of a ray through a sphere/cylinder of ``radius`` at squared distance."""
    return 2.0 * np.sqrt(np.maximum(radius * radius - dist2, 0.0))


def tube_path_length(grid: Grid, tubes: TubeSet, shell: float = 0.0) -> np.ndarray:
    """Projected path length (cm) through a set of tubes given by their centre lines.

    The nearest centre-line sample of every pixel comes from one Euclidean distance transform;
    the exact perpendicular distance to that sample's tangent line then gives a smooth chord
    ``2 sqrt(r^2 - d^2)``. ``shell`` > 0 models cortical bone: a hollow tube whose marrow
    (inner radius ``shell * r``) is 70 % less dense, so the margins project brighter.
    Tubes thinner than a pixel are widened with their area preserved, so they do not alias.
    """
    n = grid.size
    pix = grid.to_pixel(tubes.points)
    ij = np.rint(pix).astype(np.int64)
    keep = (ij[:, 0] >= 0) & (ij[:, 0] < n) & (ij[:, 1] >= 0) & (ij[:, 1] < n)
    out = np.zeros((n, n), np.float32)
    if not keep.any():
        return out
    ids = np.nonzero(keep)[0]
    owner = np.full((n, n), -1, np.int64)
    owner[ij[ids, 1], ij[ids, 0]] = ids
    dist, near = ndimage.distance_transform_edt(owner < 0, return_indices=True)
    px_cm = grid.pixel_cm
    reach = float(tubes.radii.max()) / px_cm + 2.0
    rows, cols = np.nonzero(dist <= reach)  # only pixels a tube can cover
    nearest = owner[near[0, rows, cols], near[1, rows, cols]]
    coords = grid.coords
    dx = coords[cols] - tubes.points[nearest, 0].astype(np.float32)
    dy = coords[rows] - tubes.points[nearest, 1].astype(np.float32)
    tx = tubes.tangents[nearest, 0].astype(np.float32)
    ty = tubes.tangents[nearest, 1].astype(np.float32)
    perp = dx * ty - dy * tx
    along = np.maximum(np.abs(dx * tx + dy * ty) - px_cm, 0.0)
    d2 = perp * perp + along * along
    r = tubes.radii[nearest].astype(np.float32)
    r_eff = np.maximum(r, 0.7 * px_cm)
    value = chord(r_eff, d2)
    if shell > 0:
        value = value - 0.7 * chord(shell * r_eff, d2)
    out[rows, cols] = value * (r / r_eff) ** 2 * tubes.weights[nearest]
    return out


def _linear_index(n_out: int, n_in: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source indices and weights to resample n_in pixel centres onto n_out over one span."""
    pos = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
    lo = np.minimum(np.floor(pos).astype(np.int64), n_in - 2)
    return lo, lo + 1, (pos - lo).astype(np.float32)


def resize_bilinear(a: np.ndarray, n: int) -> np.ndarray:
    """Bilinear resampling of a square array to n x n by fancy indexing (no BLAS: OpenBLAS
    threads thrash on a loaded 2-core machine)."""
    r0, r1, wr = _linear_index(n, a.shape[0])
    c0, c1, wc = _linear_index(n, a.shape[1])
    t = a[r0] * (1 - wr[:, None]) + a[r1] * wr[:, None]
    return t[:, c0] * (1 - wc[None, :]) + t[:, c1] * wc[None, :]


def smooth_field(seed: list[int], size: int, cells: int = 20) -> np.ndarray:
    """A smooth random field in [0, 1], defined on a fixed coarse grid over the detector so the
    same patient gets the same texture at every image size."""
    rng = np.random.default_rng(seed)
    coarse = ndimage.gaussian_filter(rng.random((cells, cells)), 0.8)
    # cubic up to a fixed 96-cell grid first: bilinear alone from a coarse grid leaves
    # diamond-shaped level sets, which show as polygons once the field is thresholded
    fine = ndimage.zoom(coarse, 96 / cells, order=3, mode="nearest", grid_mode=True)
    fine = (fine - fine.min()) / max(float(np.ptp(fine)), 1e-6)
    return resize_bilinear(fine.astype(np.float32), size)


class LowPass:
    """Large-kernel smoothing through a coarse grid of 64..128 cells: block mean down, Gaussian
    blur on the cells (sigma in cm), bilinear up. Far cheaper than a full-size convolution."""

    def __init__(self, size: int):
        factor = max(f for f in range(1, size // 64 + 1) if size % f == 0)
        self.size = size
        self.factor = factor
        self.cells = size // factor
        self.cell_cm = FIELD_OF_VIEW_CM / self.cells

    def down(self, a: np.ndarray) -> np.ndarray:
        c, f = self.cells, self.factor
        if f == 1:
            return a
        t = a.reshape(self.size, c, f).sum(axis=2)  # column blocks (contiguous reduction)
        return t.reshape(c, f, c).sum(axis=1) * np.float32(1.0 / (f * f))

    def blur(self, a: np.ndarray, sigma_cm: float) -> np.ndarray:
        return ndimage.gaussian_filter(a, sigma_cm / self.cell_cm, mode="nearest", truncate=3.0)

    def up(self, a: np.ndarray) -> np.ndarray:
        return resize_bilinear(a, self.size) if self.factor > 1 else a


@dataclass(frozen=True)
class Warp:
    """A separable resampling (rows from ``rows`` positions, columns from ``cols``), linear."""

    r0: np.ndarray
    r1: np.ndarray
    wr: np.ndarray
    c0: np.ndarray
    c1: np.ndarray
    wc: np.ndarray
    rn: np.ndarray
    cn: np.ndarray

    @staticmethod
    def make(rows: np.ndarray, cols: np.ndarray, n: int) -> Warp:
        def split(pos):
            pos = np.clip(pos, 0, n - 1)
            lo = np.minimum(np.floor(pos).astype(np.int64), n - 2)
            w = (pos - lo).astype(np.float32)
            return lo, lo + 1, w, np.rint(pos).astype(np.int64)

        r0, r1, wr, rn = split(rows)
        c0, c1, wc, cn = split(cols)
        return Warp(r0, r1, wr[:, None], c0, c1, wc[None, :], rn, cn)

    def apply(self, a: np.ndarray) -> np.ndarray:
        t = a[self.r0] * (1 - self.wr) + a[self.r1] * self.wr
        return t[:, self.c0] * (1 - self.wc) + t[:, self.c1] * self.wc

    def apply_mask(self, m: np.ndarray) -> np.ndarray:
        return m[self.rn][:, self.cn]


def shift_columns(a: np.ndarray, shift_px: float) -> np.ndarray:
    """Shift an image right by a (sub-)pixel amount, edges clamped."""
    if abs(shift_px) < 1e-3:
        return a
    n = a.shape[1]
    pos = np.clip(np.arange(n) - shift_px, 0, n - 1)
    lo = np.minimum(np.floor(pos).astype(np.int64), n - 2)
    w = (pos - lo).astype(np.float32)[None, :]
    return a[:, lo] * (1 - w) + a[:, lo + 1] * w


def shift_rows_where(a: np.ndarray, offset_cm: np.ndarray, cols: slice, grid: Grid) -> np.ndarray:
    """Resample the columns ``cols`` of ``a`` so that row y shows what was at y + offset(y)."""
    n = grid.size
    pos = np.clip(np.arange(n) + offset_cm / grid.pixel_cm, 0, n - 1)
    lo = np.minimum(np.floor(pos).astype(np.int64), n - 2)
    w = (pos - lo).astype(np.float32)[:, None]
    out = a.copy()
    block = a[:, cols]
    out[:, cols] = block[lo] * (1 - w) + block[lo + 1] * w
    return out
