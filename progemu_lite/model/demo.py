"""The main job (``make demo``): three counterfactuals of the bundled simulated prior.

Loads a ProgEmu checkpoint (default: the shipped ``lite`` weights), runs the three progression
prompts of :mod:`progemu_lite.examples` (a worsening, a new finding, a resolution) on the
bundled prior as one batch with a fixed seed, prints each prompt with its interpretation, and
saves one figure: a row per prompt, prior | counterfactual | signed difference::

    from progemu_lite.model.demo import run_demo
    result = run_demo("lite", "outputs/demo")
    result.figure, [row.interpretation for row in result.rows]

Nothing is written until every counterfactual exists, and each file is written atomically, so
a failure (missing weights, bad input) leaves the output folder as it was.
"""

from __future__ import annotations

import os
import textwrap
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DEFAULT_WEIGHTS = "lite"
TEXT_TEMPERATURE = 0.0  # greedy interpretation (the model card's recommended setting)
FIGURE_NAME = "demo.png"
RESULTS_NAME = "demo.json"
FIGURE_CAPTION = (
    "Images are simulated (ProgEmu-Lite phantom), and so is the prior: no real patient. "
    "Difference = counterfactual \u2212 prior in gray levels (PuOr, colour-blind-safe): orange "
    "denser on the counterfactual, purple less dense. Research and teaching model: not for "
    "clinical use."
)


@dataclass
class DemoRow:
    """One prompt's counterfactual."""

    prompt: str
    direction: str  # the progression the prompt asks for: worse, new, better, resolved
    prior: np.ndarray  # uint8 (H, W), the prior as the model saw it
    image: np.ndarray  # uint8 (H, W), the counterfactual
    interpretation: str
    seconds: float  # generation time of this row (a share of the batch's time)


@dataclass
class DemoResult:
    rows: list[DemoRow]
    figure: Path
    results: Path
    weights: str
    seconds: float  # generating all rows (one batch), model loading excluded
    load_seconds: float


def readable(text: str) -> str:
    """``text`` safe to print: control characters (an undertrained model emits stray bytes)
    become U+FFFD."""
    return "".join(c if c.isprintable() else "\ufffd" for c in text)


def _drawable(text: str) -> str:
    # matplotlib reads text between two ``$`` as math.
    return readable(text).replace("$", r"\$")


def run_demo(
    weights: str | os.PathLike = DEFAULT_WEIGHTS,
    out: str | os.PathLike = "outputs/demo",
    *,
    seed: int = 0,
    progress: bool = True,
    echo: Callable[[str], None] | None = print,
) -> DemoResult:
    """Generate the bundled example's three counterfactuals with ``weights`` (a registry name
    or a checkpoint folder) and save ``out/demo.png`` and ``out/demo.json``.

    ``echo`` receives the lines to print (prompt, interpretation, time); None prints nothing.
    A missing checkpoint raises the hub's :class:`FileNotFoundError`; there is no fallback.
    """
    from progemu_lite.examples import load_example_prior
    from progemu_lite.model.pipeline import load
    from progemu_lite.runtime import configure_torch_threads

    say = echo or (lambda line: None)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} exists and is not a folder")
    example = load_example_prior()
    # One torch thread on a 2-core machine (progemu_lite.runtime: 20-50x faster when busy).
    threads = configure_torch_threads()
    start = time.perf_counter()
    pipe = load(weights, progress=progress)
    load_seconds = time.perf_counter() - start
    say(f"Model: {weights} ({pipe.preset}, {pipe.image_size}x{pipe.image_size} images)")
    say(f"Torch: {threads.describe()}")
    say(f"Prior: simulated patient with {example.description}")
    prompts = [p.text for p in example.prompts]
    start = time.perf_counter()
    # One batch: the three rows share every decoding step (about twice as fast as one by one).
    # Sampled image, greedy interpretation: the lite model's text follows the prompt far more
    # often that way (docs/model_card.md).
    counterfactuals = pipe.batch(
        [example.image] * len(prompts),
        prompts,
        seed=seed,
        text_temperature=TEXT_TEMPERATURE,
        progress=progress,
    )
    seconds = time.perf_counter() - start
    share = seconds / len(prompts)
    rows = [
        DemoRow(
            prompt=c.prompt,
            direction=p.progression.direction,
            prior=c.prior,
            image=c.image,
            interpretation=c.interpretation,
            seconds=share,
        )
        for p, c in zip(example.prompts, counterfactuals, strict=True)
    ]
    for i, row in enumerate(rows, 1):
        say(f"[{i}] Prompt:         {row.prompt}")
        say(f"    Interpretation: {readable(row.interpretation) or '(empty)'}")
        say(
            f"    Time:           {row.seconds:.1f} s "
            f"(the {len(rows)} prompts ran as one batch: {seconds:.1f} s in all)"
        )
    title = f"ProgEmu counterfactuals of one simulated prior (weights: {_weights_label(weights)})"
    figure = save_demo_figure(rows, out / FIGURE_NAME, title=title)
    results = _save_results(out / RESULTS_NAME, rows, example, weights, seed, seconds)
    say(f"Figure: {figure}")
    return DemoResult(rows, figure, results, str(weights), seconds, load_seconds)


def _weights_label(weights) -> str:
    """``lite``, or the last three parts of a folder (``checkpoints/step-0000600/pipeline``)."""
    parts = Path(str(weights)).parts
    return str(weights) if len(parts) <= 3 else str(Path(*parts[-3:]))


def _save_results(path: Path, rows, example, weights, seed: int, seconds: float) -> Path:
    from progemu_lite.files import atomic_write_json

    return atomic_write_json(
        path,
        {
            "weights": str(weights),
            "seed": seed,
            "prior": example.description,
            "seconds": round(seconds, 3),
            "rows": [
                {
                    "prompt": r.prompt,
                    "direction": r.direction,
                    "interpretation": r.interpretation,
                }
                for r in rows
            ],
            "note": "Simulated images; not for clinical use.",
        },
        indent=2,
    )


def save_demo_figure(
    rows: Sequence[DemoRow], path: str | os.PathLike, title: str | None = None
) -> Path:
    """One row per counterfactual: the prompt above, prior | counterfactual | signed difference
    (one colour scale for the whole figure, with a colour bar per row), the interpretation
    wrapped below, and the caption at the bottom. Saved atomically as a PNG."""
    from progemu_lite.files import atomic_write
    from progemu_lite.image_rows import GRAY, draw_image_row, stacked_rows
    from progemu_lite.phantom.contact_sheet import DIFFERENCE_CMAP

    if not rows:
        raise ValueError("the demo figure needs at least one row")
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"the demo figure must be a .png file, got {path}")
    differences = [r.image.astype(np.float32) - r.prior.astype(np.float32) for r in rows]
    # One symmetric scale for all rows, so their changes compare; at least 8 gray levels so
    # that sampling noise alone stays pale.
    limit = max(8.0, max(float(np.percentile(np.abs(d), 99.5)) for d in differences))

    # Inches: each image row, the gap that holds the interpretation below one row and the
    # prompt above the next, and the margins for the title (top) and the caption (bottom).
    fig, grid = stacked_rows(
        len(rows),
        width=8.5,
        image_height=2.4,
        gap=1.5,
        top_margin=1.15,
        bottom_margin=1.2,
        right=0.93,
        wspace=0.06,
    )
    height = fig.get_figheight()
    for i, (row, difference) in enumerate(zip(rows, differences, strict=True)):
        panels = (
            ("prior", row.prior, GRAY),
            ("counterfactual", row.image, GRAY),
            (
                "difference (counterfactual \u2212 prior)",
                difference,
                {"cmap": DIFFERENCE_CMAP, "vmin": -limit, "vmax": limit},
            ),
        )
        axes = draw_image_row(fig, grid, i, panels, title_size=8.5, bar_label="gray levels")
        ax = axes[0]  # the row's text hangs off its first panel
        ax.text(
            0.0,
            1.17,
            textwrap.fill(f"Prompt {i + 1} ({row.direction}): {_drawable(row.prompt)}", 100),
            transform=ax.transAxes,
            fontsize=9.5,
            fontweight="bold",
            va="bottom",
            ha="left",
        )
        interpretation = _drawable(row.interpretation) or "(empty interpretation)"
        ax.text(
            0.0,
            -0.05,
            textwrap.fill(f"Interpretation: {interpretation}", 110, max_lines=3),
            transform=ax.transAxes,
            fontsize=8.5,
            va="top",
            ha="left",
        )
    fig.suptitle(
        title or "ProgEmu counterfactuals of one simulated prior", fontsize=11, y=1 - 0.2 / height
    )
    fig.text(0.5, 0.008, textwrap.fill(FIGURE_CAPTION, 125), ha="center", va="bottom", fontsize=7.5)
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"), suffix=".png")
