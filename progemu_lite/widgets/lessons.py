"""The lesson notebooks' conventions, in one place for tests, CI and the book.

Each lesson has exactly one code cell tagged ``parameters`` (papermill) whose values are the
classroom settings, and a ``# fast: {...}`` line in it: the settings that make the lesson run in
seconds on a CPU (what CI uses). Lessons declare ``metadata.progemu = {"gpu": bool, "minutes":
int}``.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

FAST_LINE = re.compile(r"^#\s*fast:\s*(\{.*\})\s*$", re.MULTILINE)
PARAMETERS_TAG = "parameters"
CHECK_OUTPUT_TAG = "nbval-check-output"


def cell_tags(cell) -> list[str]:
    return list(cell.get("metadata", {}).get("tags", []))


def parameters_cell(nb):
    """The one cell tagged ``parameters``; ValueError when there are none or several."""
    cells = [c for c in nb.cells if PARAMETERS_TAG in cell_tags(c)]
    if len(cells) != 1:
        raise ValueError(f"expected exactly one 'parameters' cell, found {len(cells)}")
    return cells[0]


def fast_parameters(path: str | os.PathLike) -> dict:
    """The ``# fast: {...}`` settings of a lesson's parameters cell."""
    import nbformat

    path = Path(path)
    source = parameters_cell(nbformat.read(path, as_version=4)).source
    match = FAST_LINE.search(source)
    if match is None:
        raise ValueError(f"{path.name}: the parameters cell has no '# fast: {{...}}' line")
    try:
        settings = json.loads(match.group(1))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path.name}: the '# fast:' line is not a JSON object: {err}") from None
    if not isinstance(settings, dict):
        raise ValueError(f"{path.name}: the '# fast:' line must hold a JSON object")
    return settings
