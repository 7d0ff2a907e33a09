"""Training the VQ image tokenizer (transformers' ``Emu3VQVAE``) from scratch.

transformers' ``Emu3VQVAE.encode`` is inference-only, so :func:`vq_forward` re-assembles the
model's own parts (encoder, quant_conv, quantize codebook, post_quant_conv, decoder) with a
straight-through estimator. The nearest code is picked by the model's own ``quantize`` module,
so the codes seen in training are exactly those that ``encode`` gives afterwards.

The BatchNorm trap: Emu3's temporal blocks hold ``BatchNorm3d`` layers, and ``model.train()``
would normalise with batch statistics (and drift the running ones). We keep the whole model in
eval mode while training: the BatchNorms then act as fixed learnable affine layers, training and
inference compute the same function, and a pretrained model keeps its running statistics.

Every random choice (batch order, dead-code restarts) is drawn from a generator seeded with
``(seed, step)``, so a run resumed from a checkpoint continues exactly as an uninterrupted one.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from progemu_lite.files import atomic_write_json
from progemu_lite.tokenization.vq import (
    IMAGE_SIZES,
    build_vq,
    check_gray_images,
    images_to_pixels,
    readable_by_all,
    save_vq,
    vq_config,
)

if TYPE_CHECKING:
    import torch

STATE_DIR = "training_state"
STATE_FORMAT = 1


@dataclass
class VQTrainConfig:
    """Hyper-parameters of :func:`train_vq` (saved with every checkpoint)."""

    preset: str = "lite"
    steps: int = 2000
    batch_size: int = 16
    lr: float = 3e-4
    warmup_steps: int = 50
    min_lr_ratio: float = 0.05
    beta: float = 0.25  # commitment weight (VQ-VAE)
    l1_weight: float = 1.0
    l2_weight: float = 0.0
    # L1 on image gradients: keeps thin bright lines (pleural lines, tube edges) from blurring away.
    edge_weight: float = 0.1
    init_codebook_from_data: bool = True
    kmeans_iters: int = 5
    init_from: str | None = None  # the trained VQ the run started from (train-vq --init); a record
    dead_after: int = 100  # a code unused for this many steps is restarted
    restart_every: int = 10
    seed: int = 0
    checkpoint_every: int = 200

    def __post_init__(self):
        if self.preset not in IMAGE_SIZES:
            raise ValueError(
                f"unknown VQ preset {self.preset!r}; choose one of {', '.join(IMAGE_SIZES)}"
            )
        for name in ("steps", "batch_size", "dead_after", "restart_every", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1; got {getattr(self, name)}")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive; got {self.lr}")


# Settings of the start only (the weights and codebook a run began with).
_STEP_ZERO_FIELDS = ("init_codebook_from_data", "kmeans_iters", "init_from")


@dataclass
class VQForwardOutput:
    recon: torch.Tensor  # (N, C, H, W), frame 0 of the decode, like Emu3VQVAE.decode
    latents: torch.Tensor  # encoder output after quant_conv, (N, T', D, h, w)
    indices: torch.Tensor  # (N, T', h, w)
    codebook_loss: torch.Tensor
    commitment_loss: torch.Tensor


def encode_latents(model, pixels: torch.Tensor) -> torch.Tensor:
    """Continuous latents ``(N, T', D, h, w)`` of images ``(N, C, H, W)``, as ``encode`` makes
    them before quantising (with gradients)."""
    frames = pixels.unsqueeze(1).repeat(1, model.config.temporal_downsample_factor, 1, 1, 1)
    hidden = model.encoder(frames.to(model.dtype))  # (N, T', Dz, h, w)
    hidden = model.quant_conv(hidden.permute(0, 2, 1, 3, 4))  # quant_conv wants (N, Dz, T', h, w)
    return hidden.permute(0, 2, 1, 3, 4)


def decode_latents(model, quant: torch.Tensor) -> torch.Tensor:
    """Images ``(N, C, H, W)`` from quantised latents ``(N, T', D, h, w)``, as ``decode`` does."""
    batch, temporal, _, height, width = quant.shape
    post_quant = model.post_quant_conv(quant.permute(0, 2, 1, 3, 4)).permute(0, 2, 1, 3, 4)
    video = model.decoder(post_quant, quant)
    factor = model.config.temporal_downsample_factor
    video = video.reshape(
        batch,
        temporal * factor,
        model.config.out_channels,
        height * model.spatial_scale_factor,
        width * model.spatial_scale_factor,
    )
    return video[:, 0]


def vq_forward(model, pixels: torch.Tensor) -> VQForwardOutput:
    """The training forward: encode, quantise with a straight-through estimator, decode."""
    import torch
    import torch.nn.functional as F

    latents = encode_latents(model, pixels)
    with torch.no_grad():
        indices = model.quantize(latents)  # the model's own argmin: codes identical to encode()
    quant = model.quantize.embedding(indices).permute(0, 1, 4, 2, 3)  # (N, T', D, h, w)
    codebook_loss = F.mse_loss(quant, latents.detach())
    commitment_loss = F.mse_loss(latents, quant.detach())
    straight_through = latents + (quant - latents).detach()
    recon = decode_latents(model, straight_through)
    return VQForwardOutput(recon, latents, indices, codebook_loss, commitment_loss)


def reconstruction_loss(recon, target, config: VQTrainConfig) -> tuple[torch.Tensor, dict]:
    import torch.nn.functional as F

    parts = {"l1": F.l1_loss(recon, target)}
    loss = config.l1_weight * parts["l1"]
    if config.l2_weight:
        parts["l2"] = F.mse_loss(recon, target)
        loss = loss + config.l2_weight * parts["l2"]
    if config.edge_weight:
        dx = lambda x: x[..., :, 1:] - x[..., :, :-1]  # noqa: E731
        dy = lambda x: x[..., 1:, :] - x[..., :-1, :]  # noqa: E731
        parts["edge"] = F.l1_loss(dx(recon), dx(target)) + F.l1_loss(dy(recon), dy(target))
        loss = loss + config.edge_weight * parts["edge"]
    return loss, parts


def lr_at(step: int, config: VQTrainConfig) -> float:
    """Linear warm-up, then cosine decay to ``min_lr_ratio * lr`` at the last step."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    span = max(1, config.steps - config.warmup_steps)
    progress = min(1.0, (step - config.warmup_steps) / span)
    ratio = config.min_lr_ratio + (1 - config.min_lr_ratio) * 0.5 * (
        1 + math.cos(math.pi * progress)
    )
    return config.lr * ratio


def kmeans_plus_plus(vectors: torch.Tensor, k: int, generator, iters: int = 5) -> torch.Tensor:
    """``k`` centres for ``vectors (M, D)``: k-means++ seeding, then a few Lloyd iterations.

    With fewer vectors than codes, the extra centres are jittered copies of data vectors.
    """
    import torch

    vectors = vectors.detach().float()
    m = len(vectors)
    if m < k:
        extra = vectors[torch.randint(m, (k - m,), generator=generator)]
        jitter = 0.01 * vectors.std() * torch.randn(extra.shape, generator=generator)
        return torch.cat([vectors, extra + jitter])
    centres = torch.empty(k, vectors.shape[1])
    centres[0] = vectors[torch.randint(m, (1,), generator=generator)]
    nearest = ((vectors - centres[0]) ** 2).sum(1)
    for i in range(1, k):
        total = nearest.sum()
        if total <= 0:  # every vector is already a centre: fill with random ones
            pick = torch.randint(m, (1,), generator=generator)
        else:
            pick = torch.multinomial(nearest / total, 1, generator=generator)
        centres[i] = vectors[pick]
        nearest = torch.minimum(nearest, ((vectors - centres[i]) ** 2).sum(1))
    for _ in range(iters):
        assign = torch.cdist(vectors, centres).argmin(1)
        sums = torch.zeros_like(centres).index_add_(0, assign, vectors)
        counts = torch.bincount(assign, minlength=k).unsqueeze(1)
        centres = torch.where(counts > 0, sums / counts.clamp(min=1), centres)
    return centres


def restart_dead_codes(model, optimizer, latents, last_used, step, config, generator) -> int:
    """Move every code unused for ``dead_after`` steps onto a random recent encoder output, and
    clear its Adam moments (stale moments would pull it straight back). Returns how many."""
    import torch

    dead = torch.nonzero(step - last_used >= config.dead_after).flatten()
    if len(dead) == 0:
        return 0
    pool = latents.detach().permute(0, 1, 3, 4, 2).reshape(-1, latents.shape[2]).float()
    picks = torch.randint(len(pool), (len(dead),), generator=generator)
    jitter = 0.01 * pool.std() * torch.randn(len(dead), pool.shape[1], generator=generator)
    weight = model.quantize.embedding.weight
    with torch.no_grad():
        weight[dead] = (pool[picks] + jitter).to(weight.dtype)
    state = optimizer.state.get(weight, {})
    for key in ("exp_avg", "exp_avg_sq"):
        if key in state:
            state[key][dead] = 0
    last_used[dead] = step
    return len(dead)


# ---------------------------------------------------------------- checkpoints


def save_checkpoint(folder, model, optimizer, trainer_state: dict, last_used) -> Path:
    """Write ``folder/training_state`` (model + Adam moments as safetensors, the rest as json)
    through a temporary folder that replaces the old one in one rename."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / STATE_DIR
    staging = Path(tempfile.mkdtemp(prefix=f".{STATE_DIR}-", dir=folder))
    try:
        save_file(
            {k: v.contiguous() for k, v in model.state_dict().items()},
            staging / "model.safetensors",
        )
        names = dict(model.named_parameters())
        index = {id(p): n for n, p in names.items()}
        optim = {"last_used": last_used.contiguous()}
        for param, state in optimizer.state.items():
            for key, value in state.items():
                optim[f"{index[id(param)]}::{key}"] = value.contiguous()
        save_file(optim, staging / "optimizer.safetensors")
        (staging / "state.json").write_text(
            json.dumps({"format": STATE_FORMAT, **trainer_state}, indent=1)
        )
        for path in (staging, *staging.iterdir()):
            readable_by_all(path)
        old = folder / f".{STATE_DIR}-old"
        shutil.rmtree(old, ignore_errors=True)
        if final.exists():
            os.replace(final, old)
        os.replace(staging, final)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final


def load_checkpoint(folder, model, optimizer) -> tuple[dict, torch.Tensor]:
    """Restore model and Adam state from ``folder/training_state``; returns
    ``(trainer_state, last_used)``."""
    from safetensors.torch import load_file

    state_dir = Path(folder) / STATE_DIR
    if not (state_dir / "state.json").is_file():
        raise FileNotFoundError(
            f"no VQ training checkpoint in {folder} (expected {state_dir}/state.json)"
        )
    trainer_state = json.loads((state_dir / "state.json").read_text())
    if trainer_state.get("format") != STATE_FORMAT:
        raise ValueError(
            f"{state_dir} has checkpoint format {trainer_state.get('format')}; expected {STATE_FORMAT}"
        )
    model.load_state_dict(load_file(state_dir / "model.safetensors"))
    optim = load_file(state_dir / "optimizer.safetensors")
    last_used = optim.pop("last_used")
    params = dict(model.named_parameters())
    for key, value in optim.items():
        name, slot = key.split("::")
        optimizer.state[params[name]][slot] = value
    return trainer_state, last_used


# ---------------------------------------------------------------- the loop


def _as_image_array(images_or_dataset, image_size: int) -> np.ndarray:
    """Training images as one uint8 array: from an array/list of arrays, or a folder of PNGs."""
    if isinstance(images_or_dataset, (str, os.PathLike)):
        from progemu_lite.tokenization.commands import load_training_images

        images_or_dataset = load_training_images(images_or_dataset, image_size)
    return check_gray_images(np.asarray(images_or_dataset), image_size, what="training images")


def train_vq(
    images_or_dataset,
    preset: str = "lite",
    steps: int = 2000,
    out: str | os.PathLike | None = None,
    resume: bool = False,
    progress: bool = True,
    model=None,
    until: int | None = None,
    **overrides,
):
    """Train a VQ tokenizer of ``preset`` on uint8 grayscale images for ``steps`` steps.

    ``images_or_dataset``: a uint8 ``(N, H, W)`` array (H = W = ``IMAGE_SIZES[preset]``), a list
    of such images, or a folder searched for ICG-CXR ``*-ref-reg.png`` / ``*-flu-reg.png``.
    ``out``: a folder that receives the model (``save_pretrained``: config.json +
    model.safetensors), ``training_state/`` every ``checkpoint_every`` steps and ``train_log.json``;
    ``resume=True`` continues from its checkpoint. ``model``: start from this ``Emu3VQVAE``
    instead of a fresh one (e.g. to fine-tune). ``until``: stop after this step (with a
    checkpoint), keeping the ``steps``-long schedule, so that a time-boxed session can train part
    of a run and a later ``resume=True`` finishes it. Other keyword arguments set
    :class:`VQTrainConfig` fields. Returns ``(model, log)`` where ``log`` holds per-step losses.
    """
    import torch
    from tqdm.auto import tqdm

    config = VQTrainConfig(preset=preset, steps=steps, **overrides)
    image_size = IMAGE_SIZES[preset]
    images = _as_image_array(images_or_dataset, image_size)
    out = Path(out) if out is not None else None
    if out is not None and not resume and (out / STATE_DIR).exists():
        raise FileExistsError(
            f"{out} already holds a VQ training run; pass resume=True (--resume) or choose a new folder"
        )
    if resume and out is None:
        raise ValueError("resume needs the run folder (out)")

    if model is None:
        model = build_vq(preset, seed=config.seed)
        # transformers' init (Kaiming, fan_out) makes a 1-channel output layer start at std ~5
        # against targets in [-1, 1]; starting near zero saves the first few hundred steps.
        with torch.no_grad():
            model.decoder.conv_out.weight.mul_(0.1)
            model.decoder.conv_out.bias.zero_()
    else:
        expected = vq_config(preset)
        if model.config.codebook_size != expected.codebook_size:
            raise ValueError(
                f"model codebook {model.config.codebook_size} != preset {preset!r} ({expected.codebook_size})"
            )
    model.eval()  # the BatchNorm trap: see the module docstring
    model.requires_grad_(True)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, betas=(0.9, 0.99))
    codebook = model.config.codebook_size
    last_used = torch.zeros(codebook, dtype=torch.long)
    log = {"config": asdict(config), "steps": [], "restarts": 0, "n_images": len(images)}
    start = 0
    if resume:
        trainer_state, last_used = load_checkpoint(out, model, optimizer)
        saved = trainer_state["config"]
        # The codebook initialisation happened at step 0: a resumed run keeps the saved one
        # (a run started from a trained VQ, `train-vq --init`, resumes without saying so again).
        for name in _STEP_ZERO_FIELDS:
            setattr(config, name, saved.get(name, getattr(config, name)))
        changed = [
            f.name
            for f in fields(VQTrainConfig)
            if f.name not in ("steps", "checkpoint_every")
            and saved.get(f.name) != getattr(config, f.name)
        ]
        if changed:
            raise ValueError(
                f"cannot resume {out} with different settings: {', '.join(changed)} "
                f"(saved: {', '.join(f'{k}={saved[k]}' for k in changed)})"
            )
        start = trainer_state["step"]
        log = trainer_state["log"]
        log["config"] = asdict(config)
        if trainer_state["n_images"] != len(images):
            raise ValueError(
                f"cannot resume: the run trained on {trainer_state['n_images']} images, now {len(images)}"
            )

    def batch_at(step: int) -> np.ndarray:
        rng = np.random.default_rng([config.seed, step + 1])  # step -1: codebook init
        return images[
            rng.choice(len(images), size=config.batch_size, replace=len(images) < config.batch_size)
        ]

    def generator_at(step: int) -> torch.Generator:
        return torch.Generator().manual_seed(config.seed * 1_000_003 + step + 1)

    if start == 0 and config.init_codebook_from_data:
        with torch.no_grad():
            latents = encode_latents(
                model, images_to_pixels(batch_at(-1), model.config.in_channels)
            )
        vectors = latents.permute(0, 1, 3, 4, 2).reshape(-1, latents.shape[2])
        centres = kmeans_plus_plus(vectors, codebook, generator_at(-1), iters=config.kmeans_iters)
        model.quantize.embedding.weight.data.copy_(centres)

    def checkpoint(step: int):
        if out is not None:
            state = {"step": step, "config": asdict(config), "n_images": len(images), "log": log}
            save_checkpoint(out, model, optimizer, state, last_used)

    stop = config.steps if until is None else min(until, config.steps)
    if until is not None and out is None:
        raise ValueError("until needs a run folder (out) to checkpoint into")
    bar = tqdm(range(start, stop), desc=f"train VQ ({preset})", unit="step", disable=not progress)
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, config)
        pixels = images_to_pixels(batch_at(step), model.config.in_channels)
        result = vq_forward(model, pixels)
        target = pixels if model.config.out_channels == pixels.shape[1] else pixels[:, :1]
        recon_loss, parts = reconstruction_loss(result.recon, target, config)
        loss = recon_loss + result.codebook_loss + config.beta * result.commitment_loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

        last_used[torch.unique(result.indices)] = step
        restarted = 0
        if (step + 1) % config.restart_every == 0:
            restarted = restart_dead_codes(
                model, optimizer, result.latents, last_used, step, config, generator_at(step)
            )
            log["restarts"] += restarted
        entry = {
            "step": step,
            "loss": float(loss.detach()),
            "recon": float(recon_loss.detach()),
            **{k: float(v.detach()) for k, v in parts.items()},
            "codebook": float(result.codebook_loss.detach()),
            "commitment": float(result.commitment_loss.detach()),
            "codes_in_batch": int(torch.unique(result.indices).numel()),
            "restarted": restarted,
            "lr": lr_at(step, config),
        }
        log["steps"].append(entry)
        bar.set_postfix(
            loss=f"{entry['loss']:.4f}", l1=f"{entry['l1']:.4f}", codes=entry["codes_in_batch"]
        )
        if (step + 1) % config.checkpoint_every == 0 and step + 1 < stop:
            checkpoint(step + 1)
    bar.close()

    if out is not None:
        checkpoint(max(stop, start))
        save_vq(model, out)
        atomic_write_json(out / "train_log.json", log)
    model.eval().requires_grad_(False)
    return model, log
