"""The VQ image tokenizer on transformers' Emu3VQVAE: presets, encode/decode, training, metrics."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import Emu3VQVAE, Emu3VQVAEConfig

from progemu_lite import cli
from progemu_lite.tokenization.vq import (
    IMAGE_SIZES,
    PRESETS,
    SPATIAL_FACTOR,
    build_vq,
    codebook_usage,
    decode_codes,
    encode_images,
    images_to_pixels,
    load_vq,
    plot_round_trip,
    psnr,
    save_vq,
    ssim,
    vq_config,
    vq_preset,
    vq_report,
)
from progemu_lite.tokenization.vq_train import (
    STATE_DIR,
    VQTrainConfig,
    encode_latents,
    kmeans_plus_plus,
    lr_at,
    restart_dead_codes,
    train_vq,
    vq_forward,
)


def shapes(n: int, size: int = 64, seed: int = 0) -> np.ndarray:
    """Synthetic 'radiographs': a dark field, a bright disc and a thin bright vertical line."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    out = np.empty((n, size, size), dtype=np.uint8)
    for i in range(n):
        image = np.full((size, size), 40.0) + 20 * yy / size
        cx, cy = rng.uniform(size / 4, 3 * size / 4, 2)
        r = rng.uniform(size / 10, size / 5)
        image[(xx - cx) ** 2 + (yy - cy) ** 2 < r * r] = 190
        x0 = rng.integers(2, size - 4)
        image[:, x0 : x0 + 2] = 250
        out[i] = image.astype(np.uint8)
    return out


def rgb_temporal_tiny() -> Emu3VQVAE:
    """A tiny 3-channel, 4-frame VQ: the 'full' preset's code paths at test size."""
    config = vq_config("tiny").to_dict()
    config.update(in_channels=3, out_channels=3, temporal_downsample_factor=4)
    torch.manual_seed(0)
    return Emu3VQVAE(Emu3VQVAEConfig(**config)).eval()


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Tiny models gain nothing from threads, and two OpenMP threads on a busy 2-core machine
    can run these convolutions 50x slower than one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny():
    return build_vq("tiny", seed=0)


# ---------------------------------------------------------------- presets


@pytest.mark.parametrize("preset", PRESETS)
def test_presets_satisfy_emu3_constraints(preset):
    config = vq_config(preset)
    assert isinstance(config, Emu3VQVAEConfig)
    assert config.hidden_size == config.base_channels * config.channel_multiplier[-1]
    assert config.base_channels % 32 == 0  # GroupNorm(32)
    assert len(config.channel_multiplier) == 4
    assert 2 ** (len(config.channel_multiplier) - 1) == SPATIAL_FACTOR
    assert config.embed_dim == config.latent_channels
    assert config.attention_dropout == 0.0
    assert IMAGE_SIZES[preset] % SPATIAL_FACTOR == 0


def test_small_presets_are_grayscale_single_frame_and_full_is_emu3():
    for preset, grid in (("tiny", 8), ("lite", 16)):
        config = vq_config(preset)
        assert (config.in_channels, config.out_channels) == (1, 1)
        assert config.temporal_downsample_factor == 1
        assert IMAGE_SIZES[preset] // SPATIAL_FACTOR == grid
    full, defaults = vq_config("full"), Emu3VQVAEConfig()
    for name in (
        "codebook_size",
        "embed_dim",
        "latent_channels",
        "in_channels",
        "out_channels",
        "temporal_downsample_factor",
        "base_channels",
        "channel_multiplier",
        "num_res_blocks",
        "attn_resolutions",
        "hidden_size",
    ):
        assert list(np.atleast_1d(getattr(full, name))) == list(
            np.atleast_1d(getattr(defaults, name))
        ), name
    assert full.codebook_size == 32768 and IMAGE_SIZES["full"] == 512


def test_lite_preset_size():
    params = sum(p.numel() for p in Emu3VQVAE(vq_config("lite")).parameters())
    assert 2_000_000 < params < 4_000_000


def test_unknown_preset_is_named():
    with pytest.raises(ValueError, match="unknown VQ preset 'huge'"):
        vq_config("huge")


# ---------------------------------------------------------------- encode / decode


def test_encode_decode_shapes_and_dtypes(tiny):
    images = shapes(5)
    codes = encode_images(tiny, images, batch_size=2)
    assert codes.shape == (5, 8, 8) and codes.dtype == np.int64
    assert codes.min() >= 0 and codes.max() < tiny.config.codebook_size
    recons = decode_codes(tiny, codes, batch_size=3)
    assert recons.shape == (5, 64, 64) and recons.dtype == np.uint8
    # Batching does not change the result.
    np.testing.assert_array_equal(encode_images(tiny, images, batch_size=5), codes)
    np.testing.assert_array_equal(decode_codes(tiny, codes, batch_size=5), recons)


def test_rgb_four_frame_model_takes_gray_images():
    model = rgb_temporal_tiny()
    images = shapes(2)
    codes = encode_images(model, images)
    assert codes.shape == (2, 8, 8)
    recons = decode_codes(model, codes)
    assert recons.shape == (2, 64, 64) and recons.dtype == np.uint8


def test_pixel_normalisation_round_trips():
    images = np.array([[[0, 127, 255, 64] * 2] * 8], dtype=np.uint8)
    pixels = images_to_pixels(images, 3)
    assert pixels.shape == (1, 3, 8, 8)
    assert float(pixels.min()) == -1.0 and float(pixels.max()) == 1.0
    from progemu_lite.tokenization.vq import pixels_to_images

    np.testing.assert_array_equal(pixels_to_images(pixels), images)


@pytest.mark.parametrize(
    ("images", "message"),
    [
        (np.zeros((2, 64, 64, 3), np.uint8), "looks like RGB"),
        (np.zeros((2, 60, 60), np.uint8), "multiples of 8"),
        (np.zeros((2, 64, 64), np.float32), "must be uint8"),
        (np.zeros((64, 64), np.uint8), r"shape \(N, H, W\)"),
        (np.zeros((0, 64, 64), np.uint8), "empty"),
    ],
)
def test_bad_images_are_refused_clearly(tiny, images, message):
    with pytest.raises(ValueError, match=message):
        encode_images(tiny, images)


def test_bad_codes_are_refused_clearly(tiny):
    with pytest.raises(ValueError, match="0..255"):
        decode_codes(tiny, np.full((1, 8, 8), 256))
    with pytest.raises(ValueError, match="integer array"):
        decode_codes(tiny, np.zeros((8, 8), dtype=np.int64))


# ---------------------------------------------------------------- training forward


@pytest.mark.parametrize("make", [lambda: build_vq("tiny", seed=1), rgb_temporal_tiny])
def test_training_forward_matches_encode_and_decode(make):
    model = make()
    images = shapes(3, seed=2)
    pixels = images_to_pixels(images, model.config.in_channels)
    result = vq_forward(model, pixels)
    assert result.indices.shape[1] == 1  # one latent frame per image
    np.testing.assert_array_equal(result.indices[:, 0].numpy(), encode_images(model, images))
    with torch.no_grad():
        decoded = model.decode(result.indices[:, 0])
    torch.testing.assert_close(result.recon.detach(), decoded, atol=1e-4, rtol=1e-4)
    # Gradients reach the encoder through the straight-through estimator, and the codebook
    # through the codebook loss.
    (result.recon.abs().mean() + result.codebook_loss).backward()
    assert model.encoder.conv_in.weight.grad.abs().sum() > 0
    assert model.quantize.embedding.weight.grad.abs().sum() > 0


@pytest.mark.slow
def test_few_training_steps_reduce_reconstruction_loss():
    images = shapes(6, seed=3)
    # A batch of the whole set: every step sees the same images, so losses compare directly.
    model, log = train_vq(images, "tiny", steps=12, batch_size=6, progress=False, warmup_steps=2)
    first, last = log["steps"][0]["l1"], log["steps"][-1]["l1"]
    assert last < 0.7 * first
    assert not model.training
    report = vq_report(model, images)
    assert report["n_images"] == 6 and report["grid"] == [8, 8]


def test_kmeans_plus_plus_finds_clusters():
    generator = torch.Generator().manual_seed(0)
    truth = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])
    points = truth.repeat_interleave(50, 0) + 0.1 * torch.randn(200, 2, generator=generator)
    centres = kmeans_plus_plus(points, 4, generator)
    assert torch.cdist(truth, centres).min(dim=1).values.max() < 0.2
    # Fewer vectors than codes: every vector is kept, the rest are jittered copies.
    few = kmeans_plus_plus(points[:3], 8, generator)
    assert few.shape == (8, 2) and torch.equal(few[:3], points[:3])


def test_learning_rate_schedule():
    config = VQTrainConfig(preset="tiny", steps=100, lr=1e-3, warmup_steps=10, min_lr_ratio=0.1)
    assert lr_at(0, config) == pytest.approx(1e-4)
    assert lr_at(9, config) == pytest.approx(1e-3)
    assert lr_at(99, config) == pytest.approx(1e-4, rel=0.01)
    values = [lr_at(s, config) for s in range(10, 100)]
    assert values == sorted(values, reverse=True)
    with pytest.raises(ValueError, match="batch_size"):
        VQTrainConfig(preset="tiny", batch_size=0)


def test_dead_code_restart_revives_codes(tiny):
    model = build_vq("tiny", seed=0)
    config = VQTrainConfig(preset="tiny", dead_after=5)
    pixels = images_to_pixels(shapes(4), 1)
    with torch.no_grad():
        latents = encode_latents(model, pixels)
        # Park every code far from the data: only the nearest few can ever be picked.
        weight = model.quantize.embedding.weight
        weight.copy_(1000 + torch.randn_like(weight))
        weight[:2] = latents.mean(dim=(0, 1, 3, 4))
        used_before = torch.unique(model.quantize(latents))
    assert len(used_before) <= 2
    optimizer = torch.optim.Adam(model.parameters())
    model.quantize.embedding.weight.grad = torch.ones_like(weight)
    optimizer.step()
    last_used = torch.zeros(256, dtype=torch.long)
    last_used[used_before] = 10
    revived = restart_dead_codes(
        model, optimizer, latents, last_used, 10, config, torch.Generator().manual_seed(0)
    )
    assert revived == 256 - len(used_before)
    with torch.no_grad():
        used_after = torch.unique(model.quantize(latents))
    assert len(used_after) > 50
    moments = optimizer.state[model.quantize.embedding.weight]["exp_avg"]
    dead = torch.ones(256, dtype=torch.bool)
    dead[used_before] = False
    assert torch.all(moments[dead] == 0) and torch.all(moments[~dead] != 0)
    assert torch.all(last_used == 10)


@pytest.mark.slow
def test_checkpoint_resume_continues_identically(tmp_path):
    images = shapes(8, seed=4)
    settings = dict(steps=6, batch_size=4, progress=False, dead_after=2, restart_every=2)
    straight, log_a = train_vq(images, "tiny", out=tmp_path / "a", **settings)
    train_vq(images, "tiny", out=tmp_path / "b", until=3, **settings)
    state = json.loads((tmp_path / "b" / STATE_DIR / "state.json").read_text())
    assert state["step"] == 3
    resumed, log_b = train_vq(images, "tiny", out=tmp_path / "b", resume=True, **settings)
    assert [s["loss"] for s in log_b["steps"]] == [s["loss"] for s in log_a["steps"]]
    assert log_a["restarts"] > 0 and log_b["restarts"] == log_a["restarts"]
    for (name, a), (_, b) in zip(
        straight.state_dict().items(), resumed.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name
    # The saved folder is a plain transformers model.
    loaded = Emu3VQVAE.from_pretrained(tmp_path / "b")
    np.testing.assert_array_equal(encode_images(loaded, images), encode_images(straight, images))


def test_resume_refuses_changed_settings_and_missing_state(tmp_path):
    images = shapes(4)
    train_vq(images, "tiny", steps=1, batch_size=2, out=tmp_path, progress=False)
    with pytest.raises(ValueError, match="batch_size"):
        train_vq(images, "tiny", steps=2, batch_size=4, out=tmp_path, resume=True, progress=False)
    with pytest.raises(FileExistsError, match="resume"):
        train_vq(images, "tiny", steps=2, batch_size=2, out=tmp_path, progress=False)
    with pytest.raises(FileNotFoundError, match="no VQ training checkpoint"):
        train_vq(images, "tiny", steps=2, out=tmp_path / "new", resume=True, progress=False)


def test_training_refuses_wrong_image_size():
    with pytest.raises(ValueError, match="wants 64x64"):
        train_vq(np.zeros((4, 32, 32), np.uint8), "tiny", steps=1, progress=False)


# ---------------------------------------------------------------- metrics and figure


def test_psnr_and_ssim_of_identical_images():
    images = shapes(3)
    assert psnr(images, images) == float("inf")
    assert ssim(images, images) == pytest.approx(1.0, abs=1e-12)


def test_ssim_known_values():
    # Two flat images: only the luminance term remains, (2ab + C1) / (a^2 + b^2 + C1).
    a, b = np.full((32, 32), 100, np.uint8), np.full((32, 32), 150, np.uint8)
    c1 = (0.01 * 255) ** 2
    assert ssim(a, b) == pytest.approx((2 * 100 * 150 + c1) / (100**2 + 150**2 + c1))
    # Texture against its negative: perfectly anti-correlated structure, so SSIM < 0.
    texture = np.random.default_rng(1).integers(60, 200, (48, 48)).astype(np.uint8)
    assert ssim(texture, 255 - texture) < 0
    image = shapes(1)[0]
    noisy = np.clip(image + np.random.default_rng(0).normal(0, 20, image.shape), 0, 255)
    assert 0 < ssim(image, noisy.astype(np.uint8)) < ssim(image, image)
    # PSNR of a constant error of 5 grey levels: 10 log10(255^2 / 25).
    assert psnr(a, a + 5) == pytest.approx(10 * np.log10(255**2 / 25))


def test_metrics_refuse_mismatched_shapes():
    with pytest.raises(ValueError, match="shapes differ"):
        ssim(np.zeros((32, 32)), np.zeros((32, 40)))
    with pytest.raises(ValueError, match="shapes differ"):
        psnr(np.zeros((2, 8, 8)), np.zeros((3, 8, 8)))


def test_codebook_usage():
    uniform = codebook_usage(np.arange(16), 16)
    assert uniform["perplexity"] == pytest.approx(16) and uniform["used_fraction"] == 1.0
    one = codebook_usage(np.zeros(100, dtype=int), 16)
    assert one["perplexity"] == pytest.approx(1) and one["used"] == 1
    assert one["used_fraction"] == 1 / 16


def test_plot_round_trip_writes_png(tmp_path):
    images = shapes(3)
    path = plot_round_trip(
        images, 255 - images, ["effusion", "nodule", "normal"], tmp_path / "f.png"
    )
    assert Image.open(path).size[0] > 300
    assert [p.name for p in tmp_path.iterdir()] == ["f.png"]
    with pytest.raises(ValueError, match="as many"):
        plot_round_trip(images, images, ["one"], tmp_path / "g.png")
    assert not (tmp_path / "g.png").exists()


def test_save_vq_round_trips(tmp_path, tiny):
    save_vq(tiny, tmp_path / "vq")
    assert sorted(p.name for p in (tmp_path / "vq").iterdir()) == [
        "config.json",
        "model.safetensors",
    ]
    old_umask = os.umask(0o022)
    try:
        save_vq(tiny, tmp_path / "vq")  # overwrites in place
    finally:
        os.umask(old_umask)
    for path in (tmp_path / "vq").iterdir():
        assert path.stat().st_mode & 0o777 == 0o644, path.name  # shareable in a class folder
    loaded = Emu3VQVAE.from_pretrained(tmp_path / "vq")
    images = shapes(2)
    np.testing.assert_array_equal(encode_images(loaded, images), encode_images(tiny, images))


def test_load_vq_gives_a_frozen_float32_model_and_names_its_preset(tmp_path):
    save_vq(build_vq("tiny").half(), tmp_path / "vq")  # float16, as a shipped pipeline's VQ
    loaded = load_vq(tmp_path / "vq", "tiny")
    assert vq_preset(loaded.config) == "tiny"
    assert {p.dtype for p in loaded.parameters()} == {torch.float32}
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    assert vq_preset(Emu3VQVAEConfig(codebook_size=77)) is None
    with pytest.raises(ValueError, match=r"does not fit preset 'lite': codebook_size 256"):
        load_vq(tmp_path / "vq", "lite")


def test_load_vq_names_what_is_wrong_with_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="no VQ folder at .*missing"):
        load_vq(tmp_path / "missing")
    (tmp_path / "file.png").write_bytes(b"png")
    with pytest.raises(ValueError, match="expected a folder"):
        load_vq(tmp_path / "file.png")
    with pytest.raises(FileNotFoundError, match="not a VQ tokenizer folder"):
        load_vq(tmp_path)
    other = tmp_path / "bert"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ValueError, match="holds a 'bert' model, not an Emu3 VQ tokenizer"):
        load_vq(other)


# ---------------------------------------------------------------- the command


def write_icgcxr_tree(root, n_pairs: int = 3, size: int = 96, mode: str = "L"):
    images = shapes(2 * n_pairs, size=size, seed=5)
    for i in range(n_pairs):
        pair = root / "mimic" / f"p{i}" / f"s{i}"
        pair.mkdir(parents=True)
        for kind, image in (("ref", images[2 * i]), ("flu", images[2 * i + 1])):
            Image.fromarray(image).convert(mode).save(pair / f"s{i}-{kind}-reg.png")
        (pair / f"s{i}.json").write_text("{}")
        Image.fromarray(images[2 * i]).save(pair / "unrelated.png")  # not picked up


def test_train_vq_command_end_to_end(tmp_path, capsys):
    data, out = tmp_path / "data", tmp_path / "run"
    write_icgcxr_tree(data)
    args = ["train-vq", "--data", str(data), "--preset", "tiny", "--out", str(out)]
    args += ["--batch-size", "4", "--checkpoint-every", "2", "--quiet"]
    assert cli.main([*args, "--steps", "2"]) == 0
    assert "PSNR" in capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    assert report["n_images"] == 6 and report["train_steps"] == 2
    for name in ("config.json", "model.safetensors", "round_trip.png", "train_log.json"):
        assert (out / name).is_file(), name
    # Rerunning without --resume would clobber the run: refused, one line, exit 2.
    assert cli.main([*args, "--steps", "4"]) == 2
    assert "--resume" in capsys.readouterr().err
    assert cli.main([*args, "--steps", "4", "--resume"]) == 0
    assert json.loads((out / "report.json").read_text())["train_steps"] == 4
    assert Emu3VQVAE.from_pretrained(out).config.codebook_size == 256


def test_train_vq_init_keeps_the_trained_codebook_and_resumes(tmp_path, capsys):
    data, first, second = tmp_path / "data", tmp_path / "first", tmp_path / "second"
    write_icgcxr_tree(data)
    base = ["train-vq", "--data", str(data), "--preset", "tiny", "--batch-size", "4", "--quiet"]
    # Seed 3: its k-means codebook differs from the seed-0 one a fresh run below starts with.
    assert cli.main([*base, "--out", str(first), "--steps", "2", "--seed", "3"]) == 0
    trained = Emu3VQVAE.from_pretrained(first).quantize.embedding.weight.detach()
    # A negligible learning rate: what the run starts from is what it ends with.
    init = [*base, "--out", str(second), "--init", str(first), "--lr", "1e-12"]
    assert cli.main([*init, "--steps", "4", "--until", "2"]) == 0
    codebook = Emu3VQVAE.from_pretrained(second).quantize.embedding.weight.detach()
    torch.testing.assert_close(codebook, trained, atol=1e-6, rtol=0)  # not a k-means one
    report = json.loads((second / "report.json").read_text())
    assert report["init_from"] == str(first) and report["train_steps"] == 2
    # Resuming needs no --init again; naming both is refused.
    resume = [*base, "--out", str(second), "--lr", "1e-12", "--steps", "4", "--resume"]
    assert cli.main([*resume, "--init", str(first)]) == 2
    assert "--init starts a run" in capsys.readouterr().err
    assert cli.main(resume) == 0
    report = json.loads((second / "report.json").read_text())
    assert report["init_from"] == str(first) and report["train_steps"] == 4
    fresh = tmp_path / "fresh"
    assert cli.main([*base, "--out", str(fresh), "--steps", "1", "--lr", "1e-12"]) == 0
    kmeans = Emu3VQVAE.from_pretrained(fresh).quantize.embedding.weight.detach()
    assert not torch.allclose(kmeans, trained, atol=1e-3)
    capsys.readouterr()
    # Bad --init: a missing folder, another preset's VQ; one line each, nothing written.
    for init_args, message in (
        (["--init", str(tmp_path / "missing")], "no VQ folder"),
        (["--init", str(first), "--preset", "lite"], "is a 'tiny' VQ, not --preset 'lite'"),
    ):
        out = tmp_path / "bad"
        assert cli.main([*base, "--out", str(out), "--steps", "1", *init_args]) == 2
        # The last line (transformers may draw its loading bar above it).
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert err.startswith("progemu-lite train-vq: error:") and message in err, err
        assert not out.exists()


def test_train_vq_command_bad_data(tmp_path, capsys):
    out = tmp_path / "run"
    (tmp_path / "empty").mkdir()
    base = ["--preset", "tiny", "--steps", "1", "--out", str(out), "--quiet"]
    assert cli.main(["train-vq", "--data", str(tmp_path / "empty"), *base]) == 2
    assert "no ICG-CXR images" in capsys.readouterr().err
    write_icgcxr_tree(tmp_path / "rgb", n_pairs=1, mode="RGB")
    assert cli.main(["train-vq", "--data", str(tmp_path / "rgb"), *base]) == 2
    err = capsys.readouterr().err
    assert "8-bit grayscale" in err and "-reg.png" in err
    assert not out.exists()
