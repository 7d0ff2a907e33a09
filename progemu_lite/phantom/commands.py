"""``progemu-lite phantom``: write a simulated ICG-CXR dataset."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

# Below this many pairs a worker pool costs more than it saves.
_POOL_MIN_PAIRS = 32


def register(subparsers: argparse._SubParsersAction) -> None:
    phantom = subparsers.add_parser(
        "phantom",
        help="write a simulated ICG-CXR-style dataset of counterfactual pairs",
        description=(
            "Simulate patients and write K counterfactual (prior, follow-up) pairs per patient in "
            "the ICG-CXR folder layout, with prompts, interpretations and expert annotations. "
            "Deterministic; rerunning with the same arguments resumes an interrupted run."
        ),
    )
    phantom.add_argument("--patients", type=int, required=True, help="number of patients")
    phantom.add_argument(
        "--pairs-per-patient", type=int, default=3, help="counterfactual pairs per patient (3)"
    )
    phantom.add_argument("--size", type=int, default=256, help="image side in pixels (256)")
    phantom.add_argument("--out", type=Path, required=True, help="output folder")
    phantom.add_argument("--seed", type=int, default=0, help="random seed (0)")
    phantom.add_argument(
        "--generator-version",
        type=int,
        default=None,  # PhantomConfig's default; signs are imported only when the command runs
        help=(
            "how the subtlest findings are drawn: 1 at their physical size and density (a small "
            "nodule or mild edema hardly shows at 128x128), 2 visibly at every grade; same "
            "patients, texts and annotations (default 1)"
        ),
    )
    phantom.add_argument(
        "--contact-sheet", type=Path, default=None, metavar="FILE.png", help="also save a grid"
    )
    phantom.add_argument(
        "--workers",
        type=int,
        default=None,
        help="worker processes (default: 2 for 32 pairs or more, else 1)",
    )
    phantom.add_argument("--quiet", action="store_true", help="no progress bar")
    phantom.set_defaults(handler=run_phantom)


def run_phantom(args: argparse.Namespace) -> int:
    from .contact_sheet import contact_sheet_from_folder
    from .dataset import PhantomConfig, generate

    config = PhantomConfig(
        patients=args.patients,
        pairs_per_patient=args.pairs_per_patient,
        size=args.size,
        seed=args.seed,
        **({} if args.generator_version is None else {"generator_version": args.generator_version}),
    )
    if args.contact_sheet is not None and args.contact_sheet.suffix.lower() != ".png":
        raise ValueError(f"--contact-sheet must name a .png file, got {args.contact_sheet}")
    workers = args.workers
    if workers is None:
        total = config.patients * config.pairs_per_patient
        workers = min(2, os.cpu_count() or 1) if total >= _POOL_MIN_PAIRS else 1
    if workers < 1:
        raise ValueError(f"--workers must be at least 1, got {workers}")
    counts = generate(args.out, config, workers=workers, progress=not args.quiet)
    print(
        f"{counts['total']} pairs in {args.out} "
        f"({counts['written']} written, {counts['skipped']} already there)"
    )
    if args.contact_sheet is not None:
        contact_sheet_from_folder(args.out, args.contact_sheet)
        print(f"contact sheet: {args.contact_sheet}")
    return 0
