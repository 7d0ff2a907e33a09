"""``progemu-lite train-vq``: train the VQ image tokenizer on an ICG-CXR-style folder;
``progemu-lite vq-report``: how well a trained one keeps held-out images and every finding;
``progemu-lite vq-probe``: whether a reader can still tell a prior's findings from its VQ
tokens."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from progemu_lite.files import atomic_write_json

# Prior and follow-up images of an ICG-CXR pair folder.
IMAGE_PATTERNS = ("**/*-ref-reg.png", "**/*-flu-reg.png")


def find_training_images(root) -> list[Path]:
    """Every ICG-CXR prior/follow-up PNG under ``root``, sorted (a stable order for seeding)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"data folder {str(root)!r} does not exist")
    paths = sorted({p for pattern in IMAGE_PATTERNS for p in root.glob(pattern)})
    if not paths:
        raise FileNotFoundError(f"no ICG-CXR images (*-ref-reg.png, *-flu-reg.png) under {root}")
    return paths


def load_training_images(
    root, image_size: int, limit: int | None = None, progress: bool = True
) -> np.ndarray:
    """uint8 ``(N, image_size, image_size)`` grayscale images from an ICG-CXR-style tree,
    resized (area-averaged) when their side differs; ``limit`` keeps the first N files."""
    from PIL import Image
    from tqdm.auto import tqdm

    paths = find_training_images(root)[:limit]
    out = np.empty((len(paths), image_size, image_size), dtype=np.uint8)
    for i, path in enumerate(tqdm(paths, desc="loading images", unit="img", disable=not progress)):
        with Image.open(path) as image:
            if image.mode != "L":
                raise ValueError(
                    f"{path}: expected an 8-bit grayscale PNG (mode 'L'); got mode {image.mode!r}"
                )
            if image.width != image.height:
                raise ValueError(
                    f"{path}: expected a square image; got {image.width}x{image.height}"
                )
            if image.width != image_size:
                image = image.resize((image_size, image_size), Image.Resampling.BOX)
            out[i] = np.asarray(image)
    return out


def load_vq_with_preset(folder: Path):
    """``(vqmodel, preset)`` of the VQ tokenizer in ``folder`` (see ``vq.load_vq``)."""
    from progemu_lite.tokenization.vq import PRESETS, load_vq, vq_preset

    vqmodel = load_vq(folder)
    preset = vq_preset(vqmodel.config)
    if preset is None:
        raise ValueError(
            f"the VQ tokenizer in {folder} has the shapes of no preset ({', '.join(PRESETS)})"
        )
    return vqmodel, preset


def register(subparsers: argparse._SubParsersAction) -> None:
    train = subparsers.add_parser(
        "train-vq",
        help="train the VQ image tokenizer (transformers' Emu3VQVAE) on an ICG-CXR-style folder",
        description=(
            "Train a VQ image tokenizer from scratch on the *-ref-reg.png / *-flu-reg.png images "
            "under --data (resized to the preset's size). Writes a save_pretrained folder "
            "(config.json, model.safetensors), training_state/ for --resume, train_log.json, "
            "report.json (PSNR, SSIM, codebook usage), round_trip.png and finding_round_trip.png "
            "(one simulated patient per finding type) into --out."
        ),
    )
    train.add_argument("--data", type=Path, required=True, help="ICG-CXR-style data folder")
    train.add_argument(
        "--preset", choices=("tiny", "lite", "full"), default="lite", help="VQ size (lite)"
    )
    train.add_argument("--steps", type=int, required=True, help="total training steps")
    train.add_argument("--out", type=Path, required=True, help="output folder")
    train.add_argument("--resume", action="store_true", help="continue the run in --out")
    train.add_argument(
        "--init",
        type=Path,
        default=None,
        metavar="VQ",
        help=(
            "start from this trained VQ (a train-vq folder or a checkpoint folder) with its "
            "codebook kept, instead of a fresh model and a k-means codebook: a longer schedule "
            "on top of a tokenizer keeps most codes' meaning, so a decoder trained on the old "
            "codes can be fine-tuned on the new ones"
        ),
    )
    train.add_argument(
        "--until",
        type=int,
        default=None,
        metavar="STEP",
        help="stop at this step (checkpointed) and keep the --steps schedule; --resume goes on",
    )
    train.add_argument("--batch-size", type=int, default=16, help="images per step (16)")
    train.add_argument("--lr", type=float, default=3e-4, help="peak learning rate (3e-4)")
    train.add_argument("--seed", type=int, default=0, help="random seed (0)")
    train.add_argument(
        "--checkpoint-every", type=int, default=200, help="steps between checkpoints (200)"
    )
    train.add_argument("--max-images", type=int, default=None, help="use only the first N images")
    train.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: torch's choice; 1 is often faster on a busy machine)",
    )
    train.add_argument("--quiet", action="store_true", help="no progress bars")
    train.set_defaults(handler=run_train_vq)

    report = subparsers.add_parser(
        "vq-report",
        help="held-out PSNR/SSIM/codebook usage of a trained VQ, and a per-finding round trip",
        description=(
            "For a train-vq output folder (or the VQ inside a ProgEmu checkpoint folder), write "
            "OUT/report.json (PSNR, SSIM, codebook usage on the held-out pairs of --data, and "
            "per-finding PSNR and how much of each finding's signal survives) and "
            "OUT/finding_round_trip.png (original | reconstruction | |difference| for one "
            "simulated patient per finding type)."
        ),
    )
    report.add_argument("--vq", type=Path, required=True, help="the VQ (or checkpoint) folder")
    report.add_argument(
        "--data", type=Path, required=True, help="ICG-CXR-style folder with held-out pairs"
    )
    report.add_argument("--out", type=Path, required=True, help="output folder")
    report.add_argument(
        "--split",
        choices=("test", "val"),
        default="test",
        help="which held-out pairs of --data to use (test)",
    )
    report.add_argument(
        "--max-images", type=int, default=64, help="held-out images to measure (64)"
    )
    report.add_argument("--seed", type=int, default=0, help="seed of the finding patients (0)")
    report.set_defaults(handler=run_vq_report)

    from progemu_lite.tokenization.vq_probe import READER_EPOCHS

    probe = subparsers.add_parser(
        "vq-probe",
        help="can a reader still tell a prior's findings from its VQ tokens?",
        description=(
            "Train the same small CNN four times (same seed) to name the findings (type and side) "
            "of the training priors of --data: from their pixels, from their VQ round trips, and "
            "from their VQ codes through a learnt embedding and through the codebook vectors. "
            "Score each on the held-out pairs' stable findings (the model issue's stable-finding "
            "check) and write OUT/probe.json and OUT/probe.png."
        ),
    )
    probe.add_argument("--vq", type=Path, required=True, help="the VQ (or checkpoint) folder")
    probe.add_argument("--data", type=Path, required=True, help="ICG-CXR-style data folder")
    probe.add_argument("--out", type=Path, required=True, help="output folder")
    probe.add_argument(
        "--epochs",
        type=int,
        default=READER_EPOCHS,
        help=f"reader training epochs ({READER_EPOCHS})",
    )
    probe.add_argument(
        "--max-train-images",
        type=int,
        default=None,
        help="train the readers on the first N distinct training priors (all)",
    )
    probe.add_argument("--seed", type=int, default=0, help="reader seed (0)")
    probe.add_argument("--quiet", action="store_true", help="no progress bars")
    probe.set_defaults(handler=run_vq_probe)


def run_train_vq(args: argparse.Namespace) -> int:
    from progemu_lite.cli import CommandError
    from progemu_lite.tokenization.vq import (
        IMAGE_SIZES,
        decode_codes,
        encode_images,
        plot_round_trip,
        vq_report,
    )
    from progemu_lite.tokenization.vq_figures import FINDING_FIGURE, finding_round_trip
    from progemu_lite.tokenization.vq_train import STATE_DIR, train_vq

    if args.steps < 1:
        raise ValueError(f"--steps must be at least 1; got {args.steps}")
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be at least 1; got {args.threads}")
        import torch

        torch.set_num_threads(args.threads)
    # Checked before the (slow) image loading.
    has_run = (args.out / STATE_DIR).exists()
    if has_run and not args.resume:
        raise CommandError(
            f"{args.out} already holds a VQ training run; pass --resume or a new --out"
        )
    if args.resume and not has_run:
        raise FileNotFoundError(f"--resume: no VQ training checkpoint in {args.out}")
    model = None
    if args.init is not None:
        if args.resume:
            raise CommandError("--init starts a run; --resume continues one from its checkpoint")
        model, init_preset = load_vq_with_preset(args.init)
        if init_preset != args.preset:
            raise CommandError(
                f"--init {args.init} is a {init_preset!r} VQ, not --preset {args.preset!r}"
            )
    paths = find_training_images(args.data)[: args.max_images]
    images = load_training_images(
        args.data, IMAGE_SIZES[args.preset], limit=args.max_images, progress=not args.quiet
    )
    model, log = train_vq(
        images,
        preset=args.preset,
        steps=args.steps,
        out=args.out,
        resume=args.resume,
        progress=not args.quiet,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        checkpoint_every=args.checkpoint_every,
        until=args.until,
        model=model,
        # An --init VQ keeps its codebook: k-means would give every code a new meaning.
        **(
            {"init_codebook_from_data": False, "init_from": str(args.init)}
            if model is not None
            else {}
        ),
    )
    # Quality on an evenly spread sample of the training images (the tokenizer's job is to
    # reproduce its data faithfully; generalisation is judged by the model run downstream).
    sample = np.linspace(0, len(images) - 1, num=min(64, len(images))).round().astype(int)
    report = vq_report(model, images[sample])
    report["train_steps"] = len(log["steps"])
    report["final_loss"] = log["steps"][-1]["loss"] if log["steps"] else None
    report["restarts"] = log["restarts"]
    report["init_from"] = log["config"]["init_from"]
    # The same simulated patients (seed 0) for every VQ, so two runs' figures compare.
    report["findings"] = finding_round_trip(
        model,
        IMAGE_SIZES[args.preset],
        args.out / FINDING_FIGURE,
        title=f"VQ {args.preset}: findings after the round trip",
    )
    atomic_write_json(args.out / "report.json", report)
    shown = sample[np.linspace(0, len(sample) - 1, num=min(6, len(sample))).round().astype(int)]
    recons = decode_codes(model, encode_images(model, images[shown]))
    titles = [paths[i].name.removesuffix(".png") for i in shown]
    plot_round_trip(
        images[shown],
        recons,
        titles,
        args.out / "round_trip.png",
        suptitle=f"VQ {args.preset}: PSNR {report['psnr']:.2f} dB, SSIM {report['ssim']:.3f}",
    )
    print(
        f"VQ ({args.preset}) saved to {args.out}: PSNR {report['psnr']:.2f} dB, "
        f"SSIM {report['ssim']:.3f}, codes used {report['used']}/{report['codebook_size']} "
        f"(perplexity {report['perplexity']:.0f})"
    )
    return 0


def run_vq_report(args: argparse.Namespace) -> int:
    from progemu_lite.tokenization.vq_figures import (
        FINDING_FIGURE,
        REPORT_FILE,
        held_out_pairs,
        write_vq_report,
    )

    if args.max_images < 1:
        raise ValueError(f"--max-images must be at least 1, got {args.max_images}")
    if not args.data.is_dir():
        raise FileNotFoundError(f"data folder {str(args.data)!r} does not exist")
    pairs = held_out_pairs(args.data, args.split)  # checked before the model loads
    vqmodel, preset = load_vq_with_preset(args.vq)
    report = write_vq_report(
        vqmodel,
        preset,
        args.data,
        args.out,
        split=args.split,
        max_images=args.max_images,
        seed=args.seed,
        pairs=pairs,
    )
    print(
        f"VQ {preset} on {report['n_images']} held-out ({args.split}) images: "
        f"PSNR {report['psnr']:.2f} dB, SSIM {report['ssim']:.3f}, codes used "
        f"{report['used']}/{report['codebook_size']} (perplexity {report['perplexity']:.0f})"
    )
    for row in report["findings"]:
        where = f" {row['location']}" if row["location"] else ""
        print(
            f"  {row['finding']}{where}: PSNR {row['psnr']:.1f} dB, "
            f"sign kept {row['sign_kept']:.0%}"
        )
    print(f"saved {args.out / REPORT_FILE} and {args.out / FINDING_FIGURE}")
    return 0


def run_vq_probe(args: argparse.Namespace) -> int:
    from progemu_lite.files import atomic_write_json
    from progemu_lite.phantom.findings import FINDINGS
    from progemu_lite.tokenization.vq import IMAGE_SIZES
    from progemu_lite.tokenization.vq_probe import (
        PROBE_FIGURE,
        PROBE_FILE,
        READERS,
        load_probe_set,
        plot_probe,
        probe_pairs,
        probe_vq,
        recall_by_grade,
    )

    # Cheap checks before the model loads.
    if args.epochs < 1:
        raise ValueError(f"--epochs must be at least 1, got {args.epochs}")
    if args.max_train_images is not None and args.max_train_images < 1:
        raise ValueError(f"--max-train-images must be at least 1, got {args.max_train_images}")
    pairs = probe_pairs(args.data)
    vqmodel, preset = load_vq_with_preset(args.vq)
    probe = load_probe_set(
        pairs,
        IMAGE_SIZES[preset],
        max_train_images=args.max_train_images,
        progress=not args.quiet,
    )
    report = probe_vq(vqmodel, probe, epochs=args.epochs, seed=args.seed, progress=not args.quiet)
    report["vq"] = str(args.vq)
    report["data"] = str(args.data)
    # The report is complete before the first file is written.
    plot_probe(
        report, args.out / PROBE_FIGURE, title=f"Can a reader see the findings? (VQ {preset})"
    )
    atomic_write_json(args.out / PROBE_FILE, report)
    for key, _, label in READERS:
        score = report[key]
        print(
            f"reader of {label}: {score['stable_recall']:.1%} of {score['stable_annotated']} "
            f"held-out stable findings seen (precision {score['precision']:.2f}); by severity, "
            + ", ".join(
                f"{('mildest', 'middle', 'most severe')[g]} {seen}/{annotated}"
                for g, (seen, annotated) in enumerate(recall_by_grade(score))
            )
        )
        print(
            "  AUROC per finding (held-out priors holding it or not; 0.5 = chance): "
            + ", ".join(
                f"{FINDINGS[name].text} " + ("n/a" if value is None else f"{value:.3f}")
                for name, value in score["auroc"].items()
            )
        )
        if score["claimed"] == 0:
            # Seen once: a reader stuck at "no finding anywhere" from early on (the loss of
            # answering each finding's prevalence), while the same CNN on other inputs learnt.
            print(
                f"warning: the reader of {label} named no finding in any held-out prior: its "
                "training collapsed and its row measures nothing; rerun with another --seed",
                file=sys.stderr,
            )
    ratio = report["recall_ratio"]
    print(
        "round trip / pixels: "
        + (f"{ratio:.2f}x" if ratio is not None else "n/a (the pixel reader saw none)")
    )
    print(f"saved {args.out / PROBE_FILE} and {args.out / PROBE_FIGURE}")
    return 0
