"""`progemu-lite train`: the ProgEmu training loop on accelerate (tiny preset, 64x64 pairs)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from progemu_lite.cli import main as cli_main
from progemu_lite.data.icgcxr import PairRecord, write_pair
from progemu_lite.model.train import (
    TrainConfig,
    augmentation_rng,
    cpu_has_native_bf16,
    encode_pair_cache,
    load_splits,
    oversampled_pool,
    step_indices,
    train,
    training_example,
    weighted_sequence_loss,
)
from progemu_lite.tokenization.vq import load_vq

SIDES = ("left", "right")
SEVERITIES = ("small", "moderate", "large")


def _pair_images(index: int, size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """A smooth 'chest' and a follow-up with an opaque lower zone on one side: a change the
    model can learn to associate with the prompt."""
    yy, xx = np.mgrid[:size, :size]
    prior = 90 + 40 * np.sin(xx / (4 + index % 3)) + 20 * np.cos(yy / 7)
    followup = prior.copy()
    top = size * 5 // 8 - 4 * (index % 3)
    half = size // 2
    cols = slice(0, half) if index % 2 == 0 else slice(half, size)
    followup[top:, cols] = 230
    return prior.clip(0, 255).astype(np.uint8), followup.clip(0, 255).astype(np.uint8)


def write_dataset(root: Path, n_pairs: int, val_every: int = 5) -> Path:
    for i in range(n_pairs):
        side, severity = SIDES[i % 2], SEVERITIES[i % 3]
        record = PairRecord(
            pair_id=f"p{i:03d}",
            folder=Path("simulated/pa") / f"s{i:03d}" / f"p{i:03d}",
            prompt=(
                f"The {side} pleural effusion becomes {severity}. No pneumothorax. "
                "Unchanged heart size."
            ),
            interpretation=(
                f"Interval development of {severity} {side} pleural effusion. "
                "No pneumothorax. Persistent mild cardiomegaly."
            ),
            split="val" if i % val_every == val_every - 1 else "train",
        )
        write_pair(root, record, *_pair_images(i))
    return root


def save_random_vq(folder: Path, preset: str) -> Path:
    from progemu_lite.tokenization.vq import build_vq, save_vq

    save_vq(build_vq(preset, seed=0), folder)
    return folder


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """Simulated ICG-CXR pairs from the phantom generator: 10 patients x 2 pairs at 64x64;
    seed 4 puts 8 patients in train and 2 in val."""
    root = tmp_path_factory.mktemp("phantom") / "data"
    args = ["phantom", "--patients", "10", "--pairs-per-patient", "2", "--size", "64"]
    assert cli_main([*args, "--out", str(root), "--seed", "4", "--quiet"]) == 0
    train_records, val_records = load_splits(root)
    assert (len(train_records), len(val_records)) == (16, 4)
    return root


@pytest.fixture(scope="module")
def tiny_vq(tmp_path_factory) -> Path:
    return save_random_vq(tmp_path_factory.mktemp("vq") / "tiny", "tiny")


def _config(dataset: Path, vq: Path, out: Path, **overrides) -> TrainConfig:
    settings = dict(
        data=dataset,
        vq=vq,
        out=out,
        preset="tiny",
        steps=8,
        batch_size=4,
        eval_every=4,
        save_every=100,
        progress=False,
    )
    settings.update(overrides)
    return TrainConfig(**settings)


@pytest.fixture(scope="module")
def trained_run(dataset, tiny_vq, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "run"
    config = _config(dataset, tiny_vq, out, steps=40, eval_every=10, save_every=20, lr=2e-3)
    return train(config)


@pytest.mark.slow
def test_loss_goes_down_and_is_recorded(trained_run):
    losses = np.asarray(trained_run.train_losses)
    assert len(losses) == 40 and np.isfinite(losses).all()
    assert losses[-5:].mean() < 0.75 * losses[:3].mean()
    val_steps = [step for step, _ in trained_run.val_losses]
    assert val_steps == [10, 20, 30, 40]
    assert trained_run.val_losses[-1][1] < trained_run.val_losses[0][1]
    assert trained_run.tokens_per_second > 0

    state = json.loads((trained_run.out / "trainer_state.json").read_text())
    assert state["progress"]["step"] == 40
    assert state["progress"]["train_losses"] == pytest.approx(trained_run.train_losses)
    kept = sorted(p.name for p in (trained_run.out / "checkpoints").iterdir())
    assert kept == ["step-0000020", "step-0000040"]  # nothing half-written left beside them


@pytest.mark.slow
def test_loss_curve_png_written(trained_run):
    from PIL import Image

    assert trained_run.loss_curve.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(trained_run.loss_curve) as image:
        width, height = image.size
        pixels = np.asarray(image.convert("RGB"))
    assert width > 300 and height > 200
    # Both curves are drawn: matplotlib's default blue (train) and orange (validation).
    blue = np.all(np.abs(pixels.astype(int) - (31, 119, 180)) < 30, axis=-1).sum()
    orange = np.all(np.abs(pixels.astype(int) - (255, 127, 14)) < 30, axis=-1).sum()
    assert blue > 100 and orange > 50


@pytest.mark.slow
def test_output_loads_and_generates(trained_run, dataset):
    from progemu_lite.model.pipeline import ProgEmuPipeline

    pipe = ProgEmuPipeline.from_pretrained(trained_run.pipeline_dir, preset="tiny")
    assert pipe.metadata["training"]["step"] == 40
    record = load_splits(dataset)[1][0]
    result = pipe(record.prior_path, record.prompt, seed=0, max_text_tokens=12)
    assert result.image.shape == (64, 64) and result.image.dtype == np.uint8
    assert result.codes.shape == (8, 8)
    assert isinstance(result.interpretation, str)
    # The checkpoint's pipeline folder loads too.
    mid = ProgEmuPipeline.from_pretrained(trained_run.out / "checkpoints/step-0000020/pipeline")
    assert mid.metadata["training"]["step"] == 20


@pytest.mark.slow
def test_resume_matches_uninterrupted_run(dataset, tiny_vq, tmp_path):
    import safetensors.torch

    whole = train(_config(dataset, tiny_vq, tmp_path / "whole"))
    first = train(_config(dataset, tiny_vq, tmp_path / "split", until=3))
    assert first.step == 3 and first.pipeline_dir is None
    cache_mtime = first.cache_path.stat().st_mtime_ns
    rest = train(_config(dataset, tiny_vq, tmp_path / "split", resume=True))

    assert rest.train_losses == whole.train_losses  # bit for bit
    assert rest.val_losses == whole.val_losses
    a = safetensors.torch.load_file(whole.pipeline_dir / "model.safetensors")
    b = safetensors.torch.load_file(rest.pipeline_dir / "model.safetensors")
    assert a.keys() == b.keys() and all(bool((a[k] == b[k]).all()) for k in a)
    # The resumed session read the image codes back instead of encoding again.
    assert rest.cache_reused and not first.cache_reused
    assert rest.cache_path == first.cache_path
    assert rest.cache_path.stat().st_mtime_ns == cache_mtime


@pytest.mark.slow
def test_oversampled_run_resumes_exactly_and_keeps_its_factors(dataset, tiny_vq, tmp_path):
    over = {"pneumothorax": 3}
    whole = train(_config(dataset, tiny_vq, tmp_path / "whole", oversample_stable=over))
    plain = train(_config(dataset, tiny_vq, tmp_path / "plain"))
    assert whole.train_losses != plain.train_losses  # the pool changed which pairs a step sees
    saved = json.loads((whole.pipeline_dir / "progemu.json").read_text())
    assert saved["training"]["oversample_stable"] == over

    train(_config(dataset, tiny_vq, tmp_path / "split", oversample_stable=over, until=3))
    with pytest.raises(ValueError, match="oversample_stable: saved {'pneumothorax': 3}, now {}"):
        train(_config(dataset, tiny_vq, tmp_path / "split", resume=True))
    rest = train(_config(dataset, tiny_vq, tmp_path / "split", oversample_stable=over, resume=True))
    assert rest.train_losses == whole.train_losses


@pytest.mark.slow
def test_bf16_on_a_cpu_tracks_fp32(dataset, tiny_vq, tmp_path):
    """--mixed-precision bf16 trains on a CPU (autocast; the weights stay fp32) with nearly the
    losses of fp32, and warns where the CPU would only emulate bf16. In its own process:
    accelerate keeps one mixed-precision setting per process."""
    import subprocess
    import sys

    import safetensors.torch

    fp32 = train(_config(dataset, tiny_vq, tmp_path / "fp32", mixed_precision="no"))
    out = tmp_path / "bf16"
    command = [sys.executable, "-m", "progemu_lite.cli", "train", "--data", str(dataset)]
    command += ["--vq", str(tiny_vq), "--out", str(out), "--preset", "tiny", "--steps", "8"]
    command += ["--batch-size", "4", "--eval-every", "4", "--save-every", "100", "--quiet"]
    done = subprocess.run(
        [*command, "--mixed-precision", "bf16"], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert ("without bf16 instructions" in done.stderr) == (not cpu_has_native_bf16())
    bf16_losses = json.loads((out / "trainer_state.json").read_text())["progress"]["train_losses"]
    assert bf16_losses != fp32.train_losses  # bf16 products did run
    assert np.allclose(bf16_losses, fp32.train_losses, rtol=0.02)
    weights = safetensors.torch.load_file(out / "pipeline" / "model.safetensors")
    assert {str(w.dtype) for w in weights.values() if w.is_floating_point()} == {"torch.float32"}
    # In the fp32 run's process another precision is refused with a message that says why.
    with pytest.raises(ValueError, match="restart the kernel"):
        train(_config(dataset, tiny_vq, tmp_path / "again", mixed_precision="bf16"))
    assert not (tmp_path / "again").exists()


def test_code_cache_reused_then_invalidated(tmp_path, tiny_vq):
    from progemu_lite.tokenization.vq import encode_images

    root = write_dataset(tmp_path / "data", 4)
    records = sorted(load_splits(root)[0] + load_splits(root)[1], key=lambda r: r.pair_id)
    vq = load_vq(tiny_vq, "tiny")
    codes, path, reused = encode_pair_cache(root, records, vq, 64, tmp_path / "cache")
    assert not reused and codes.shape == (4, 2, 8, 8)
    expected = encode_images(vq, np.stack(_pair_images(0)))
    assert np.array_equal(codes[0], expected)

    again, path2, reused2 = encode_pair_cache(root, records, vq, 64, tmp_path / "cache")
    assert reused2 and path2 == path and np.array_equal(again, codes)

    # A changed image is a different cache (and the old one is not trusted).
    prior, _ = _pair_images(3)
    from PIL import Image

    Image.fromarray(255 - prior).save(records[0].prior_path)
    changed, path3, reused3 = encode_pair_cache(root, records, vq, 64, tmp_path / "cache")
    assert not reused3 and path3 != path
    assert not np.array_equal(changed[0, 0], codes[0, 0])
    assert not any(p.name.endswith(".tmp") for p in (tmp_path / "cache").iterdir())


def test_code_cache_encoding_resumes_after_a_stop(tmp_path, tiny_vq):
    """A run stopped during the encoding keeps its whole segments and encodes only the rest."""
    from PIL import UnidentifiedImageError

    root = write_dataset(tmp_path / "data", 5)
    records = sorted(load_splits(root)[0] + load_splits(root)[1], key=lambda r: r.pair_id)
    vq = load_vq(tiny_vq, "tiny")
    cache = tmp_path / "cache"
    # Pair 3's prior is unreadable but keeps its size and time, as if the run were stopped there.
    broken = records[3].prior_path
    original, stat = broken.read_bytes(), broken.stat()
    broken.write_bytes(b"\0" * len(original))
    os.utime(broken, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    with pytest.raises(UnidentifiedImageError):
        encode_pair_cache(root, records, vq, 64, cache, segment_pairs=2)
    (parts,) = cache.glob("codes-*.parts")
    assert not list(cache.glob("codes-*.npy"))

    assert sorted(p.name for p in parts.iterdir()) == [
        "pairs-00000000-00000002.digests.npy",
        "pairs-00000000-00000002.npy",
    ]
    # A segment saved before caches kept image digests gets them from its pixels.
    (parts / "pairs-00000000-00000002.digests.npy").unlink()
    # Mark the saved segment so that reading it back (not encoding again) shows in the result.
    saved = np.load(parts / "pairs-00000000-00000002.npy")
    np.save(parts / "pairs-00000000-00000002.npy", saved + 1)
    broken.write_bytes(original)
    os.utime(broken, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    codes, path, reused = encode_pair_cache(root, records, vq, 64, cache, segment_pairs=2)
    fresh, _, _ = encode_pair_cache(root, records, vq, 64, tmp_path / "fresh", segment_pairs=2)
    digests = path.with_suffix(".digests.npy")
    assert np.array_equal(np.load(digests), np.load(tmp_path / "fresh" / digests.name))
    assert not reused and codes.shape == (5, 2, 8, 8)
    assert np.array_equal(codes[:2], fresh[:2] + 1)
    assert np.array_equal(codes[2:], fresh[2:])
    assert np.array_equal(saved, fresh[:2])
    assert not parts.exists() and sorted(p.name for p in cache.iterdir()) == sorted(
        [path.name, path.with_suffix(".json").name, digests.name]
    )


def _records(root: Path) -> list:
    train_records, val_records = load_splits(root)
    return sorted(train_records + val_records, key=lambda r: r.pair_id)


def test_codes_of_identical_images_are_copied_from_an_earlier_run(tmp_path, tiny_vq):
    """A stage on a bigger data set copies the codes of the images an earlier run encoded."""
    from progemu_lite.data.icgcxr import load_pair_images

    vq = load_vq(tiny_vq, "tiny")
    small = write_dataset(tmp_path / "small", 3)
    big = write_dataset(tmp_path / "big", 8)
    small_records, big_records = _records(small), _records(big)
    earlier = tmp_path / "earlier-run"
    codes, path, _ = encode_pair_cache(small, small_records, vq, 64, earlier / "cache")
    # Mark the earlier run's codes so that copying them (not encoding again) shows.
    np.save(path, codes + 1)

    copied, _, reused = encode_pair_cache(
        big, big_records, vq, 64, tmp_path / "cache", reuse_from=[earlier], segment_pairs=3
    )
    fresh, _, _ = encode_pair_cache(big, big_records, vq, 64, tmp_path / "fresh")
    seen = [image for r in small_records for image in load_pair_images(r)]
    expected = fresh.copy()
    for i, record in enumerate(big_records):
        for j, image in enumerate(load_pair_images(record)):
            if any(np.array_equal(image, other) for other in seen):
                expected[i, j] += 1
    assert not reused and np.array_equal(copied, expected)
    assert (expected != fresh).any() and (expected == fresh).any()  # some copied, some encoded

    # The copy is itself a source: its digests were kept, whichever way its codes came.
    again, _, _ = encode_pair_cache(
        big, big_records, vq, 64, tmp_path / "third", reuse_from=[tmp_path / "cache"]
    )
    assert np.array_equal(again, copied)


def test_codes_are_only_copied_from_a_finished_cache_of_the_same_tokenizer(tmp_path, tiny_vq):
    from progemu_lite.tokenization.vq import build_vq

    root = write_dataset(tmp_path / "data", 3)
    records = _records(root)
    vq = load_vq(tiny_vq, "tiny")
    other, _, _ = encode_pair_cache(
        root, records, build_vq("tiny", seed=1), 64, tmp_path / "other" / "cache"
    )
    fresh, _, _ = encode_pair_cache(root, records, vq, 64, tmp_path / "fresh")
    assert not np.array_equal(other, fresh)
    (tmp_path / "empty").mkdir()
    # Copying is a shortcut: without a usable cache the run says why and encodes as usual.
    for source, why in (("other", "another VQ tokenizer"), ("empty", "no finished cache")):
        with pytest.warns(UserWarning, match=f"no code cache of this VQ tokenizer in .*{why}"):
            codes, _, _ = encode_pair_cache(
                root, records, vq, 64, tmp_path / source / "new", reuse_from=[tmp_path / source]
            )
        assert np.array_equal(codes, fresh)


def test_augmentations_follow_official_probabilities(tmp_path):
    from progemu_lite.model.train import PairCodes
    from progemu_lite.tokenization.sequence import SequenceBuilder
    from progemu_lite.tokenization.text import train_text_tokenizer

    prompt = "The left pleural effusion becomes moderate. No pneumothorax. Unchanged heart size."
    interpretation = "Moderate left pleural effusion. No pneumothorax."
    tokenizer = train_text_tokenizer([prompt, interpretation] * 3, codebook_size=16)
    builder = SequenceBuilder(tokenizer)
    grid = np.arange(12).reshape(3, 4) % 16
    pair = PairCodes("p", grid, grid[::-1], prompt, interpretation)
    plain_ids, _ = training_example(pair, builder, None)
    assert np.array_equal(
        plain_ids, builder.training_ids(grid, prompt, grid[::-1], interpretation)[0]
    )
    interpretation_ids = builder.encode_text(interpretation).tolist()

    n, null, dropped, reordered = 4000, 0, 0, 0
    for index in range(n):
        ids, labels = training_example(pair, builder, augmentation_rng(7, index // 100, index))
        assert np.array_equal(ids, labels)
        # The interpretation is never augmented (the official code only touches the prompt).
        assert ids[-len(interpretation_ids) - 1 : -1].tolist() == interpretation_ids
        image_starts = np.flatnonzero(ids == builder.ids.boi)
        if len(image_starts) == 1:  # the null condition: no prior image, no prompt
            assert ids[1] == builder.ids.boi
            null += 1
            continue
        text = builder.decode_text(ids[len(builder.image_ids(grid)) + 1 : image_starts[1]])
        sentences = [s.strip(". ") for s in text.split(". ")]
        if len(sentences) < 3:
            dropped += 1
        elif text != prompt:
            reordered += 1
    # Binomial bounds at about 3.5 standard deviations around the official rates.
    assert 0.0045 * n <= null <= 0.0155 * n  # p = 0.01
    assert 0.036 * n <= dropped <= 0.064 * n  # p = 0.05 (each prompt has a "No ..." sentence)
    assert 0.026 * n <= reordered <= 0.055 * n  # p = 0.05 x (1 - 1/3!) x 0.95

    # Seeded: the same (seed, epoch, pair) augments the same way; another epoch differs.
    def run(seed, epoch):
        return [
            training_example(pair, builder, augmentation_rng(seed, epoch, i))[0] for i in range(300)
        ]

    assert all(np.array_equal(a, b) for a, b in zip(run(1, 0), run(1, 0), strict=True))
    assert any(not np.array_equal(a, b) for a, b in zip(run(1, 0), run(1, 1), strict=True))


def test_step_indices_cover_each_epoch_without_repeats():
    n, batch, seed = 10, 3, 0
    steps_per_epoch = n // batch
    for epoch in range(3):
        seen = np.concatenate(
            [step_indices(epoch * steps_per_epoch + s, n, batch, seed)[1] for s in range(3)]
        )
        assert len(seen) == 9 and len(set(seen.tolist())) == 9
    assert step_indices(4, n, batch, seed)[0] == 1
    assert np.array_equal(step_indices(4, n, batch, seed)[1], step_indices(4, n, batch, seed)[1])
    assert not np.array_equal(
        step_indices(0, n, batch, seed)[1], step_indices(3, n, batch, seed)[1]
    )


def _stable_findings(record) -> set[str]:
    return {a.finding for a in record.annotation or () if a.direction == "stable"}


def test_oversampled_pool_repeats_pairs_whose_prior_holds_a_rare_stable_finding(dataset):
    records, _ = load_splits(dataset)
    pool = oversampled_pool(records, {"pneumothorax": 3, "pulmonary_edema": 2})
    times = np.bincount(pool, minlength=len(records))
    for i, record in enumerate(records):
        stable = _stable_findings(record)
        expected = 3 if "pneumothorax" in stable else 2 if "pulmonary_edema" in stable else 1
        assert times[i] == expected, (record.pair_id, stable)
    assert {3, 2, 1} <= set(times.tolist())  # the phantom set holds all three kinds of pair
    assert np.array_equal(oversampled_pool(records, {}), np.arange(len(records)))

    # a pair without an annotation (real data may lack one) is drawn once
    bare = PairRecord(pair_id="x", folder=Path("x"), prompt="p", interpretation="i")
    assert np.array_equal(oversampled_pool([*records, bare], {"pneumothorax": 3})[-1:], [16])

    with pytest.raises(ValueError, match="no training pair's annotation holds pneumothorx"):
        oversampled_pool(records, {"pneumothorx": 2})


def _cli(capsys, *args) -> tuple[int, str]:
    code = cli_main(["train", *map(str, args), "--quiet"])
    return code, capsys.readouterr().err


def test_bad_input_gives_clear_errors(tmp_path, capsys, dataset, tiny_vq):
    out = tmp_path / "run"
    base = ("--preset", "tiny", "--steps", "2", "--batch-size", "2")

    code, err = _cli(capsys, "--data", tmp_path / "nowhere", "--vq", tiny_vq, "--out", out, *base)
    assert code == 2 and "nowhere" in err and "does not exist" in err

    only_val = write_dataset(tmp_path / "valonly", 2, val_every=1)
    code, err = _cli(capsys, "--data", only_val, "--vq", tiny_vq, "--out", out, *base)
    assert code == 2 and "no training pairs" in err and "val" in err

    empty = tmp_path / "empty"
    empty.mkdir()
    code, err = _cli(capsys, "--data", empty, "--vq", tiny_vq, "--out", out, *base)
    assert code == 2 and "no training pairs" in err

    lite_vq = save_random_vq(tmp_path / "vq-lite", "lite")
    code, err = _cli(capsys, "--data", dataset, "--vq", lite_vq, "--out", out, *base)
    assert code == 2 and "does not fit preset 'tiny'" in err and "codebook_size" in err

    code, err = _cli(capsys, "--data", dataset, "--vq", tmp_path / "novq", "--out", out, *base)
    assert code == 2 and "novq" in err

    code, err = _cli(capsys, "--data", dataset, "--vq", tiny_vq, "--out", out, *base, "--resume")
    assert code == 2 and "no checkpoint" in err

    code, err = _cli(
        capsys, "--data", dataset, "--vq", tiny_vq, "--out", out, *base, "--grow-layers", "3"
    )
    assert code == 2 and "--grow-layers deepens a trained model: give it with --init" in err
    assert not (out / "checkpoints").exists()

    code, err = _cli(
        capsys, "--data", dataset, "--vq", tiny_vq, "--out", out, *base[:4], "--batch-size", "64"
    )
    assert code == 2 and "fewer than one global batch" in err

    args = ("--data", dataset, "--vq", tiny_vq, "--out", out, *base, "--oversample-stable")
    code, err = _cli(capsys, *args, "pneumothorax")
    assert code == 2 and "'pneumothorax': expected FINDING=TIMES" in err
    code, err = _cli(capsys, *args, "pneumothorax=0")
    assert code == 2 and "pneumothorax=0: the factor must be a whole number >= 1" in err
    code, err = _cli(capsys, *args, "pneumothorx=2")
    assert code == 2 and "no training pair's annotation holds pneumothorx as stable" in err
    assert not (out / "checkpoints").exists()

    reuse = ("--reuse-codes", tmp_path / "nowhere")
    code, err = _cli(capsys, "--data", dataset, "--vq", tiny_vq, "--out", out, *base, *reuse)
    assert code == 2 and "--reuse-codes: " in err and "nowhere' is not a folder" in err


@pytest.mark.slow
def test_cli_trains_and_refuses_to_overwrite(tmp_path, capsys, dataset, tiny_vq):
    out = tmp_path / "run"
    args = ("--data", dataset, "--vq", tiny_vq, "--out", out, "--preset", "tiny")
    args += ("--steps", "3", "--batch-size", "2", "--eval-every", "3", "--save-every", "3")
    assert cli_main(["train", *map(str, args), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "tokens/s" in printed and "trained 3/3 steps" in printed
    assert (out / "pipeline" / "progemu.json").is_file()
    assert (out / "loss_curve.png").is_file()
    before = os.stat(out / "pipeline" / "model.safetensors").st_mtime_ns

    code, err = _cli(capsys, *args)
    assert code == 2 and "already holds a training run" in err
    assert os.stat(out / "pipeline" / "model.safetensors").st_mtime_ns == before

    code, err = _cli(capsys, *args[:-4], "--batch-size", "4", "--save-every", "3", "--resume")
    assert code == 2 and "differs from the checkpoint" in err and "batch_size" in err
    code, err = _cli(capsys, *args, "--interpretation-loss-weight", "3", "--resume")
    assert code == 2 and "interpretation_loss_weight: saved 1.0, now 3.0" in err


@pytest.mark.slow
def test_vq_from_a_train_vq_run_or_its_checkpoint(tmp_path):
    import torch

    from progemu_lite.tokenization.vq_train import train_vq

    images = np.stack([img for i in range(4) for img in _pair_images(i)])
    run = tmp_path / "vq-run"
    train_vq(images, preset="tiny", steps=2, out=run, progress=False, batch_size=4)
    finished = load_vq(run, "tiny")
    assert not finished.training and not any(p.requires_grad for p in finished.parameters())
    # The checkpoint of an unfinished run (only training_state/) loads to the same weights.
    state_only = load_vq(run / "training_state", "tiny")
    pairs = zip(finished.state_dict().items(), state_only.state_dict().values(), strict=True)
    for (name, a), b in pairs:
        assert torch.equal(a, b), name
    with pytest.raises(ValueError, match="does not fit preset 'lite'"):
        load_vq(run / "training_state", "lite")
    with pytest.raises(ValueError, match="does not fit preset 'lite'"):
        load_vq(run, "lite")
    with pytest.raises(FileNotFoundError, match="not a VQ tokenizer folder"):
        load_vq(tmp_path, "tiny")
    # The VQ of a float16 pipeline (as shipped) encodes in float32.
    from progemu_lite.model.pipeline import build_random

    half = build_random("tiny", seed=0).to(dtype=torch.float16)
    half.save_pretrained(tmp_path / "half")
    from_pipeline = load_vq(tmp_path / "half", "tiny")
    assert {p.dtype for p in from_pipeline.parameters()} == {torch.float32}
    saved = half.model.model.vqmodel.quantize.embedding.weight
    assert torch.equal(from_pipeline.quantize.embedding.weight, saved.float())


@pytest.mark.slow
def test_two_processes_share_each_step(dataset, tiny_vq, tmp_path):
    """Two CPU processes (torch.distributed, gloo) split each global batch between them."""
    import subprocess
    import sys

    out = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    command += ["-m", "progemu_lite.cli", "train", "--data", str(dataset), "--vq", str(tiny_vq)]
    command += ["--out", str(out), "--preset", "tiny", "--steps", "2", "--batch-size", "2"]
    command += ["--eval-every", "2", "--save-every", "2", "--quiet"]
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("trained 2/2 steps") == 1  # only the main process reports

    state = json.loads((out / "trainer_state.json").read_text())
    assert state["run"]["world_size"] == 2
    single = train(_config(dataset, tiny_vq, tmp_path / "single", steps=2, batch_size=4))
    # Same global batch of 4 pairs per step: the same tokens, nearly the same first loss (the
    # two processes average per-process means rather than all tokens at once).
    single_state = json.loads((tmp_path / "single" / "trainer_state.json").read_text())
    assert state["progress"]["tokens"] == single_state["progress"]["tokens"]
    assert state["progress"]["train_losses"][0] == pytest.approx(single.train_losses[0], rel=1e-3)


@pytest.mark.slow
def test_init_from_a_trained_pipeline_continues_learning(trained_run, dataset, tiny_vq, tmp_path):
    config = _config(dataset, None, tmp_path / "finetune", init=trained_run.pipeline_dir, steps=2)
    result = train(config)
    # Starts where the trained model was, far below a fresh model's first loss.
    assert result.train_losses[0] < 0.8 * trained_run.train_losses[0]
    assert abs(result.train_losses[0] - trained_run.train_losses[-1]) < 0.5
    # progemu.json names the pipeline it started from; how the embeddings began is that
    # pipeline's record, not this run's --visual-token-init default.
    facts = json.loads((result.pipeline_dir / "progemu.json").read_text())["training"]
    assert facts["init"] == str(trained_run.pipeline_dir) and facts["visual_token_init"] is None
    with pytest.raises(ValueError, match="is preset 'tiny', expected 'lite'"):
        train(_config(dataset, None, tmp_path / "x", init=trained_run.pipeline_dir, preset="lite"))
    with pytest.raises(ValueError, match="--visual-token-init starts a fresh decoder"):
        init = trained_run.pipeline_dir
        train(_config(dataset, None, tmp_path / "y", init=init, visual_token_init="codebook"))


@pytest.mark.slow
def test_a_later_stage_copies_the_image_codes_of_an_earlier_run(trained_run, dataset, tmp_path):
    earlier = tmp_path / "earlier"
    shutil.copytree(trained_run.out / "cache", earlier / "cache")
    # Marked codes (a different code for every image) show that they were copied, not encoded.
    codebook_size = load_vq(trained_run.pipeline_dir, "tiny").config.codebook_size
    marked = (np.load(trained_run.cache_path) + 1) % codebook_size
    np.save(earlier / "cache" / trained_run.cache_path.name, marked)
    init = trained_run.pipeline_dir
    config = _config(dataset, None, tmp_path / "next", init=init, steps=1, reuse_codes=(earlier,))
    result = train(config)
    assert np.array_equal(np.load(result.cache_path), marked)
    recorded = json.loads((result.out / "trainer_state.json").read_text())["config"]
    assert recorded["reuse_codes"] == [str(earlier)]


@pytest.mark.slow
def test_init_with_a_new_vq_fine_tunes_the_decoder_on_its_codes(trained_run, dataset, tmp_path):
    """--init and --vq: the pipeline's decoder and tokenizer, the other VQ (a retrained one)."""
    import torch
    from safetensors.torch import load_file

    from progemu_lite.tokenization.vq import build_vq, save_vq

    new_vq = tmp_path / "vq-seed1"
    save_vq(build_vq("tiny", seed=1), new_vq)
    out = tmp_path / "swapped"
    # A negligible learning rate: the saved weights are the ones the run started from.
    train(_config(dataset, new_vq, out, init=trained_run.pipeline_dir, steps=1, lr=1e-12))
    saved = load_file(out / "pipeline" / "model.safetensors")
    init = load_file(trained_run.pipeline_dir / "model.safetensors")
    vq = load_file(new_vq / "model.safetensors")
    vq_keys = {k: k.partition("vqmodel.")[2] for k in saved if "vqmodel." in k}
    assert vq_keys and set(vq_keys.values()) == set(vq)
    for key, vq_key in vq_keys.items():
        torch.testing.assert_close(saved[key], vq[vq_key])
    decoder_keys = [k for k in saved if k not in vq_keys]
    assert decoder_keys
    for key in decoder_keys:
        torch.testing.assert_close(saved[key], init[key], atol=1e-6, rtol=0)
    # A VQ of another preset is refused, naming the mismatch.
    other = save_random_vq(tmp_path / "vq-lite", "lite")
    with pytest.raises(ValueError, match="does not fit preset 'tiny'"):
        train(_config(dataset, other, tmp_path / "x", init=trained_run.pipeline_dir))


def test_visual_token_init_from_the_codebook(dataset, tiny_vq, tmp_path):
    """--visual-token-init codebook: the fresh decoder's visual rows start as a linear map of
    the VQ codebook (negligible learning rate: saved as they started); refused with --init."""
    import torch

    from progemu_lite.model.pipeline import ProgEmuPipeline

    out = tmp_path / "codebook"
    train(_config(dataset, tiny_vq, out, steps=1, lr=1e-12, visual_token_init="codebook"))
    pipe = ProgEmuPipeline.from_pretrained(out / "pipeline", progress=False)
    ids = pipe.builder.ids
    rows = pipe.model.get_input_embeddings().weight.detach()[ids.visual_offset :].double()
    codebook = pipe.model.model.vqmodel.quantize.embedding.weight.detach().double()
    x = torch.cat([codebook, torch.ones(len(codebook), 1, dtype=torch.float64)], 1)
    residual = rows - x @ torch.linalg.lstsq(x, rows).solution
    assert float((residual**2).sum() / ((rows - rows.mean(0)) ** 2).sum()) < 1e-4
    state = json.loads(next(out.glob("checkpoints/*/trainer_state.json")).read_text())
    assert state["run"]["visual_token_init"] == "codebook"
    assert pipe.metadata["training"]["visual_token_init"] == "codebook"
    assert "init" not in pipe.metadata["training"]
    with pytest.raises(ValueError, match="--visual-token-init must be one of random, codebook"):
        train(_config(dataset, tiny_vq, tmp_path / "x", visual_token_init="pixels"))


@pytest.mark.slow
def test_init_grown_deeper_starts_from_the_same_loss(trained_run, dataset, tiny_vq, tmp_path):
    """--grow-layers: the deeper model's first loss is the trained model's (same batch), it
    trains, saves its depth, and a resume must keep the same growth."""
    from progemu_lite.model.pipeline import ProgEmuPipeline

    same = train(_config(dataset, None, tmp_path / "same", init=trained_run.pipeline_dir, steps=2))
    config = _config(dataset, None, tmp_path / "grown", init=trained_run.pipeline_dir, steps=2)
    config.grow_layers = 3
    config.until = 1
    assert train(config).step == 1
    config.until, config.resume = None, True
    grown = train(config)
    assert grown.train_losses[0] == pytest.approx(same.train_losses[0], rel=1e-6)
    assert grown.train_losses[1] != same.train_losses[1]  # more parameters took the step
    pipe = ProgEmuPipeline.from_pretrained(grown.pipeline_dir, preset="tiny")
    assert pipe.model.config.text_config.num_hidden_layers == 3
    assert pipe.metadata["training"]["grow_layers"] == 3
    config.grow_layers = None
    with pytest.raises(ValueError, match="grow_layers: saved 3, now None"):
        train(config)
    with pytest.raises(ValueError, match="must be more than the decoder's 2"):
        train(_config(dataset, None, tmp_path / "x", init=trained_run.pipeline_dir, grow_layers=2))
    with pytest.raises(ValueError, match="--grow-layers deepens a trained model"):
        train(_config(dataset, tiny_vq, tmp_path / "y", grow_layers=3))


@pytest.mark.slow
def test_grown_layers_learn_at_their_own_rate(trained_run, dataset, tiny_vq, tmp_path):
    """--grown-layers-lr-scale: after one step the trained layers moved exactly as without it
    and the grown layers' zeroed output projections K times as far (Adam's first step is about
    lr per weight); the scale is recorded, and it needs --grow-layers."""
    import torch
    from safetensors.torch import load_file

    def one_step(name: str, scale: float) -> dict:
        config = _config(dataset, None, tmp_path / name, init=trained_run.pipeline_dir, steps=1)
        config.grow_layers, config.grown_layers_lr_scale, config.warmup_steps = 3, scale, 0
        result = train(config)
        training = json.loads((result.pipeline_dir / "progemu.json").read_text())["training"]
        assert training["grown_layers_lr_scale"] == scale
        return load_file(result.pipeline_dir / "model.safetensors")

    plain, scaled = one_step("plain", 1.0), one_step("scaled", 10.0)
    grown = "text_model.model.layers.2."  # 2 -> 3 layers inserts a copy of layer 1 after it
    trained_layers = [k for k in plain if ".layers." in k and not k.startswith(grown)]
    assert trained_layers
    for key in trained_layers:
        assert torch.equal(plain[key], scaled[key]), key
    for name in ("self_attn.o_proj.weight", "mlp.down_proj.weight"):
        ratio = scaled[grown + name].norm() / plain[grown + name].norm()
        assert ratio == pytest.approx(10.0, rel=0.05), name
    with pytest.raises(ValueError, match="--grown-layers-lr-scale sets the learning rate"):
        train(_config(dataset, tiny_vq, tmp_path / "x", grown_layers_lr_scale=10.0))
    with pytest.raises(ValueError, match="--grown-layers-lr-scale must be positive"):
        train(_config(dataset, tiny_vq, tmp_path / "y", grown_layers_lr_scale=0.0))


def test_interpretation_weighted_loss(trained_run, dataset, tmp_path):
    """Weight 1 is transformers' own loss; a larger weight counts the interpretation's tokens
    (after the last image end) that many times, and a weighted fine-tune runs end to end."""
    import torch

    from progemu_lite.model.pipeline import ProgEmuPipeline

    pipe = ProgEmuPipeline.from_pretrained(trained_run.pipeline_dir)
    ids = pipe.builder.ids
    codes = np.arange(64).reshape(8, 8) % 256
    batch = pipe.builder.collate(
        [
            pipe.builder.training_ids(codes, "The left effusion worsens.", codes, "Larger."),
            pipe.builder.training_ids(None, "", codes, "No change in the heart size."),
        ]
    )
    labels = batch.pop("labels")
    with torch.no_grad():
        logits = pipe.model(**batch).logits
        plain = pipe.model(**batch, labels=labels).loss
    assert torch.allclose(weighted_sequence_loss(logits, labels, ids.eoi, 1.0), plain, atol=1e-5)
    # by hand: per-token losses, interpretation tokens (after the last EOI) counted 4 times
    targets = labels[:, 1:]
    per_token = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]),
        targets.clamp(min=0).reshape(-1),
        reduction="none",
    ).view(targets.shape)
    weights = torch.zeros_like(per_token)
    for row in range(2):
        valid = (targets[row] != -100).nonzero().flatten()
        last_eoi = int((targets[row] == ids.eoi).nonzero().max())
        weights[row, valid] = 1.0
        weights[row, last_eoi + 1 : int(valid.max()) + 1] = 4.0
    expected = (per_token * weights).sum() / weights.sum()
    assert torch.allclose(weighted_sequence_loss(logits, labels, ids.eoi, 4.0), expected)
    assert not torch.allclose(expected, plain)

    config = _config(dataset, None, tmp_path / "weighted", init=trained_run.pipeline_dir, steps=2)
    config.interpretation_loss_weight = 3.0
    assert train(config).pipeline_dir.is_dir()
    bad = _config(dataset, None, tmp_path / "bad", init=trained_run.pipeline_dir, steps=2)
    bad.interpretation_loss_weight = 0.0
    with pytest.raises(ValueError, match="interpretation-loss-weight"):
        train(bad)
