"""Build the course site (Jupyter Book 1.x) from the repository's own material.

    python book/build_book.py                 # stage, then jupyter-book build book -W -n --keep-going
    python book/build_book.py --stage-only    # stage only (then run jupyter-book yourself)
    python book/build_book.py --update-toc    # rewrite book/_toc.yml from notebooks/ and exercises/

Staging writes book/generated/ (git-ignored, never committed):

- lessons/: every notebooks/*.ipynb executed by papermill with its fast settings (the
  ``# fast: {...}`` line of its parameters cell), plus a cell of "run this lesson" links.
  Executed copies are cached under a hash of the notebook, its settings and the library's
  source, so a rebuild re-runs only what changed.
- exercises/: the released (student) version of each exercises/source/<name>/<name>.ipynb:
  nbgrader's ClearSolutions, ClearHiddenTests, ClearMarkScheme and ClearOutput preprocessors,
  the same ones ``nbgrader generate_assignment`` applies. Never executed.
- syllabus.md: the learning objectives read from each lesson's title cell.
- copies of README.md, docs/gpu.md, docs/training.md, docs/model_card.md and
  exercises/INSTRUCTORS.md, with links between them pointed at their pages, the images they show
  copied beside them, and links to other repository files pointed at the repository on GitHub
  (book/course.yml).

The table of contents is explicit (no globs); the build refuses to run when a notebook in
notebooks/ or an assignment in exercises/source/ is missing from it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import nbformat
import yaml

BOOK = Path(__file__).resolve().parent
ROOT = BOOK.parent
GENERATED = BOOK / "generated"
TOC = BOOK / "_toc.yml"
LESSON_DIR = ROOT / "notebooks"
EXERCISE_DIR = ROOT / "exercises" / "source"

# Repository markdown files that become pages: source (relative to ROOT) -> page (relative to BOOK).
COPIED_PAGES = {
    "README.md": "generated/getting_started.md",
    "docs/gpu.md": "generated/gpu.md",
    "docs/training.md": "generated/training.md",
    "docs/model_card.md": "generated/model_card.md",
    "exercises/INSTRUCTORS.md": "generated/instructors.md",
    "notebooks/README.md": "generated/lesson_conventions.md",
}
LINK = re.compile(r"(!?\[[^\]]*\]\()([^)\s]+)(\))")


def lesson_notebooks() -> list[Path]:
    return sorted(LESSON_DIR.glob("*.ipynb"))


def assignments() -> list[Path]:
    return sorted(p / f"{p.name}.ipynb" for p in EXERCISE_DIR.iterdir() if p.is_dir())


def lesson_page(notebook: Path) -> str:
    return f"generated/lessons/{notebook.stem}"


def exercise_page(notebook: Path) -> str:
    return f"generated/exercises/{notebook.stem}"


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.replace(tmp, path)


# --- table of contents -------------------------------------------------------------------------


def render_toc() -> str:
    """The whole _toc.yml, listing every lesson and assignment by name."""
    lessons = "".join(f"      - file: {lesson_page(nb)}\n" for nb in lesson_notebooks())
    exercises = "".join(f"          - file: {exercise_page(nb)}\n" for nb in assignments())
    return (
        "# Written by `python book/build_book.py --update-toc`; the build checks that every\n"
        "# notebooks/*.ipynb and exercises/source/<name>/ is listed here.\n"
        "format: jb-book\n"
        "root: intro\n"
        "parts:\n"
        "  - caption: Course\n"
        "    chapters:\n"
        "      - file: generated/syllabus\n"
        "      - file: generated/getting_started\n"
        "  - caption: Lessons\n"
        "    chapters:\n"
        f"{lessons}"
        "      - file: generated/lesson_conventions\n"
        "  - caption: Exercises\n"
        "    chapters:\n"
        "      - file: exercises\n"
        "        sections:\n"
        f"{exercises}"
        "  - caption: Instructors\n"
        "    chapters:\n"
        "      - file: generated/instructors\n"
        "      - file: jupyterhub\n"
        "  - caption: The model\n"
        "    chapters:\n"
        "      - file: generated/model_card\n"
        "      - file: generated/gpu\n"
        "      - file: generated/training\n"
        "  - caption: Reference\n"
        "    chapters:\n"
        "      - file: glossary\n"
        "      - file: references\n"
    )


def toc_files(toc_path: Path = TOC) -> set[str]:
    """Every `file:` entry of the table of contents, at any depth."""
    found: set[str] = set()

    def walk(node) -> None:
        if isinstance(node, dict):
            if "file" in node:
                found.add(str(node["file"]))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    toc = yaml.safe_load(toc_path.read_text(encoding="utf-8"))
    walk(toc)
    found.add(str(toc["root"]))
    return found


def missing_from_toc(toc_path: Path = TOC) -> list[str]:
    """Pages the course has but the table of contents does not list."""
    listed = toc_files(toc_path)
    wanted = [lesson_page(nb) for nb in lesson_notebooks()]
    wanted += [exercise_page(nb) for nb in assignments()]
    return [page for page in wanted if page not in listed]


def check_toc() -> None:
    missing = missing_from_toc()
    if missing:
        raise SystemExit(
            f"book/_toc.yml does not list {', '.join(missing)}; "
            "run `python book/build_book.py --update-toc`"
        )


# --- links -------------------------------------------------------------------------------------


def _course_settings() -> dict:
    return yaml.safe_load((BOOK / "course.yml").read_text(encoding="utf-8"))


def _page_for_source() -> dict[str, str]:
    """Repository path -> book page (relative to BOOK, with suffix) for everything staged."""
    pages = dict(COPIED_PAGES)
    for nb in lesson_notebooks():
        pages[nb.relative_to(ROOT).as_posix()] = lesson_page(nb) + ".ipynb"
    for nb in assignments():
        pages[nb.relative_to(ROOT).as_posix()] = exercise_page(nb) + ".ipynb"
        pages[nb.parent.relative_to(ROOT).as_posix()] = exercise_page(nb) + ".ipynb"
    return pages


def rewrite_links(text: str, source: Path, page: str) -> str:
    """Point relative links of `source` (a repository file shown as book page `page`) at the
    staged page of their target, or at the repository on GitHub when the target is no page."""
    settings = _course_settings()
    pages = _page_for_source()
    page_dir = (BOOK / page).parent

    def fix(match: re.Match) -> str:
        target = match.group(2)
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith(("#", "/")):
            return match.group(0)
        path, _, anchor = target.partition("#")
        resolved = (source.parent / path).resolve()
        try:
            rel = resolved.relative_to(ROOT).as_posix()
        except ValueError:
            return match.group(0)
        if rel in pages:
            new = os.path.relpath(BOOK / pages[rel], page_dir)
            new = Path(new).as_posix() + (f"#{anchor}" if anchor else "")
        elif match.group(1).startswith("!") and resolved.is_file():
            # an image of a copied page (e.g. the model card's figures): staged beside the page
            staged = page_dir / "figures" / rel.replace("/", "_")
            staged.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(resolved, staged)
            new = staged.relative_to(page_dir).as_posix()
        else:
            kind = "tree" if resolved.is_dir() else "blob"
            new = f"{settings['repository']}/{kind}/{settings['branch']}/{rel}"
        return f"{match.group(1)}{new}{match.group(3)}"

    return LINK.sub(fix, text)


def launch_links(notebook: Path) -> str:
    """A markdown cell's text: where to run the lesson."""
    settings = _course_settings()
    rel = notebook.relative_to(ROOT).as_posix()
    repo, branch = settings["repository"].rstrip("/"), settings["branch"]
    slug = repo.split("github.com/", 1)[-1]
    binder = f"{settings['binderhub'].rstrip('/')}/v2/gh/{slug}/{branch}?labpath={rel}"
    colab = f"{settings['colab'].rstrip('/')}/github/{slug}/blob/{branch}/{rel}"
    lines = [
        "```{admonition} Run this lesson",
        ":class: tip",
        f"- **JupyterLab** on your machine: `make lab`, then open `{rel}`"
        " (or `jupyter lab " + rel + "`).",
    ]
    if settings.get("jupyterhub"):
        hub = settings["jupyterhub"].rstrip("/")
        lines.append(
            f"- **Your class's JupyterHub**: [open in JupyterLab]"
            f"({hub}/hub/user-redirect/lab/tree/progemu-lite/{rel})"
        )
    lines += [
        f"- **Binder**: [launch on Binder]({binder}) (the course environment, in your browser).",
        f"- **Colab**: [open in Colab]({colab}); the first cell installs the package.",
        "",
        "The page below was executed with the lesson's fast settings (its `# fast:` line), so",
        "images are smaller than in class.",
        "```",
    ]
    return "\n".join(lines)


# --- staging -----------------------------------------------------------------------------------


def _library_fingerprint() -> str:
    digest = hashlib.sha256()
    for path in sorted((ROOT / "progemu_lite").rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            digest.update(path.relative_to(ROOT).as_posix().encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def stage_lesson(notebook: Path, library: str) -> Path:
    """Execute one lesson with its fast settings into generated/lessons/ (cached)."""
    import papermill

    from progemu_lite.widgets.lessons import fast_parameters

    out = BOOK / (lesson_page(notebook) + ".ipynb")
    parameters = fast_parameters(notebook)
    key = hashlib.sha256(
        notebook.read_bytes() + json.dumps(parameters, sort_keys=True).encode() + library.encode()
    ).hexdigest()
    if out.exists():
        cached = nbformat.read(out, as_version=4)
        if cached.metadata.get("progemu_book", {}).get("key") == key:
            return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        executed = Path(tmp) / notebook.name
        for attempt in (1, 2):
            try:
                papermill.execute_notebook(
                    str(notebook),
                    str(executed),
                    parameters=parameters,
                    cwd=str(LESSON_DIR),
                    progress_bar=False,
                    kernel_name="python3",
                )
                break
            except RuntimeError as error:
                # A kernel started beside the other workers' kernels died once in CI before it
                # answered (likely a port race between kernels started at once): that failure,
                # and nothing else, gets one retry.
                if attempt == 2 or "Kernel died before replying" not in str(error):
                    raise
        nb = nbformat.read(executed, as_version=4)
    page = lesson_page(notebook) + ".ipynb"
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            cell.source = rewrite_links(cell.source, notebook, page)
    nb.cells.insert(1, nbformat.v4.new_markdown_cell(launch_links(notebook)))
    nb.metadata["progemu_book"] = {"key": key, "parameters": parameters}
    _write_atomic(out, nbformat.writes(nb))
    return out


def released(notebook: Path):
    """The student version of an nbgrader source notebook, without solutions or hidden tests."""
    from nbgrader.preprocessors import (
        ClearHiddenTests,
        ClearMarkScheme,
        ClearOutput,
        ClearSolutions,
    )

    nb = nbformat.read(notebook, as_version=4)
    resources: dict = {}
    for preprocessor in (ClearSolutions(), ClearHiddenTests(), ClearMarkScheme(), ClearOutput()):
        nb, resources = preprocessor.preprocess(nb, resources)
    return nb


def stage_exercise(notebook: Path) -> Path:
    out = BOOK / (exercise_page(notebook) + ".ipynb")
    nb = released(notebook)
    page = exercise_page(notebook) + ".ipynb"
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            cell.source = rewrite_links(cell.source, notebook, page)
    rel = notebook.relative_to(ROOT).as_posix()
    nb.cells.insert(
        1,
        nbformat.v4.new_markdown_cell(
            "```{note}\nThe student version, as `nbgrader generate_assignment` releases it: "
            "solutions and hidden tests removed. Your instructor hands it out; the source is "
            f"`{rel}`.\n```"
        ),
    )
    _write_atomic(out, nbformat.writes(nb))
    return out


def title_and_objectives(notebook: Path) -> tuple[str, list[str]]:
    """The `# Title` and the learning objectives (bullets after "Learning objectives")."""
    nb = nbformat.read(notebook, as_version=4)
    first = nb.cells[0].source
    titles = [line[2:].strip() for line in first.splitlines() if line.startswith("# ")]
    if not titles:
        raise ValueError(f"{notebook.name}: the first cell has no '# Title'")
    objectives: list[str] = []
    started = False
    for line in first.splitlines():
        if "learning objectives" in line.lower():
            started = True
        elif started and line.lstrip().startswith(("- ", "* ")):
            objectives.append(line.lstrip()[2:].strip())
        elif started and objectives and line.strip() and not line.startswith(" "):
            break
    return titles[0], objectives


def render_syllabus() -> str:
    parts = [
        "# Syllabus",
        "",
        "Each lesson takes 30 to 60 minutes and runs on a laptop CPU unless it says otherwise. "
        "The objectives below are read from each lesson's first cell when the book is built.",
        "",
    ]
    for nb in lesson_notebooks():
        title, objectives = title_and_objectives(nb)
        meta = nbformat.read(nb, as_version=4).metadata.get("progemu", {})
        gpu = "yes" if meta.get("gpu") else "no"
        parts += [
            f"## {title}",
            "",
            f"{{doc}}`Open the lesson <{lesson_page(nb).split('/', 1)[1]}>` · "
            f"about {meta.get('minutes', '?')} minutes · needs a GPU: {gpu}",
            "",
            "After this lesson you can:",
            "",
            *[f"- {objective}" for objective in objectives],
            "",
        ]
    parts += ["## Exercises (graded with nbgrader)", ""]
    for nb in assignments():
        title, _ = title_and_objectives(nb)
        parts.append(f"- {{doc}}`{title} <{exercise_page(nb).split('/', 1)[1]}>`")
    parts.append("")
    return "\n".join(parts)


def stage(jobs: int = 2) -> None:
    check_toc()
    library = _library_fingerprint()
    for src, page in COPIED_PAGES.items():
        source = ROOT / src
        text = rewrite_links(source.read_text(encoding="utf-8"), source, page)
        _write_atomic(BOOK / page, text)
    _write_atomic(GENERATED / "syllabus.md", render_syllabus())
    for nb in assignments():
        stage_exercise(nb)
    lessons = lesson_notebooks()
    if jobs > 1 and len(lessons) > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(max_workers=jobs) as pool:
            list(pool.map(stage_lesson, lessons, [library] * len(lessons)))
    else:
        for nb in lessons:
            stage_lesson(nb, library)
    # Staged pages of lessons or assignments that no longer exist would be orphans.
    wanted = {BOOK / (lesson_page(nb) + ".ipynb") for nb in lessons}
    wanted |= {BOOK / (exercise_page(nb) + ".ipynb") for nb in assignments()}
    for stale in list(GENERATED.glob("lessons/*.ipynb")) + list(
        GENERATED.glob("exercises/*.ipynb")
    ):
        if stale not in wanted:
            stale.unlink()


def build(output: Path | None) -> int:
    command = [
        str(Path(sys.executable).with_name("jupyter-book")),
        "build",
        str(BOOK),
        "-W",
        "-n",
        "--keep-going",
    ]
    if output is not None:
        command += ["--path-output", str(output)]
    return subprocess.run(command).returncode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--update-toc", action="store_true", help="rewrite book/_toc.yml")
    parser.add_argument("--stage-only", action="store_true", help="stage, do not build")
    parser.add_argument("--output", type=Path, help="folder for _build (default: book/)")
    parser.add_argument("--jobs", type=int, default=2, help="lessons executed at once")
    args = parser.parse_args(argv)
    if args.update_toc:
        _write_atomic(TOC, render_toc())
        print(f"wrote {TOC.relative_to(ROOT)}")
        return 0
    stage(jobs=args.jobs)
    if args.stage_only:
        return 0
    return build(args.output)


if __name__ == "__main__":
    sys.exit(main())
