"""`progemu-lite vq-probe`: a reader trained on the priors' pixels and on their VQ round trips,
scored on the held-out pairs' stable findings."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from progemu_lite.cli import main
from progemu_lite.phantom.dataset import PhantomConfig, generate, patient_split
from progemu_lite.phantom.findings import FINDINGS
from progemu_lite.tokenization.vq import build_vq, save_vq
from progemu_lite.tokenization.vq_probe import (
    PROBE_FIGURE,
    PROBE_FILE,
    PROBE_KEYS,
    ProbeSet,
    finding_auroc,
    load_probe_set,
    prior_targets,
    probe_pairs,
    read_findings,
    recall_by_grade,
    score_reading,
    train_reader,
)

PATIENTS = 5  # seed 0: patients 0 and 3 are test patients, 1, 2 and 4 train
PAIRS = 3  # a patient's pairs share one prior


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data") / "sim"
    generate(root, PhantomConfig(PATIENTS, PAIRS, 64, 0), progress=False)
    return root


@pytest.fixture(scope="module")
def tiny_vq(tmp_path_factory):
    folder = tmp_path_factory.mktemp("vq") / "tiny"
    save_vq(build_vq("tiny", seed=0).eval(), folder)
    return folder


def key(finding, side=None) -> int:
    return PROBE_KEYS.index((finding, side))


def test_prior_targets_name_what_the_prior_holds_and_what_stays():
    annotation = [
        {"finding": "pneumothorax", "location": "right", "direction": "new"},
        {
            "finding": "pleural_effusion",
            "location": "left",
            "direction": "stable",
            "severity_before": "moderate",
            "severity_after": "moderate",
        },
        {"finding": "consolidation", "location": "right_lower_lobe", "direction": "worse"},
        {"finding": "cardiomegaly", "location": None, "direction": "stable"},
    ]
    present, stable = prior_targets(annotation)
    held = {key("pleural_effusion", "left"), key("consolidation", "right"), key("cardiomegaly")}
    assert set(np.flatnonzero(present)) == held  # the new pneumothorax is not in the prior
    assert set(np.flatnonzero(stable)) == {key("pleural_effusion", "left"), key("cardiomegaly")}
    # stable findings carry their severity grade (moderate: the 2nd of small, moderate, large);
    # one without a severity counts as the mildest
    assert stable[key("pleural_effusion", "left")] == 2 and stable[key("cardiomegaly")] == 1
    with pytest.raises(ValueError, match="unusable expert annotation.*unknown finding"):
        prior_targets([{"finding": "fracture", "location": "left", "direction": "new"}])
    with pytest.raises(ValueError, match="unusable expert annotation: annotation missing"):
        prior_targets(None)


def test_score_reading_counts_each_pairs_stable_findings():
    k = len(PROBE_KEYS)
    present = np.zeros((3, k), bool)
    present[0, key("cardiomegaly")] = present[1, key("nodule", "left")] = True
    present[2, key("cardiomegaly")] = True
    pair_stable = np.zeros((3, k), bool)  # two pairs of prior 1, one of prior 2
    pair_stable[0, key("nodule", "left")] = pair_stable[1, key("nodule", "left")] = True
    pair_stable[2, key("cardiomegaly")] = True
    probe = ProbeSet(
        np.zeros((3, 8, 8), np.uint8),
        present,
        np.array([True, False, False]),
        np.array([1, 1, 2]),
        pair_stable,
    )
    seen = np.zeros((3, k), bool)
    seen[2, key("cardiomegaly")] = True  # right
    seen[2, key("nodule", "right")] = True  # a finding prior 2 does not hold
    seen[0, key("nodule", "right")] = True  # a training prior: not scored
    score = score_reading(seen, probe)
    assert score["stable_recall"] == pytest.approx(1 / 3)
    assert (score["stable_seen"], score["stable_annotated"]) == (1, 3)
    assert score["precision"] == pytest.approx(1 / 2)
    assert score["by_finding"]["nodule"] == [0, 2] and score["by_finding"]["cardiomegaly"] == [1, 1]
    # True grades count as the mildest severity word
    assert score["by_severity"]["cardiomegaly"] == {
        "mild": [1, 1],
        "moderate": [0, 0],
        "severe": [0, 0],
    }
    assert score["by_severity"]["nodule"]["small"] == [0, 2]
    assert recall_by_grade(score) == [(1, 3), (0, 0), (0, 0)]
    assert score["claimed"] == 2  # held-out priors only
    assert score_reading(np.zeros_like(seen), probe)["claimed"] == 0  # a collapsed reader


def test_finding_auroc_is_threshold_free_and_held_out_only():
    k = len(PROBE_KEYS)
    present = np.zeros((5, k), bool)
    present[[1, 2], key("cardiomegaly")] = True
    present[[3], key("nodule", "left")] = True
    present[0, key("pneumothorax", "left")] = True  # a training prior only: no held-out class
    train = np.array([True, False, False, False, False])
    pair_stable = np.zeros((1, k), np.int8)
    probe = ProbeSet(np.zeros((5, 8, 8), np.uint8), present, train, np.array([1]), pair_stable)
    logits = np.zeros((5, k), np.float32)
    # The held-out cardiomegalies rank above every held-out prior without one, though never
    # above the 0.5 threshold; the training prior's 9.0 would outrank them, but is not scored.
    logits[:, key("cardiomegaly")] = [9.0, -1.0, -2.0, -5.0, -6.0]
    logits[:, key("nodule", "left")] = [0.0, 3.0, 2.0, -4.0, 1.0]  # ranked below all others
    logits[:, key("nodule", "right")] = [0.0, 1.0, 2.0, 3.0, 4.0]  # no held-out right nodule
    result = finding_auroc(logits, probe)
    assert set(result) == set(FINDINGS)
    assert result["cardiomegaly"] == pytest.approx(1.0)
    assert result["nodule"] == pytest.approx(0.0)  # the left side only: the right has one class
    assert result["pneumothorax"] is None


def _visible_finding(source: str, n: int = 192):
    """Inputs where a nodule shows on one side: a bright square in a noisy image, or one
    particular code in a grid of others; and the findings each input holds."""
    rng = np.random.default_rng(0)
    present = np.zeros((n, len(PROBE_KEYS)), bool)
    sides = rng.integers(0, 2, n)
    present[np.arange(n), [key("nodule", ("right", "left")[s]) for s in sides]] = True
    if source == "image":
        inputs = rng.integers(40, 80, size=(n, 32, 32), dtype=np.uint8)
        for i, side in enumerate(sides):  # the patient's right is on the image's left
            inputs[i, 12:20, 3 + 18 * side : 11 + 18 * side] = 220
    else:
        inputs = rng.integers(0, 8, size=(n, 4, 4))
        inputs[np.arange(n), 1, 3 * sides] = 9
    return inputs, present


@pytest.mark.parametrize("source", ["image", "codes", "codebook"])
def test_the_reader_learns_a_finding_it_can_see(source):
    inputs, present = _visible_finding(source)
    # Code 9 (the finding's) looks unlike the background codes 0-7, as a bright patch does.
    codebook = 0.3 * torch.randn(16, 4, generator=torch.Generator().manual_seed(0))
    codebook[9] = 3.0
    reader = train_reader(
        inputs[:160],
        present[:160],
        epochs=20,
        source=source,
        codebook=codebook,
        seed=0,
        batch_size=32,
        progress=False,
    )
    seen = read_findings(reader, inputs[160:])
    assert (seen == present[160:]).all(axis=1).mean() >= 0.9
    with pytest.raises(ValueError, match="unknown reader input 'text'"):
        train_reader(inputs, present, epochs=1, source="text", progress=False)


def test_load_probe_set_keeps_each_prior_once(data):
    probe = load_probe_set(probe_pairs(data), 64, progress=False)
    test_patients = [i for i in range(PATIENTS) if patient_split(0, i) == "test"]
    assert len(probe.images) == PATIENTS and probe.n_train == PATIENTS - len(test_patients)
    assert probe.images.dtype == np.uint8 and probe.images.shape[1:] == (64, 64)
    assert len(probe.pair_image) == PAIRS * len(test_patients)  # every held-out pair counts
    assert not probe.train[probe.pair_image].any()
    # A pair's stable findings are findings its prior holds.
    assert not (probe.pair_stable & ~probe.present[probe.pair_image]).any()
    limited = load_probe_set(probe_pairs(data), 32, max_train_images=1, progress=False)
    assert limited.n_train == 1 and limited.images.shape[1:] == (32, 32)
    assert np.array_equal(limited.pair_stable, probe.pair_stable)
    held = probe.images[probe.pair_image]
    assert held.shape == (len(probe.pair_image), 64, 64)
    assert len(limited.images) == len(test_patients) + 1


def test_vq_probe_command(data, tiny_vq, tmp_path, capsys):
    out = tmp_path / "probe"
    args = ("vq-probe", "--vq", tiny_vq, "--data", data, "--out", out, "--epochs", 1, "--quiet")
    assert main([str(a) for a in args]) == 0
    report = json.loads((out / PROBE_FILE).read_text())
    assert report["n_train_images"] == 3 and report["n_held_out_pairs"] == 6
    for name in ("pixels", "round_trip", "codes", "codebook"):
        score = report[name]
        assert 0 <= score["stable_recall"] <= 1 and 0 <= score["precision"] <= 1
        assert sum(s for s, _ in score["by_finding"].values()) == score["stable_seen"]
        for finding, (seen, annotated) in score["by_finding"].items():
            sizes = score["by_severity"][finding].values()
            assert [sum(s for s, _ in sizes), sum(a for _, a in sizes)] == [seen, annotated]
        assert set(score["auroc"]) == set(FINDINGS)
        assert all(v is None or 0 <= v <= 1 for v in score["auroc"].values())
    pixels = report["pixels"]["stable_recall"]
    if pixels:  # a reader trained on 3 priors for 1 epoch may see nothing
        ratio = report["round_trip"]["stable_recall"] / pixels
        assert report["recall_ratio"] == pytest.approx(ratio)
    else:
        assert report["recall_ratio"] is None
    with Image.open(out / PROBE_FIGURE) as image:
        assert image.format == "PNG" and image.width > 600
    captured = capsys.readouterr()
    printed = captured.out
    assert printed.count("held-out stable findings seen") == 4 and "codebook vectors" in printed
    # a reader that names nothing in any held-out prior is flagged, and only then
    readers = ("pixels", "round_trip", "codes", "codebook")
    collapsed = [name for name in readers if report[name]["claimed"] == 0]
    assert captured.err.count("training collapsed") == len(collapsed)
    assert printed.count("by severity, mildest ") == 4
    assert printed.count("AUROC per finding") == 4


def test_vq_probe_bad_input_is_one_line_and_writes_nothing(data, tiny_vq, tmp_path, capsys):
    only_train = tmp_path / "only-train"
    generate(only_train, PhantomConfig(1, 1, 64, 1), progress=False)  # patient 0, seed 1
    out = tmp_path / "probe"
    cases = [
        (("--vq", tmp_path / "missing", "--data", data), "no VQ folder"),
        (("--vq", tiny_vq, "--data", tmp_path / "nodata"), "does not exist"),
        (("--vq", tiny_vq, "--data", data, "--epochs", 0), "--epochs must be at least 1"),
        (("--vq", tiny_vq, "--data", data, "--max-train-images", 0), "at least 1"),
        (("--vq", tiny_vq, "--data", only_train), "pairs under"),
    ]
    for args, message in cases:
        assert main([str(a) for a in ("vq-probe", *args, "--out", out)]) == 2, args
        err = capsys.readouterr().err.strip()
        assert err.startswith("progemu-lite vq-probe: error:") and "\n" not in err, err
        assert message in err, err
        assert not out.exists()
