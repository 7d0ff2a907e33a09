"""The evaluation report: bootstrap, BLEU counts, the `evaluate` command, bad input, the cache."""

import csv
import json
import shutil

import numpy as np
import pytest

from progemu_lite.cli import main
from progemu_lite.evaluation import baselines as B
from progemu_lite.evaluation.classifier import AlignmentClassifier
from progemu_lite.evaluation.commands import train_from_dataset
from progemu_lite.evaluation.report import (
    COLUMNS,
    EXAMPLE_TITLE_WIDTH,
    bleu_stats,
    bootstrap_ci,
    column_title,
    corpus_bleu_from_stats,
    evaluate,
    load_cases,
)
from progemu_lite.phantom.dataset import PhantomConfig, generate


def test_bootstrap_ci_contains_the_point_estimate():
    values = np.random.default_rng(0).normal(3.0, 1.0, 200)
    lo, hi = bootstrap_ci(lambda idx: values[idx].mean(), len(values), 300, seed=1)
    assert lo < values.mean() < hi
    assert hi - lo < 0.5  # about 4 standard errors of 1/sqrt(200)
    assert bootstrap_ci(lambda idx: 1.0, 0, 10) != bootstrap_ci(lambda idx: 1.0, 0, 10)  # NaNs


def test_example_figure_titles_fit_their_column():
    """A checkpoint path as a system name is wrapped, not drawn across the next columns."""
    name = "model:/home/student/runs/lite-stage5-float16 (text_temperature=0.0)"
    title = column_title(name)
    assert all(len(line) <= EXAMPLE_TITLE_WIDTH for line in title.splitlines())
    assert title.replace("\n", "").replace(" ", "") == name.replace(" ", "")
    assert column_title("copy-prior") == "copy-prior"


def test_bleu_from_counts_matches_pycocoevalcap():
    from progemu_lite.evaluation.text_metrics import corpus_text_metrics

    refs = [
        "The left pleural effusion has increased.",
        "New small right pneumothorax. No consolidation.",
        "Stable cardiomegaly.",
    ]
    cands = ["The left effusion has increased.", "Small right pneumothorax is new.", ""]
    expected = corpus_text_metrics(cands, refs, include_meteor=False)["bleu_3"]
    assert corpus_bleu_from_stats(bleu_stats(cands, refs)) == pytest.approx(expected, abs=1e-9)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("phantom")
    generate(root, PhantomConfig(patients=30, pairs_per_patient=3, size=64, seed=2), progress=False)
    return root


@pytest.fixture(scope="module")
def classifier_dir(dataset, tmp_path_factory):
    folder = tmp_path_factory.mktemp("classifier")
    train_from_dataset(dataset, folder, epochs=6, max_pairs=200, progress=False)
    return folder


def read_json(path):
    return json.loads(path.read_text())


@pytest.mark.slow
def test_evaluate_command_on_the_baselines(dataset, classifier_dir, tmp_path, capsys):
    out = tmp_path / "report"
    argv = [
        "evaluate",
        "--data",
        str(dataset),
        "--split",
        "all",
        "--classifier",
        str(classifier_dir),
        "--checkpoint",
        str(tmp_path / "no-such-weights"),
        "--out",
        str(out),
        "--n-boot",
        "40",
        "--max-cases",
        "40",
        "--cache-dir",
        str(tmp_path / "cache"),
        "--quiet",
    ]
    assert main(argv) == 0
    printed = capsys.readouterr()
    assert "scoring 40 cases" in printed.out
    # weights that do not exist: the model row is skipped with a clear note
    assert "model row skipped" in printed.err

    systems = ["copy-prior", "nearest-neighbour", "true-follow-up"]
    md = (out / "report.md").read_text()
    for _, header, _ in COLUMNS:
        assert header in md
    for name in systems:
        assert f"| {name} |" in md
    assert "vq-reconstruction skipped" in md and "NOT the paper's" in md

    with open(out / "report.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["system"] for r in rows] == systems
    for key, _, _ in COLUMNS:
        assert key in rows[0] and f"{key}_ci_low" in rows[0]

    report = read_json(out / "report.json")
    assert report["n_cases"] == 40
    metrics = {r["system"]: r["metrics"] for r in report["rows"]}
    for name in systems:
        for key, _, _ in COLUMNS:
            entry = metrics[name][key]
            lo, hi = entry["ci"]
            if entry["value"] is not None and lo is not None:
                assert lo - 1e-9 <= entry["value"] <= hi + 1e-9, (name, key, entry)
    truth, copy = metrics["true-follow-up"], metrics["copy-prior"]
    # the true follow-up shows the prompted change; the unchanged prior does not
    assert truth["auroc"]["value"] > copy["auroc"]["value"]
    assert truth["ssim"]["value"] == pytest.approx(1.0)
    assert truth["frechet_distance"]["value"] == pytest.approx(0.0, abs=1e-6)
    assert truth["finding_f1"]["value"] == pytest.approx(1.0)
    assert truth["bleu_3"]["value"] == pytest.approx(1.0, abs=1e-6)
    assert copy["change_ratio"]["value"] is None  # nothing changed
    assert truth["change_ratio"]["value"] > 1.0
    # the model issue's quality checks: the true interpretation states the prompted change and
    # the unchanged findings; the copy-prior row echoes the prompt, so it reports none of those
    assert truth["prompt_named"]["value"] > 0.95
    assert truth["stable_reported"]["value"] > 0.95
    assert copy["stable_reported"]["value"] == 0.0
    assert "## Quality checks" in md and "Stable findings reported" in md
    # ... and per finding type: every stable finding is counted once, under its type
    by_finding = truth["stable_by_finding"]
    assert sum(e["annotated"] for e in by_finding.values()) == truth["counts"]["stable_findings"]
    assert all(e["reported"] == 0 for e in copy["stable_by_finding"].values())
    assert by_finding.keys() == copy["stable_by_finding"].keys()
    first = sorted(by_finding)[0]
    assert f"| copy-prior | 0% (0/{by_finding[first]['annotated']})" in md
    # ... and how the unreported ones were missed: the echo never names them
    stable_total = copy["counts"]["stable_findings"]
    assert copy["stable_missed"]["not mentioned"] + copy["stable_missed"]["denied"] == stable_total
    missed_by_truth = sum(truth["stable_missed"].values())
    reported_by_truth = sum(e["reported"] for e in by_finding.values())
    assert missed_by_truth == stable_total - reported_by_truth
    assert "| System | not mentioned | denied | misstated |" in md
    for finding, sizes in truth["stable_by_severity"].items():
        assert sum(e["annotated"] for e in sizes.values()) == by_finding[finding]["annotated"]
        assert sum(e["reported"] for e in sizes.values()) == by_finding[finding]["reported"]
    assert "| System | Finding | Reported, by severity |" in md
    by_type = copy["stable_missed_by_finding"]
    assert sum(sum(kinds.values()) for kinds in by_type.values()) == stable_total
    assert {"prompt_named", "stable_reported"} <= set(rows[0])
    png = (out / "examples.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"

    # cases.csv has one line per system and case, and `compare` pairs two runs over them
    with open(out / "cases.csv", newline="") as f:
        per_case = list(csv.DictReader(f))
    assert len(per_case) == 40 * len(systems)
    truth_lines = [r for r in per_case if r["system"] == "true-follow-up"]
    assert sum(int(r["stable_annotated"]) for r in truth_lines) == stable_total
    capsys.readouterr()
    argv = ["compare", str(out), str(out), "--system-a", "copy-prior", "--n-boot", "200"]
    assert main([*argv, "--system-b", "true-follow-up"]) == 0
    printed = capsys.readouterr().out
    assert "40 cases scored by both" in printed
    line = next(x for x in printed.splitlines() if x.startswith("stable findings reported"))
    low = float(line.split("[")[1].split(",")[0])
    assert f"A 0.000, B {truth['stable_reported']['value']:.3f}" in line and low > 0.5
    assert main([*argv, "--system-b", "copy-prior"]) == 0  # a run against itself: no difference
    assert "B - A +0.000 [+0.000, +0.000]" in capsys.readouterr().out
    # bad input: a folder without cases.csv, a system the report lacks, no model row to default to
    assert main(["compare", str(tmp_path), str(out)]) == 2
    assert "cases.csv not found" in capsys.readouterr().err
    assert main([*argv, "--system-b", "model:nothing"]) == 2
    assert "has no system 'model:nothing'" in capsys.readouterr().err
    assert main(["compare", str(out), str(out)]) == 2
    assert "name the system to compare" in capsys.readouterr().err


class TextSystem:
    """A system that answers every case with a fixed text and the prior image."""

    cache_key = None

    def __init__(self, name, text):
        self.name = name
        self.text = text

    def generate(self, cases):
        return [B.Output(c.prior.copy(), self.text) for c in cases]


@pytest.mark.slow
def test_bad_input_is_counted_not_fatal(dataset, classifier_dir, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(dataset, root)
    pairs = sorted(root.rglob("sim*_0*.json"))[:3]
    broken = read_json(pairs[0])
    broken["expert-annotation"] = [{"finding": "unicorn", "direction": "sideways"}]
    pairs[0].write_text(json.dumps(broken))
    missing = read_json(pairs[1])
    del missing["expert-annotation"]
    pairs[1].write_text(json.dumps(missing))
    pairs[2].write_text("{not json")

    case_set = load_cases(root, None, limit=12, progress=False)
    assert case_set.counts["malformed_annotation"] == 1
    assert case_set.counts["missing_annotation"] == 1
    assert case_set.counts["unreadable_pairs"] == 1
    systems = [TextSystem("empty", ""), TextSystem("german", "Der Erguss ist größer geworden.")]
    result = evaluate(
        case_set,
        systems,
        AlignmentClassifier.load(classifier_dir),
        out=tmp_path / "out",
        n_boot=10,
        include_meteor=False,
        progress=False,
    )
    counts = {r["system"]: r["metrics"]["counts"] for r in result["rows"]}
    assert counts["empty"]["empty_text"] == 12
    assert counts["german"]["no_findings_text"] == 10  # counted over the 10 scorable cases
    for name in ("empty", "german"):
        assert counts[name]["unscorable_annotation"] == 2  # malformed + missing
        assert result["rows"][0]["metrics"]["finding_f1"]["value"] == 0.0
    assert "malformed annotations 1" in (tmp_path / "out" / "report.md").read_text()


@pytest.mark.slow
def test_vq_reconstruction_and_generation_cache(dataset, classifier_dir, tmp_path):
    from progemu_lite.tokenization.vq import build_vq, save_vq

    save_vq(build_vq("tiny", seed=0), tmp_path / "vq")
    case_set = load_cases(dataset, "all", limit=8, progress=False)
    classifier = AlignmentClassifier.load(classifier_dir)
    kwargs = dict(cache_dir=tmp_path / "cache", n_boot=5, include_meteor=False, progress=False)
    first = evaluate(case_set, [B.VQReconstruction(tmp_path / "vq")], classifier, **kwargs)
    again = evaluate(case_set, [B.VQReconstruction(tmp_path / "vq")], classifier, **kwargs)
    assert first["rows"][0]["timing"]["cached"] is False
    assert again["rows"][0]["timing"]["cached"] is True
    assert first["rows"][0]["metrics"]["ssim"] == again["rows"][0]["metrics"]["ssim"]
    assert first["rows"][0]["metrics"]["ssim"]["value"] < 1.0  # a random VQ loses detail


def test_command_errors(tmp_path, capsys):
    assert main(["evaluate", "--data", str(tmp_path / "nowhere"), "--quiet"]) == 2
    assert "no dataset folder" in capsys.readouterr().err
    assert main(["evaluate", "--data", str(tmp_path), "--baselines", "oracle", "--quiet"]) == 2
    assert "unknown baseline" in capsys.readouterr().err
    assert main(["evaluate", "--data", str(tmp_path), "--quiet"]) == 2
    assert "no pairs of split 'test'" in capsys.readouterr().err


@pytest.mark.slow
def test_model_row_from_a_checkpoint_folder_is_cached(dataset, classifier_dir, tmp_path):
    from progemu_lite.model.pipeline import build_random

    build_random("tiny", seed=0).save_pretrained(tmp_path / "model")
    argv = [
        "evaluate",
        "--data",
        str(dataset),
        "--split",
        "all",
        "--checkpoint",
        str(tmp_path / "model"),
        "--baselines",
        "copy-prior",
        "--classifier",
        str(classifier_dir),
        "--max-cases",
        "3",
        "--n-boot",
        "5",
        "--no-meteor",
        "--cache-dir",
        str(tmp_path / "cache"),
        "--quiet",
    ]
    assert main([*argv, "--out", str(tmp_path / "first")]) == 0
    assert main([*argv, "--out", str(tmp_path / "again")]) == 0
    first = read_json(tmp_path / "first" / "report.json")
    again = read_json(tmp_path / "again" / "report.json")
    model = f"model:{tmp_path / 'model'}"
    assert [r["system"] for r in first["rows"]] == [model, "copy-prior"]
    assert first["rows"][0]["timing"]["cached"] is False
    assert again["rows"][0]["timing"]["cached"] is True
    assert first["rows"][0]["metrics"]["ssim"] == again["rows"][0]["metrics"]["ssim"]
    # other sampling settings: their own row name and their own cache entry
    assert main([*argv, "--temperature", "0.5", "--out", str(tmp_path / "cool")]) == 0
    cool = read_json(tmp_path / "cool" / "report.json")
    assert cool["rows"][0]["system"] == f"{model} (temperature=0.5)"
    assert cool["rows"][0]["timing"]["cached"] is False
    # reading given follow-ups: own rows and cache entries; the images are the VQ round trips
    # of the true follow-ups (so the vq-reconstruction row's image scores) or of the priors
    read_argv = [*argv, "--text-temperature", "0", "--read-follow-up"]
    assert main([*read_argv, "true", "--out", str(tmp_path / "true")]) == 0
    assert main([*read_argv, "prior", "--out", str(tmp_path / "prior")]) == 0
    true_row = read_json(tmp_path / "true" / "report.json")["rows"][0]
    prior_row = read_json(tmp_path / "prior" / "report.json")["rows"][0]
    assert true_row["system"] == f"{model} (reads the true follow-up, text_temperature=0.0)"
    assert prior_row["system"] == f"{model} (reads the unchanged prior, text_temperature=0.0)"
    assert true_row["timing"]["cached"] is False and prior_row["timing"]["cached"] is False
    assert true_row["metrics"]["ssim"] != first["rows"][0]["metrics"]["ssim"]
    assert prior_row["metrics"]["ssim"] != true_row["metrics"]["ssim"]
    for flag in ("--guidance-scale", "--text-guidance-scale"):
        assert main([*read_argv, "true", flag, "3", "--out", str(tmp_path / "x")]) == 2
        assert not (tmp_path / "x").exists()
