"""``progemu-lite generate``: one counterfactual follow-up image and interpretation."""

from __future__ import annotations

import argparse
from pathlib import Path

from progemu_lite.files import atomic_write, atomic_write_json


def register(subparsers: argparse._SubParsersAction) -> None:
    gen = subparsers.add_parser(
        "generate",
        help="generate a counterfactual follow-up image and its interpretation",
        description=(
            "Run a ProgEmu checkpoint on a prior chest X-ray (PNG or DICOM) and a progression "
            "prompt; save the counterfactual image and print the interpretation."
        ),
    )
    gen.add_argument(
        "--model",
        required=True,
        help="checkpoint: a folder, a registry name (lite, progemu), a hub id or a URL",
    )
    gen.add_argument("--prior", type=Path, required=True, help="prior image: PNG/JPEG or DICOM")
    gen.add_argument("--prompt", required=True, help='e.g. "The left pleural effusion worsens."')
    gen.add_argument("--out", type=Path, required=True, metavar="FILE.png", help="output image")
    gen.add_argument(
        "--json",
        type=Path,
        default=None,
        metavar="FILE.json",
        help="also save interpretation, token ids and probabilities",
    )
    gen.add_argument("--seed", type=int, default=0, help="random seed (0)")
    gen.add_argument("--temperature", type=float, default=1.0, help="0 = greedy (1.0)")
    gen.add_argument(
        "--text-temperature",
        type=float,
        default=None,
        help="the interpretation's own temperature (default: --temperature; the model card "
        "recommends 0 for the lite model)",
    )
    gen.add_argument("--top-k", type=int, default=2048, help="top-k sampling (2048, official)")
    gen.add_argument("--top-p", type=float, default=None, help="nucleus sampling (off)")
    gen.add_argument(
        "--guidance-scale",
        type=float,
        default=1.0,
        help="classifier-free guidance scale (1 = off; the official code's is 3)",
    )
    gen.add_argument(
        "--text-guidance-scale",
        type=float,
        default=None,
        help="the interpretation's own guidance scale (default: --guidance-scale; 1 guides "
        "the image only)",
    )
    gen.add_argument(
        "--max-text-tokens",
        type=int,
        default=195,
        help="cap on the interpretation length in tokens (195)",
    )
    gen.add_argument(
        "--device", default=None, help="torch device, e.g. cuda (default: cuda for the full model)"
    )
    gen.add_argument(
        "--force",
        action="store_true",
        help="load the full 8B model even on a CPU (needs ~35 GB of memory and hours)",
    )
    gen.set_defaults(handler=run_generate)


def run_generate(args: argparse.Namespace) -> int:
    from PIL import Image

    from progemu_lite.model.pipeline import load

    if args.out.suffix.lower() != ".png":
        raise ValueError(f"--out must be a .png file, got {args.out}")
    if not args.prior.is_file():
        raise FileNotFoundError(f"prior image not found: {args.prior}")
    pipe = load(args.model, device=args.device, force=args.force)
    result = pipe(
        args.prior,
        args.prompt,
        temperature=args.temperature,
        text_temperature=args.text_temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        guidance_scale=args.guidance_scale,
        text_guidance_scale=args.text_guidance_scale,
        seed=args.seed,
        max_text_tokens=args.max_text_tokens,
    )
    atomic_write(
        args.out, lambda tmp: Image.fromarray(result.image).save(tmp, format="PNG"), suffix=".png"
    )
    if args.json is not None:
        record = {
            "prompt": result.prompt,
            "interpretation": result.interpretation,
            "truncated": result.truncated,
            "token_ids": result.token_ids.tolist(),
            "token_probabilities": [round(float(p), 6) for p in result.token_probabilities],
            "settings": result.settings,
            "model": str(args.model),
        }
        atomic_write_json(args.json, record)
    print(result.interpretation)
    print(f"saved {args.out}")
    return 0
