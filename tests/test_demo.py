"""`progemu-lite demo` (make demo) and the bundled simulated prior it runs on."""

import dataclasses
import json

import numpy as np
import pytest
import torch
from PIL import Image

from progemu_lite import hub
from progemu_lite.cli import main
from progemu_lite.examples import (
    EXAMPLES_DIR,
    PRIOR_JSON,
    PRIOR_PNG,
    load_example_prior,
    render_example_prior,
    write_example_prior,
)
from progemu_lite.model.demo import DemoRow, save_demo_figure
from progemu_lite.model.pipeline import build_random

# Figure geometry (progemu_lite.model.demo.save_demo_figure): 8.5 in wide at 100 dpi; margins
# 1.15 + 1.2 in, 2.4 in per image row and 1.5 in between rows.
FIGURE_WIDTH = 850


def figure_height(rows: int) -> int:
    return round(100 * (1.15 + 1.2 + 2.4 * rows + 1.5 * (rows - 1)))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny model: one thread is faster on a busy 2-core machine
    try:
        yield build_random("tiny", seed=0).save_pretrained(tmp_path_factory.mktemp("ckpt") / "t")
    finally:
        torch.set_num_threads(threads)


def run_demo_cli(*argv) -> int:
    return main(["demo", *(str(a) for a in argv)])


def test_bundled_prior_matches_its_recipe():
    example = load_example_prior()
    fresh = render_example_prior(example.recipe["seed"], example.recipe["size"])
    assert example.image.shape == (128, 128) and example.image.dtype == np.uint8
    assert np.array_equal(example.image, fresh.image)
    assert example.state == fresh.state and example.state.findings
    assert [p.text for p in example.prompts] == [p.text for p in fresh.prompts]
    # A worsening of a finding present on the prior, a new one elsewhere, and a resolution.
    worse, new, resolved = (p.progression for p in example.prompts)
    assert (worse.direction, new.direction, resolved.direction) == ("worse", "new", "resolved")
    present = set(example.state.keys())
    assert worse.key in present and resolved.key in present and new.key not in present
    for prompt in example.prompts:
        prompt.progression.check_applies_to(example.state)
        assert prompt.text.endswith(".") and prompt.text[0].isupper()


def test_example_files_are_written_atomically_and_read_back(tmp_path):
    png, json_path = write_example_prior(tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {PRIOR_PNG, PRIOR_JSON}
    assert png.read_bytes() == (EXAMPLES_DIR / PRIOR_PNG).read_bytes()
    assert json.loads(json_path.read_text()) == json.loads((EXAMPLES_DIR / PRIOR_JSON).read_text())
    (tmp_path / PRIOR_PNG).unlink()
    with pytest.raises(FileNotFoundError, match=PRIOR_PNG):
        load_example_prior(tmp_path)


def test_demo_prints_three_interpretations_and_saves_the_figure(checkpoint, tmp_path, capsys):
    out = tmp_path / "demo"
    assert run_demo_cli("--weights", checkpoint, "--out", out, "--quiet") == 0
    printed = capsys.readouterr().out
    example = load_example_prior()
    for prompt in example.prompts:
        assert prompt.text in printed
    assert printed.count("Interpretation: ") == 3
    assert printed.count("Time: ") == 3
    results = json.loads((out / "demo.json").read_text())
    assert [r["prompt"] for r in results["rows"]] == [p.text for p in example.prompts]
    for row in results["rows"]:
        assert row["interpretation"].strip()
    with Image.open(out / "demo.png") as image:
        assert image.format == "PNG"
        assert image.size == (FIGURE_WIDTH, figure_height(3))
        pixels = np.asarray(image.convert("RGB")).astype(int)
    # Colour appears (the diverging difference map) and the radiographs are gray.
    assert (np.abs(pixels[..., 0] - pixels[..., 2]) > 60).mean() > 0.01
    assert sorted(p.name for p in out.iterdir()) == ["demo.json", "demo.png"]  # no temporaries


def test_demo_is_reproducible_with_its_seed(checkpoint, tmp_path):
    for name in ("a", "b"):
        assert run_demo_cli("--weights", checkpoint, "--out", tmp_path / name, "--quiet") == 0
    a, b = (json.loads((tmp_path / n / "demo.json").read_text()) for n in ("a", "b"))
    assert a["rows"] == b["rows"]


@pytest.mark.parametrize("kind", ["missing", "not-a-checkpoint"])
def test_bad_weights_give_one_line_and_leave_out_untouched(kind, tmp_path, capsys):
    weights = tmp_path / "weights"
    if kind == "not-a-checkpoint":
        weights.mkdir()
        (weights / "notes.txt").write_text("not a model")
    out = tmp_path / "out"
    assert run_demo_cli("--weights", weights, "--out", out, "--quiet") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("progemu-lite demo: error:") and "\n" not in err
    assert str(weights) in err
    assert not out.exists()


def test_failure_adds_nothing_to_an_existing_out_folder(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "demo.png").write_bytes(b"an older figure")
    assert run_demo_cli("--weights", tmp_path / "nothing", "--out", out) == 2
    assert [p.name for p in out.iterdir()] == ["demo.png"]
    assert (out / "demo.png").read_bytes() == b"an older figure"


def test_out_must_be_a_folder(checkpoint, tmp_path, capsys):
    out = tmp_path / "a-file"
    out.write_text("keep me")
    assert run_demo_cli("--weights", checkpoint, "--out", out, "--quiet") == 2
    assert "not a folder" in capsys.readouterr().err
    assert out.read_text() == "keep me"


def test_unshipped_registry_weights_are_a_clear_error(tmp_path, monkeypatch, capsys):
    empty = tmp_path / "lite-weights"
    empty.mkdir()
    spec = dataclasses.replace(hub.REGISTRY["lite"], parts={"model": hub.LocalFolder(empty)})
    monkeypatch.setitem(hub.REGISTRY, "lite", spec)
    assert run_demo_cli("--out", tmp_path / "out") == 2  # --weights defaults to lite
    err = capsys.readouterr().err
    assert "does not exist or is empty" in err and str(empty) in err
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(
    (hub.PACKAGE_WEIGHTS / "lite").is_dir() and any((hub.PACKAGE_WEIGHTS / "lite").iterdir()),
    reason="the lite weights are shipped in this checkout",
)
def test_default_weights_not_shipped_says_so(tmp_path, capsys):
    assert run_demo_cli("--out", tmp_path / "out") == 2
    assert "'lite' checkpoint is not shipped" in capsys.readouterr().err


def test_figure_rejects_bad_paths_and_draws_odd_text(tmp_path):
    gray = np.full((16, 16), 100, np.uint8)
    row = DemoRow("Cost $5 and $6.", "new", gray, gray + 20, "stray \x03 byte $x$", 0.1)
    with pytest.raises(ValueError, match=r"\.png"):
        save_demo_figure([row], tmp_path / "demo.jpg")
    with pytest.raises(ValueError, match="at least one row"):
        save_demo_figure([], tmp_path / "demo.png")
    path = save_demo_figure([row], tmp_path / "demo.png")
    with Image.open(path) as image:
        assert image.size == (FIGURE_WIDTH, figure_height(1))
