"""Does a VQ tokenizer keep the findings? Held-out metrics and a per-finding round-trip figure.

A tokenizer can score a good PSNR on whole radiographs and still blur away a small effusion or
a pneumothorax line, and then no model built on it can show them. So besides PSNR/SSIM/codebook
usage on held-out images (:func:`write_vq_report`, ``progemu-lite vq-report``), this module
renders one simulated patient per finding type at a clearly visible severity and shows
original | reconstruction | |difference| (:func:`finding_round_trip`). Each row also reports
how much of the finding's own signal survives: the image with the finding minus the same
image without it (same patient, same exposure), inside the finding's region, before and after
the round trip (``sign_kept``: 1 = all of it, 0 = erased). ``train-vq`` draws the same figure
at the end of training.
"""

from __future__ import annotations

import os
import textwrap
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from progemu_lite.phantom.findings import FINDINGS, finding_spec, location_text
from progemu_lite.tokenization.vq import (
    IMAGE_SIZES,
    check_gray_images,
    decode_codes,
    encode_images,
    psnr,
    vq_report,
)

FINDING_FIGURE = "finding_round_trip.png"
REPORT_FILE = "report.json"
# Where and how severe each finding is shown: a location where its sign is typical, at the
# most severe grade (so that "not visible after the round trip" means the tokenizer lost it).
SHOWCASE: dict[str, tuple[str | None, int]] = {
    "pleural_effusion": ("right", 3),
    "cardiomegaly": (None, 3),
    "pneumothorax": ("left", 3),
    "consolidation": ("right_lower_lobe", 3),
    "pulmonary_edema": ("bilateral", 3),
    "atelectasis": ("left_lower_lobe", 3),
    "nodule": ("right_upper_lobe", 3),
}
# |difference| is unsigned, so a sequential colour-blind-safe map (as in widgets/figures.py).
ERROR_CMAP = "cividis"
OUTLINE_COLOR = "#D55E00"  # Okabe-Ito vermillion: stands out on cividis


@dataclass(frozen=True)
class FindingCase:
    """One simulated patient shown with one finding, and the same image without it."""

    finding: str
    location: str | None
    severity: int
    image: np.ndarray  # uint8 (size, size), with the finding
    baseline: np.ndarray  # uint8 (size, size), same patient and exposure, no finding
    mask: np.ndarray  # bool (size, size), where the finding shows

    @property
    def label(self) -> str:
        spec = finding_spec(self.finding)
        words = (spec.severity_word(self.severity), location_text(self.location), spec.text)
        return " ".join(w for w in words if w)


def finding_cases(image_size: int, seed: int = 0) -> list[FindingCase]:
    """One case per finding type (all of :data:`~progemu_lite.phantom.findings.FINDINGS`), each
    a different simulated patient at the reference exposure, deterministic given ``seed``."""
    from progemu_lite.phantom.anatomy import sample_patient
    from progemu_lite.phantom.render import Acquisition, PatientRenderer
    from progemu_lite.phantom.state import ChestState, FindingState

    cases = []
    for row, name in enumerate(FINDINGS):
        location, severity = SHOWCASE[name]
        rng = np.random.default_rng([seed, row])
        renderer = PatientRenderer(sample_patient(rng), image_size)
        # A centred, standard exposure: the finding, not the acquisition, should vary by row.
        acquisition = Acquisition(noise_seed=int(rng.integers(0, 2**31 - 1)))
        shown = renderer.render(ChestState((FindingState(name, location, severity),)), acquisition)
        baseline = renderer.render(ChestState(), acquisition)
        cases.append(
            FindingCase(
                name,
                location,
                severity,
                shown.image,
                baseline.image,
                shown.masks[(name, location)],
            )
        )
    return cases


def sign_kept(case: FindingCase, recon: np.ndarray, recon_baseline: np.ndarray) -> float:
    """How much of the finding's signal (with minus without, inside its region) the
    reconstructions keep: the least-squares slope of reconstructed on original signal."""
    original = case.image.astype(np.float64) - case.baseline.astype(np.float64)
    kept = recon.astype(np.float64) - recon_baseline.astype(np.float64)
    a, b = original[case.mask], kept[case.mask]
    energy = float((a * a).sum())
    return float((a * b).sum() / energy) if energy > 0 else float("nan")


def finding_round_trip(
    vqmodel,
    image_size: int,
    path: str | os.PathLike,
    *,
    seed: int = 0,
    title: str | None = None,
) -> list[dict]:
    """Round-trip every finding's case through ``vqmodel``, save the figure at ``path`` (PNG,
    atomically) and return one dict per row (finding, location, severity, psnr, sign_kept)."""
    import torch

    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"the finding figure must be a .png file, got {path}")
    cases = finding_cases(image_size, seed)
    originals = np.stack([c.image for c in cases] + [c.baseline for c in cases])
    with torch.inference_mode():
        recons = decode_codes(vqmodel, encode_images(vqmodel, originals))
    n = len(cases)
    rows = []
    for i, case in enumerate(cases):
        rows.append(
            {
                "finding": case.finding,
                "location": case.location,
                "severity": case.severity,
                "psnr": psnr(case.image, recons[i]),
                "sign_kept": sign_kept(case, recons[i], recons[n + i]),
            }
        )
    _draw_finding_figure(cases, recons[:n], rows, path, title)
    return rows


def _draw_finding_figure(cases, recons, rows, path: Path, title: str | None) -> Path:
    from progemu_lite.files import atomic_write
    from progemu_lite.image_rows import GRAY, draw_image_row, stacked_rows

    errors = [
        np.abs(r.astype(np.float32) - c.image.astype(np.float32))
        for c, r in zip(cases, recons, strict=True)
    ]
    limit = max(8.0, max(float(np.percentile(e, 99.5)) for e in errors))
    fig, grid = stacked_rows(
        len(cases),
        width=7.2,
        image_height=2.0,
        gap=0.55,
        top_margin=0.75,
        bottom_margin=0.95,
        right=0.92,
        wspace=0.05,
    )
    height = fig.get_figheight()
    for i, (case, recon, error, row) in enumerate(zip(cases, recons, errors, rows, strict=True)):
        panels = (
            ("original", case.image, GRAY),
            ("reconstruction", recon, GRAY),
            ("|difference|", error, {"cmap": ERROR_CMAP, "vmin": 0, "vmax": limit}),
        )
        if i:  # column titles on the first row only
            panels = tuple((None, image, style) for _, image, style in panels)
        axes = draw_image_row(fig, grid, i, panels, bar_tick_size=6.5)
        axes[2].contour(case.mask, levels=[0.5], colors=OUTLINE_COLOR, linewidths=1.0)
        ax = axes[0]  # the row's text hangs off its first panel
        ax.text(
            0.0,
            1.03 if i else 1.12,
            f"{case.label}: PSNR {row['psnr']:.1f} dB, sign kept {row['sign_kept']:.0%}",
            transform=ax.transAxes,
            fontsize=8.5,
            fontweight="bold",
            va="bottom",
            ha="left",
        )
    fig.suptitle(title or "VQ round trip of each finding", fontsize=11, y=1 - 0.15 / height)
    caption = (
        "One simulated patient per finding type, at its most severe grade. Columns: original | "
        "VQ reconstruction | absolute difference in gray levels (cividis), with the finding's "
        "region outlined in vermillion. PSNR: whole image. Sign kept: the finding's own signal (the "
        "image with the finding minus the same image without it, inside its region) after the "
        "round trip relative to before (100% = fully kept, 0% = erased). Simulated images; not "
        "for clinical use."
    )
    fig.text(0.5, 0.1 / height, textwrap.fill(caption, 120), ha="center", va="bottom", fontsize=7)
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"), suffix=".png")


# -- held-out report ------------------------------------------------------------------------


def held_out_pairs(data: str | os.PathLike, split: str = "test") -> list:
    """The ``split`` pairs (ICG-CXR ``PairRecord``) under ``data``; an error if there are none."""
    from progemu_lite.data.icgcxr import iter_pairs

    records = list(iter_pairs(data, split=split))
    if not records:
        raise ValueError(
            f"no {split!r} pairs under {data}: held-out images come from the pairs whose JSON "
            f"says split={split!r}"
        )
    return records


def held_out_images(
    data: str | os.PathLike,
    image_size: int,
    split: str = "test",
    limit: int = 64,
    pairs: list | None = None,
) -> tuple[np.ndarray, list[str]]:
    """Up to ``limit`` prior and follow-up images of ``split`` pairs under ``data`` (an
    ICG-CXR-style folder; or ``pairs`` from :func:`held_out_pairs`), evenly spread over the
    split, resized to ``image_size``; with their names."""
    from PIL import Image

    from progemu_lite.data.icgcxr import load_pair_images

    if limit < 1:
        raise ValueError(f"--max-images must be at least 1, got {limit}")
    records = pairs if pairs is not None else held_out_pairs(data, split)
    # Two images per pair: take every k-th pair so the sample spans the whole split.
    picks = np.unique(np.linspace(0, len(records) - 1, num=min(len(records), -(-limit // 2))))
    images, names = [], []
    for index in picks.round().astype(int):
        record = records[index]
        for kind, image in zip(("prior", "follow-up"), load_pair_images(record), strict=True):
            if image.shape != (image_size, image_size):
                if image.shape[0] != image.shape[1]:
                    raise ValueError(f"{record.pair_id}: {kind} is not square ({image.shape})")
                resized = Image.fromarray(image).resize(
                    (image_size, image_size), Image.Resampling.BOX
                )
                image = np.asarray(resized)
            images.append(image)
            names.append(f"{record.pair_id} {kind}")
    return np.stack(images[:limit]), names[:limit]


def write_vq_report(
    vqmodel,
    preset: str,
    data: str | os.PathLike,
    out: str | os.PathLike,
    *,
    split: str = "test",
    max_images: int = 64,
    seed: int = 0,
    pairs: list | None = None,
) -> dict:
    """``out/report.json`` (PSNR, SSIM, codebook usage on held-out images, per-finding rows)
    and ``out/finding_round_trip.png``; returns the report. ``pairs``: the held-out pairs if
    already listed (:func:`held_out_pairs`). Everything is computed before the first file is
    written."""
    import torch

    from progemu_lite.files import atomic_write_json

    image_size = IMAGE_SIZES[preset]
    images, _ = held_out_images(data, image_size, split=split, limit=max_images, pairs=pairs)
    check_gray_images(images, image_size, what="held-out images")
    with torch.inference_mode():
        report = vq_report(vqmodel, images)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} exists and is not a folder")
    report = {"preset": preset, "split": split, "data": str(data), **report}
    title = (
        f"VQ {preset}: findings after the round trip (held-out PSNR {report['psnr']:.2f} dB, "
        f"SSIM {report['ssim']:.3f})"
    )
    report["findings"] = finding_round_trip(
        vqmodel, image_size, out / FINDING_FIGURE, seed=seed, title=title
    )
    atomic_write_json(out / REPORT_FILE, report, indent=2)
    return report
