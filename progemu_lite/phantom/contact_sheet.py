"""Contact sheets: a captioned grid of pairs (prior | follow-up | difference) with their prompts.

Radiographs are shown in grayscale; the signed difference uses ``PuOr_r``, a diverging ColorBrewer
map that stays readable with the common colour-vision deficiencies (orange: brighter, i.e. denser,
on the follow-up; purple: darker). Uses matplotlib's object API (no pyplot), so it works headless.
"""

from __future__ import annotations

import os
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..files import atomic_write

DIFFERENCE_CMAP = "PuOr_r"


@dataclass
class SheetPair:
    """What one row of the sheet shows."""

    prior: np.ndarray
    followup: np.ndarray
    prompt: str
    label: str = ""


def save_contact_sheet(
    pairs: Sequence[SheetPair], path: str | os.PathLike, title: str | None = None
) -> Path:
    """Draw ``pairs`` one per row and save a PNG at ``path`` (atomically); return the path."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from ..image_rows import GRAY, draw_image_row

    if not pairs:
        raise ValueError("a contact sheet needs at least one pair")
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"contact sheet must be a .png file, got {path}")
    rows = len(pairs)
    height = 3.0 * rows + 1.2  # inches: one row per pair, plus title and caption
    fig = Figure(figsize=(9.0, height), dpi=100)
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(
        rows,
        3,
        hspace=0.3,
        wspace=0.05,
        top=1 - 0.75 / height,
        bottom=0.55 / height,
        left=0.03,
        right=0.95,
    )
    for row, pair in enumerate(pairs):
        prior = np.asarray(pair.prior, dtype=np.float32)
        followup = np.asarray(pair.followup, dtype=np.float32)
        difference = followup - prior
        limit = max(float(np.abs(difference).max()), 1.0)
        panels = (
            ("prior", prior, GRAY),
            ("follow-up", followup, GRAY),
            (
                "difference (follow-up \u2212 prior)",
                difference,
                {"cmap": DIFFERENCE_CMAP, "vmin": -limit, "vmax": limit},
            ),
        )
        axes = draw_image_row(fig, grid, row, panels, bar_pad=0.02)
        ax = axes[0]  # the row's text hangs off its first panel
        caption = f"{pair.label}: {pair.prompt}" if pair.label else pair.prompt
        ax.text(
            0.0,
            -0.06,
            textwrap.fill(caption, 95),
            transform=ax.transAxes,
            fontsize=8.5,
            va="top",
            ha="left",
        )
    fig.suptitle(title or "Simulated pairs: prior | follow-up | difference", fontsize=11)
    fig.text(
        0.5,
        0.005,
        "Caption under each row: the progression prompt. Difference map: orange = denser on the "
        "follow-up, purple = less dense (PuOr, colour-blind-safe).",
        ha="center",
        va="bottom",
        fontsize=8,
    )
    return atomic_write(path, lambda temp: fig.savefig(temp, format="png"), suffix=".png")


def contact_sheet_from_folder(
    root: str | os.PathLike, path: str | os.PathLike, max_pairs: int = 6
) -> Path:
    """A contact sheet of the first ``max_pairs`` pairs of an ICG-CXR-layout folder."""
    from ..data.icgcxr import iter_pairs, load_pair_images

    pairs = []
    for record in iter_pairs(root):
        prior, followup = load_pair_images(record)
        pairs.append(SheetPair(prior, followup, record.prompt, record.pair_id))
        if len(pairs) >= max_pairs:
            break
    if not pairs:
        raise ValueError(f"no pairs found under {root} for a contact sheet")
    return save_contact_sheet(pairs, path)
