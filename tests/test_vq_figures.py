"""Per-finding VQ round trip (finding_round_trip.png), `progemu-lite vq-report`, and train-vq's
copy of the figure."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from progemu_lite.cli import main
from progemu_lite.phantom.dataset import PhantomConfig, generate, patient_split
from progemu_lite.phantom.findings import FINDINGS
from progemu_lite.tokenization.vq import build_vq, save_vq
from progemu_lite.tokenization.vq_figures import (
    FINDING_FIGURE,
    REPORT_FILE,
    finding_cases,
    finding_round_trip,
    held_out_images,
    sign_kept,
)

# Figure geometry (vq_figures._draw_finding_figure): 7.2 in wide at 100 dpi, margins 0.75 +
# 0.95 in, 2.0 in per row, 0.55 in between rows; one row per finding type.
FIGURE_SIZE = (720, round(100 * (0.75 + 0.95 + 2.0 * 7 + 0.55 * 6)))
PATIENTS = 4  # with seed 0, patients 0 and 3 fall in the test split and none in val


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: one thread is faster on a busy 2-core machine
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_vq_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("vq") / "tiny"
    save_vq(build_vq("tiny", seed=0).eval(), folder)
    return folder


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data") / "sim"
    generate(root, PhantomConfig(PATIENTS, 1, 64, 0), progress=False)
    return root


def run_cli(*argv) -> int:
    return main([str(a) for a in argv])


def test_one_visible_case_per_finding_type():
    cases = finding_cases(64, seed=0)
    assert [c.finding for c in cases] == list(FINDINGS)
    for case in cases:
        assert case.image.shape == case.baseline.shape == case.mask.shape == (64, 64)
        assert case.mask.any()
        change = np.abs(case.image.astype(int) - case.baseline.astype(int))[case.mask]
        assert change.mean() > 3, f"{case.label} barely shows ({change.mean():.1f} gray levels)"
    again = finding_cases(64, seed=0)
    assert all(np.array_equal(a.image, b.image) for a, b in zip(cases, again, strict=True))


def test_sign_kept_is_one_for_a_perfect_round_trip_and_zero_when_erased():
    case = finding_cases(64, seed=0)[0]
    assert sign_kept(case, case.image, case.baseline) == pytest.approx(1.0)
    assert sign_kept(case, case.baseline, case.baseline) == pytest.approx(0.0)


def test_finding_round_trip_writes_one_row_per_finding(tmp_path):
    vq = build_vq("tiny", seed=0).eval()
    rows = finding_round_trip(vq, 64, tmp_path / FINDING_FIGURE, title="tiny")
    assert [r["finding"] for r in rows] == list(FINDINGS)
    for row in rows:
        assert np.isfinite(row["psnr"]) and np.isfinite(row["sign_kept"])
    with Image.open(tmp_path / FINDING_FIGURE) as image:
        assert image.format == "PNG" and image.size == FIGURE_SIZE
    assert [p.name for p in tmp_path.iterdir()] == [FINDING_FIGURE]
    with pytest.raises(ValueError, match=r"\.png"):
        finding_round_trip(vq, 64, tmp_path / "figure.svg")


def test_held_out_images_come_from_the_split(data):
    images, names = held_out_images(data, 64, split="test", limit=64)
    test_patients = [i for i in range(PATIENTS) if patient_split(0, i) == "test"]
    assert len(images) == 2 * len(test_patients) == len(names)  # prior and follow-up each
    assert images.dtype == np.uint8 and images.shape[1:] == (64, 64)
    resized, _ = held_out_images(data, 32, split="test", limit=3)
    assert resized.shape == (3, 32, 32)
    with pytest.raises(ValueError, match="no 'val' pairs"):
        held_out_images(data, 64, split="val")


def test_vq_report_command(tiny_vq_folder, data, tmp_path, capsys):
    out = tmp_path / "report"
    assert run_cli("vq-report", "--vq", tiny_vq_folder, "--data", data, "--out", out) == 0
    report = json.loads((out / REPORT_FILE).read_text())
    assert report["preset"] == "tiny" and report["split"] == "test"
    assert report["n_images"] == 4 and report["codebook_size"] == 256
    for key in ("psnr", "ssim", "perplexity", "used"):
        assert np.isfinite(report[key])
    assert [r["finding"] for r in report["findings"]] == list(FINDINGS)
    with Image.open(out / FINDING_FIGURE) as image:
        assert image.size == FIGURE_SIZE
    printed = capsys.readouterr().out
    assert "held-out (test)" in printed and "pneumothorax left" in printed


def test_vq_report_bad_input_is_one_line_and_writes_nothing(tiny_vq_folder, data, tmp_path, capsys):
    out = tmp_path / "report"
    cases = [
        ("--vq", tmp_path / "missing", "--data", data),  # no VQ folder
        ("--vq", tmp_path, "--data", data),  # a folder without a model
        ("--vq", tiny_vq_folder, "--data", data, "--split", "val"),  # no held-out pairs
        ("--vq", tiny_vq_folder, "--data", tmp_path / "nodata"),
        ("--vq", tiny_vq_folder, "--data", data, "--max-images", 0),
    ]
    for args in cases:
        assert run_cli("vq-report", *args, "--out", out) == 2, args
        err = capsys.readouterr().err.strip()
        assert err.startswith("progemu-lite vq-report: error:") and "\n" not in err, err
        assert not out.exists()


def test_train_vq_also_writes_the_finding_figure(data, tmp_path):
    out = tmp_path / "vq"
    args = ["--data", data, "--preset", "tiny", "--steps", 2, "--batch-size", 4, "--quiet"]
    assert run_cli("train-vq", *args, "--out", out) == 0
    report = json.loads((out / "report.json").read_text())
    assert [r["finding"] for r in report["findings"]] == list(FINDINGS)
    with Image.open(out / FINDING_FIGURE) as image:
        assert image.size == FIGURE_SIZE
