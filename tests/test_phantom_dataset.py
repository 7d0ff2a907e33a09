import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from progemu_lite.cli import main
from progemu_lite.data.icgcxr import iter_pairs, load_pair_images
from progemu_lite.phantom.dataset import (
    PhantomConfig,
    distinct_progressions,
    generate,
    pair_folder,
    patient_split,
    simulate_patient,
)
from progemu_lite.phantom.progression import sample_prior_state, state_from_annotation

SMALL = ["--size", "64", "--seed", "5", "--quiet"]


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def run_cli(*argv) -> int:
    return main([str(a) for a in argv])


def test_same_args_give_identical_files(tmp_path):
    args = ["phantom", "--patients", 3, "--pairs-per-patient", 2, *SMALL]
    assert run_cli(*args, "--out", tmp_path / "a") == 0
    assert run_cli(*args, "--out", tmp_path / "b", "--workers", 2) == 0
    a, b = tree_bytes(tmp_path / "a"), tree_bytes(tmp_path / "b")
    assert len(a) == 1 + 3 * 2 * 3  # manifest + 3 files per pair
    assert a == b
    # A different seed gives different images.
    other_seed = ["phantom", "--patients", 3, "--pairs-per-patient", 2, "--size", 64, "--seed", 6]
    assert run_cli(*other_seed, "--quiet", "--out", tmp_path / "c") == 0
    c = tree_bytes(tmp_path / "c")
    assert a.keys() == c.keys()
    key = "simulated/pa/sim000000/sim000000_00/sim000000_00-ref-reg.png"
    assert a[key] != c[key]


def test_patient_is_the_same_whatever_the_number_of_patients(tmp_path):
    generate(tmp_path / "two", PhantomConfig(2, 2, 64, 3), progress=False)
    generate(tmp_path / "three", PhantomConfig(3, 2, 64, 3), progress=False)
    two = tree_bytes(tmp_path / "two" / "simulated")
    three = tree_bytes(tmp_path / "three" / "simulated")
    assert two == {k: v for k, v in three.items() if k in two}
    assert len(three) > len(two)


def test_pairs_share_the_prior_and_differ_in_progression(tmp_path):
    config = PhantomConfig(1, 4, 64, 11)
    pairs = list(simulate_patient(config, 0))
    assert len(pairs) == 4
    for pair in pairs[1:]:
        np.testing.assert_array_equal(pair.prior.image, pairs[0].prior.image)
        assert pair.prior_state == pairs[0].prior_state
    assert len({p.progression for p in pairs}) == 4  # four different counterfactuals
    for pair in pairs:
        assert state_from_annotation(pair.annotation) == (pair.prior_state, pair.followup_state)
        assert pair.followup.image.shape == (64, 64) and pair.followup.image.dtype == np.uint8
    # Generating a subset gives the same pairs (what resume relies on).
    (again,) = simulate_patient(config, 0, only={2})
    np.testing.assert_array_equal(again.followup.image, pairs[2].followup.image)
    assert again.record.to_json() == pairs[2].record.to_json()


def test_split_is_by_patient(tmp_path):
    splits = Counter(patient_split(0, i) for i in range(3000))
    assert set(splits) == {"train", "val", "test"}
    assert 0.76 < splits["train"] / 3000 < 0.84
    assert 0.07 < splits["test"] / 3000 < 0.13

    generate(tmp_path, PhantomConfig(12, 2, 64, 0), progress=False)
    records = list(iter_pairs(tmp_path))
    assert len(records) == 24
    split_of_subject: dict[str, set[str]] = {}
    for record in records:
        split_of_subject.setdefault(record.subject_id, set()).add(record.split)
    assert all(len(s) == 1 for s in split_of_subject.values())
    for split in ("train", "val", "test"):
        subset = list(iter_pairs(tmp_path, split=split))
        assert all(r.split == split for r in subset)
    assert sum(len(list(iter_pairs(tmp_path, split=s))) for s in ("train", "val", "test")) == 24


def test_written_pairs_are_complete_icg_cxr_pairs(tmp_path):
    generate(tmp_path, PhantomConfig(2, 2, 64, 1), progress=False)
    for record in iter_pairs(tmp_path):
        assert record.folder.parent.parent == tmp_path / "simulated" / "pa"
        prior, followup = load_pair_images(record)
        assert prior.shape == followup.shape == (64, 64)
        assert not np.array_equal(prior, followup)
        assert record.annotation and record.annotation[0].changed
        assert len(record.reference_labels) == len(record.followup_labels) == 14
        data = json.loads(record.json_path.read_text())
        assert data["requested-progression"]["finding"] == record.annotation[0].finding
        assert data["view"] == "PA" and isinstance(data["time-interval"], int)


def test_resume_skips_complete_pairs_and_cleans_temp_folders(tmp_path):
    config = PhantomConfig(3, 2, 64, 2)
    generate(tmp_path / "full", config, progress=False)
    expected = tree_bytes(tmp_path / "full")

    out = tmp_path / "resumed"
    generate(out, config, progress=False)
    # Simulate an interruption: two pairs never finished, one left its temporary folder behind.
    for index, k in ((0, 1), (2, 0)):
        folder = out / pair_folder(index, k)
        for f in folder.iterdir():
            f.unlink()
        folder.rmdir()
    stale = out / pair_folder(0, 1).parent / ".tmp-sim000000_01-x"
    stale.mkdir()
    (stale / "sim000000_01-ref-reg.png").write_bytes(b"\x89PNG half")
    # And one pair damaged by hand (its follow-up deleted) is rewritten.
    (out / pair_folder(1, 1) / "sim000001_01-flu-reg.png").unlink()
    counts = generate(out, config, progress=False)
    assert counts == {"written": 3, "skipped": 3, "total": 6}
    assert tree_bytes(out) == expected
    assert generate(out, config, progress=False)["written"] == 0


@pytest.mark.slow
def test_killed_run_leaves_no_half_pair_and_resumes(tmp_path):
    out = tmp_path / "out"
    argv = [sys.executable, "-m", "progemu_lite.cli", "phantom", "--patients", "40"]
    argv += ["--pairs-per-patient", "3", "--size", "64", "--seed", "9", "--quiet"]
    argv += ["--workers", "1", "--out", str(out)]
    proc = subprocess.Popen(argv)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if len(list(out.glob("simulated/pa/*/*/*.json"))) >= 6:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be interrupted"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    pairs = [p for p in out.glob("simulated/pa/*/*") if not p.name.startswith(".")]
    assert 6 <= len(pairs) < 120
    for folder in pairs:  # every pair folder is complete
        assert sorted(f.name for f in folder.iterdir()) == [
            f"{folder.name}-flu-reg.png",
            f"{folder.name}-ref-reg.png",
            f"{folder.name}.json",
        ]
        json.loads((folder / f"{folder.name}.json").read_text())
    subprocess.run(argv, check=True)
    reference = tmp_path / "reference"
    subprocess.run(argv[:-1] + [str(reference)], check=True)
    assert tree_bytes(out) == tree_bytes(reference)


def test_different_args_refuse_to_resume(tmp_path, capsys):
    assert (
        run_cli("phantom", "--patients", 1, "--pairs-per-patient", 1, *SMALL, "--out", tmp_path)
        == 0
    )
    code = run_cli("phantom", "--patients", 1, "--pairs-per-patient", 1, "--size", 128, "--seed", 5,
                   "--quiet", "--out", tmp_path)  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err
    assert "different arguments" in err and "size=64" in err and "size=128" in err
    with pytest.raises(ValueError, match="different arguments"):
        generate(tmp_path, PhantomConfig(2, 1, 64, 5), progress=False)


def test_folder_without_manifest_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not empty and has no manifest.json"):
        generate(tmp_path, PhantomConfig(1, 1, 64, 0), progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_unwritable_output_is_a_clear_error(tmp_path, capsys):
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    code = run_cli("phantom", "--patients", 1, *SMALL, "--out", blocker / "out")
    assert code == 2
    assert "cannot write to output folder" in capsys.readouterr().err
    if os.geteuid() != 0:  # root ignores permission bits
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(PermissionError, match="cannot write"):
            generate(locked, PhantomConfig(1, 1, 64, 0), progress=False)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--patients", "0"], "--patients must be at least 1"),
        (["--patients", "1", "--size", "60"], "--size must be a multiple of 16"),
        (["--patients", "1", "--pairs-per-patient", "0"], "--pairs-per-patient"),
        (["--patients", "1", "--contact-sheet", "sheet.jpg"], "must name a .png"),
        (["--patients", "1", "--generator-version", "7"], "unknown generator version 7"),
    ],
)
def test_bad_arguments(tmp_path, capsys, argv, message):
    assert run_cli("phantom", *argv, "--out", tmp_path / "out", "--quiet") == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_contact_sheet(tmp_path, capsys):
    sheet = tmp_path / "sheets" / "sheet.png"
    code = run_cli(
        "phantom", "--patients", 2, "--pairs-per-patient", 2, *SMALL,
        "--out", tmp_path / "data", "--contact-sheet", sheet,
    )  # fmt: skip
    assert code == 0
    assert "contact sheet" in capsys.readouterr().out
    with Image.open(sheet) as image:
        assert image.format == "PNG"
        width, height = image.size
        pixels = np.asarray(image.convert("RGB"))
    assert height > width / 2  # four rows
    assert pixels.std() > 10  # not blank
    assert not list(sheet.parent.glob(".*"))


def test_counterfactual_progressions_of_a_patient_differ():
    rng = np.random.default_rng(0)
    for _ in range(100):
        prior = sample_prior_state(rng)
        chosen = distinct_progressions(prior, 6, rng)
        assert len(set(chosen)) == 6
        for progression in chosen:
            progression.check_applies_to(prior)


def test_generator_versions_draw_the_same_patients_and_texts(tmp_path):
    v1, v2 = tmp_path / "v1", tmp_path / "v2"
    args = ["phantom", "--patients", 12, "--pairs-per-patient", 1, *SMALL]
    assert run_cli(*args, "--generator-version", 1, "--out", v1) == 0
    assert run_cli(*args, "--generator-version", 2, "--out", v2) == 0
    for root, version in ((v1, 1), (v2, 2)):
        manifest = json.loads((root / "manifest.json").read_text())
        assert manifest["generator-version"] == version
        assert "generator_version" not in manifest["args"]  # the arguments read as before
        assert PhantomConfig.from_manifest(manifest).generator_version == version
    one, two = tree_bytes(v1), tree_bytes(v2)
    assert one.keys() == two.keys()
    records = [k for k in one if k.endswith(".json") and k != "manifest.json"]
    assert records and all(one[k] == two[k] for k in records)  # prompts, texts, annotations
    # Resuming a folder with the other version is refused, naming both.
    with pytest.raises(ValueError, match="generator-version=1.*generator-version=2"):
        generate(v1, PhantomConfig(12, 1, 64, 5, generator_version=2), progress=False)


def test_help_states_the_default_generator_version(capsys):
    from progemu_lite.phantom.signs import DEFAULT_GENERATOR_VERSION

    with pytest.raises(SystemExit):
        run_cli("phantom", "--help")
    help_text = " ".join(capsys.readouterr().out.split())
    assert f"annotations (default {DEFAULT_GENERATOR_VERSION})" in help_text


def test_generator_version_2_redraws_only_the_subtle_findings():
    def redrawn(state) -> bool:  # what version 2 draws differently (signs.GENERATOR_VERSIONS)
        return any(
            f.name == "nodule" or (f.name in ("pulmonary_edema", "atelectasis") and f.severity == 1)
            for f in state.findings
        )

    seen = set()
    for index in range(16):
        one, two = (
            next(simulate_patient(PhantomConfig(16, 1, 64, 5, generator_version=v), index))
            for v in (1, 2)
        )
        for state, a, b in (
            (one.prior_state, one.prior.image, two.prior.image),
            (one.followup_state, one.followup.image, two.followup.image),
        ):
            assert (not np.array_equal(a, b)) == redrawn(state), state
            seen.add(redrawn(state))
    assert seen == {True, False}
