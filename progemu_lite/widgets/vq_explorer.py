"""Lesson 3, images as tokens: the VQ tokenizer's round trip, a codebook explorer, and what the
tokenizer loses.

:func:`course_vq` is the lesson's one source of a tokenizer: the VQ inside the shipped ``lite``
pipeline (``progemu_lite/weights/lite``) when it exists, else a small VQ trained here for a few
seconds (fast) or about a minute (classroom) on simulated radiographs, cached under
``PROGEMU_HOME`` and labelled loudly as a briefly trained stand-in.
"""

from __future__ import annotations

import functools
import html
from dataclasses import dataclass

import ipywidgets as widgets
import numpy as np

from ..paths import progemu_home
from ..tokenization.vq import (
    IMAGE_SIZES,
    SPATIAL_FACTOR,
    check_gray_images,
    decode_codes,
    encode_images,
    psnr,
    ssim,
    vq_report,
)
from .figures import SEQUENTIAL_CMAP, FigurePanel, StaticFigure, colorize, outline, png_bytes
from .models import SHIPPED_LITE, lite_weights_shipped

# The stand-in: the tiny preset (64 px, 8 x 8 grid, 256 codes) trains ~0.2 s/step on 2 cores,
# so a minute buys a recognisable (if blurry) chest; the lite preset would need hours.
STAND_IN_PRESET = "tiny"
STAND_IN_STEPS = {True: 20, False: 300}  # fast (CI), classroom (~1 minute)
STAND_IN_IMAGES = 32
STAND_IN_LR = 2e-3  # high: with so few steps, a cautious rate learns nothing visible

STAND_IN_NOTICE = (
    "BRIEFLY TRAINED STAND-IN: {why}, so this lesson uses a small VQ ({preset}, "
    "{size}x{size} pixels, {grid}x{grid} codes, {codes} codebook entries) trained here for only "
    "{steps} steps on simulated radiographs. Its reconstructions are much blurrier than a "
    "trained tokenizer's: the mechanics are real, the quality is not."
)
# Why the stand-in is used ({why} above).
STAND_IN_REASONS = {
    "fast": "the lesson runs in fast mode (seconds, for CI), not on the trained 'lite' tokenizer",
    "missing": "the trained 'lite' tokenizer is not shipped in this installation",
}


@dataclass
class CourseVQ:
    """A VQ tokenizer for lesson 3 and whether it is the trained one."""

    vqmodel: object  # transformers.Emu3VQVAE
    name: str
    trained: bool
    notice: str  # "" for the shipped tokenizer
    image_size: int

    @property
    def grid(self) -> int:
        return self.image_size // SPATIAL_FACTOR

    @property
    def codebook_size(self) -> int:
        return int(self.vqmodel.config.codebook_size)

    def describe(self) -> str:
        kind = "trained" if self.trained else "briefly trained stand-in"
        return (
            f"VQ tokenizer {self.name!r}: {self.image_size}x{self.image_size} images -> "
            f"{self.grid}x{self.grid} codes from a codebook of {self.codebook_size} ({kind})"
        )

    def notice_html(self) -> str:
        if self.trained:
            return ""
        return (
            '<div class="progemu-untrained" role="alert" style="border: 3px solid #D55E00; '
            'background: #FFF4E5; padding: 8px 12px; margin: 6px 0; color: black">'
            f"<b>&#9888; {html.escape(self.notice)}</b></div>"
        )

    def _repr_html_(self) -> str:
        return f"<p>{html.escape(self.describe())}</p>{self.notice_html()}"

    def __repr__(self) -> str:
        return self.describe() + (f"\n{self.notice}" if self.notice else "")


def training_images(count: int, size: int, seed: int = 0) -> np.ndarray:
    """``count`` simulated prior radiographs as one uint8 ``(count, size, size)`` array."""
    from .explorer import simulated_priors

    return np.stack([p.image for p in simulated_priors(count, size, seed)])


@functools.lru_cache(maxsize=4)
def course_vq(fast: bool = False, seed: int = 0, progress: bool = True) -> CourseVQ:
    """The lesson's tokenizer: the shipped ``lite`` pipeline's VQ, else a cached stand-in.

    The stand-in (``fast``: 20 steps, seconds; classroom: 300 steps, about a minute on 2 cores)
    is trained once with :func:`~progemu_lite.tokenization.vq_train.train_vq` and saved under
    ``PROGEMU_HOME/course_vq/``; later calls load it. Its notice says it is a stand-in.
    """
    from ..runtime import configure_torch_threads

    configure_torch_threads()
    if not fast and lite_weights_shipped():
        from ..model.pipeline import ProgEmuPipeline

        pipe = ProgEmuPipeline.from_pretrained(SHIPPED_LITE, progress=False)
        return CourseVQ(pipe.model.model.vqmodel, "lite", True, "", pipe.image_size)

    from transformers import Emu3VQVAE

    from ..tokenization.vq_train import train_vq

    steps = STAND_IN_STEPS[bool(fast)]
    size = IMAGE_SIZES[STAND_IN_PRESET]
    folder = progemu_home() / "course_vq" / f"{STAND_IN_PRESET}-{steps}steps-seed{seed}"
    if (folder / "config.json").is_file():  # save_vq writes config.json last: a complete model
        vqmodel = Emu3VQVAE.from_pretrained(folder).eval()
    else:
        images = training_images(STAND_IN_IMAGES, size, seed)
        vqmodel, _ = train_vq(
            images,
            STAND_IN_PRESET,
            steps=steps,
            out=folder,
            progress=progress,
            batch_size=8,
            seed=seed,
            checkpoint_every=steps,
            lr=STAND_IN_LR,
            warmup_steps=5,
        )
        vqmodel.eval()
    notice = STAND_IN_NOTICE.format(
        why=STAND_IN_REASONS["fast" if fast else "missing"],
        preset=STAND_IN_PRESET,
        size=size,
        grid=size // SPATIAL_FACTOR,
        codes=vqmodel.config.codebook_size,
        steps=steps,
    )
    return CourseVQ(vqmodel, f"stand-in-{STAND_IN_PRESET}-{steps}", False, notice, size)


# ------------------------------------------------------------------ the round trip


def upscale(image: np.ndarray, factor: int) -> np.ndarray:
    """Nearest-neighbour enlargement, so small lesson images stay crisp on screen."""
    return np.repeat(np.repeat(image, factor, axis=0), factor, axis=1)


def code_grid_image(codes: np.ndarray, codebook_size: int, cell: int = 8) -> np.ndarray:
    """An ``(h, w)`` code grid as RGB (``cividis`` by code number), ``cell`` pixels a code."""
    codes = np.asarray(codes)
    if codes.ndim != 2:
        raise ValueError(f"expected one (h, w) code grid, got shape {codes.shape}")
    return upscale(colorize(codes, SEQUENTIAL_CMAP, 0, max(codebook_size - 1, 1)), cell)


@dataclass
class RoundTrip:
    image: np.ndarray  # uint8 (H, W)
    codes: np.ndarray  # int64 (h, w)
    reconstruction: np.ndarray  # uint8 (H, W)
    psnr: float
    ssim: float

    def codes_text(self) -> str:
        """The code grid as numbers, one row per line (what the language model reads)."""
        width = len(str(int(self.codes.max())))
        return "\n".join(" ".join(f"{c:>{width}d}" for c in row) for row in self.codes)


def round_trip(vq: CourseVQ, image: np.ndarray) -> RoundTrip:
    """Encode one uint8 radiograph to its code grid and decode it back."""
    image = check_gray_images(np.asarray(image)[None], vq.image_size, "the radiograph")[0]
    codes = encode_images(vq.vqmodel, image[None])
    recon = decode_codes(vq.vqmodel, codes)[0]
    return RoundTrip(image, codes[0], recon, psnr(image, recon), ssim(image[None], recon[None]))


def round_trip_figures(vq: CourseVQ, trip: RoundTrip, zoom: int = 4) -> widgets.HBox:
    """Image | code grid | reconstruction, side by side, captioned."""
    h, w = trip.codes.shape
    size = trip.image.shape[0] * zoom
    panels = []
    for image, alt, caption in (
        (
            upscale(trip.image, zoom),
            "The original simulated chest radiograph.",
            f"Original ({trip.image.shape[0]}x{trip.image.shape[1]} pixels).",
        ),
        (
            code_grid_image(trip.codes, vq.codebook_size, SPATIAL_FACTOR * zoom),
            f"A {h} by {w} grid of coloured squares, one per code; colour is the code number.",
            f"Its {h}x{w} code grid (cividis: dark = low code number, yellow = high).",
        ),
        (
            upscale(trip.reconstruction, zoom),
            "The radiograph decoded back from the code grid; softer than the original.",
            f"Reconstruction from the codes (PSNR {trip.psnr:.1f} dB, SSIM {trip.ssim:.3f}).",
        ),
    ):
        panel = FigurePanel(width=size)
        panel.show(image, alt, caption)
        panels.append(panel)
    return widgets.HBox(panels)


# ------------------------------------------------------------------ the codebook explorer


def abs_difference_image(a: np.ndarray, b: np.ndarray, limit: float | None = None):
    """|a - b| in gray levels as RGB (``cividis``); returns (rgb, limit drawn at full colour)."""
    diff = np.abs(a.astype(np.float32) - b.astype(np.float32))
    if limit is None:
        limit = max(8.0, float(diff.max()))
    return colorize(diff, SEQUENTIAL_CMAP, 0.0, limit), float(limit)


class CodebookExplorer(widgets.VBox):
    """Pick a grid position, see its code, swap in another code, see the image change.

    Headless: set ``row``/``col``/``code`` values and call ``swap_button.click()``; the edited
    image is :attr:`edited`, the panels show original | reconstruction | edited | |difference|.
    """

    def __init__(self, vq: CourseVQ, image: np.ndarray, zoom: int = 3):
        self.vq = vq
        self.trip = round_trip(vq, image)
        self.edited_codes = self.trip.codes.copy()
        self.edited = self.trip.reconstruction.copy()
        self.zoom = zoom
        h, w = self.trip.codes.shape
        self.row = widgets.IntSlider(value=h // 2, min=0, max=h - 1, description="Row")
        self.col = widgets.IntSlider(value=w // 2, min=0, max=w - 1, description="Column")
        self.code = widgets.BoundedIntText(
            value=0, min=0, max=vq.codebook_size - 1, description="New code"
        )
        self.current = widgets.HTML()
        self.swap_button = widgets.Button(description="Swap", button_style="primary")
        self.reset_button = widgets.Button(description="Reset all")
        self.status = widgets.HTML()
        width = self.trip.image.shape[1] * zoom
        self.original_panel = FigurePanel(width=width)
        self.reconstruction_panel = FigurePanel(width=width)
        self.edited_panel = FigurePanel(width=width)
        self.difference_panel = FigurePanel(width=width)
        self.row.observe(self._on_position, names="value")
        self.col.observe(self._on_position, names="value")
        self.swap_button.on_click(lambda _: self.swap())
        self.reset_button.on_click(lambda _: self.reset())
        self.original_panel.show(
            upscale(self.trip.image, zoom),
            "The original radiograph.",
            "Original.",
        )
        self.reconstruction_panel.show(
            upscale(self.trip.reconstruction, zoom),
            "The radiograph decoded from its unedited code grid.",
            f"Reconstruction (PSNR {self.trip.psnr:.1f} dB).",
        )
        self._on_position()
        self._show_edit()
        super().__init__(
            [
                widgets.HBox([self.row, self.col]),
                widgets.HBox([self.current, self.code, self.swap_button, self.reset_button]),
                self.status,
                widgets.HBox(
                    [
                        self.original_panel,
                        self.reconstruction_panel,
                        self.edited_panel,
                        self.difference_panel,
                    ]
                ),
            ]
        )

    @property
    def position(self) -> tuple[int, int]:
        return int(self.row.value), int(self.col.value)

    def cell_box(self, row: int, col: int) -> tuple[slice, slice]:
        """The pixels of one grid cell (what one code is mainly responsible for)."""
        return (
            slice(row * SPATIAL_FACTOR, (row + 1) * SPATIAL_FACTOR),
            slice(col * SPATIAL_FACTOR, (col + 1) * SPATIAL_FACTOR),
        )

    def _on_position(self, _change=None) -> None:
        row, col = self.position
        original = int(self.trip.codes[row, col])
        now = int(self.edited_codes[row, col])
        edited = f" (now {now})" if now != original else ""
        self.current.value = f"Code at ({row}, {col}): <b>{original}</b>{edited}"

    def swap(self) -> None:
        """Put :attr:`code`'s value at the chosen position and decode the edited grid."""
        row, col = self.position
        self.edited_codes[row, col] = int(self.code.value)
        self.edited = decode_codes(self.vq.vqmodel, self.edited_codes[None])[0]
        self._on_position()
        self._show_edit()

    def reset(self) -> None:
        self.edited_codes = self.trip.codes.copy()
        self.edited = self.trip.reconstruction.copy()
        self._on_position()
        self._show_edit()

    def _show_edit(self) -> None:
        changed = np.argwhere(self.edited_codes != self.trip.codes)
        where = ", ".join(f"({r}, {c})" for r, c in changed) or "none"
        mask = np.zeros(self.trip.image.shape, dtype=bool)
        for r, c in changed:
            mask[self.cell_box(int(r), int(c))] = True
        edited = self.edited if not mask.any() else outline(self.edited, mask)
        self.edited_panel.show(
            upscale(edited, self.zoom),
            f"The radiograph decoded after editing codes at {where}; edited cells outlined.",
            f"Edited reconstruction (changed cells, outlined in orange: {where}).",
        )
        diff, limit = abs_difference_image(self.edited, self.trip.reconstruction)
        self.difference_panel.show(
            upscale(diff, self.zoom),
            "Absolute difference between edited and unedited reconstructions; "
            "bright where the edit changed the image.",
            f"|edited - reconstruction| (cividis, yellow = {limit:.0f} gray levels or more).",
        )
        self.status.value = (
            f"{len(changed)} code(s) edited; largest pixel change {limit:.0f} gray levels"
            if len(changed)
            else "No codes edited yet: choose a position and a new code, then Swap."
        )


# ------------------------------------------------------------------ what the tokenizer loses


def finding_radiograph(size: int, seed: int = 0):
    """A simulated radiograph with a small nodule and a small right pneumothorax (whose thin
    pleural line is the kind of detail a tokenizer blurs); returns the phantom's Radiograph."""
    from ..phantom.anatomy import sample_patient
    from ..phantom.render import PatientRenderer, sample_acquisition
    from ..phantom.state import ChestState, FindingState

    rng = np.random.default_rng([seed, 3])
    state = ChestState(
        (
            FindingState("nodule", "left_upper_lobe", 1),
            FindingState("pneumothorax", "right", 1),
        )
    )
    return PatientRenderer(sample_patient(rng), size).render(state, sample_acquisition(rng))


@dataclass
class TokenizerLoss:
    """How much of a radiograph survives the round trip, overall and inside each finding."""

    trip: RoundTrip
    region_errors: dict[str, float]  # mean |error| in gray levels: "whole image", findings
    figure: StaticFigure

    def table(self) -> str:
        lines = [
            f"PSNR {self.trip.psnr:.1f} dB, SSIM {self.trip.ssim:.3f}",
            "mean |error| (gray levels):",
        ]
        lines += [f"  {name}: {value:.1f}" for name, value in self.region_errors.items()]
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        return self.figure.html + f"<pre>{html.escape(self.table())}</pre>"

    def __repr__(self) -> str:
        return self.table()


def tokenizer_loss(vq: CourseVQ, radiograph, zoom: int = 3) -> TokenizerLoss:
    """The error map of a round trip on a radiograph whose findings have masks, with PSNR/SSIM
    and the mean error inside each finding beside that of the whole image."""
    trip = round_trip(vq, radiograph.image)
    error = np.abs(trip.image.astype(np.float32) - trip.reconstruction.astype(np.float32))
    regions = {"whole image": float(error.mean())}
    findings = np.zeros(trip.image.shape, dtype=bool)
    for (name, location), mask in radiograph.masks.items():
        if mask.any():
            regions[f"{name} ({location})"] = float(error[mask].mean())
            findings |= mask
    rgb_error, limit = abs_difference_image(trip.image, trip.reconstruction)
    gap = np.full((trip.image.shape[0], 4, 3), 255, np.uint8)
    strip = np.concatenate(
        [
            outline(trip.image, findings),
            gap,
            np.repeat(trip.reconstruction[..., None], 3, axis=2),
            gap,
            rgb_error,
        ],
        axis=1,
    )
    figure = StaticFigure(
        png_bytes(upscale(strip, zoom)),
        "Three panels: the radiograph with its nodule and pneumothorax outlined, its "
        "reconstruction from codes, and the absolute error map, brightest where detail was lost.",
        f"Left: original, findings outlined in orange. Middle: reconstruction (PSNR "
        f"{trip.psnr:.1f} dB, SSIM {trip.ssim:.3f}). Right: |original - reconstruction| "
        f"(cividis, yellow = {limit:.0f} gray levels or more).",
        width=strip.shape[1] * zoom,
    )
    return TokenizerLoss(trip, regions, figure)


def codebook_summary(vq: CourseVQ, images: np.ndarray) -> str:
    """PSNR, SSIM and codebook usage of the round trip over a batch (from ``vq_report``)."""
    report = vq_report(vq.vqmodel, images)
    keys = [k for k in report if k not in ("n_images", "image_size", "grid", "psnr", "ssim")]
    lines = [
        f"{report['n_images']} images of {report['image_size'][0]}x{report['image_size'][1]} "
        f"-> {report['grid'][0]}x{report['grid'][1]} codes",
        f"PSNR {report['psnr']:.1f} dB, SSIM {report['ssim']:.3f}",
    ]
    for key in keys:
        value = report[key]
        lines.append(f"{key}: {value:.3f}" if isinstance(value, float) else f"{key}: {value}")
    return "\n".join(lines)
