"""environment.yml must install what pyproject.toml declares, at the same pins."""

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _environment_pip_lines() -> list[str]:
    lines = (ROOT / "environment.yml").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == "- pip:")
    return [
        line.strip()[2:].strip() for line in lines[start + 1 :] if line.strip().startswith("- ")
    ]


def test_environment_installs_the_package_with_course_extras():
    assert "-e .[course]" in _environment_pip_lines()


def test_environment_python_matches_requires_python():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    minimum = re.search(r">=\s*(\d+\.\d+)", project["requires-python"]).group(1)
    text = (ROOT / "environment.yml").read_text()
    python = re.search(r"-\s*python=(\d+\.\d+)", text).group(1)
    assert tuple(map(int, python.split("."))) >= tuple(map(int, minimum.split(".")))


def test_environment_torch_pin_matches_makefile():
    makefile = (ROOT / "Makefile").read_text()
    torch_pin = re.search(r"^TORCH \?= (\S+)", makefile, re.M).group(1)
    assert torch_pin in _environment_pip_lines()
