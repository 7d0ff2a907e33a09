"""How long nbgrader takes to autograde a class: 30 submissions of one assignment of exercises/.

Copies the course into a temp folder, releases the assignment and writes 30 submissions (the
instructor's solution, one part solved, and the untouched release, in turn). Then, in the same
run:

* baseline: ``nbgrader autograde <assignment> --student <one>`` for ONE submission (what grading
  students one at a time costs: a fresh nbgrader process, database and kernel each time), x 30;
* product: ONE ``nbgrader autograde <assignment>`` over all 30 submissions (the command in
  INSTRUCTORS.md: one process, one kernel start per notebook).

Prints wall-clock seconds, CPU seconds of the nbgrader processes and their kernels (fairer on a
shared machine), and the ratio product / baseline. Target: at most 5 minutes for 30 submissions.

    .venv/bin/python benchmarks/autograde_speed.py [--assignment grading_interpretations] [-n 30]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import nbformat  # noqa: E402

from progemu_lite.exercises import fill_solutions  # noqa: E402

TARGET_S = 300.0


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def nbgrader(root: Path, *args: str) -> tuple[float, float]:
    """Run one nbgrader command in the course folder; (wall seconds, CPU seconds)."""
    bin_dir = Path(sys.executable).parent
    # nbgrader calls `alembic` (installed next to it) when it creates the gradebook.
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    start, cpu = time.perf_counter(), children_cpu()
    done = subprocess.run(
        [str(bin_dir / "nbgrader"), *args], cwd=root, env=env, capture_output=True, text=True
    )
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"nbgrader {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return elapsed, children_cpu() - cpu


def write_submissions(root: Path, assignment: str, count: int) -> list[str]:
    name = f"{assignment}.ipynb"
    source = nbformat.read(root / "source" / assignment / name, as_version=4)
    release = nbformat.read(root / "release" / assignment / name, as_version=4)
    first_solution = next(
        c.metadata.nbgrader.grade_id
        for c in source.cells
        if c.cell_type == "code" and c.metadata.get("nbgrader", {}).get("solution")
    )
    kinds = [
        fill_solutions(release, source),
        fill_solutions(release, source, only={first_solution}),
        release,
    ]
    students = []
    for i in range(count):
        student = f"student{i + 1:02d}"
        path = root / "submitted" / student / assignment / name
        path.parent.mkdir(parents=True)
        nbformat.write(kinds[i % len(kinds)], path)
        students.append(student)
    return students


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--assignment", default="grading_interpretations")
    parser.add_argument("-n", "--submissions", type=int, default=30)
    args = parser.parse_args()
    if not (REPO / "exercises" / "source" / args.assignment).is_dir():
        raise SystemExit(f"no assignment {args.assignment!r} in exercises/source")

    with tempfile.TemporaryDirectory(prefix="autograde-speed-") as tmp:
        root = Path(tmp)
        shutil.copy(REPO / "exercises" / "nbgrader_config.py", root)
        shutil.copytree(REPO / "exercises" / "source", root / "source")
        nbgrader(root, "generate_assignment", args.assignment, "--force")
        students = write_submissions(root, args.assignment, args.submissions)

        one_wall, one_cpu = nbgrader(
            root, "autograde", args.assignment, "--student", students[0], "--force"
        )
        all_wall, all_cpu = nbgrader(root, "autograde", args.assignment, "--force")
        graded = list((root / "autograded").glob(f"*/{args.assignment}/*.ipynb"))
        if len(graded) != len(students):
            raise SystemExit(f"only {len(graded)} of {len(students)} submissions were graded")

    n = len(students)
    baseline_wall, baseline_cpu = one_wall * n, one_cpu * n
    print(f"assignment {args.assignment}, {n} submissions, {os.cpu_count()} CPUs")
    print(
        f"baseline (one nbgrader run per submission): {one_wall:.1f} s each, "
        f"x {n} = {baseline_wall:.1f} s wall, {baseline_cpu:.1f} s CPU"
    )
    print(
        f"one `nbgrader autograde` over all {n}: {all_wall:.1f} s wall "
        f"({all_wall / n:.2f} s per submission), {all_cpu:.1f} s CPU"
    )
    print(
        f"ratio product/baseline: wall {all_wall / baseline_wall:.2f}, "
        f"CPU {all_cpu / baseline_cpu:.2f}"
    )
    verdict = "meets" if all_wall <= TARGET_S else "MISSES"
    print(f"{verdict} the target of {TARGET_S / 60:.0f} minutes for {n} submissions")


if __name__ == "__main__":
    main()
