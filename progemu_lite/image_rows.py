"""Figures built from rows of image panels: the dataset contact sheet, the demo and the VQ
round trip all draw ``prior | other | difference``-style rows. One home for drawing a row and
for the figure that stacks rows, so the three stay alike. Matplotlib only (no ipywidgets), so
command-line tools can use it.
"""

from __future__ import annotations

from collections.abc import Sequence

GRAY = {"cmap": "gray", "vmin": 0, "vmax": 255}  # a uint8 radiograph as stored


def stacked_rows(
    n_rows: int,
    *,
    width: float,
    image_height: float,
    gap: float,
    top_margin: float,
    bottom_margin: float,
    right: float,
    wspace: float,
    columns: int = 3,
):
    """``(figure, gridspec)`` for ``n_rows`` rows of image panels; sizes in inches: each image
    row, the gap between rows (room for text), the margins for a title and a caption."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    height = top_margin + bottom_margin + image_height * n_rows + gap * (n_rows - 1)
    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(
        n_rows,
        columns,
        top=1 - top_margin / height,
        bottom=bottom_margin / height,
        left=0.03,
        right=right,
        hspace=gap / image_height,
        wspace=wspace,
    )
    return fig, grid


def draw_image_row(
    fig,
    grid,
    row: int,
    panels: Sequence[tuple[str | None, object, dict]],
    *,
    title_size: float = 9,
    bar_pad: float = 0.03,
    bar_label: str | None = None,
    bar_tick_size: float = 7,
) -> list:
    """Draw ``(title or None, image, imshow style)`` panels into ``grid[row, :]``, without ticks;
    the last panel gets a colorbar. Returns the axes (callers add their own text)."""
    axes = []
    for column, (title, image, style) in enumerate(panels):
        ax = fig.add_subplot(grid[row, column])
        shown = ax.imshow(image, interpolation="nearest", **style)
        ax.set_xticks([])
        ax.set_yticks([])
        if title:
            ax.set_title(title, fontsize=title_size)
        if column == len(panels) - 1:
            bar = fig.colorbar(shown, ax=ax, fraction=0.046, pad=bar_pad)
            bar.ax.tick_params(labelsize=bar_tick_size)
            if bar_label:
                bar.set_label(bar_label, fontsize=7)
        axes.append(ax)
    return axes
