"""The course site (book/, Jupyter Book 1.x): its table of contents, the released exercises,
and (slow) a real offline build with warnings as errors whose HTML is checked page by page."""

from __future__ import annotations

import base64
import importlib.util
import re
import subprocess
import sys
from html import unescape
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
BOOK = ROOT / "book"


def _load_build_book():
    spec = importlib.util.spec_from_file_location("build_book", BOOK / "build_book.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


build_book = _load_build_book()


def _solution_lines(source_notebook: Path) -> list[str]:
    """Code lines between nbgrader's BEGIN/END SOLUTION markers, long enough to be telling."""
    lines, inside = [], False
    for cell in nbformat.read(source_notebook, as_version=4).cells:
        if cell.cell_type != "code":
            continue
        for line in cell.source.splitlines():
            if "BEGIN SOLUTION" in line:
                inside = True
            elif "END SOLUTION" in line:
                inside = False
            elif inside and len(line.strip()) >= 12:
                lines.append(line.strip())
    return lines


def _outside_solutions(source_notebook: Path) -> str:
    """The source notebook's text without its solution blocks: lines found here may legitimately
    appear in a released version (e.g. a visible test that repeats a solution's expression)."""
    kept, inside = [], False
    for cell in nbformat.read(source_notebook, as_version=4).cells:
        for line in cell.source.splitlines():
            if "BEGIN SOLUTION" in line:
                inside = True
            elif "END SOLUTION" in line:
                inside = False
            elif not inside:
                kept.append(line)
    return "\n".join(kept)


def _telltale_solution_lines(source_notebook: Path) -> list[str]:
    """Solution lines that appear nowhere else in the source notebook."""
    outside = _outside_solutions(source_notebook)
    return [line for line in _solution_lines(source_notebook) if line not in outside]


def _released_text(notebook) -> str:
    return "\n".join(cell.source for cell in notebook.cells)


# --- fast: the table of contents and the student versions --------------------------------------


def test_toc_lists_every_lesson_and_assignment():
    assert build_book.missing_from_toc() == []


def test_toc_check_names_a_missing_lesson(tmp_path):
    lesson = build_book.lesson_notebooks()[0]
    page = build_book.lesson_page(lesson)
    toc = tmp_path / "_toc.yml"
    lines = build_book.TOC.read_text().splitlines(keepends=True)
    toc.write_text("".join(line for line in lines if line.strip() != f"- file: {page}"))
    assert build_book.missing_from_toc(toc) == [page]


def test_rendered_toc_is_the_committed_one():
    """`--update-toc` would change nothing: the committed toc is current."""
    assert build_book.render_toc() == build_book.TOC.read_text()


@pytest.mark.parametrize("source", build_book.assignments(), ids=lambda p: p.stem)
def test_released_exercise_has_no_solutions(source):
    telltale = _telltale_solution_lines(source)
    assert telltale, f"{source.name} has no solution code to strip"
    released = _released_text(build_book.released(source))
    for line in telltale:
        assert line not in released
    assert "BEGIN SOLUTION" not in released
    assert "BEGIN HIDDEN TESTS" not in released
    assert "YOUR CODE HERE" in released


def test_syllabus_has_each_lessons_objectives():
    syllabus = build_book.render_syllabus()
    for lesson in build_book.lesson_notebooks():
        title, objectives = build_book.title_and_objectives(lesson)
        assert objectives, f"{lesson.name}: no learning objectives found in the title cell"
        assert f"## {title}" in syllabus
        for objective in objectives:
            assert f"- {objective}" in syllabus


def test_links_to_other_repository_files_go_to_the_repository():
    source = ROOT / "exercises" / "INSTRUCTORS.md"
    text = "see [the config](nbgrader_config.py) and [the GPU page](../docs/gpu.md)"
    fixed = build_book.rewrite_links(text, source, "generated/instructors.md")
    assert "(https://github.com/" in fixed and "/blob/main/exercises/nbgrader_config.py)" in fixed
    assert "[the GPU page](gpu.md)" in fixed


# --- slow: a real build, checked as HTML -------------------------------------------------------


class _Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.refs: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "a" and attrs.get("href"):
            self.refs.append(attrs["href"])
        if tag == "img" and attrs.get("src"):
            self.refs.append(attrs["src"])

    def handle_data(self, data):
        self.text.append(data)


def _parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


@pytest.fixture(scope="module")
def html(tmp_path_factory):
    out = tmp_path_factory.mktemp("book")
    # A separate process: the build executes lessons in worker processes of its own.
    run = subprocess.run(
        [sys.executable, str(BOOK / "build_book.py"), "--output", str(out)],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, (
        f"the book build failed (warnings are errors):\n{run.stdout[-4000:]}\n{run.stderr[-4000:]}"
    )
    return out / "_build" / "html"


@pytest.mark.slow
def test_every_lesson_page_exists_with_run_links(html):
    for lesson in build_book.lesson_notebooks():
        page = html / (build_book.lesson_page(lesson) + ".html")
        assert page.is_file(), f"no page for {lesson.name}"
        refs = _parse(page).refs
        assert any("mybinder.org" in ref and lesson.name in ref for ref in refs)
        assert any("colab.research.google.com" in ref and lesson.name in ref for ref in refs)
    for source in build_book.assignments():
        assert (html / (build_book.exercise_page(source) + ".html")).is_file()
    for page in (
        "intro",
        "generated/syllabus",
        "generated/instructors",
        "generated/gpu",
        "generated/model_card",
    ):
        assert (html / f"{page}.html").is_file()
    for page in ("glossary", "references", "jupyterhub"):
        assert (html / f"{page}.html").is_file()


@pytest.mark.slow
def test_no_broken_internal_links(html):
    broken = []
    pages = sorted(html.rglob("*.html"))
    assert len(pages) > 10
    for page in pages:
        for ref in _parse(page).refs:
            parts = urlsplit(ref)
            if parts.scheme or parts.netloc or not parts.path:
                continue  # external, data: URI, or a pure #fragment
            target = (page.parent / unquote(parts.path)).resolve()
            if not target.exists():
                broken.append(f"{page.relative_to(html)} -> {ref}")
    assert not broken, "broken links:\n" + "\n".join(broken)


DATA_URI = re.compile(r"data:image/(?:png|jpeg);base64,([A-Za-z0-9+/=\\n]+)")


def _figures(executed) -> list[str]:
    """Base64 images a lesson's outputs hold: PNG outputs, and images embedded in HTML outputs
    (the library's figure widgets render as <img src="data:...">)."""
    found = []
    for cell in executed.cells:
        for output in cell.get("outputs", []) if cell.cell_type == "code" else []:
            data = output.get("data", {})
            if "image/png" in data:
                found.append(data["image/png"].replace("\n", ""))
            found += [m.replace("\n", "") for m in DATA_URI.findall(data.get("text/html", ""))]
    return found


@pytest.mark.slow
def test_notebook_figures_are_embedded(html):
    images = {p.read_bytes() for p in html.rglob("_images/*")}
    total = 0
    for lesson in build_book.lesson_notebooks():
        executed = nbformat.read(BOOK / (build_book.lesson_page(lesson) + ".ipynb"), as_version=4)
        page = (html / (build_book.lesson_page(lesson) + ".html")).read_text(encoding="utf-8")
        for figure in _figures(executed):
            total += 1
            as_file = base64.b64decode(figure) in images
            assert as_file or figure[:300] in page, f"a figure of {lesson.name} is missing"
    assert total >= len(build_book.lesson_notebooks()), (
        "the lessons' figures did not reach the book"
    )


@pytest.mark.slow
def test_exercise_pages_show_no_solution_code(html):
    for source in build_book.assignments():
        page = html / (build_book.exercise_page(source) + ".html")
        text = unescape("".join(_parse(page).text))
        text = re.sub(r"[ \t]+", " ", text)
        assert "YOUR CODE HERE" in text
        assert "BEGIN SOLUTION" not in text and "HIDDEN TESTS" not in text
        telltale = _telltale_solution_lines(source)
        assert telltale
        for line in telltale:
            assert re.sub(r"[ \t]+", " ", line) not in text, f"{page.name} shows: {line}"


@pytest.mark.slow
def test_references_are_a_bibliography(html):
    text = (html / "references.html").read_text(encoding="utf-8")
    for needle in ("2503.23149", "Emu3", "MIMIC-CXR", "CheXpert Plus", "ICG-CXR"):
        assert needle in text, needle
