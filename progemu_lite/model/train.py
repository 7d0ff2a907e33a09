"""Training ProgEmu on Hugging Face accelerate: next-token cross-entropy over the whole stream.

The same loop runs on a laptop CPU (fp32), one GPU (bf16) and many GPUs or nodes under
``accelerate launch`` (DeepSpeed ZeRO-3 or FSDP; docs/training.md). What a step does::

    BOS + image(prior) + prompt + image(follow-up) + interpretation + EOS   -> input_ids, labels
    loss = CE(next token) over every real token; AdamW, warmup + cosine, gradient clipping

Design choices, and why:

* Images are tokenised ONCE by the frozen VQ into a cache file (``RUN_DIR/cache``). The VQ never
  sees ``model.train()``: that call would flip its BatchNorm layers into batch statistics and
  change the codes (DESIGN.md section 4), so it stays in eval mode with gradients off.
* Which pairs a step sees and how they are augmented is a pure function of ``(seed, step)``, not
  of a data loader's hidden state. ``--resume`` therefore reproduces an uninterrupted run exactly:
  model, optimizer, scheduler and RNG states come back through ``accelerator.save_state``, the data
  order is recomputed.
* The learning-rate scheduler is not ``prepare``d: accelerate would step it once per process per
  optimizer step. It is registered for checkpointing instead and stepped once per optimizer step.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from progemu_lite.files import (
    atomic_write,
    atomic_write_json,
    atomic_write_text,
    replace_folder,
)

if TYPE_CHECKING:  # heavy: imported where used
    import torch

# From-scratch models want a much larger step than the official fine-tuning of the pretrained
# Emu3-Gen (1e-5, DESIGN.md section 3).
DEFAULT_LEARNING_RATES = {"tiny": 1e-3, "lite": 5e-4, "full": 1e-5}
CACHE_FORMAT_VERSION = 1
_STATE_FILE = "trainer_state.json"
_CHECKPOINTS = "checkpoints"


@dataclass
class TrainConfig:
    """Everything ``progemu-lite train`` takes (see ``progemu-lite train --help``)."""

    data: Path
    out: Path
    vq: Path | None = None  # the trained VQ tokenizer folder (train-vq); with ``init``: its new VQ
    init: Path | None = None  # start from this pipeline folder (its weights, tokenizer and VQ)
    grow_layers: int | None = None  # deepen the --init decoder to this many layers first (grow.py)
    # The grown layers' learning rate as a multiple of ``lr``: at a fine-tuning rate their zeroed
    # output projections hardly grew (the model card's 4 -> 8 run); this gives them their own.
    grown_layers_lr_scale: float = 1.0
    # earlier runs (or their cache folders) whose codes of identical images are copied, not encoded
    reuse_codes: Sequence[Path] = ()
    preset: str = "lite"
    steps: int | None = None  # optimizer steps; exclusive with ``epochs``
    epochs: float | None = None  # default when neither is given: 30 (the paper's)
    batch_size: int = 8  # pairs per device per micro-batch
    grad_accum: int = 1
    lr: float | None = None  # default: DEFAULT_LEARNING_RATES[preset]
    warmup_steps: int | None = None  # default: 3% of the steps
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    seed: int = 0
    eval_every: int = 200
    save_every: int = 500
    keep_checkpoints: int = 2
    max_val_pairs: int | None = None  # validate on a fixed subset to keep it quick
    resume: bool = False
    until: int | None = None  # stop this session at that step (checkpointed); --resume goes on
    tokenizer: Path | None = None  # a saved text tokenizer; default: train one on the train split
    # auto: bf16 on CUDA, fp32 on CPU (or what accelerate launch set); bf16 also works on a CPU
    mixed_precision: str = "auto"
    gradient_checkpointing: bool = False
    # Weight of the interpretation's tokens (after the follow-up image) in the loss; 1 = the
    # official plain cross-entropy. The interpretation is ~7% of a lite sequence's tokens, so a
    # small model learns to read the prompt into it last; a weight > 1 brings that forward.
    interpretation_loss_weight: float = 1.0
    # How a fresh decoder's visual-token embeddings start: "random" (transformers' init) or
    # "codebook" (from the VQ's codebook vectors: codes that look alike start alike;
    # progemu_lite.model.codebook_init).
    visual_token_init: str = "random"
    # Weight of the auxiliary loss that asks the decoder to name the prior's CheXpert findings
    # at the prior's <|image end|> (progemu_lite.model.reading_loss); 0 = off, the official loss.
    reading_loss_weight: float = 0.0
    # {finding: times}: a training pair whose prior holds that finding unchanged (annotated
    # "stable") appears that many times in each epoch's order, so the rarest findings the
    # interpretation must read off the prior are seen more often (oversampled_pool).
    oversample_stable: Mapping[str, int] = field(default_factory=dict)
    progress: bool = True


@dataclass
class TrainResult:
    """What a training session did; also written to ``RUN_DIR/trainer_state.json``."""

    out: Path
    pipeline_dir: Path | None  # None when the session stopped early (``until``)
    step: int
    total_steps: int
    train_losses: list[float]
    val_losses: list[tuple[int, float]]
    tokens_per_second: float
    cache_path: Path
    cache_reused: bool
    loss_curve: Path
    checkpoints: list[Path] = field(default_factory=list)
    is_main_process: bool = True  # False in the other processes of a distributed run


# ----------------------------------------------------------------------------------------------
# Data: pairs, the code cache, examples, batches


@dataclass
class PairCodes:
    """A pair reduced to what the model reads: two code grids and two texts."""

    key: str  # the pair folder relative to the data root
    prior: np.ndarray  # int (h, w)
    followup: np.ndarray  # int (h, w)
    prompt: str
    interpretation: str
    # the prior's 14 CheXpert labels (1, 0, -100 unknown): the reading loss's targets
    prior_labels: np.ndarray | None = None


TRAIN_SPLIT = "train"
# Spellings of the validation split seen in the wild; the first is what the phantom writes.
VALIDATION_SPLITS = ("val", "valid", "validate", "validation")


def load_splits(root: Path) -> tuple[list, list]:
    """(train, validation) PairRecords under an ICG-CXR-like tree, each sorted by pair folder."""
    from progemu_lite.data.icgcxr import iter_pairs

    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"data folder {str(root)!r} does not exist")
    records = sorted(iter_pairs(root), key=lambda r: _pair_key(root, r))
    train = [r for r in records if r.split == TRAIN_SPLIT]
    val = [r for r in records if r.split in VALIDATION_SPLITS]
    if not train:
        found = sorted({str(r.split) for r in records})
        raise ValueError(
            f"no training pairs under {root}: found {len(records)} pairs"
            + (f" with splits {', '.join(found)}" if records else "")
            + f'; training needs pairs whose JSON says "split": "{TRAIN_SPLIT}"'
        )
    return train, val


def _pair_key(root: Path, record) -> str:
    return Path(os.path.relpath(record.folder, root)).as_posix()


def _file_fingerprint(path: Path) -> list:
    stat = os.stat(path)
    return [stat.st_size, stat.st_mtime_ns]


def weights_fingerprint(module: torch.nn.Module) -> str:
    """sha256 over a module's parameters and buffers (names, shapes, dtypes, bytes)."""
    import torch

    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        array = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tuple(array.shape)}:{array.dtype}".encode())
        digest.update(array.view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def cache_key(root: Path, records: Sequence, vq_hash: str, image_size: int) -> str:
    """Names the cache: the pair files (path, size, mtime), the VQ's weights and the image size.

    Any change to an image or to the tokenizer gives a new key, hence a fresh encoding.
    """
    root = Path(root)
    entries = [
        [
            _pair_key(root, r),
            _file_fingerprint(r.prior_path),
            _file_fingerprint(r.followup_path),
        ]
        for r in records
    ]
    payload = json.dumps(
        {"v": CACHE_FORMAT_VERSION, "pairs": entries, "vq": vq_hash, "size": image_size},
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _fit_image(image: np.ndarray, size: int, where: str) -> np.ndarray:
    """A grayscale uint8 (size, size) image; real ICG-CXR pairs are 512x512, lite wants 128."""
    from PIL import Image

    image = np.asarray(image)
    if image.ndim == 3:
        raise ValueError(f"{where}: expected a grayscale image, got shape {image.shape}")
    if image.dtype != np.uint8:
        raise ValueError(f"{where}: expected 8-bit pixels, got {image.dtype}")
    if image.shape != (size, size):
        image = np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BICUBIC))
    return image


IMAGE_DIGEST_BYTES = 16


def image_digest(image: np.ndarray) -> bytes:
    """What identifies an image for the VQ: a hash of the exact pixels it is given."""
    digest = hashlib.blake2b(digest_size=IMAGE_DIGEST_BYTES)
    digest.update(f"{image.shape}:{image.dtype}".encode())
    digest.update(np.ascontiguousarray(image).tobytes())
    return digest.digest()


class ReusableCodes:
    """Codes of images some earlier run already encoded with the same VQ, by image digest.

    Training on a bigger data set after a smaller one (the lite chain: 2,000 -> 48,000
    patients) meets many of the same images again; their codes are copied (about 40x faster on
    2 cores, benchmarks/code_cache_speed.py) instead of being encoded once more. A cache
    qualifies when it is finished and was written with the same VQ weights and image size.
    """

    def __init__(self, codes: np.ndarray, digests: np.ndarray, sources: list[Path]):
        self.codes = codes  # int (M, h, w)
        self.sources = sources
        self._row = {bytes(d): i for i, d in enumerate(digests)}

    def get(self, digest: bytes) -> np.ndarray | None:
        row = self._row.get(digest)
        return None if row is None else self.codes[row]

    @classmethod
    def load(cls, folders: Sequence[Path], vq_hash: str, image_size: int) -> ReusableCodes | None:
        """The finished caches in ``folders`` (run folders or their ``cache`` folders).

        Copying is only a shortcut, so a folder without a usable cache is a warning saying why,
        not an error: every image is then encoded as usual. None when nothing is usable.
        """
        codes, digests, sources = [], [], []
        for folder in map(Path, folders):
            if not folder.is_dir():
                raise FileNotFoundError(f"--reuse-codes: {str(folder)!r} is not a folder")
            cache_dir = folder / "cache" if (folder / "cache").is_dir() else folder
            skipped, usable = [], 0
            for index_path in sorted(cache_dir.glob("codes-*.json")):
                index = json.loads(index_path.read_text())
                digest_path = index_path.with_suffix(".digests.npy")
                if "vq" not in index or not digest_path.exists():
                    skipped.append(f"{index_path.name} (written before caches kept digests)")
                elif index["vq"] != vq_hash:
                    skipped.append(f"{index_path.name} (another VQ tokenizer)")
                elif index["image_size"] != image_size:
                    skipped.append(f"{index_path.name} ({index['image_size']} px images)")
                else:
                    pair_codes = np.load(index_path.with_suffix(".npy"))
                    codes.append(pair_codes.reshape(-1, *pair_codes.shape[2:]))
                    digests.append(np.load(digest_path).reshape(-1, IMAGE_DIGEST_BYTES))
                    sources.append(index_path.with_suffix(".npy"))
                    usable += 1
            if not usable:
                found = "found " + ", ".join(skipped) if skipped else "no finished cache"
                warnings.warn(
                    f"--reuse-codes: no code cache of this VQ tokenizer in {cache_dir} ({found}); "
                    "its images are encoded again",
                    stacklevel=2,
                )
        if not sources:
            return None
        return cls(np.concatenate(codes), np.concatenate(digests), sources)


def encode_pair_cache(
    root: Path,
    records: Sequence,
    vqmodel,
    image_size: int,
    cache_dir: Path,
    *,
    reuse_from: Sequence[Path] = (),
    batch_size: int = 16,
    segment_pairs: int = 2048,
    progress: bool = True,
) -> tuple[np.ndarray, Path, bool]:
    """Codes of every pair's prior and follow-up: int array (N, 2, h, w), in ``records`` order.

    Encodes once with the frozen VQ and stores ``codes-<key>.npy`` + ``codes-<key>.json`` in
    ``cache_dir``; a later call with the same files and VQ reads them back. Returns
    ``(codes, path, reused)``. Beside them ``codes-<key>.digests.npy`` holds each image's
    :func:`image_digest`: a later run on other files copies the codes of identical images from
    the caches or run folders in its ``reuse_from`` (``train --reuse-codes``) instead of
    encoding them again.

    The encoding is saved as it goes, ``segment_pairs`` pairs per file in
    ``codes-<key>.parts/``, so a run stopped part-way (Ctrl-C, a session that ends) resumes
    from its last whole segment instead of the first pair: 72,000 lite pairs take some 20
    minutes on 2 cores. The segments are removed once the whole cache is written.
    """
    import torch
    from tqdm.auto import tqdm

    from progemu_lite.data.icgcxr import load_pair_images
    from progemu_lite.tokenization.vq import encode_images

    root, cache_dir = Path(root), Path(cache_dir)
    vq_hash = weights_fingerprint(vqmodel)
    key = cache_key(root, records, vq_hash, image_size)
    codes_path = cache_dir / f"codes-{key}.npy"
    index_path = cache_dir / f"codes-{key}.json"
    digests_path = cache_dir / f"codes-{key}.digests.npy"
    parts_dir = cache_dir / f"codes-{key}.parts"
    pair_keys = [_pair_key(root, r) for r in records]
    if codes_path.exists() and index_path.exists():
        index = json.loads(index_path.read_text())
        if index.get("pairs") == pair_keys:
            return np.load(codes_path), codes_path, True
    reuse = ReusableCodes.load(reuse_from, vq_hash, image_size) if reuse_from else None

    def fitted_images(batch) -> tuple[list[np.ndarray], list[bytes]]:
        images = []
        for record in batch:
            prior, followup = load_pair_images(record)
            where = _pair_key(root, record)
            images.append(_fit_image(prior, image_size, f"{where} prior"))
            images.append(_fit_image(followup, image_size, f"{where} follow-up"))
        return images, [image_digest(image) for image in images]

    # The key covers every pair's files, so a segment named by its pair range under this key
    # holds exactly those pairs' codes; one left by another segment size is simply not used.
    segments = [
        (start, min(start + segment_pairs, len(records)))
        for start in range(0, len(records), segment_pairs)
    ]
    vqmodel.eval()  # never batch statistics: they would change the codes
    chunks, digest_chunks, copied = [], [], 0
    with (
        torch.no_grad(),
        tqdm(
            total=len(records),
            desc="encoding images (once)",
            unit="pair",
            disable=not progress,
        ) as bar,
    ):
        for start, stop in segments:
            part_path = parts_dir / f"pairs-{start:08d}-{stop:08d}.npy"
            part_digests = part_path.with_suffix(".digests.npy")
            if part_path.exists():
                chunks.append(np.load(part_path))
                if part_digests.exists():
                    digest_chunks.append(np.load(part_digests))
                else:  # a segment written before caches kept digests: the pixels say them
                    digests = [fitted_images(records[i : i + 1])[1] for i in range(start, stop)]
                    digest_chunks.append(_digest_array(digests))
                bar.update(stop - start)
                continue
            segment, segment_digests = [], []
            for first in range(start, stop, batch_size):
                images, digests = fitted_images(records[first : min(first + batch_size, stop)])
                known = [None if reuse is None else reuse.get(d) for d in digests]
                missing = [i for i, codes in enumerate(known) if codes is None]
                if missing:
                    encoded = encode_images(vqmodel, np.stack([images[i] for i in missing]))
                    for i, codes in zip(missing, encoded, strict=True):
                        known[i] = codes
                copied += len(images) - len(missing)
                codes = np.stack(known)
                segment.append(codes.reshape(-1, 2, *codes.shape[1:]))
                segment_digests.append(digests)
                bar.update(len(images) // 2)
            segment = np.concatenate(segment).astype(np.int32)
            segment_digests = _digest_array(segment_digests)
            # Digests first: a segment's codes on disk promise that its digests are there too.
            atomic_write(part_digests, lambda p, a=segment_digests: np.save(p, a), suffix=".npy")
            atomic_write(part_path, lambda p, a=segment: np.save(p, a), suffix=".npy")
            chunks.append(segment)
            digest_chunks.append(segment_digests)
    if reuse is not None and progress:
        sources = ", ".join(str(s) for s in reuse.sources)
        tqdm.write(f"copied the codes of {copied:,} of {2 * len(records):,} images from {sources}")
    codes = np.concatenate(chunks)
    # int16 holds every code of a 32,768-entry codebook (the full VQ): half the disk and memory.
    codes = codes.astype(np.int16 if codes.max() < 2**15 else np.int32)

    cache_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(codes_path, lambda p: np.save(p, codes), suffix=".npy")
    digests = np.concatenate(digest_chunks)
    atomic_write(digests_path, lambda p: np.save(p, digests), suffix=".npy")
    index = {
        "version": CACHE_FORMAT_VERSION,
        "image_size": image_size,
        "vq": vq_hash,
        "pairs": pair_keys,
    }
    # The index last: its presence is what marks the cache finished.
    atomic_write_json(index_path, index)
    shutil.rmtree(parts_dir, ignore_errors=True)
    return codes, codes_path, False


def _digest_array(digests: Sequence[Sequence[bytes]]) -> np.ndarray:
    """Pairs' image digests as uint8 (N, 2, IMAGE_DIGEST_BYTES); ``digests`` is batches of them."""
    flat = b"".join(d for batch in digests for d in batch)
    return np.frombuffer(flat, dtype=np.uint8).reshape(-1, 2, IMAGE_DIGEST_BYTES).copy()


def step_indices(step: int, n_pairs: int, global_batch: int, seed: int) -> tuple[int, np.ndarray]:
    """(epoch, pair indices) of a global optimizer step: a fresh permutation each epoch.

    A pure function of its arguments, which is what makes ``--resume`` exact. The pairs left over
    after the last full batch of an epoch are skipped that epoch (different ones each epoch).
    """
    steps_per_epoch = n_pairs // global_batch
    epoch, within = divmod(step, steps_per_epoch)
    order = np.random.default_rng([seed, epoch]).permutation(n_pairs)
    return epoch, order[within * global_batch : (within + 1) * global_batch]


def oversampled_pool(records: Sequence, oversample: Mapping[str, int]) -> np.ndarray:
    """The training-pair indices one epoch draws its order from: each pair once, and a pair
    whose annotation holds a finding of ``oversample`` as ``stable`` as many times as the largest
    such factor. Pairs without an annotation (real data may lack one) appear once."""
    times = np.ones(len(records), dtype=np.int64)
    matched = dict.fromkeys(oversample, 0)
    for i, record in enumerate(records):
        stable = {a.finding for a in record.annotation or () if a.direction == "stable"}
        for finding, factor in oversample.items():
            if finding in stable:
                times[i] = max(times[i], factor)
                matched[finding] += 1
    unmatched = [finding for finding, count in matched.items() if count == 0]
    if unmatched:
        raise ValueError(
            f"--oversample-stable: no training pair's annotation holds {', '.join(unmatched)} "
            "as stable (finding names are the annotation's, e.g. pleural_effusion)"
        )
    return np.repeat(np.arange(len(records)), times)


# ----------------------------------------------------------------------------------------------
# The loss curve


def plot_loss_curve(
    train_losses: Sequence[float],
    val_losses: Sequence[tuple[int, float]],
    path: Path,
    title: str = "ProgEmu training",
) -> Path:
    """Train loss per step (raw and smoothed) and validation loss, as a PNG (written atomically)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    path = Path(path)
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    steps = np.arange(1, len(train_losses) + 1)
    if len(train_losses):
        ax.plot(steps, train_losses, color="tab:blue", alpha=0.3, lw=1, label="train (per step)")
        ax.plot(steps, _ema(train_losses), color="tab:blue", lw=2, label="train (smoothed)")
    if len(val_losses):
        val_steps, val_values = zip(*val_losses, strict=True)
        ax.plot(val_steps, val_values, "o-", color="tab:orange", lw=2, label="validation")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy per token (nats)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    atomic_write(path, lambda p: fig.savefig(p, format="png"), suffix=".png")
    plt.close(fig)
    return path


def _ema(values: Sequence[float]) -> np.ndarray:
    """Debiased exponential moving average over about a twentieth of the run (TensorBoard-style):
    no lag towards the first value, whatever the run's length."""
    weight = 1.0 - 1.0 / max(2.0, len(values) / 20)
    smoothed, current = [], 0.0
    for t, value in enumerate(values, start=1):
        current = weight * current + (1 - weight) * value
        smoothed.append(current / (1 - weight**t))
    return np.asarray(smoothed)


# ----------------------------------------------------------------------------------------------
# The loop


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 matrix products natively (AVX512-BF16 or AMX), which makes
    bf16 autocast faster than fp32 (about 1.3x a `lite` step on the course machine)."""
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch built without oneDNN
        return False


def _resolve_mixed_precision(choice: str) -> str | None:
    import torch

    if choice == "bf16" and not torch.cuda.is_available() and not cpu_has_native_bf16():
        warnings.warn(
            "--mixed-precision bf16 on a CPU without bf16 instructions (AVX512-BF16 or AMX) is "
            "emulated and slower than fp32; --mixed-precision no is faster here",
            stacklevel=2,
        )
    if choice != "auto":
        return choice
    if os.environ.get("ACCELERATE_MIXED_PRECISION"):
        return None  # `accelerate launch` (or its config file) decided
    return "bf16" if torch.cuda.is_available() else "no"


def _check_config(config: TrainConfig) -> None:
    from progemu_lite.tokenization.vq import IMAGE_SIZES

    if config.preset not in IMAGE_SIZES:
        raise ValueError(
            f"unknown preset {config.preset!r}; choose one of {', '.join(IMAGE_SIZES)}"
        )
    if config.steps is not None and config.epochs is not None:
        raise ValueError("give either --steps or --epochs, not both")
    for name in ("batch_size", "grad_accum", "eval_every", "save_every", "keep_checkpoints"):
        if getattr(config, name) < 1:
            raise ValueError(f"{name.replace('_', '-')} must be at least 1")
    if config.until is not None and config.until < 1:
        raise ValueError("--until must be at least 1")
    if config.steps is not None and config.steps < 1:
        raise ValueError("--steps must be at least 1")
    if config.epochs is not None and config.epochs <= 0:
        raise ValueError("--epochs must be positive")
    if config.lr is not None and config.lr <= 0:
        raise ValueError("--lr must be positive")
    if not config.interpretation_loss_weight > 0:
        raise ValueError("--interpretation-loss-weight must be positive")
    if not config.reading_loss_weight >= 0:
        raise ValueError("--reading-loss-weight must be zero (off) or positive")
    if config.grow_layers is not None and config.init is None:
        raise ValueError("--grow-layers deepens a trained model: give it with --init")
    if not config.grown_layers_lr_scale > 0:
        raise ValueError("--grown-layers-lr-scale must be positive")
    if config.grown_layers_lr_scale != 1 and config.grow_layers is None:
        raise ValueError("--grown-layers-lr-scale sets the learning rate of --grow-layers' layers")
    for finding, times in config.oversample_stable.items():
        if isinstance(times, bool) or not isinstance(times, int) or times < 1:
            raise ValueError(
                f"--oversample-stable {finding}={times!r}: the factor must be a whole number >= 1"
            )
    from progemu_lite.model.codebook_init import VISUAL_TOKEN_INITS

    if config.visual_token_init not in VISUAL_TOKEN_INITS:
        raise ValueError(
            f"--visual-token-init must be one of {', '.join(VISUAL_TOKEN_INITS)}; "
            f"got {config.visual_token_init!r}"
        )
    if config.visual_token_init != "random" and config.init is not None:
        raise ValueError(
            "--visual-token-init starts a fresh decoder; an --init pipeline brings trained "
            "embeddings"
        )
    if not Path(config.data).is_dir():
        raise FileNotFoundError(f"data folder {str(config.data)!r} does not exist")
    for folder in config.reuse_codes:
        if not Path(folder).is_dir():
            raise FileNotFoundError(f"--reuse-codes: {str(folder)!r} is not a folder")


def _checkpoint_dirs(out: Path) -> list[Path]:
    folder = out / _CHECKPOINTS
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.is_dir() and p.name.startswith("step-")]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def train(config: TrainConfig) -> TrainResult:
    """Train (or ``resume``) a ProgEmu model; see the module docstring and docs/training.md."""
    import torch
    from accelerate import Accelerator
    from accelerate.utils import DistributedType, set_seed
    from tqdm.auto import tqdm
    from transformers import get_cosine_schedule_with_warmup

    from progemu_lite.tokenization.sequence import SequenceBuilder
    from progemu_lite.tokenization.vq import IMAGE_SIZES, load_vq

    _check_config(config)
    out = Path(config.out)
    checkpoints = _checkpoint_dirs(out)
    if config.resume and not checkpoints:
        raise FileNotFoundError(f"--resume: no checkpoint under {out / _CHECKPOINTS}")
    if not config.resume and (checkpoints or (out / _STATE_FILE).exists()):
        raise ValueError(
            f"{out} already holds a training run; pass --resume to continue it "
            "or choose another --out"
        )

    mixed_precision = _resolve_mixed_precision(config.mixed_precision)
    try:
        accelerator = Accelerator(
            mixed_precision=mixed_precision, gradient_accumulation_steps=config.grad_accum
        )
    except ValueError as error:
        if "already been initialized" not in str(error):
            raise
        # accelerate keeps one precision per process (AcceleratorState is a singleton).
        raise ValueError(
            f"--mixed-precision {config.mixed_precision} differs from an earlier training run in "
            "this Python process, and accelerate allows one setting per process: restart the "
            "kernel (or run `progemu-lite train` in a fresh process) to change it"
        ) from error
    main = accelerator.is_main_process
    set_seed(config.seed)
    reading = config.reading_loss_weight > 0
    if reading and accelerator.distributed_type == DistributedType.DEEPSPEED:
        raise ValueError(
            "--reading-loss-weight trains a probe beside the model, a second model that "
            "accelerate's DeepSpeed integration cannot prepare; use DDP or FSDP, or leave it 0"
        )

    # -- data and the image-code cache -----------------------------------------------------------
    root = Path(config.data)
    train_records, val_records = load_splits(root)
    world = accelerator.num_processes
    global_batch = config.batch_size * config.grad_accum * world
    if len(train_records) < global_batch:
        raise ValueError(
            f"the training split has {len(train_records)} pairs, fewer than one global batch "
            f"({config.batch_size} per device x {config.grad_accum} accumulation x {world} "
            f"processes = {global_batch}); lower --batch-size"
        )
    init = None
    grown_positions: list[int] = []  # the decoder layers --grow-layers inserted
    if config.init is not None:
        import torch

        from progemu_lite.model.pipeline import ProgEmuPipeline

        # Load on the CPU in full precision: accelerate places (and shards) the model, and
        # training the full model on CPU-resident weights is what ZeRO-3/FSDP expect.
        init = ProgEmuPipeline.from_pretrained(
            config.init, preset=config.preset, device="cpu", dtype=torch.float32, force=True
        )
        if config.grow_layers is not None:
            from progemu_lite.model.grow import grow_decoder_depth

            grown_positions = grow_decoder_depth(init.model, config.grow_layers)
        if config.vq is not None:
            # A retrained tokenizer (e.g. `train-vq --init` of this pipeline's VQ) replaces the
            # pipeline's: the decoder is fine-tuned on the new codes and saved with that VQ.
            init.model.model.vqmodel = load_vq(config.vq, config.preset)
        vqmodel = init.model.model.vqmodel
        _freeze_vq(init.model)
    elif config.vq is None:
        raise ValueError("--vq (a trained VQ tokenizer folder) or --init (a pipeline) is required")
    else:
        vqmodel = load_vq(config.vq, config.preset)
    image_size = IMAGE_SIZES[config.preset]
    vqmodel.to(accelerator.device)  # encoding 512x512 images is GPU work for the full preset
    with accelerator.main_process_first():
        codes, cache_path, cache_reused = encode_pair_cache(
            root,
            train_records + val_records,
            vqmodel,
            image_size,
            out / "cache",
            reuse_from=config.reuse_codes,
            progress=config.progress and main,
        )
    train_pairs = _pair_codes(root, train_records, codes[: len(train_records)])
    val_pairs = _pair_codes(root, val_records, codes[len(train_records) :])
    if config.max_val_pairs is not None:
        val_pairs = val_pairs[: config.max_val_pairs]
    # What an epoch's order is drawn from: every pair once, oversampled ones more often.
    epoch_pool = oversampled_pool(train_records, config.oversample_stable)

    # -- tokenizer and model ---------------------------------------------------------------------
    with accelerator.main_process_first():  # the main process trains and saves it first
        tokenizer = _text_tokenizer(
            config,
            out,
            train_records,
            vqmodel.config.codebook_size,
            main,
            given=None if init is None else init.tokenizer,
        )
    builder = SequenceBuilder(tokenizer)
    if init is not None:
        model = init.model
    else:
        model = _build_model(config.preset, tokenizer, vqmodel, config.seed)
        if config.visual_token_init == "codebook":
            from progemu_lite.model.codebook_init import init_visual_tokens_from_codebook

            init_visual_tokens_from_codebook(model, builder.ids, config.seed)
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    trainable = [p for p in model.parameters() if p.requires_grad]

    # -- schedule ---------------------------------------------------------------------------------
    steps_per_epoch = len(epoch_pool) // global_batch
    if config.steps is not None:
        total_steps = config.steps
    else:
        total_steps = max(1, round((config.epochs or 30) * steps_per_epoch))
    lr = config.lr if config.lr is not None else DEFAULT_LEARNING_RATES[config.preset]
    warmup = config.warmup_steps if config.warmup_steps is not None else round(0.03 * total_steps)
    run_defining = {
        "preset": config.preset,
        "batch_size": config.batch_size,
        "grad_accum": config.grad_accum,
        "seed": config.seed,
        "lr": lr,
        "warmup_steps": warmup,
        "weight_decay": config.weight_decay,
        "max_grad_norm": config.max_grad_norm,
        "total_steps": total_steps,
        "world_size": world,
        "cache_key": cache_path.stem,
        "interpretation_loss_weight": config.interpretation_loss_weight,
        "mixed_precision": accelerator.mixed_precision,
        "grow_layers": config.grow_layers,
        "grown_layers_lr_scale": config.grown_layers_lr_scale,
        "visual_token_init": config.visual_token_init,
        "reading_loss_weight": config.reading_loss_weight,
        "oversample_stable": dict(sorted(config.oversample_stable.items())),
    }

    if reading:
        from progemu_lite.model.reading_loss import FinalHiddenStates, ReadingHead, reading_loss

        head = ReadingHead(model.config.text_config.hidden_size)
        trainable += list(head.parameters())
    param_groups = [{"params": trainable}]
    if grown_positions and config.grown_layers_lr_scale != 1:
        grown_params = [
            p
            for position in grown_positions
            for p in model.model.text_model.layers[position].parameters()
            if p.requires_grad
        ]
        grown_ids = {id(p) for p in grown_params}
        param_groups = [
            {"params": [p for p in trainable if id(p) not in grown_ids]},
            {"params": grown_params, "lr": lr * config.grown_layers_lr_scale},
        ]
    # The cosine schedule scales each group's own learning rate.
    optimizer = torch.optim.AdamW(param_groups, lr=lr, weight_decay=config.weight_decay)
    scheduler = get_cosine_schedule_with_warmup(optimizer, warmup, total_steps)
    if reading:  # prepared with the model, so that save_state/load_state keep it for --resume
        model, head, optimizer = accelerator.prepare(model, head, optimizer)
        final_states = FinalHiddenStates(accelerator.unwrap_model(model))
    else:
        model, optimizer = accelerator.prepare(model, optimizer)
    if accelerator.gradient_accumulation_steps != config.grad_accum:
        raise ValueError(
            f"--grad-accum {config.grad_accum} disagrees with the accelerate/DeepSpeed config "
            f"({accelerator.gradient_accumulation_steps}); make them equal"
        )
    accelerator.register_for_checkpointing(scheduler)
    _freeze_vq(accelerator.unwrap_model(model))

    # -- resume ------------------------------------------------------------------------------------
    state = {"step": 0, "train_losses": [], "val_losses": [], "tokens": 0, "train_seconds": 0.0}
    if reading:
        state["reading_losses"] = []
    if config.resume:
        latest = checkpoints[-1]
        saved = json.loads((latest / _STATE_FILE).read_text())
        saved["run"].setdefault("reading_loss_weight", 0.0)  # runs from before the option
        saved["run"].setdefault("grown_layers_lr_scale", 1.0)
        saved["run"].setdefault("oversample_stable", {})
        mismatched = {
            k: (saved["run"][k], v)
            for k, v in run_defining.items()
            # a key the checkpoint lacks was not recorded yet when it was written
            if k in saved["run"] and saved["run"][k] != v
        }
        if mismatched:
            detail = ", ".join(f"{k}: saved {a!r}, now {b!r}" for k, (a, b) in mismatched.items())
            raise ValueError(f"--resume: this run differs from the checkpoint ({detail})")
        accelerator.load_state(str(latest / "state"))
        state = saved["progress"]

    # -- loop ------------------------------------------------------------------------------------
    def micro_batches(step: int) -> list[dict]:
        epoch, positions = step_indices(step, len(epoch_pool), global_batch, config.seed)
        # this process's share; augmented by pool position, so a repeated pair varies
        mine = positions[accelerator.process_index :: world]
        pairs = [train_pairs[epoch_pool[p]] for p in mine]
        examples = [
            training_example(pair, builder, augmentation_rng(config.seed, epoch, p))
            for pair, p in zip(pairs, mine, strict=True)
        ]
        batches = []
        for k in range(0, len(examples), config.batch_size):
            batch = builder.collate(examples[k : k + config.batch_size])
            if reading:
                labels = [pair.prior_labels for pair in pairs[k : k + config.batch_size]]
                batch["prior_labels"] = torch.as_tensor(np.stack(labels))
            batches.append(batch)
        return batches

    def evaluate() -> float:
        return validation_loss(accelerator, model, val_pairs, builder, config.batch_size)

    def save_checkpoint(step: int) -> Path:
        return _save_checkpoint(
            accelerator, model, tokenizer, config, out, step, run_defining, state
        )

    model.train()
    _freeze_vq(accelerator.unwrap_model(model))  # model.train() flipped the VQ's BatchNorm
    start_step = state["step"]
    stop = total_steps if config.until is None else min(total_steps, config.until)
    bar = tqdm(
        total=total_steps,
        initial=start_step,
        desc=f"training {config.preset}",
        unit="step",
        disable=not (config.progress and main),
    )
    saved_paths: list[Path] = []
    for step in range(start_step, stop):
        began = time.perf_counter()
        step_loss = torch.zeros((), device=accelerator.device)
        step_reading = torch.zeros((), device=accelerator.device)
        step_tokens = torch.zeros((), device=accelerator.device, dtype=torch.long)
        for batch in micro_batches(step):
            batch = {k: v.to(accelerator.device) for k, v in batch.items()}
            prior_labels = batch.pop("prior_labels", None)
            with accelerator.accumulate(model):
                if config.interpretation_loss_weight == 1.0:
                    loss = model(**batch).loss
                else:
                    labels = batch.pop("labels")
                    loss = weighted_sequence_loss(
                        model(**batch).logits,
                        labels,
                        builder.ids.eoi,
                        config.interpretation_loss_weight,
                    )
                    batch["labels"] = labels
                total = loss
                if reading:
                    read = reading_loss(
                        head, final_states.take(), batch["input_ids"], prior_labels, builder.ids.eoi
                    )
                    total = loss + config.reading_loss_weight * read
                    step_reading += read.detach().float() / config.grad_accum
                accelerator.backward(total)
                if accelerator.sync_gradients and config.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            step_loss += loss.detach().float() / config.grad_accum
            step_tokens += batch["attention_mask"].sum()
        scheduler.step()
        mean_loss = accelerator.reduce(step_loss, reduction="mean").item()
        tokens = int(accelerator.reduce(step_tokens, reduction="sum").item())
        seconds = time.perf_counter() - began
        state["step"] = step + 1
        state["train_losses"].append(mean_loss)
        if reading:
            state["reading_losses"].append(accelerator.reduce(step_reading, "mean").item())
        state["tokens"] += tokens
        state["train_seconds"] += seconds
        bar.update(1)
        shown = {"loss": f"{mean_loss:.3f}", "tok_s": f"{tokens / seconds:.0f}"}
        if reading:
            shown["read"] = f"{state['reading_losses'][-1]:.3f}"
        bar.set_postfix(shown)

        done = step + 1 == total_steps
        if val_pairs and ((step + 1) % config.eval_every == 0 or done):
            state["val_losses"].append([step + 1, evaluate()])
            model.train()
            _freeze_vq(accelerator.unwrap_model(model))
            shown["val"] = f"{state['val_losses'][-1][1]:.3f}"
            bar.set_postfix(shown)
        if (step + 1) % config.save_every == 0 or done or step + 1 == stop:
            saved_paths.append(save_checkpoint(step + 1))
    bar.close()
    if reading:
        final_states.remove()

    curve = out / "loss_curve.png"
    if main:
        plot_loss_curve(
            state["train_losses"],
            [tuple(v) for v in state["val_losses"]],
            curve,
            title=f"ProgEmu {config.preset}: {state['step']}/{total_steps} steps",
        )
    pipeline_dir = None
    if state["step"] == total_steps:
        pipeline_dir = out / "pipeline"
        last = out / _CHECKPOINTS / f"step-{total_steps:07d}" / "pipeline"
        if (last / "progemu.json").is_file():
            if main:  # the final checkpoint holds exactly these weights: link, don't rewrite
                _link_folder(last, pipeline_dir)
        else:
            _save_pipeline(
                accelerator,
                model,
                tokenizer,
                config.preset,
                pipeline_dir,
                _training_metadata(config, run_defining, state),
            )
    accelerator.wait_for_everyone()

    throughput = state["tokens"] / state["train_seconds"] if state["train_seconds"] else 0.0
    if main:
        val = f"{state['val_losses'][-1][1]:.4f}" if state["val_losses"] else "n/a (no val split)"
        print(
            f"trained {state['step']}/{total_steps} steps: train loss "
            f"{state['train_losses'][-1]:.4f}, val loss {val}, "
            f"throughput {throughput:,.0f} tokens/s "
            f"({state['tokens'] / max(1, len(state['train_losses'])):,.0f} tokens per step)"
        )
    return TrainResult(
        out=out,
        pipeline_dir=pipeline_dir,
        step=state["step"],
        total_steps=total_steps,
        train_losses=list(state["train_losses"]),
        val_losses=[tuple(v) for v in state["val_losses"]],
        tokens_per_second=throughput,
        cache_path=cache_path,
        cache_reused=cache_reused,
        loss_curve=curve,
        checkpoints=saved_paths,
        is_main_process=main,
    )


# ----------------------------------------------------------------------------------------------
# Pieces of the loop


def _pair_codes(root: Path, records: Sequence, codes: np.ndarray) -> list[PairCodes]:
    from progemu_lite.model.reading_loss import prior_label_vector

    return [
        PairCodes(
            key=_pair_key(root, r),
            prior=codes[i, 0],
            followup=codes[i, 1],
            prompt=r.prompt,
            interpretation=r.interpretation,
            prior_labels=prior_label_vector(r.reference_labels),
        )
        for i, r in enumerate(records)
    ]


def augmentation_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator that augments pair ``index`` in ``epoch``: fresh draws every epoch,
    identical on a rerun or a resume."""
    return np.random.default_rng([seed, epoch, int(index)])


def training_example(
    pair: PairCodes, builder, rng: np.random.Generator | None
) -> tuple[np.ndarray, np.ndarray]:
    """``(input_ids, labels)`` of one pair; with an ``rng``, the official augmentations apply
    (sentence shuffling and dropping in the prompt, and the null condition)."""
    from progemu_lite.tokenization.sequence import augment_condition

    prior, prompt = pair.prior, pair.prompt
    if rng is not None:
        prior, prompt = augment_condition(prior, prompt, rng)
    return builder.training_ids(prior, prompt, pair.followup, pair.interpretation)


def weighted_sequence_loss(logits, labels, eoi_id: int, interpretation_weight: float):
    """Next-token cross-entropy with the interpretation's tokens (everything after the last
    ``<|image end|>``: the interpretation and EOS) weighted ``interpretation_weight`` and the
    rest 1, normalised by the total weight. With weight 1 it equals transformers' loss."""
    import torch

    from progemu_lite.tokenization.sequence import IGNORE_INDEX

    logits = logits[:, :-1].float()
    targets = labels[:, 1:]
    valid = targets != IGNORE_INDEX
    per_token = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]),
        targets.clamp(min=0).reshape(-1),
        reduction="none",
    ).view(targets.shape)
    positions = torch.arange(targets.shape[1], device=targets.device).expand_as(targets)
    last_eoi = torch.where(targets == eoi_id, positions, -1).max(dim=1, keepdim=True).values
    weights = torch.where(positions > last_eoi, interpretation_weight, 1.0) * valid
    return (per_token * weights).sum() / weights.sum()


def validation_loss(accelerator, model, pairs: Sequence[PairCodes], builder, batch_size: int):
    """Cross-entropy per predicted token over ``pairs`` (no augmentation), all processes together.

    Every process runs the same number of forward passes (sharded models need that): a process
    whose share of the last batch is empty repeats a pair with weight zero.
    """
    import torch

    model.eval()
    world, rank = accelerator.num_processes, accelerator.process_index
    total = torch.zeros((), device=accelerator.device, dtype=torch.float64)
    count = torch.zeros((), device=accelerator.device, dtype=torch.float64)
    with torch.no_grad():
        for start in range(0, len(pairs), batch_size * world):
            chunk = pairs[start : start + batch_size * world]
            mine, weight = chunk[rank::world], 1.0
            if not mine:
                mine, weight = chunk[:1], 0.0
            batch = builder.collate([training_example(p, builder, None) for p in mine])
            batch = {k: v.to(accelerator.device) for k, v in batch.items()}
            loss = model(**batch).loss
            predicted = (batch["labels"][:, 1:] != -100).sum()  # transformers shifts by one
            total += loss.double() * predicted * weight
            count += predicted.double() * weight
    total = accelerator.reduce(total, reduction="sum")
    count = accelerator.reduce(count, reduction="sum")
    return float(total / count)


def _text_tokenizer(
    config: TrainConfig, out: Path, train_records: Sequence, codebook: int, main, given=None
):
    """The run's text tokenizer, saved in ``RUN_DIR/tokenizer`` (a resumed run reuses it):
    ``given`` (an --init pipeline's), a saved one (--tokenizer), or one trained on the training
    split's prompts and interpretations."""
    from progemu_lite.tokenization.text import (
        TokenIds,
        load_text_tokenizer,
        train_text_tokenizer,
    )

    saved = out / "tokenizer"
    if (saved / "tokenizer.json").is_file():
        tokenizer = load_text_tokenizer(saved)
    elif given is not None:
        tokenizer = given
    elif config.tokenizer is not None:
        tokenizer = load_text_tokenizer(config.tokenizer)
    else:
        texts = [t for r in train_records for t in (r.prompt, r.interpretation)]
        tokenizer = train_text_tokenizer(texts, codebook_size=codebook)
    ids = TokenIds.from_tokenizer(tokenizer)
    if ids.codebook_size != codebook:
        raise ValueError(
            f"the text tokenizer has {ids.codebook_size} visual tokens but the VQ codebook has "
            f"{codebook}"
        )
    if main and not (saved / "tokenizer.json").is_file():
        tmp = out / f".tokenizer.{os.getpid()}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tokenizer.save_pretrained(str(tmp))
        os.replace(tmp, saved)
    return tokenizer


def _build_model(preset: str, tokenizer, vqmodel, seed: int):
    """A fresh ``Emu3ForConditionalGeneration`` of ``preset`` holding the trained, frozen VQ."""
    from progemu_lite.model.config import build_model

    model = build_model(preset, tokenizer, seed=seed)
    model.model.vqmodel.load_state_dict(vqmodel.state_dict())
    _freeze_vq(model)
    return model


def _freeze_vq(model) -> None:
    """The VQ only tokenises: eval mode (running BatchNorm statistics) and no gradients."""
    model.model.vqmodel.eval().requires_grad_(False)


def _save_pipeline(
    accelerator, model, tokenizer, preset: str, folder: Path, metadata: dict | None = None
) -> None:
    """The pipeline folder (weights, tokenizer, progemu.json); the pipeline writes it atomically."""
    from accelerate.utils import DistributedType

    from progemu_lite.model.pipeline import ProgEmuPipeline

    # Under ZeRO-3/FSDP each process holds a shard: gathering the full weights is collective.
    sharded = accelerator.distributed_type in (DistributedType.DEEPSPEED, DistributedType.FSDP)
    state_dict = accelerator.get_state_dict(model) if sharded else None
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(model)
        was_training = unwrapped.training
        to_save = unwrapped if state_dict is None else _GatheredWeights(unwrapped, state_dict)
        # ProgEmuPipeline puts its model in eval mode: restore training mode afterwards.
        ProgEmuPipeline(to_save, tokenizer, preset).save_pretrained(folder, metadata=metadata)
        if was_training:
            unwrapped.train()
            _freeze_vq(unwrapped)
    accelerator.wait_for_everyone()


class _GatheredWeights:
    """A sharded model seen by ``ProgEmuPipeline.save_pretrained`` with its gathered weights."""

    def __init__(self, model, state_dict: dict):
        self._model, self._state_dict = model, state_dict

    def eval(self):
        return self

    def save_pretrained(self, path, **kwargs):
        return self._model.save_pretrained(path, state_dict=self._state_dict, **kwargs)


def _link_folder(source: Path, final: Path) -> None:
    """Copy a folder as hard links where the file system allows (files here are only ever
    replaced, never rewritten in place, so sharing them is safe), then swap it into place."""
    tmp = final.with_name(f".{final.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)

    def link_or_copy(src, dst):
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    try:
        shutil.copytree(source, tmp, copy_function=link_or_copy)
        replace_folder(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _save_checkpoint(
    accelerator, model, tokenizer, config: TrainConfig, out: Path, step: int, run: dict, state
) -> Path:
    """``RUN_DIR/checkpoints/step-NNNNNNN``: accelerate state (model, optimizer, scheduler, RNGs),
    a loadable pipeline folder and ``trainer_state.json``; older ones beyond
    ``keep_checkpoints`` are removed."""
    folder = out / _CHECKPOINTS / f"step-{step:07d}"
    tmp = folder.with_name(f".{folder.name}.tmp")
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    try:
        accelerator.save_state(str(tmp / "state"), safe_serialization=True)
        _save_pipeline(
            accelerator,
            model,
            tokenizer,
            config.preset,
            tmp / "pipeline",
            _training_metadata(config, run, state),
        )
    except BaseException:
        if accelerator.is_main_process:  # never leave a half-written checkpoint behind
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    if accelerator.is_main_process:
        record = {"run": run, "progress": state, "config": _jsonable(asdict(config))}
        text = json.dumps(record, indent=1)
        (tmp / _STATE_FILE).write_text(text)
        replace_folder(tmp, folder)
        atomic_write_text(out / _STATE_FILE, text)
        plot_loss_curve(
            state["train_losses"],
            [tuple(v) for v in state["val_losses"]],
            out / "loss_curve.png",
            title=f"ProgEmu {config.preset}: {step}/{run['total_steps']} steps",
        )
        for old in _checkpoint_dirs(out)[: -config.keep_checkpoints]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return folder


def _training_metadata(config: TrainConfig, run: dict, state: dict) -> dict:
    """What progemu.json records about how the weights were trained."""
    lineage = {}
    if config.init is not None:
        # The embeddings came with the --init pipeline (its own progemu.json says how it began);
        # `run` keeps the flag's default so that --resume of older runs still matches.
        lineage = {"init": str(config.init), "visual_token_init": None}
    return {
        "weights": "trained",
        "training": {
            "data": str(Path(config.data).absolute()),
            "step": state["step"],
            **run,
            **lineage,
            "train_loss": state["train_losses"][-1] if state["train_losses"] else None,
            "val_loss": state["val_losses"][-1][1] if state["val_losses"] else None,
        },
    }


def _jsonable(value):
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value
