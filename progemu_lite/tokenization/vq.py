"""The VQ image tokenizer: transformers' ``Emu3VQVAE`` at three sizes, and images <-> codes.

Presets (spatial factor 8 in all of them, as the Emu3 processor assumes):

========  ======  ========  ========  ========================================================
preset    pixels  grid      codebook  what for
========  ======  ========  ========  ========================================================
tiny      64      8 x 8     256       tests: grayscale, a few hundred thousand parameters
lite      128     16 x 16   1024      the CPU course model: grayscale, 3.0M params, ~2.6 s/step
full      512     64 x 64   32768     ``BAAI/Emu3-VisionTokenizer`` shapes (RGB, 4 frames)
========  ======  ========  ========  ========================================================

(lite: batch 16 at 128x128 on an idle 2-core machine, so ~1400-2700 steps in 1-2 h; on a busy
machine ``torch.set_num_threads(1)`` is much faster than two contending threads.)

Training lives in :mod:`progemu_lite.tokenization.vq_train`; metrics and the round-trip figure
live here because every user of a trained tokenizer wants them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # torch/transformers are heavy: import them where they are used
    import torch
    import transformers

IMAGE_SIZES = {"tiny": 64, "lite": 128, "full": 512}
SPATIAL_FACTOR = 8

# Sizes chosen so that GroupNorm(32) divides every width (base_channels a multiple of 32),
# ``hidden_size == base_channels * channel_multiplier[-1]`` (the attention blocks run at that
# width) and ``embed_dim == latent_channels`` (Emu3's decoder runs the quantised and the
# post-quant tensors through the same temporal blocks by stacking them along the batch).
_PRESETS: dict[str, dict] = {
    "tiny": dict(
        codebook_size=256,
        embed_dim=4,
        latent_channels=4,
        in_channels=1,
        out_channels=1,
        temporal_downsample_factor=1,
        base_channels=32,
        channel_multiplier=[1, 1, 1, 1],
        num_res_blocks=1,
        attn_resolutions=[],
        hidden_size=32,
        num_attention_heads=1,
    ),
    "lite": dict(
        codebook_size=1024,
        embed_dim=8,
        latent_channels=8,
        in_channels=1,
        out_channels=1,
        # 1 frame, not Emu3's 4: the temporal stack would make every step 4x slower on CPU.
        temporal_downsample_factor=1,
        # Narrow at full resolution (where CPU time goes), wide at the 16x16 grid: ~3.0M params.
        base_channels=32,
        channel_multiplier=[1, 1, 2, 4],
        num_res_blocks=1,
        attn_resolutions=[3],
        hidden_size=128,
        num_attention_heads=1,
    ),
    # transformers' defaults, which are the BAAI/Emu3-VisionTokenizer shapes.
    "full": dict(
        codebook_size=32768,
        embed_dim=4,
        latent_channels=4,
        in_channels=3,
        out_channels=3,
        temporal_downsample_factor=4,
        base_channels=256,
        channel_multiplier=[1, 2, 2, 4],
        num_res_blocks=2,
        attn_resolutions=[3],
        hidden_size=1024,
        num_attention_heads=1,
    ),
}

PRESETS = tuple(_PRESETS)


def vq_config(preset: str) -> transformers.Emu3VQVAEConfig:
    """The ``Emu3VQVAEConfig`` of a preset: ``"tiny"``, ``"lite"`` or ``"full"``."""
    from transformers import Emu3VQVAEConfig

    if preset not in _PRESETS:
        raise ValueError(f"unknown VQ preset {preset!r}; choose one of {', '.join(PRESETS)}")
    return Emu3VQVAEConfig(**_PRESETS[preset], attention_dropout=0.0)


def build_vq(preset: str, seed: int = 0) -> transformers.Emu3VQVAE:
    """A freshly initialised ``Emu3VQVAE`` of a preset (eval mode; see :mod:`.vq_train`)."""
    import torch
    from transformers import Emu3VQVAE

    config = vq_config(preset)
    torch.manual_seed(seed)
    return Emu3VQVAE(config).eval()


# The fields that say which preset a VQ tokenizer is (dropout and the like may differ).
CHECKED_VQ_FIELDS = (
    "codebook_size",
    "in_channels",
    "base_channels",
    "channel_multiplier",
    "embed_dim",
    "latent_channels",
)


def vq_mismatches(config, preset: str) -> list[str]:
    """How the VQ config ``config`` differs from ``preset``'s, one phrase per field."""
    expected = vq_config(preset)
    return [
        f"{name} {getattr(config, name, None)} (preset {preset!r} wants {getattr(expected, name)})"
        for name in CHECKED_VQ_FIELDS
        if list(np.atleast_1d(getattr(config, name, None)))
        != list(np.atleast_1d(getattr(expected, name)))
    ]


def vq_preset(config) -> str | None:
    """The preset whose VQ shapes the VQ config ``config`` has, or None if no preset's."""
    return next((preset for preset in PRESETS if not vq_mismatches(config, preset)), None)


def load_vq(path, preset: str | None = None) -> transformers.Emu3VQVAE:
    """The VQ tokenizer saved in the folder ``path``: frozen (eval mode, no gradients), float32.

    ``path``: a ``progemu-lite train-vq`` output folder (``save_vq``: config.json +
    model.safetensors), the checkpoint of an unfinished ``train-vq`` run (its
    ``training_state`` folder, or the run folder holding it), or a ProgEmu pipeline folder
    (its VQ is used). ``preset``: when given, a VQ of other shapes is a ``ValueError`` naming
    the fields that differ; read a VQ's preset with :func:`vq_preset`.
    """
    import json
    from pathlib import Path

    from transformers import Emu3ForConditionalGeneration, Emu3VQVAE

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no VQ folder at {path} (it does not exist)")
    if not path.is_dir():
        raise ValueError(
            f"VQ {path}: expected a folder (train-vq output or a pipeline), not a file"
        )
    checkpoint = path if (path / "state.json").is_file() else path / "training_state"
    if (path / "config.json").is_file():
        model_type = json.loads((path / "config.json").read_text()).get("model_type")
        try:
            if model_type == "emu3":
                vqmodel = Emu3ForConditionalGeneration.from_pretrained(path).model.vqmodel
            elif model_type == "emu3_vqgan":
                vqmodel = Emu3VQVAE.from_pretrained(path, use_safetensors=True)
            else:
                raise ValueError(f"it holds a {model_type!r} model, not an Emu3 VQ tokenizer")
        except (OSError, ValueError) as err:
            raise ValueError(f"cannot load the VQ tokenizer in {path}: {err}") from None
    elif (checkpoint / "model.safetensors").is_file():
        from safetensors.torch import load_file

        run_preset = json.loads((checkpoint / "state.json").read_text())["config"]["preset"]
        vqmodel = build_vq(run_preset)
        vqmodel.load_state_dict(load_file(checkpoint / "model.safetensors"))
    else:
        raise FileNotFoundError(
            f"{path} is not a VQ tokenizer folder (no config.json, no training_state checkpoint)"
        )
    if preset is not None and (mismatches := vq_mismatches(vqmodel.config, preset)):
        raise ValueError(
            f"the VQ tokenizer at {path} does not fit preset {preset!r}: " + "; ".join(mismatches)
        )
    # float32 whatever the file holds (a shipped pipeline is float16): the codes must not depend
    # on the file's precision, and CPUs encode float16 slowly.
    return vqmodel.float().eval().requires_grad_(False)


def check_gray_images(images, image_size: int | None = None, what: str = "images") -> np.ndarray:
    """``images`` as a uint8 ``(N, H, W)`` array, or a clear ``ValueError`` naming the problem.

    H and W must be multiples of the spatial factor 8, and equal ``image_size`` when given.
    """
    array = np.asarray(images)
    if array.dtype != np.uint8:
        raise ValueError(
            f"{what} must be uint8 grayscale (0..255); got dtype {array.dtype}"
            + (" (16-bit? scale it to 8 bits first)" if array.dtype == np.uint16 else "")
        )
    if array.ndim == 4 and array.shape[-1] in (3, 4):
        raise ValueError(
            f"{what} must be grayscale (N, H, W); got shape {array.shape}, which looks like "
            "RGB/RGBA: convert to one channel first"
        )
    if array.ndim != 3:
        raise ValueError(f"{what} must be a grayscale batch of shape (N, H, W); got {array.shape}")
    n, height, width = array.shape
    if n == 0:
        raise ValueError(f"{what}: the batch is empty")
    if height % SPATIAL_FACTOR or width % SPATIAL_FACTOR:
        raise ValueError(
            f"{what} are {height}x{width}; both sides must be multiples of {SPATIAL_FACTOR} "
            "(the VQ's spatial factor)"
        )
    if image_size is not None and (height, width) != (image_size, image_size):
        raise ValueError(f"{what} are {height}x{width}; this VQ wants {image_size}x{image_size}")
    return array


def images_to_pixels(images: np.ndarray, in_channels: int = 1) -> torch.Tensor:
    """uint8 ``(N, H, W)`` -> float ``(N, C, H, W)`` in [-1, 1] (gray repeated to C channels)."""
    import torch

    pixels = torch.from_numpy(np.ascontiguousarray(images)).float().div_(127.5).sub_(1.0)
    return pixels.unsqueeze(1).repeat(1, in_channels, 1, 1)


def pixels_to_images(pixels: torch.Tensor) -> np.ndarray:
    """float ``(N, C, H, W)`` in [-1, 1] -> uint8 ``(N, H, W)`` (channels averaged to gray)."""
    import torch

    gray = pixels.detach().float().mean(dim=1).clamp(-1.0, 1.0)
    return ((gray + 1.0) * 127.5).round().to(torch.uint8).cpu().numpy()


def vq_batch_size(device) -> int:
    """Images per VQ encode/decode call. On a CPU small chunks are about twice as fast per
    image as 16 at once (the activations of a few 128x128 images stay in cache; measured with
    the lite VQ, 1-2 threads: 44-50 ms per decode in chunks of 2-4, 87 ms in one of 16); a GPU
    wants large ones."""
    return 2 if getattr(device, "type", device) == "cpu" else 16


def encode_images(vqmodel, images, batch_size: int | None = None) -> np.ndarray:
    """Codes ``int64 (N, H/8, W/8)`` of uint8 grayscale images ``(N, H, W)``, ``batch_size``
    images per call (default :func:`vq_batch_size`).

    Uses transformers' ``Emu3VQVAE.encode`` (which repeats an image over the model's
    ``temporal_downsample_factor`` frames, as the original Emu3 tokenizer does). The model is
    switched to eval mode: training-mode BatchNorm would change the codes.
    """
    import torch

    images = check_gray_images(images)
    vqmodel.eval()
    param = next(vqmodel.parameters())
    batch_size = batch_size or vq_batch_size(param.device)
    in_channels = vqmodel.config.in_channels
    out = []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            chunk = images[start : start + batch_size]
            pixels = images_to_pixels(chunk, in_channels).to(param.device, param.dtype)
            sizes = torch.tensor([chunk.shape[1:]] * len(chunk))
            tokens = vqmodel.encode(pixels, sizes).image_tokens
            out.append(torch.stack(tokens).cpu().numpy().astype(np.int64))
    return np.concatenate(out)


def decode_codes(vqmodel, codes, batch_size: int | None = None) -> np.ndarray:
    """uint8 grayscale images ``(N, 8h, 8w)`` from codes ``(N, h, w)`` (frame 0 of the decode),
    ``batch_size`` codes per call (default :func:`vq_batch_size`)."""
    import torch

    codes = np.asarray(codes)
    if codes.ndim != 3 or not np.issubdtype(codes.dtype, np.integer):
        raise ValueError(
            f"codes must be an integer array of shape (N, h, w); got {codes.dtype} {codes.shape}"
        )
    size = vqmodel.config.codebook_size
    if codes.size and (codes.min() < 0 or codes.max() >= size):
        raise ValueError(f"codes must lie in 0..{size - 1}; got {codes.min()}..{codes.max()}")
    vqmodel.eval()
    device = next(vqmodel.parameters()).device
    batch_size = batch_size or vq_batch_size(device)
    out = []
    with torch.no_grad():
        for start in range(0, len(codes), batch_size):
            chunk = torch.from_numpy(codes[start : start + batch_size].astype(np.int64)).to(device)
            out.append(pixels_to_images(vqmodel.decode(chunk)))
    return np.concatenate(out)


def readable_by_all(path) -> None:
    """Give ``path`` the permissions of a normally created file or folder (umask applied):
    ``tempfile`` makes private ones, and a class shares tokenizers through a common folder."""
    import os

    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, (0o777 if os.path.isdir(path) else 0o666) & ~umask)


def save_vq(vqmodel, folder) -> None:
    """``save_pretrained`` into ``folder`` (config.json + model.safetensors), file by file
    through temporary names so that an interrupted save never leaves a half-written model."""
    import os
    import shutil
    import tempfile
    from pathlib import Path

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".vq-save-", dir=folder))
    try:
        vqmodel.save_pretrained(staging, safe_serialization=True)
        # Weights first, config last: a folder with config.json is a complete model.
        names = sorted(p.name for p in staging.iterdir())
        for name in [n for n in names if n != "config.json"] + ["config.json"]:
            readable_by_all(staging / name)
            os.replace(staging / name, folder / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


# ---------------------------------------------------------------- metrics


def psnr(reference, test, data_range: float = 255.0) -> float:
    """Peak signal-to-noise ratio in dB over a whole batch; ``inf`` for identical images."""
    reference = np.asarray(reference, dtype=np.float64)
    test = np.asarray(test, dtype=np.float64)
    if reference.shape != test.shape:
        raise ValueError(f"shapes differ: {reference.shape} vs {test.shape}")
    mse = float(np.mean((reference - test) ** 2))
    return float("inf") if mse == 0 else float(10.0 * np.log10(data_range**2 / mse))


def _gaussian_window(size: int, sigma: float) -> np.ndarray:
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2
    g = np.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def ssim(reference, test, data_range: float = 255.0, window: int = 11, sigma: float = 1.5) -> float:
    """Mean structural similarity (Wang et al. 2004: Gaussian window 11, sigma 1.5, K1=0.01,
    K2=0.03) of grayscale images ``(H, W)`` or batches ``(N, H, W)``; 1.0 for identical images.

    Means are taken over the 'valid' region, where the whole window fits in the image.
    """
    from scipy.ndimage import correlate1d

    a = np.asarray(reference, dtype=np.float64)
    b = np.asarray(test, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    if a.ndim == 2:
        a, b = a[None], b[None]
    if a.ndim != 3 or min(a.shape[1:]) < window:
        raise ValueError(
            f"ssim needs (N, H, W) images of at least {window}x{window}; got {a.shape}"
        )
    g = _gaussian_window(window, sigma)

    def blur(x):
        x = correlate1d(x, g, axis=1, mode="constant")
        x = correlate1d(x, g, axis=2, mode="constant")
        half = window // 2
        return x[:, half : x.shape[1] - half, half : x.shape[2] - half]

    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    ssim_map = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / (
        (mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)
    )
    return float(ssim_map.mean())


def codebook_usage(codes, codebook_size: int) -> dict:
    """How much of the codebook a set of codes uses: ``perplexity`` (exp of the entropy of the
    code histogram; equals the number of codes when all are used equally), ``used`` (distinct
    codes) and ``used_fraction``."""
    counts = np.bincount(np.asarray(codes).ravel(), minlength=codebook_size).astype(np.float64)
    p = counts / counts.sum()
    nz = p[p > 0]
    return {
        "perplexity": float(np.exp(-(nz * np.log(nz)).sum())),
        "used": int((counts > 0).sum()),
        "used_fraction": float((counts > 0).mean()),
        "codebook_size": int(codebook_size),
    }


def vq_report(vqmodel, images, batch_size: int | None = None) -> dict:
    """Round-trip quality of a VQ on uint8 grayscale images: PSNR (dB), SSIM, codebook usage."""
    images = check_gray_images(images)
    codes = encode_images(vqmodel, images, batch_size=batch_size)
    recons = decode_codes(vqmodel, codes, batch_size=batch_size)
    return {
        "n_images": len(images),
        "image_size": list(images.shape[1:]),
        "grid": list(codes.shape[1:]),
        "psnr": psnr(images, recons),
        "ssim": ssim(images, recons),
        **codebook_usage(codes, vqmodel.config.codebook_size),
    }


def plot_round_trip(images, recons, titles, path, suptitle: str | None = None):
    """Save a figure of originals (top row) above their reconstructions (bottom row), one
    column per labelled image, with each column's PSNR; returns the written path."""
    from pathlib import Path

    import matplotlib

    from progemu_lite.files import atomic_write

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    images = check_gray_images(images, what="originals")
    recons = check_gray_images(recons, what="reconstructions")
    titles = list(titles)
    if not (len(images) == len(recons) == len(titles)):
        raise ValueError(
            f"need as many originals, reconstructions and titles; got "
            f"{len(images)}, {len(recons)}, {len(titles)}"
        )
    if images.shape != recons.shape:
        raise ValueError(f"originals {images.shape} and reconstructions {recons.shape} differ")
    n = len(images)
    fig, axes = plt.subplots(2, n, figsize=(2.2 * n, 5.2), squeeze=False)
    for i in range(n):
        axes[0, i].imshow(images[i], cmap="gray", vmin=0, vmax=255)
        axes[0, i].set_title(titles[i], fontsize=8)
        axes[1, i].imshow(recons[i], cmap="gray", vmin=0, vmax=255)
        axes[1, i].set_title(f"VQ {psnr(images[i], recons[i]):.1f} dB", fontsize=8)
        for ax in axes[:, i]:
            ax.set_xticks([])
            ax.set_yticks([])
    axes[0, 0].set_ylabel("original")
    axes[1, 0].set_ylabel("reconstruction")
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    try:
        # matplotlib picks the format from the extension, so the temporary name keeps it.
        return atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110), suffix=path.suffix)
    finally:
        plt.close(fig)
