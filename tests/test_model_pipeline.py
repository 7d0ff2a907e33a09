import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from progemu_lite.model.pipeline import (
    ImageConversionWarning,
    ProgEmuPipeline,
    build_random,
    load,
    prepare_image,
)

PROMPT = "The left pleural effusion becomes moderate."


@pytest.fixture(scope="module")
def pipe():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny model: one thread is faster on a busy 2-core machine
    yield build_random("tiny", seed=0)
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def checkpoint(pipe, tmp_path_factory):
    return pipe.save_pretrained(tmp_path_factory.mktemp("ckpt") / "tiny")


@pytest.fixture
def prior():
    yy, xx = np.mgrid[0:64, 0:64]
    return ((np.sin(xx / 6.0) * np.cos(yy / 9.0) + 1) * 120).astype(np.uint8)


def test_call_returns_image_text_ids_and_probabilities(pipe, prior):
    result = pipe(prior, PROMPT, seed=0, max_text_tokens=10)
    assert result.image.shape == (64, 64) and result.image.dtype == np.uint8
    assert isinstance(result.interpretation, str)
    assert result.codes.shape == (8, 8)
    assert (
        len(result.token_ids)
        == len(result.token_probabilities)
        == 8 * 9 + 2 + (len(result.text_probabilities) + 1)
    )
    assert ((result.token_probabilities > 0) & (result.token_probabilities <= 1)).all()
    assert result.token_ids[-1] == pipe.builder.ids.eos
    assert np.array_equal(result.prior, prior)
    again = pipe(prior, PROMPT, seed=0, max_text_tokens=10)
    assert np.array_equal(result.token_ids, again.token_ids)
    assert np.array_equal(result.image, again.image)


def test_interpret_reads_a_given_follow_up(pipe, prior):
    followup = np.clip(prior.astype(int) + 60, 0, 255).astype(np.uint8)
    result = pipe.interpret(prior, PROMPT, followup, max_text_tokens=10)
    assert np.array_equal(result.codes, pipe.encode_images(followup[None])[0])
    # The image is the follow-up as the model read it: its VQ round trip.
    assert np.array_equal(result.image, pipe.decode_codes(result.codes[None])[0])
    assert result.token_ids[-1] == pipe.builder.ids.eos
    assert len(result.text_probabilities) == len(result.token_ids) - 1
    assert result.interpretation == pipe.builder.decode_text(result.token_ids[:-1]).strip()
    assert result.settings["given_followup"] and result.settings["temperature"] == 0
    # Greedy by default: the same call gives the same text.
    assert pipe.interpret(prior, PROMPT, followup, max_text_tokens=10).interpretation == (
        result.interpretation
    )
    with pytest.raises(ValueError, match="one of each per case"):
        pipe.interpret_batch([prior], [PROMPT], [followup, followup])
    with pytest.raises(ValueError, match="prompt 0 is empty"):
        pipe.interpret(prior, " ", followup)
    with pytest.raises(ValueError, match="follow-up image 0 is missing"):
        pipe.interpret(prior, PROMPT, None)


def test_save_load_round_trip_gives_identical_logits(pipe, checkpoint, prior):
    loaded = ProgEmuPipeline.from_pretrained(checkpoint)
    assert loaded.preset == "tiny" and loaded.grid == (8, 8)
    info = json.loads((checkpoint / "progemu.json").read_text())
    assert info["preset"] == "tiny" and info["image_size"] == 64 and info["grid"] == [8, 8]
    assert info["versions"]["transformers"] and info["weights"] == "random"
    assert (checkpoint / "model.safetensors").is_file()
    assert not any(p.suffix in (".bin", ".pt", ".pth") for p in checkpoint.iterdir())
    codes = pipe.encode_images(prior[None])[0]
    ids, _ = pipe.builder.training_ids(codes, PROMPT, codes, "No change.")
    x = torch.as_tensor(ids)[None]
    with torch.no_grad():
        assert torch.equal(pipe.model(input_ids=x).logits, loaded.model(input_ids=x).logits)
    assert np.array_equal(
        pipe(prior, PROMPT, temperature=0, max_text_tokens=6).token_ids,
        load(checkpoint)(prior, PROMPT, temperature=0, max_text_tokens=6).token_ids,
    )
    # saving over an existing checkpoint replaces it, leaving no temporary folders
    loaded.save_pretrained(checkpoint)
    assert sorted(p.name for p in checkpoint.parent.iterdir()) == [checkpoint.name]


def test_half_precision_files_run_in_float32_on_the_cpu(prior, tmp_path):
    """The shipped lite weights are stored in float16 (half the size); on a CPU they are
    upcast, and generation stays close to the float32 model's."""
    from progemu_lite.cli import main

    full = build_random("tiny", seed=3)
    full.save_pretrained(tmp_path / "full")
    assert main(["export", str(tmp_path / "full"), str(tmp_path / "half")]) == 0
    folder = tmp_path / "half"
    stored = {t.dtype for t in _tensors(folder / "model.safetensors") if t.is_floating_point()}
    assert stored == {torch.float16}
    loaded = ProgEmuPipeline.from_pretrained(folder)
    assert loaded.model.dtype == torch.float32 and loaded.loading["dtype"] == "float32"
    codes = full.encode_images(prior[None])[0]
    ids, _ = full.builder.training_ids(codes, PROMPT, codes, "No change.")
    x = torch.as_tensor(ids)[None]
    with torch.no_grad():
        reference, half = full.model(input_ids=x).logits, loaded.model(input_ids=x).logits
    assert torch.allclose(reference, half, atol=0.05)  # float16 rounding of the weights only


def _tensors(path):
    from safetensors.torch import load_file

    return list(load_file(path).values())


def test_batched_equals_unbatched_greedy(pipe, prior):
    priors = [prior, prior[::-1].copy(), np.rot90(prior).copy()]
    prompts = [PROMPT, "No change.", "The right upper lobe consolidation resolves."]
    batched = pipe.batch(priors, prompts, temperature=0, max_text_tokens=8)
    for i in range(3):
        single = pipe(priors[i], prompts[i], temperature=0, max_text_tokens=8)
        assert np.array_equal(single.token_ids, batched[i].token_ids)
        assert np.array_equal(single.image, batched[i].image)
        assert single.interpretation == batched[i].interpretation


@pytest.mark.slow  # compiles the decode step (about 10 s)
def test_compiled_pipeline_gives_the_same_counterfactual(prior):
    pipe = build_random("tiny", seed=0)  # its own: compiling changes its attention function
    plain = pipe(prior, PROMPT, seed=3, max_text_tokens=8)
    assert pipe.compile() is pipe and pipe.compiled
    fast = pipe(prior, PROMPT, seed=3, max_text_tokens=8)
    assert np.array_equal(plain.token_ids, fast.token_ids)
    assert np.array_equal(plain.image, fast.image)
    assert np.allclose(plain.token_probabilities, fast.token_probabilities, atol=1e-5)
    assert not pipe.compile(False).compiled


def test_guidance_and_unconditional(pipe, prior):
    guided = pipe(prior, PROMPT, temperature=0, guidance_scale=3.0, max_text_tokens=6)
    plain = pipe(prior, PROMPT, temperature=0, guidance_scale=1.0, max_text_tokens=6)
    assert not np.allclose(guided.token_probabilities, plain.token_probabilities)
    uncond = pipe(None, unconditional=True, seed=1, max_text_tokens=6)
    assert uncond.image.shape == (64, 64) and uncond.prior is None


def test_image_inputs_png_16bit_rgb_float(pipe, prior, tmp_path):
    png = tmp_path / "prior.png"
    Image.fromarray(prior).save(png)
    assert np.array_equal(prepare_image(png, 64), prior)
    with pytest.warns(ImageConversionWarning, match="colour"):
        rgb = prepare_image(np.stack([prior] * 3, axis=-1), 64)
    assert np.abs(rgb.astype(int) - prior).max() <= 1
    sixteen = prior.astype(np.uint16) * 257
    stretched = (prior - prior.min()) / float(prior.max() - prior.min()) * 255  # min-max window
    with pytest.warns(ImageConversionWarning, match="more than 8 bits"):
        assert np.abs(prepare_image(sixteen, 64) - stretched).max() <= 0.51
    png16 = tmp_path / "prior16.png"
    Image.fromarray(sixteen).save(png16)
    with pytest.warns(ImageConversionWarning):
        pipe(png16, PROMPT, seed=0, max_text_tokens=4)
    assert np.array_equal(prepare_image(prior / 255.0, 64), prior)
    assert prepare_image(np.zeros((128, 96), np.uint8), 64).shape == (64, 64)  # padded, resized


def test_dicom_prior(pipe, prior, tmp_path):
    from progemu_lite.data.dicom import write_radiograph_dicom

    path = write_radiograph_dicom(
        tmp_path / "prior.dcm", prior, patient_id="P1", patient_name="Test^Prior",
        study_date="20250101",
    )  # fmt: skip
    assert np.array_equal(prepare_image(path, 64), prior)
    assert pipe(path, PROMPT, seed=0, max_text_tokens=4).image.shape == (64, 64)


def test_bad_inputs_are_clear_errors(pipe, prior, tmp_path):
    with pytest.raises(ValueError, match="prompt 0 is empty"):
        pipe(prior, "   ")
    with pytest.raises(ValueError, match="empty"):
        pipe(prior, None)
    with pytest.raises(ValueError, match="prior image 0 is missing"):
        pipe(None, PROMPT)
    with pytest.raises(ValueError, match="takes no prompt"):
        pipe(None, PROMPT, unconditional=True)
    with pytest.raises(ValueError, match="takes no prior image"):
        pipe(prior, "", unconditional=True)
    long_prompt = " ".join(["The left pleural effusion becomes moderate."] * 200)
    with pytest.raises(ValueError, match=r"prompt 0 is \d+ tokens; .* allows at most \d+"):
        pipe(prior, long_prompt)
    with pytest.raises(ValueError, match="float images must lie in"):
        pipe(prior * 2.0, PROMPT)
    with pytest.raises(ValueError, match="2-D grayscale"):
        pipe(np.zeros((2, 64, 64), np.uint8), PROMPT)
    with pytest.raises(FileNotFoundError, match="image file not found"):
        pipe(tmp_path / "missing.png", PROMPT)
    not_image = tmp_path / "notes.png"
    not_image.write_text("not a picture")
    with pytest.raises(ValueError, match="not an image file"):
        pipe(not_image, PROMPT)
    with pytest.raises(ValueError, match="2 prior images but 1 prompts"):
        pipe.batch([prior, prior], [PROMPT])


def test_mismatched_or_damaged_checkpoints(checkpoint, tmp_path):
    import shutil

    with pytest.raises(ValueError, match="checkpoint .* is preset 'tiny', expected 'lite'"):
        ProgEmuPipeline.from_pretrained(checkpoint, preset="lite")
    other = tmp_path / "other"
    shutil.copytree(checkpoint, other)
    config = json.loads((other / "config.json").read_text())
    config["text_config"]["hidden_size"] = 128
    (other / "config.json").write_text(json.dumps(config))
    with pytest.raises(
        ValueError, match="text_config.hidden_size: checkpoint 128, preset 'tiny' 64"
    ):
        load(other)
    truncated = tmp_path / "truncated"
    shutil.copytree(checkpoint, truncated)
    weights = truncated / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="cannot read the weights"):
        load(truncated)
    (truncated / "model.safetensors").unlink()
    with pytest.raises(ValueError, match="cannot read the weights"):
        load(truncated)
    torch.save({}, truncated / "pytorch_model.bin")  # a pickle is never loaded
    with pytest.raises(ValueError, match="cannot read the weights"):
        load(truncated)
    with pytest.raises(FileNotFoundError, match="not a ProgEmu checkpoint"):
        load(tmp_path)
    with pytest.raises(FileNotFoundError, match="no checkpoint folder"):
        load(tmp_path / "nowhere")


def test_save_refuses_a_foreign_folder(pipe, tmp_path):
    (tmp_path / "thesis.txt").write_text("precious")
    with pytest.raises(FileExistsError, match="not a ProgEmu checkpoint"):
        pipe.save_pretrained(tmp_path)
    assert os.listdir(tmp_path) == ["thesis.txt"]


def test_cli_generate(checkpoint, prior, tmp_path, capsys):
    from progemu_lite.cli import main

    png = tmp_path / "prior.png"
    Image.fromarray(prior).save(png)
    out, record = tmp_path / "out" / "follow.png", tmp_path / "out" / "follow.json"
    argv = ["generate", "--model", str(checkpoint), "--prior", str(png), "--prompt", PROMPT]
    assert main(argv + ["--out", str(out), "--json", str(record), "--max-text-tokens", "5"]) == 0
    assert np.asarray(Image.open(out)).shape == (64, 64)
    saved = json.loads(record.read_text())
    assert saved["prompt"] == PROMPT and len(saved["token_ids"]) == len(
        saved["token_probabilities"]
    )
    assert saved["interpretation"] in capsys.readouterr().out
    # the interpretation's own temperature and guidance scale reach the pipeline
    argv += ["--text-temperature", "0", "--guidance-scale", "2", "--text-guidance-scale", "1"]
    assert main(argv + ["--out", str(out), "--json", str(record), "--max-text-tokens", "5"]) == 0
    settings = json.loads(record.read_text())["settings"]
    assert settings["text_temperature"] == 0 and settings["temperature"] == 1
    assert settings["guidance_scale"] == 2 and settings["text_guidance_scale"] == 1
    bad = tmp_path / "bad.png"
    assert main(["generate", "--model", str(checkpoint), "--prior", str(png), "--prompt", "",
                 "--out", str(bad)]) == 2  # fmt: skip
    assert "empty" in capsys.readouterr().err and not bad.exists()


@pytest.mark.gpu
def test_cuda_bf16_generation_is_well_formed(prior):
    gpu = build_random("tiny", seed=0).to("cuda", torch.bfloat16)
    assert gpu.model.config.text_config._attn_implementation == "sdpa"
    results = gpu.batch(
        [prior, prior[::-1].copy()], [PROMPT, "No change."], seed=0, max_text_tokens=8
    )
    for result in results:
        assert result.image.shape == (64, 64) and result.codes.shape == (8, 8)
        assert np.isfinite(result.token_probabilities).all()
    guided = gpu(prior, PROMPT, temperature=0, guidance_scale=3.0, max_text_tokens=8)
    assert guided.token_ids[-1] == gpu.builder.ids.eos
