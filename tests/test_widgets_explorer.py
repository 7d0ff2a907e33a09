"""Lessons 4, 5 and 9: the course model, the token-stream views, the stepper and the explorer.

Everything runs on the real tiny ProgEmu pipeline (random weights, transformers' Emu3 classes),
headless: widgets are built, values set and buttons clicked as a student would.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
import torch

from progemu_lite.evaluation.labeler import label_report
from progemu_lite.model.generation import GridConstraint
from progemu_lite.widgets import (
    CounterfactualExplorer,
    GenerationStepper,
    UntrainedWeightsWarning,
    allowed_probability,
    course_pipeline,
    full_sequence,
    kind_counts,
    lite_weights_shipped,
    mask_positions,
    mask_table,
    next_token_predictions,
    progression_prompt,
    read_upload,
    run_full_model,
    sample_dicom_path,
    simulated_priors,
    text_probability_html,
    token_stream_figure,
    token_stream_html,
)
from progemu_lite.widgets.models import UNTRAINED_NOTICE, FullModelPlan, full_model_plan
from progemu_lite.widgets.tokens import token_kinds

PROMPT = "The right pleural effusion is new and moderate."


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: one thread is faster on a busy 2-core machine
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UntrainedWeightsWarning)
        return course_pipeline(fast=True)


@pytest.fixture(scope="module")
def result(model):
    prior = simulated_priors(1, model.pipe.image_size)[0].image
    return model.pipe(prior, PROMPT, seed=0, max_text_tokens=6)


# -- the course model ---------------------------------------------------------------------------


def test_untrained_model_says_so_everywhere(model):
    with pytest.warns(UntrainedWeightsWarning, match="random weights"):
        again = course_pipeline(fast=True)
    assert again.pipe is model.pipe  # built once per process, shared by the widgets
    assert not model.trained and model.notice.startswith(UNTRAINED_NOTICE)
    assert "UNTRAINED WEIGHTS" in model._repr_html_() and 'role="alert"' in model.notice_html()
    assert "RANDOM (untrained)" in repr(model)
    assert model.pipe.preset == "tiny"
    # Fast mode says why it is random without claiming the trained weights are missing.
    assert "fast mode" in model.notice and "not available" not in model.notice
    assert "torch thread" in model.threads


def test_lite_is_the_trained_model_when_shipped_else_random_with_the_reason(model):
    if lite_weights_shipped():
        with warnings.catch_warnings():
            warnings.simplefilter("error", UntrainedWeightsWarning)
            lite = course_pipeline("lite")
        assert lite.trained and lite.notice == "" and lite.pipe.preset == "lite"
        return
    with pytest.warns(UntrainedWeightsWarning):
        lite = course_pipeline("lite")
    assert not lite.trained and lite.pipe.preset == "lite"
    assert "weights are not available here" in lite.notice and "not shipped" in lite.notice


def test_trained_checkpoint_is_used_without_a_notice(model, tmp_path):
    folder = model.pipe.save_pretrained(tmp_path / "ckpt")
    with warnings.catch_warnings():
        warnings.simplefilter("error", UntrainedWeightsWarning)
        loaded = course_pipeline(str(folder))
    assert loaded.trained and loaded.notice == "" and loaded.notice_html() == ""


def test_a_corrupt_checkpoint_is_an_error_not_a_fallback(model, tmp_path):
    folder = model.pipe.save_pretrained(tmp_path / "ckpt")
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ValueError, match="cannot read the weights"):
        course_pipeline(str(folder))


# -- lesson 4: the token stream -----------------------------------------------------------------


def test_token_kinds_follow_the_layout(model, result):
    pipe = model.pipe
    h, w = pipe.grid
    sequence = full_sequence(pipe, result)
    kinds = token_kinds(pipe.builder, sequence)
    counts = kind_counts(pipe.builder, sequence)
    assert counts["prior image"] == counts["follow-up image"] == h * w
    assert counts["line end"] == 2 * (h + 1)  # h EOL + EOF per image
    assert counts["control"] == 2  # BOS and EOS
    assert kinds[0] == "control" and kinds[-1] == "control"
    assert counts["interpretation"] == len(result.text_probabilities)
    prompt_ids = pipe.builder.encode_text(result.prompt)
    assert counts["prompt"] == len(prompt_ids)
    # The prompt sits between the two images, the interpretation after the second.
    first_prompt = kinds.index("prompt")
    assert kinds.index("prior image") < first_prompt < kinds.index("follow-up image")
    assert kinds.index("interpretation") > max(
        i for i, k in enumerate(kinds) if k == "follow-up image"
    )


def test_token_stream_renderings(model, result):
    sequence = full_sequence(model.pipe, result)
    page = token_stream_html(model.pipe.builder, sequence, result.token_probabilities)
    assert page.count("<span title=") == len(sequence)
    assert "prior image" in page and "interpretation" in page and "p = " in page
    figure = token_stream_figure(model.pipe.builder, sequence)
    assert figure.png.startswith(b"\x89PNG") and "token stream" in figure.alt
    assert f"{model.pipe.grid[0] * model.pipe.grid[1]} prior image" in figure.alt


def test_mask_positions_read_the_decoders_table(model):
    positions = mask_positions(model.pipe, max_text_tokens=10)
    ids = model.pipe.builder.ids
    by_label = {p.label: p for p in positions}
    assert by_label["first token of the image"].allowed == ids.codebook_size
    assert by_label["end of row 1"].ranges == str(ids.eol)
    assert by_label["after the last row"].ranges == str(ids.eof)
    assert by_label["after EOF"].ranges == str(ids.eoi)
    assert by_label["first interpretation token"].allowed == ids.text_vocab_size
    assert by_label["later in the interpretation"].allowed == ids.text_vocab_size + 1
    assert by_label["text limit reached"].ranges == str(ids.eos)
    # Same answer as the decoder's own constraint at that offset.
    constraint = GridConstraint(
        ids, model.pipe.grid, model.pipe.model.config.text_config.vocab_size
    )
    scores = torch.zeros(1, constraint.allowed.shape[1])
    masked = constraint.mask(scores, torch.tensor([model.pipe.grid[1] + 1]))
    assert torch.isfinite(masked).sum().item() == 1
    assert "EOL (end of row)" in mask_table(positions)


def test_next_token_predictions_respect_the_grid(model, result):
    sequence = full_sequence(model.pipe, result)
    prefix = sequence[: len(sequence) - len(result.token_ids)]
    predictions = next_token_predictions(model.pipe, prefix, k=5)
    assert len(predictions["raw"]) == len(predictions["constrained"]) == 5
    assert all(token.startswith("<|visual token") for token, _ in predictions["constrained"])
    # Masking renormalises over fewer tokens: the constrained top token is at least as likely.
    assert predictions["constrained"][0][1] >= max(p for _, p in predictions["raw"]) - 1e-6


def test_allowed_probability_is_the_raw_mass_on_visual_tokens(model, result):
    sequence = full_sequence(model.pipe, result)
    prefix = sequence[: len(sequence) - len(result.token_ids)]
    raw, uniform = allowed_probability(model.pipe, prefix)
    ids = model.pipe.builder.ids
    assert uniform == pytest.approx(
        ids.codebook_size / model.pipe.model.config.text_config.vocab_size
    )
    # Recomputed by hand from the network's logits over the visual-token id range.
    with torch.inference_mode():
        logits = model.pipe.model(input_ids=torch.as_tensor(prefix)[None]).logits[0, -1].float()
    visual = slice(ids.visual_offset, ids.visual_offset + ids.codebook_size)
    assert raw == pytest.approx(float(torch.softmax(logits, -1)[visual].sum()), rel=1e-4)
    assert 0.0 < raw < 1.0


def test_stepper_reveals_one_token_per_click(model):
    prior = simulated_priors(1, model.pipe.image_size)[0].image
    stepper = GenerationStepper(model, prior, PROMPT, seed=1, max_text_tokens=4)
    h, w = model.pipe.grid
    first = stepper.grid_panel.image()
    assert (first == 255).all()  # nothing generated yet: a white grid
    stepper.step_button.click()
    assert stepper.position == 1 and "Token 1 of" in stepper.token_label.value
    assert "visual token" in stepper.token_label.value
    assert not (stepper.grid_panel.image() == 255).all()
    stepper.step(w)  # the rest of row 1 and its EOL
    assert stepper.kinds[stepper.position - 1] == "line end"
    assert "probability <b>1.000</b>" in stepper.token_label.value
    stepper.row_button.click()
    assert stepper.position == h * (w + 1) + 2
    decoded = stepper.image_panel.image()
    np.testing.assert_array_equal(decoded, stepper.result.image)
    stepper.step(1000)
    assert stepper.position == len(stepper.result.token_ids)
    assert (
        stepper.result.interpretation[:3] in stepper.text.value or not stepper.result.interpretation
    )
    stepper.reset_button.click()
    assert stepper.position == 0


# -- lesson 5: the explorer ---------------------------------------------------------------------


def test_prompt_comes_from_the_phantom_text_generator(model):
    priors = simulated_priors(3, 64, seed=0)
    assert len({p.image.tobytes() for p in priors}) == 3
    state = priors[0].state
    text = progression_prompt(state, "pneumothorax", "left", "new", 1)
    # The phantom paraphrases; the course labeler reads the change back out of the words.
    read = {(f.finding, f.laterality) for f in label_report(text)}
    assert ("pneumothorax", "left") in read, text
    with pytest.raises(ValueError, match="cannot make"):
        progression_prompt(state, "pneumothorax", "left", "worse", 2)


def test_explorer_generate_fills_every_panel(model):
    explorer = CounterfactualExplorer(model, patients=2, samples=2, max_text_tokens=6)
    assert "UNTRAINED WEIGHTS" in explorer.children[0].value
    explorer.finding.value = "cardiomegaly"
    assert explorer.location.options == (("(one place)", None),)
    explorer.direction.value = "new"
    if "Not possible" in explorer.status.value:  # patient 0 already has cardiomegaly
        explorer.direction.value = "resolved"
    assert "cardiomegaly" in {f.finding for f in label_report(explorer.prompt.value)}
    explorer.generate_button.click()
    assert explorer.runs == 1 and "Done: 2 sample(s)" in explorer.status.value
    assert explorer.progress.value == explorer.progress.max
    assert len(explorer.results) == 2
    first = explorer.results[0]
    np.testing.assert_array_equal(explorer.counterfactual_panel.image(), first.image)
    assert explorer.difference_panel.image().shape == (*first.image.shape, 3)
    assert "progemu-interpretation" in explorer.interpretation.value
    assert "Token probability" in explorer.interpretation.value
    assert len(explorer.samples_box.children) == 1  # sample 2 beside the main one
    # Different random draws differ; the same seed gives the same samples again.
    assert not np.array_equal(first.image, explorer.results[1].image)
    summary = explorer.samples_summary().splitlines()
    assert len(summary) == 2 + 2 and summary[0].startswith("sample 1: mean token probability")
    assert "(cardiomegaly) is claimed in" in summary[2] and summary[2].endswith("of 2 samples")
    spread = float(np.abs(first.image.astype(float) - explorer.results[1].image).mean())
    assert f"{spread:.1f} gray levels" in summary[3]
    explorer.generate_button.click()
    np.testing.assert_array_equal(explorer.results[0].image, first.image)
    explorer.seed.value = 5
    explorer.generate_button.click()
    assert not np.array_equal(explorer.results[0].image, first.image)


def test_samples_summary_counts_samples_stating_the_prompted_finding(model):
    from dataclasses import replace

    explorer = CounterfactualExplorer(model, patients=1, samples=2, max_text_tokens=4)
    with pytest.raises(ValueError, match="press Generate"):
        explorer.samples_summary()
    explorer.prompt.value = PROMPT  # a new moderate right pleural effusion
    explorer.generate_button.click()
    first, second = explorer.results
    # A claim on the prompt's side counts; a pertinent negative or the other side does not.
    texts = [
        "New moderate right pleural effusion.",
        "No pleural effusion. New left pleural effusion.",
        "Unchanged heart size.",
    ]
    explorer.results = [replace(first, interpretation=t) for t in texts]
    summary = explorer.samples_summary().splitlines()
    assert summary[0].endswith("claims: new right pleural effusion")
    assert "claims: new left pleural effusion; rules out: pleural effusion" in summary[1]
    assert summary[2].endswith("claims: no finding")
    assert (
        summary[3] == "the prompt's finding (right pleural effusion) is claimed in 1 of 3 samples"
    )


def test_explorer_settings_reach_the_pipeline(model):
    explorer = CounterfactualExplorer(model, patients=1, samples=1, max_text_tokens=4)
    explorer.temperature.value = 0.0
    explorer.top_k.value = 7
    explorer.guidance.value = 2.0
    explorer.generate_button.click()
    settings = explorer.results[0].settings
    assert settings["temperature"] == 0.0 and settings["top_k"] == 7
    assert settings["guidance_scale"] == 2.0
    greedy = explorer.results[0].image
    explorer.seed.value = 9  # greedy decoding ignores the seed
    explorer.generate_button.click()
    np.testing.assert_array_equal(explorer.results[0].image, greedy)


def test_explorer_reports_bad_input_without_a_traceback(model):
    explorer = CounterfactualExplorer(model, patients=1, samples=1, max_text_tokens=4)
    explorer.prompt.value = "   "
    explorer.generate_button.click()
    assert "Cannot generate" in explorer.status.value and "empty" in explorer.status.value
    assert explorer.runs == 0 and explorer.progress.bar_style == "danger"
    assert not explorer.generate_button.disabled


def test_upload_png_and_dicom(model):
    from PIL import Image

    explorer = CounterfactualExplorer(model, patients=1, samples=1, max_text_tokens=4)
    size = model.pipe.image_size
    buffer = io.BytesIO()
    Image.fromarray(np.tile(np.arange(200, dtype=np.uint8), (100, 1))).save(buffer, "PNG")
    explorer.load_upload("wide.png", buffer.getvalue())
    assert explorer.patient.value == -1 and explorer.prior_image().shape == (size, size)
    assert "uploaded image" in explorer.patient.label
    explorer.generate_button.click()
    np.testing.assert_array_equal(explorer.results[0].prior, explorer.prior_image())

    dicom = sample_dicom_path()
    image = read_upload(dicom.name, dicom.read_bytes(), size)
    assert image.shape == (size, size) and image.dtype == np.uint8 and image.std() > 10
    explorer.patient.value = 0  # back to a simulated patient
    assert explorer.uploaded is None

    with pytest.raises(ValueError, match="neither a DICOM file nor an image"):
        explorer.load_upload("notes.png", b"not an image at all")
    assert "Upload refused" in explorer.status.value
    with pytest.raises(ValueError, match="empty"):
        read_upload("empty.dcm", b"", size)


def test_text_probability_colours():
    from progemu_lite.widgets.models import _random_pipeline

    builder = _random_pipeline("tiny", 0).builder
    ids = builder.encode_text("No pneumothorax.")
    page = text_probability_html(builder, ids, np.linspace(0.05, 0.95, len(ids)))
    assert page.count('title="p = ') == len(ids)
    assert "lowest 0.05" in page
    with pytest.raises(ValueError, match="probabilities"):
        text_probability_html(builder, ids, [0.5])


# -- lesson 9: the full model -------------------------------------------------------------------


def test_full_model_plan_on_this_machine():
    plan = full_model_plan(max_text_tokens=16)
    assert 8e9 < plan.gpu.parameters < 9.5e9
    assert plan.cpu.weight_bytes == 2 * plan.gpu.weight_bytes  # float32 vs bf16
    assert plan.cpu.seconds_per_counterfactual > 50 * plan.gpu.seconds_per_counterfactual
    text = plan.describe()
    assert "On this CPU" in text and "On a CUDA GPU" in text
    if not torch.cuda.is_available():
        assert "skip" in text
        run = run_full_model(plan, np.zeros((512, 512), np.uint8), PROMPT)
        assert run.skipped and "no CUDA GPU" in run._repr_html_()


def test_full_model_skips_when_the_weights_are_not_available(monkeypatch, tmp_path):
    """A GPU machine without the cached weights and without network: skipped, with the reason."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("PROGEMU_HOME", str(tmp_path / "empty"))
    plan = FullModelPlan(cuda=True, device_name="test", device_memory_gib=80, cpu=None, gpu=None)
    run = run_full_model(plan, np.zeros((512, 512), np.uint8), PROMPT)
    assert run.skipped and "progemu-lite download progemu" in run.message


def test_a_missing_folder_is_an_error_not_a_fallback(tmp_path):
    with pytest.raises(FileNotFoundError):
        course_pipeline(str(tmp_path / "no-such-checkpoint"))
