"""ProgEmu-Lite: interpretable counterfactual generation on chest X-rays, for teaching and research."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "load"]


def load(name_or_path, **kwargs):
    """A :class:`~progemu_lite.model.pipeline.ProgEmuPipeline` from a checkpoint folder, a
    registry name (``"progemu"``, ``"lite"``), a hub id or a URL, e.g.
    ``progemu_lite.load("progemu")`` (8B, needs a GPU: see docs/gpu.md). Keyword arguments are
    those of ``ProgEmuPipeline.from_pretrained`` (``device``, ``dtype``, ``force``, ...)."""
    from progemu_lite.model.pipeline import load as load_pipeline  # lazy: torch is heavy

    return load_pipeline(name_or_path, **kwargs)
