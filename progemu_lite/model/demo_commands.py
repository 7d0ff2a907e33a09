"""``progemu-lite demo``: the main job (``make demo``), see :mod:`progemu_lite.model.demo`."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    demo = subparsers.add_parser(
        "demo",
        help="generate three counterfactuals of the bundled simulated prior (make demo)",
        description=(
            "Load a ProgEmu checkpoint (default: the shipped lite weights), run three "
            "progression prompts (a worsening, a new finding, a resolution) on the bundled "
            "simulated prior, print each prompt with its interpretation and time, and save "
            "OUT/demo.png (prior | counterfactual | difference per prompt) and OUT/demo.json."
        ),
    )
    demo.add_argument(
        "--weights",
        default="lite",
        metavar="NAME_OR_FOLDER",
        help="a registry name (lite) or a checkpoint folder (default: lite)",
    )
    demo.add_argument(
        "--out", type=Path, default=Path("outputs/demo"), help="output folder (outputs/demo)"
    )
    demo.add_argument("--seed", type=int, default=0, help="random seed (0)")
    demo.add_argument("--quiet", action="store_true", help="no progress bars")
    demo.set_defaults(handler=run_demo_command)


def run_demo_command(args: argparse.Namespace) -> int:
    from progemu_lite.model.demo import run_demo

    if args.seed < 0:
        raise ValueError(f"--seed must be non-negative, got {args.seed}")
    run_demo(args.weights, args.out, seed=args.seed, progress=not args.quiet)
    return 0
