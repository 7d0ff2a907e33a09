"""`train --reading-loss-weight`: the auxiliary probe that names the prior's findings."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from test_model_train import save_random_vq

from progemu_lite.cli import main as cli_main
from progemu_lite.model.pipeline import ProgEmuPipeline, build_random
from progemu_lite.model.reading_loss import (
    UNKNOWN_LABEL,
    FinalHiddenStates,
    ReadingHead,
    prior_end_positions,
    prior_label_vector,
    reading_loss,
)
from progemu_lite.model.train import TrainConfig, train
from progemu_lite.phantom.findings import CHEXPERT_LABELS
from progemu_lite.tokenization.sequence import SequenceBuilder


@pytest.fixture(scope="module")
def tiny():
    return build_random("tiny", seed=0)


def test_prior_labels_keep_present_and_absent_and_drop_the_rest():
    labels = [1, 0, -100, -1, 1, 0, 0, -100, 0, 1, 1, -100, -100, -100]
    vector = prior_label_vector(labels)
    assert vector.tolist() == [1, 0, -100, -100, 1, 0, 0, -100, 0, 1, 1, -100, -100, -100]
    # a record without reference-diseases (real ICG-CXR trees may lack them) scores nothing
    assert (prior_label_vector(None) == UNKNOWN_LABEL).all()
    assert len(vector) == len(CHEXPERT_LABELS)


@pytest.fixture(scope="module")
def two_rows(tiny):
    """A builder and a batch of two training sequences: one with a prior, one the null
    condition (no prior image); and the first row's ids."""
    builder = SequenceBuilder(tiny.tokenizer)
    codes = np.arange(64).reshape(8, 8) % 32
    with_prior, _ = builder.training_ids(codes, "New left effusion.", codes, "New effusion.")
    null, _ = builder.training_ids(None, "", codes, "New effusion.")
    return builder, builder.collate([(with_prior, with_prior), (null, null)]), with_prior


def test_the_probe_reads_at_the_prior_image_end(two_rows):
    builder, batch, with_prior = two_rows
    positions = prior_end_positions(batch["input_ids"], builder.ids.eoi).tolist()
    # row 0: BOS, <|image start|>, the "8*8" spelling, <|image token|>, 8 rows of 8 codes + EOL,
    # EOF, then <|image end|>; row 1 (the null condition) has no prior to read
    assert with_prior[positions[0]] == builder.ids.eoi
    assert list(with_prior[: positions[0]]).count(builder.ids.eol) == 8
    assert positions[1] == -1


def test_the_loss_scores_known_labels_of_rows_with_a_prior(tiny, two_rows):
    builder, batch, _ = two_rows
    model = tiny.model.eval()
    head = ReadingHead(model.config.text_config.hidden_size)
    states = FinalHiddenStates(model)
    try:
        with torch.no_grad():
            logits = model(input_ids=batch["input_ids"]).logits
        hidden = states.take()
    finally:
        states.remove()
    # the hooked states are the ones the LM head turns into logits
    assert torch.allclose(model.lm_head(hidden), logits, atol=1e-5)
    known = torch.tensor(np.stack([prior_label_vector([1, 0] + [-100] * 12)] * 2))
    loss = reading_loss(head, hidden, batch["input_ids"], known, builder.ids.eoi)
    position = int(prior_end_positions(batch["input_ids"], builder.ids.eoi)[0])
    first_two = head(hidden[0, position])[:2]
    expected = torch.nn.functional.binary_cross_entropy_with_logits(
        first_two, torch.tensor([1.0, 0.0])
    )
    assert torch.allclose(loss, expected)  # row 1 (no prior) and the unknown labels left out
    unknown = torch.full_like(known, UNKNOWN_LABEL)
    empty = reading_loss(head, hidden, batch["input_ids"], unknown, builder.ids.eoi)
    assert float(empty.detach()) == 0.0 and empty.requires_grad  # backward() still works


@pytest.mark.slow
def test_training_with_the_reading_loss_learns_it_resumes_and_ships_plain_emu3(tmp_path):
    data = tmp_path / "data"
    args = ["phantom", "--patients", "10", "--pairs-per-patient", "2", "--size", "64"]
    assert cli_main([*args, "--out", str(data), "--seed", "4", "--quiet"]) == 0
    vq = save_random_vq(tmp_path / "vq", "tiny")
    settings = dict(
        data=data,
        vq=vq,
        out=tmp_path / "run",
        preset="tiny",
        steps=30,
        batch_size=4,
        eval_every=10,
        save_every=10,
        lr=2e-3,
        reading_loss_weight=1.0,
        progress=False,
    )
    first = train(TrainConfig(**settings, until=20))
    assert first.pipeline_dir is None
    state = json.loads((tmp_path / "run" / "trainer_state.json").read_text())
    assert state["run"]["reading_loss_weight"] == 1.0
    checkpoint = Path(first.checkpoints[-1])
    # the probe is part of the accelerate state (for --resume), not of the pipeline
    assert (checkpoint / "state" / "model_1.safetensors").is_file()
    result = train(TrainConfig(**settings, resume=True))
    losses = json.loads((tmp_path / "run" / "trainer_state.json").read_text())["progress"][
        "reading_losses"
    ]
    assert len(losses) == 30 and np.isfinite(losses).all()
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:3])  # the probe learns the labels
    pipeline = ProgEmuPipeline.from_pretrained(result.pipeline_dir)
    assert type(pipeline.model).__name__ == "Emu3ForConditionalGeneration"
    with pytest.raises(ValueError, match="reading_loss_weight"):
        train(TrainConfig(**{**settings, "reading_loss_weight": 0.5}, resume=True))


def test_a_negative_reading_loss_weight_is_refused(tmp_path, capsys):
    argv = ["train", "--data", str(tmp_path), "--vq", str(tmp_path), "--out", str(tmp_path / "r")]
    assert cli_main([*argv, "--reading-loss-weight", "-1"]) != 0
    assert "--reading-loss-weight must be zero (off) or positive" in capsys.readouterr().err
