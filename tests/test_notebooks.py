"""The lessons in notebooks/: house rules (fast), and real runs with papermill and nbval (slow).

Fast settings live in each notebook's parameters cell, on a ``# fast: {...}`` line: the one
place CI reads them from, so shrinking every notebook is one switch (``FAST_SETTINGS``).

nbval needs stored outputs to compare, and lessons are committed without outputs. So papermill
first executes each lesson with its fast settings (the reference run); nbval then re-runs that
executed copy (it carries papermill's injected-parameters cell, hence the same settings) and
compares every cell tagged ``nbval-check-output`` with the reference, after the sanitizers of
tests/nbval_sanitize.cfg. That checks the numbers a lesson prints are reproducible run to run.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from progemu_lite.widgets.lessons import (
    CHECK_OUTPUT_TAG,
    cell_tags,
    fast_parameters,
    parameters_cell,
)

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
SANITIZE = Path(__file__).with_name("nbval_sanitize.cfg")
CHECK_TAG = CHECK_OUTPUT_TAG
# Imports a lesson may make: the course library and IPython's display helpers (house rule:
# cells call library functions, they hold no model or plotting logic).
ALLOWED_IMPORTS = ("progemu_lite", "IPython.display")
FAST_SETTINGS = True  # False runs the lessons with their classroom settings


def _ids(path: Path) -> str:
    return path.stem


def _read(path: Path) -> nbformat.NotebookNode:
    return nbformat.read(path, as_version=4)


def _tags(cell) -> list[str]:
    return cell_tags(cell)


def test_there_are_lessons():
    names = {p.name for p in NOTEBOOKS}
    assert {
        "01_reading_chest_xrays.ipynb",
        "02_longitudinal_pairs.ipynb",
        "06_evaluating_interpretations.ipynb",
    } <= names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids)
def test_stored_without_outputs(path):
    nb = _read(path)
    nbformat.validate(nb)
    dirty = [
        i
        for i, c in enumerate(nb.cells)
        if c.cell_type == "code" and (c.outputs or c.execution_count is not None)
    ]
    assert not dirty, f"{path.name}: cells {dirty} carry outputs; clear them before committing"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids)
def test_lesson_structure(path):
    nb = _read(path)
    first = nb.cells[0]
    assert first.cell_type == "markdown" and first.source.startswith("# "), "needs a # title"
    assert "Learning objectives" in first.source
    assert "Needs a GPU" in first.source
    assert isinstance(nb.metadata["progemu"]["gpu"], bool)
    assert 30 <= nb.metadata["progemu"]["minutes"] <= 60
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert "import progemu_lite" in code[0].source and "%pip install" in code[0].source
    assert any(CHECK_TAG in _tags(c) for c in code), "no deterministic output is checked"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids)
def test_one_parameters_cell_with_fast_settings(path):
    cell = parameters_cell(_read(path))
    assigned = {
        target.id
        for node in ast.parse(cell.source).body
        if isinstance(node, ast.Assign)
        for target in node.targets
        if isinstance(target, ast.Name)
    }
    fast = fast_parameters(path)
    assert fast, "fast settings must change something"
    assert set(fast) <= assigned, f"fast settings {set(fast) - assigned} are not parameters"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids)
def test_cells_only_import_the_library(path):
    nb = _read(path)
    for cell in nb.cells[1:]:
        if cell.cell_type != "code" or "%pip" in cell.source:
            continue
        for node in ast.walk(ast.parse(cell.source)):
            modules = []
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                modules = [node.module or ""]
            for module in modules:
                assert module.startswith(ALLOWED_IMPORTS), f"{path.name} imports {module}"


# ---------------------------------------------------------------------------------------------
# Real runs


@pytest.fixture(scope="module")
def notebook_home(tmp_path_factory):
    """One PROGEMU_HOME for the kernels of this module (lesson 2's data is made once)."""
    home = tmp_path_factory.mktemp("notebook_home")
    old = os.environ.get("PROGEMU_HOME")
    os.environ["PROGEMU_HOME"] = str(home)
    yield home
    if old is None:
        os.environ.pop("PROGEMU_HOME", None)
    else:
        os.environ["PROGEMU_HOME"] = old


@pytest.fixture(scope="module", params=NOTEBOOKS, ids=_ids)
def executed(request, notebook_home, tmp_path_factory):
    """(source, executed copy): the lesson run by papermill with its fast settings."""
    import papermill

    source = request.param
    out = tmp_path_factory.mktemp("executed") / source.name
    parameters = fast_parameters(source) if FAST_SETTINGS else {}
    papermill.execute_notebook(
        str(source),
        str(out),
        parameters=parameters,
        cwd=str(NOTEBOOK_DIR),
        progress_bar=False,
        kernel_name="python3",
    )
    return source, out


def _run_nbval(path: Path, home: Path) -> subprocess.CompletedProcess:
    # A bare ini next to the notebook, so the project's pytest settings and conftest stay out.
    (path.parent / "pytest.ini").write_text("[pytest]\n")
    env = {**os.environ, "PROGEMU_HOME": str(home), "MPLBACKEND": "Agg"}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "--nbval-lax",
            "--nbval-sanitize-with",
            str(SANITIZE),
            path.name,
        ],
        cwd=path.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.slow
def test_runs_under_papermill(executed):
    source, out = executed
    nb = _read(out)
    assert any("injected-parameters" in _tags(c) for c in nb.cells)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not any(o.output_type == "error" for o in cell.outputs), cell.source
        if CHECK_TAG in _tags(cell):
            text = "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")
            assert text.strip(), f"{source.name}: checked cell printed nothing: {cell.source}"


@pytest.mark.slow
def test_checked_outputs_reproduce_under_nbval(executed, notebook_home):
    _, out = executed
    result = _run_nbval(out, notebook_home)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert " passed" in result.stdout


@pytest.mark.slow
def test_nbval_catches_a_changed_number(notebook_home, tmp_path):
    """The comparison is real: a reference output that differs from the run fails nbval."""
    import papermill

    source = NOTEBOOK_DIR / "06_evaluating_interpretations.ipynb"
    out = tmp_path / source.name
    papermill.execute_notebook(
        str(source),
        str(out),
        parameters=fast_parameters(source),
        cwd=str(NOTEBOOK_DIR),
        progress_bar=False,
        kernel_name="python3",
    )
    nb = _read(out)
    checked = next(c for c in nb.cells if CHECK_TAG in _tags(c) and "score_table" in c.source)
    stream = next(o for o in checked.outputs if o.output_type == "stream")
    assert "0.899" in stream.text  # BLEU-3 of the negation flip
    stream.text = stream.text.replace("0.899", "0.123")
    nbformat.write(nb, out)
    result = _run_nbval(out, notebook_home)
    assert result.returncode != 0
    assert "0.123" in result.stdout
