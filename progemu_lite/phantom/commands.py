"""``progemu-lite phantom`` (write a simulated ICG-CXR dataset) and ``progemu-lite demo``."""

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

    demo = subparsers.add_parser(
        "demo",
        help="simulate one patient's prior and follow-up and show what changed",
        description=(
            "Render one simulated patient's prior and a counterfactual follow-up, save a figure "
            "(prior | follow-up | difference) and print the prompt, interpretation and expert "
            "annotation."
        ),
    )
    demo.add_argument("--out", type=Path, required=True, help="output folder")
    demo.add_argument("--seed", type=int, default=0, help="random seed (0)")
    demo.add_argument("--size", type=int, default=256, help="image side in pixels (256)")
    demo.set_defaults(handler=run_demo)


def run_phantom(args: argparse.Namespace) -> int:
    from .contact_sheet import contact_sheet_from_folder
    from .dataset import PhantomConfig, generate

    config = PhantomConfig(
        patients=args.patients,
        pairs_per_patient=args.pairs_per_patient,
        size=args.size,
        seed=args.seed,
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


def run_demo(args: argparse.Namespace) -> int:
    from ..data.icgcxr import write_pair
    from ..files import atomic_write_json
    from .contact_sheet import SheetPair, save_contact_sheet
    from .dataset import PhantomConfig, simulate_patient

    config = PhantomConfig(patients=1, pairs_per_patient=1, size=args.size, seed=args.seed)
    out: Path = args.out
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise PermissionError(f"cannot create output folder {out}: {err.strerror}") from None
    pair = next(simulate_patient(config, 0))
    record = pair.record
    figure = save_contact_sheet(
        [SheetPair(pair.prior.image, pair.followup.image, record.prompt, record.pair_id)],
        out / "demo.png",
        title="Simulated patient: prior | follow-up | difference",
    )
    folder = write_pair(out, record, pair.prior.image, pair.followup.image, overwrite=True)
    print(f"Prompt:          {record.prompt}")
    print(f"Interpretation:  {record.interpretation}")
    print("Expert annotation:")
    for entry in pair.annotation:
        where = f" ({entry.location})" if entry.location else ""
        print(
            f"  {entry.finding}{where}: {entry.direction}, "
            f"{entry.severity_before} -> {entry.severity_after}"
        )
    atomic_write_json(out / "annotation.json", [e.to_dict() for e in pair.annotation], indent=2)
    print(f"Figure:          {figure}")
    print(f"Pair (ICG-CXR):  {folder}")
    return 0
