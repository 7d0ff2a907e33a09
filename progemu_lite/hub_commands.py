"""``progemu-lite download`` and ``progemu-lite convert``: fetch weights into the shared cache, and
turn original-layout Emu3/ProgEmu checkpoints into native transformers folders."""

from __future__ import annotations

import argparse
import functools


def _network_errors_as_one_line(handler):
    """Interrupted or refused transfers are user-facing conditions, not crashes."""

    @functools.wraps(handler)
    def wrapped(args):
        from .cli import CommandError

        try:
            return handler(args)
        except (FileNotFoundError, PermissionError):
            raise
        except OSError as err:
            raise CommandError(str(err)) from err

    return wrapped


def register(subparsers: argparse._SubParsersAction) -> None:
    download = subparsers.add_parser(
        "download",
        help="pre-fetch weights into the shared cache (PROGEMU_HOME)",
        description=(
            "Download a registered checkpoint (lite, progemu), a hub id (org/name[@revision]) or "
            "a URL into the cache, so that offline machines can use it: copy the cache folder "
            "and point PROGEMU_HOME at it."
        ),
    )
    download.add_argument("name", help="registry name, hub id, or http(s) URL")
    download.add_argument("--revision", help="hub revision (commit hash, tag or branch)")
    download.add_argument("--sha256", help="expected sha256 of a URL download")
    download.add_argument(
        "--no-convert",
        action="store_true",
        help="for original-layout checkpoints (progemu): fetch only, do not convert",
    )
    download.set_defaults(handler=_download)

    conv = subparsers.add_parser(
        "convert",
        help="convert an original-layout Emu3/ProgEmu checkpoint to a native transformers folder",
        description=(
            "SRC is a registry name whose weights are in the original BAAI Emu3 layout "
            "(e.g. progemu), or the LM folder of such a checkpoint (then give --vq). DST gets a "
            "native Emu3ForConditionalGeneration folder; an existing finished DST is kept."
        ),
    )
    conv.add_argument("src")
    conv.add_argument("dst")
    conv.add_argument("--vq", help="the original Emu3 vision tokenizer folder (or hub id)")
    conv.add_argument("--tokenizer", help="tokenizer folder (default: the LM folder)")
    conv.add_argument("--dtype", choices=("float32", "bfloat16", "float16"))
    conv.add_argument(
        "--allow-pickle",
        action="store_true",
        help="also read .bin/.pt weights (with torch.load(weights_only=True)); off by default",
    )
    conv.add_argument("--offline", action="store_true", help="never download; use caches only")
    conv.set_defaults(handler=_convert)


@_network_errors_as_one_line
def _download(args: argparse.Namespace) -> int:
    from . import hub

    resolved = hub.resolve(args.name, sha256=args.sha256, revision=args.revision)
    for role, path in resolved.parts.items():
        print(f"{role}: {path}")
    if resolved.layout == "original" and args.name in hub.REGISTRY and not args.no_convert:
        # Convert now, so that a shared (later read-only) cache already holds the native folder.
        native = hub.native_checkpoint(args.name, revision=args.revision, download=False)
        print(f"native: {native}")
    return 0


@_network_errors_as_one_line
def _convert(args: argparse.Namespace) -> int:
    from pathlib import Path

    from . import hub
    from .model.convert import convert_checkpoint

    download = not args.offline
    if args.src in hub.REGISTRY:
        resolved = hub.resolve(args.src, download=download)
        if resolved.layout != "original":
            raise ValueError(f"{args.src!r} is already a native checkpoint: nothing to convert")
        lm, vq = resolved.parts["lm"], resolved.parts["vq"]
        tokenizer = resolved.parts.get("tokenizer")
    else:
        lm = hub.resolve(args.src, download=download).path
        if not args.vq:
            raise ValueError("give --vq FOLDER: the original Emu3 vision tokenizer to convert with")
        vq = hub.resolve(args.vq, download=download).path
        tokenizer = None
    if args.tokenizer:
        tokenizer = hub.resolve(args.tokenizer, download=download).path
    out = convert_checkpoint(
        lm,
        vq,
        Path(args.dst),
        tokenizer_dir=tokenizer,
        dtype=args.dtype,
        allow_pickle=args.allow_pickle,
    )
    print(out)
    return 0
