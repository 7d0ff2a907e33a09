"""Images for lessons: PNG encoding, colour maps, outlines, and captioned figures with alt text.

Every figure a notebook shows is an HTML ``<figure>`` with an ``<img alt=...>`` and a
``<figcaption>``, so screen readers get a description and the Jupyter Book keeps the caption.
Radiographs are gray; signed maps use ``PuOr_r`` and the other maps ``cividis`` (both readable
with the common colour-vision deficiencies); outlines use the Okabe-Ito palette.
"""

from __future__ import annotations

import base64
import html
import io

import ipywidgets as widgets
import numpy as np

from ..phantom.contact_sheet import DIFFERENCE_CMAP

# Okabe & Ito's colour-blind-safe palette (hex), for outlines and highlights.
OKABE_ITO = {
    "orange": "#E69F00",
    "sky_blue": "#56B4E9",
    "green": "#009E73",
    "yellow": "#F0E442",
    "blue": "#0072B2",
    "vermillion": "#D55E00",
    "purple": "#CC79A7",
}
SEQUENTIAL_CMAP = "cividis"


def to_uint8(image: np.ndarray) -> np.ndarray:
    """A displayable uint8 array: uint8 passes through, floats are read as [0, 1]."""
    image = np.asarray(image)
    if image.dtype == np.uint8:
        return image
    if not np.issubdtype(image.dtype, np.floating):
        raise ValueError(f"expected a uint8 image or floats in [0, 1], got dtype {image.dtype}")
    return np.round(np.clip(np.nan_to_num(image), 0.0, 1.0) * 255.0).astype(np.uint8)


def png_bytes(image: np.ndarray) -> bytes:
    """PNG of a gray (H, W) or RGB/RGBA (H, W, 3|4) image, uint8 or floats in [0, 1]."""
    from PIL import Image

    image = to_uint8(image)
    if image.ndim == 2:
        mode = "L"
    elif image.ndim == 3 and image.shape[2] in (3, 4):
        mode = "RGB" if image.shape[2] == 3 else "RGBA"
    else:
        raise ValueError(f"expected a (H, W) or (H, W, 3|4) image, got shape {image.shape}")
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image), mode=mode).save(buffer, format="PNG")
    return buffer.getvalue()


def colorize(values: np.ndarray, cmap: str, vmin: float, vmax: float) -> np.ndarray:
    """(H, W) values -> (H, W, 3) uint8 through a matplotlib colour map."""
    from matplotlib import colormaps

    if not vmax > vmin:
        raise ValueError(f"colour range must have vmax > vmin, got {vmin}..{vmax}")
    scaled = (np.asarray(values, dtype=np.float32) - vmin) / (vmax - vmin)
    rgba = colormaps[cmap](np.clip(scaled, 0.0, 1.0), bytes=True)
    return rgba[..., :3]


def difference_image(
    prior: np.ndarray, followup: np.ndarray, limit: float | None = None
) -> tuple[np.ndarray, float]:
    """Follow-up minus prior (gray levels) as RGB in ``PuOr_r``, symmetric around 0.

    Orange: brighter (denser) on the follow-up; purple: darker. ``limit`` is the gray-level
    difference drawn at full colour; None takes the 99.5th percentile of |difference| (at least
    8 levels, so noise alone stays pale). Returns (rgb, limit).
    """
    prior = to_uint8(prior).astype(np.float32)
    followup = to_uint8(followup).astype(np.float32)
    if prior.shape != followup.shape:
        raise ValueError(f"prior {prior.shape} and follow-up {followup.shape} differ in size")
    difference = followup - prior
    if limit is None:
        limit = max(8.0, float(np.percentile(np.abs(difference), 99.5)))
    return colorize(difference, DIFFERENCE_CMAP, -limit, limit), float(limit)


def mean_pairwise_difference(images) -> float:
    """Mean absolute gray-level difference over every pair of images (0 = all identical):
    how much several samples of one prompt disagree."""
    arrays = [np.asarray(im, dtype=np.float32) for im in images]
    gaps = [float(np.abs(a - b).mean()) for i, a in enumerate(arrays) for b in arrays[i + 1 :]]
    if not gaps:
        raise ValueError("need at least two images to compare")
    return float(np.mean(gaps))


def outline(image: np.ndarray, mask: np.ndarray, color: str = OKABE_ITO["orange"]) -> np.ndarray:
    """A gray image as RGB with the boundary of ``mask`` drawn in ``color`` (2 px wide)."""
    from scipy import ndimage

    gray = to_uint8(image)
    mask = np.asarray(mask, dtype=bool)
    if gray.ndim != 2 or mask.shape != gray.shape:
        raise ValueError(f"image {gray.shape} and mask {mask.shape} must be the same 2-D shape")
    rgb = np.repeat(gray[..., None], 3, axis=2)
    edge = mask & ~ndimage.binary_erosion(mask, iterations=2)
    rgb[edge] = [int(color[i : i + 2], 16) for i in (1, 3, 5)]
    return rgb


def figure_html(png: bytes, alt: str, caption: str, width: int | None = None) -> str:
    """An HTML ``<figure>`` with the PNG inlined, its alt text and a caption."""
    if not alt.strip():
        raise ValueError("a figure needs alt text describing what it shows")
    size = f' width="{int(width)}"' if width else ""
    source = base64.b64encode(png).decode("ascii")
    return (
        '<figure class="progemu-figure" style="margin: 0 4px">'
        f'<img src="data:image/png;base64,{source}" alt="{html.escape(alt)}"{size}>'
        f'<figcaption style="max-width: {int(width) if width else 512}px; font-size: 90%; '
        'line-height: 1.3">'
        f"{html.escape(caption)}</figcaption></figure>"
    )


def matplotlib_png(fig) -> bytes:
    """Render a matplotlib Figure (object API, no pyplot) to PNG bytes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    canvas.print_png(buffer)
    return buffer.getvalue()


class StaticFigure:
    """A captioned figure for a notebook output (no widget state): displays as HTML."""

    def __init__(self, png: bytes, alt: str, caption: str, width: int | None = None):
        self.png, self.alt, self.caption, self.width = png, alt, caption, width
        self.html = figure_html(png, alt, caption, width)

    def _repr_html_(self) -> str:
        return self.html


class FigurePanel(widgets.HTML):
    """A widget showing one captioned image; :meth:`show` replaces it (works headless)."""

    def __init__(self, width: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.width = width
        self.png: bytes = b""
        self.alt = ""
        self.caption = ""
        self.updates = 0  # how many times the image was replaced

    def show(self, image: np.ndarray, alt: str, caption: str) -> None:
        self.png = png_bytes(image)
        self.alt, self.caption = alt, caption
        self.value = figure_html(self.png, alt, caption, self.width)
        self.updates += 1

    def image(self) -> np.ndarray:
        """The image currently shown, decoded from its PNG (what the browser receives)."""
        from PIL import Image

        if not self.png:
            raise ValueError("nothing shown yet")
        return np.asarray(Image.open(io.BytesIO(self.png)))
