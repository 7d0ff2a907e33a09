"""Assignment 4 (``auditing_counterfactuals``): the shipped cases of the lite model's own
generations, the labelling rule, the deterministic choice of the 12 cases, and generation with a
real (tiny, random) ProgEmu pipeline. The nbgrader cycle is in tests/test_exercises.py."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from progemu_lite.evaluation.finding_scores import score_case
from progemu_lite.exercises import (
    AUDIT_CASES,
    AUDIT_DATA,
    AUDIT_DATASET,
    AUDIT_FORMAT,
    AUDIT_INDEX,
    AUDIT_LABELS,
    AUDIT_MIN_PER_LABEL,
    AUDIT_PRECEDENCE,
    answer_key,
    audit_cases,
    audit_data,
    audit_label,
    audit_source_cases,
    audit_verdict,
    generate_audit_pool,
    load_audit_data,
    select_audit_cases,
    write_audit_data,
)


def grader_label(text: str, annotation) -> str:
    """The rule of the assignment, written out from score_case's fields alone (not via the
    library's audit_label), so that the shipped key, the library and the grader cannot drift."""
    result = score_case(text, annotation)
    assert result.status == "scored", result.reason
    if result.hallucinated:
        return "hallucinated"
    if result.omitted:
        return "omitted"
    for entry, claim in result.matched:
        stated = entry.severity_after not in (None, "absent") and claim.severity_after
        if stated and claim.severity_after != entry.severity_after:
            return "wrong_severity"
    return "consistent"


EFFUSION = {
    "finding": "pleural_effusion",
    "location": "left",
    "direction": "worse",
    "severity_before": "small",
    "severity_after": "moderate",
}
STABLE_HEART = {
    "finding": "cardiomegaly",
    "location": None,
    "direction": "stable",
    "severity_before": "mild",
    "severity_after": "mild",
}


# -- the shipped cases ---------------------------------------------------------------------------
def test_shipped_key_is_what_the_grader_says_on_the_shipped_texts():
    cases = audit_cases()
    assert len(cases) == AUDIT_CASES
    assert [c.case_id for c in cases] == [f"audit{i:02d}" for i in range(1, 13)]
    for case in cases:
        assert case.label == grader_label(case.generated, case.annotation), case
        assert case.label == audit_label(case.generated, case.annotation)
        assert "label" not in case.for_student() and "reason" not in case.for_student()
    assert answer_key(cases) == {c.case_id: c.label for c in cases}


def test_shipped_cases_record_their_provenance_and_images():
    data = load_audit_data()
    assert data["format"] == AUDIT_FORMAT
    assert data["dataset"] == {**AUDIT_DATASET, "split": "test"}
    sha = data["weights"]["sha256"]["model.safetensors"]
    assert len(sha) == 64 and int(sha, 16) >= 0
    first_seed = data["generation"]["first_seed"]
    pool_size = data["pool"]["size"]
    for case, loaded in zip(data["cases"], audit_cases(), strict=True):
        # Each case was sampled alone with the seed of its place in the pool.
        assert case["sampling"]["seed"] == first_seed + case["pool_index"] == loaded.seed
        assert 0 <= case["pool_index"] < pool_size
        assert {"temperature", "top_k", "max_text_tokens"} <= set(case["sampling"])
        assert case["pair_id"].startswith("sim")
        prior, counterfactual = loaded.images()
        assert prior.shape == counterfactual.shape == (128, 128) and prior.dtype == np.uint8
        for role, path in (
            ("prior", loaded.prior_path),
            ("counterfactual", loaded.counterfactual_path),
        ):
            assert hashlib.sha256(path.read_bytes()).hexdigest() == case["image_sha256"][role]
    sheet = audit_cases()[0].side_by_side(scale=2)
    assert sheet.size == (2 * (128 + 4 + 128), 2 * 128)


def test_shipped_selection_follows_the_rule():
    data = load_audit_data()
    cases = data["cases"]
    pool = data["pool"]
    assert [c["pool_index"] for c in cases] == sorted(c["pool_index"] for c in cases)
    counts = {label: sum(c["label"] == label for c in cases) for label in AUDIT_LABELS}
    for label in AUDIT_LABELS:
        assert counts[label] >= min(pool["labels"][label], AUDIT_MIN_PER_LABEL), label
    under = [label for label in AUDIT_LABELS if pool["labels"][label] < AUDIT_MIN_PER_LABEL]
    assert pool["labels_under_minimum"] == under
    assert sum(pool["labels"].values()) == pool["size"] >= AUDIT_CASES
    for label in under:
        assert label in pool["note"]


# -- the labelling rule --------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "label", "kinds"),
    [
        (
            "Increased left pleural effusion, now moderate. Stable mild cardiomegaly.",
            "consistent",
            [],
        ),
        (
            "Increased left pleural effusion, now large. Stable mild cardiomegaly.",
            "wrong_severity",
            ["wrong_severity"],
        ),
        ("Increased left pleural effusion, now large.", "omitted", ["omitted", "wrong_severity"]),
        (
            "Increased left pleural effusion, now large. New right pneumothorax.",
            "hallucinated",
            ["hallucinated", "omitted", "wrong_severity"],
        ),
        ("", "omitted", ["omitted"]),
    ],
)
def test_label_precedence_and_every_issue_listed(text, label, kinds):
    verdict = audit_verdict(text, [EFFUSION, STABLE_HEART])
    assert verdict.label == label == grader_label(text, [EFFUSION, STABLE_HEART])
    assert list(verdict.issues) == kinds
    assert list(verdict.issues) == [k for k in AUDIT_PRECEDENCE if k in verdict.issues]
    if kinds:
        assert kinds[0] in verdict.reason


def test_unscorable_annotation_is_a_clear_error():
    with pytest.raises(ValueError, match="annotation cannot be scored"):
        audit_label("Stable.", None)


# -- choosing the 12 -----------------------------------------------------------------------------
def test_selection_takes_three_of_each_label_in_pool_order():
    labels = ["omitted"] * 10 + ["hallucinated"] * 5 + ["consistent"] * 4 + ["wrong_severity"] * 3
    chosen = select_audit_cases(labels)
    assert chosen == [0, 1, 2, 10, 11, 12, 15, 16, 17, 19, 20, 21]
    assert select_audit_cases(labels) == chosen  # deterministic


def test_selection_fills_scarce_labels_with_the_earliest_unused():
    labels = ["omitted"] * 8 + ["wrong_severity"] + ["hallucinated"] * 8 + ["consistent"] * 2
    chosen = select_audit_cases(labels)
    picked = [labels[i] for i in chosen]
    assert picked.count("wrong_severity") == 1  # all the pool has
    assert picked.count("consistent") == 2
    # 3 omitted + 3 hallucinated by quota, then the earliest unused (omitted 3..5) fill 3 slots.
    assert chosen == [0, 1, 2, 3, 4, 5, 8, 9, 10, 11, 17, 18]
    assert len(chosen) == 12 == len(set(chosen))


def test_selection_rejects_bad_pools():
    with pytest.raises(ValueError, match="cannot choose 12 cases from a pool of 5"):
        select_audit_cases(["omitted"] * 5)
    with pytest.raises(ValueError, match="unknown labels"):
        select_audit_cases(["fine"] * 12)


# -- generation with a real pipeline (tiny, random weights) ----------------------------------------
@pytest.fixture(scope="module")
def tiny_pool():
    import torch

    from progemu_lite.model.pipeline import build_random

    torch.set_num_threads(1)
    pipe = build_random("tiny", seed=0)
    cases = audit_source_cases(14)
    pool = generate_audit_pool(pipe, cases, seed=5, chunk=7, max_text_tokens=24)
    return pipe, cases, pool


@pytest.mark.slow
def test_pool_is_generated_seeded_and_labelled_by_the_grader(tiny_pool):
    pipe, cases, pool = tiny_pool
    assert [c.pool_index for c in pool] == list(range(14))
    for cand, case in zip(pool, cases, strict=True):
        assert cand.case is case and cand.result.prompt == case.prompt
        assert cand.result.settings["seed"] == 5 + cand.pool_index
        assert cand.label == grader_label(cand.result.interpretation, case.annotation)
    # A case generated alone with its recorded settings gives the same tokens.
    again = pipe(cases[9].prior, cases[9].prompt, **load_settings(pool[9]))
    assert again.interpretation == pool[9].result.interpretation
    assert np.array_equal(again.codes, pool[9].result.codes)


def load_settings(candidate):
    from progemu_lite.exercises import sampling_of

    return sampling_of(candidate.result)


def test_source_cases_are_the_held_out_test_split():
    from progemu_lite.phantom.dataset import patient_split

    cases = audit_source_cases(4)
    assert [c.pair_id for c in cases] == [c.pair_id for c in audit_source_cases(4)]
    for case in cases:
        index = int(case.pair_id[3:9])
        assert patient_split(AUDIT_DATASET["seed"], index) == "test"
        assert case.prior.shape == (128, 128) and case.annotation and case.prompt
    with pytest.raises(ValueError, match="only 3 pairs"):
        audit_source_cases(4, dataset={**AUDIT_DATASET, "patients": 1})


@pytest.mark.slow
def test_pool_stops_once_every_label_has_enough(tiny_pool):
    pipe, cases, _ = tiny_pool
    pool = generate_audit_pool(pipe, cases[:6], seed=5, enough=0, chunk=4, max_text_tokens=24)
    assert len(pool) == 4  # the first chunk already satisfies "at least 0 of each"


@pytest.mark.slow
def test_written_folder_loads_back_and_is_replaced_atomically(tiny_pool, tmp_path):
    pipe, _, pool = tiny_pool
    index, files = audit_data(pool, info={"weights": {"name": "tiny-random"}})
    folder = write_audit_data(tmp_path / "audit", index, files)
    loaded = audit_cases(folder)
    assert len(loaded) == 12
    chosen = select_audit_cases([c.label for c in pool])
    assert [c.pair_id for c in loaded] == [pool[k].case.pair_id for k in chosen]
    for case in loaded:
        assert case.label == grader_label(case.generated, case.annotation)
        prior, counterfactual = case.images()
        assert prior.shape == counterfactual.shape == (64, 64)  # the tiny preset's size
    # The shipped prior PNG and the recorded settings reproduce a case.
    again = pipe(loaded[0].prior_path, loaded[0].prompt, **loaded[0].sampling)
    assert again.interpretation == loaded[0].generated
    assert np.array_equal(again.image, loaded[0].images()[1])
    before = (folder / AUDIT_INDEX).read_text()
    # A write that fails half-way (a PNG name that cannot be a file) leaves the old folder as is.
    with pytest.raises(OSError):
        write_audit_data(folder, index, {**files, "sub/x.png": b"png"})
    assert (folder / AUDIT_INDEX).read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["audit"]  # no temporary left
    # Rewriting replaces the folder as a whole.
    index2 = json.loads(before) | {"weights": {"name": "again"}}
    write_audit_data(folder, index2, files)
    assert load_audit_data(folder)["weights"] == {"name": "again"}


def test_refuses_to_replace_a_foreign_folder_and_bad_data(tmp_path):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="holds no cases.json"):
        write_audit_data(foreign, {"format": AUDIT_FORMAT, "cases": []}, {})
    assert (foreign / "notes.txt").read_text() == "keep me"
    with pytest.raises(FileNotFoundError, match="regenerate-audit"):
        load_audit_data(tmp_path / "nothing")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / AUDIT_INDEX).write_text(json.dumps({"format": "other", "cases": []}))
    with pytest.raises(ValueError, match="format 'other'"):
        load_audit_data(bad)
    shipped = json.loads((AUDIT_DATA / AUDIT_INDEX).read_text())
    shipped["cases"][0]["label"] = "fine"
    (bad / AUDIT_INDEX).write_text(json.dumps(shipped))
    with pytest.raises(ValueError, match="unknown label 'fine'"):
        load_audit_data(bad)


def test_command_line_reports_bad_input_in_one_line(tmp_path, capsys):
    from progemu_lite.exercises import main

    assert main(["regenerate-audit", "--weights", str(tmp_path / "none"), "--pool", "5"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err and "smaller than the 12" in err
    assert main(["regenerate-audit", "--weights", str(tmp_path / "none"), "--no-progress"]) == 2
    assert "no checkpoint folder" in capsys.readouterr().err
    assert not (tmp_path / "none").exists()


@pytest.mark.slow
def test_command_line_writes_greedy_text_and_records_a_command_that_reproduces_it(tmp_path):
    import shlex

    from progemu_lite.exercises import AUDIT_COMMAND, main
    from progemu_lite.model.pipeline import build_random

    weights = build_random("tiny", seed=0).save_pretrained(tmp_path / "tiny")
    argv = ["regenerate-audit", "--weights", str(weights), "--pool", "12", "--seed", "3"]
    assert (
        main([*argv, "--max-text-tokens", "16", "--out", str(tmp_path / "a"), "--no-progress"]) == 0
    )
    first = load_audit_data(tmp_path / "a")
    # Without --text-temperature the interpretation is greedy (the model card's setting) while
    # the image keeps the pipeline's sampling.
    assert first["generation"]["text_temperature"] == 0.0
    assert all(case["sampling"]["text_temperature"] == 0.0 for case in first["cases"])
    assert all(case["sampling"]["temperature"] == 1.0 for case in first["cases"])
    # The recorded command, run again, writes the same cases.
    command = first["command"]
    assert command.startswith(AUDIT_COMMAND + " ")
    again = shlex.split(command)[3:]
    assert main([*again, "--out", str(tmp_path / "b"), "--no-progress"]) == 0
    second = load_audit_data(tmp_path / "b")
    assert second["cases"] == first["cases"] and second["command"] == command


def test_no_command_is_recorded_for_settings_the_command_line_cannot_take():
    from progemu_lite.exercises import audit_command

    assert audit_command("lite", pool=12, seed=3, text_temperature=0.0) == (
        "python -m progemu_lite.exercises regenerate-audit --weights lite --pool 12 --seed 3 "
        "--text-temperature 0.0"
    )
    assert audit_command("my weights", pool=12, seed=3).endswith(
        "--weights 'my weights' --pool 12 --seed 3"
    )
    assert audit_command("lite", pool=12, seed=3, guidance_scale=1.5) is None
