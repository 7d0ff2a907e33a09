"""The ``progemu-lite`` command. Each area of the package registers its own subcommands in a
``commands`` module (``register(subparsers)``); heavy imports stay inside the handlers so that
``progemu-lite --help`` is quick.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# One line per area that contributes subcommands.
COMMAND_MODULES = [
    "progemu_lite.phantom.commands",
    "progemu_lite.model.train_commands",
    "progemu_lite.hub_commands",
    "progemu_lite.tokenization.commands",
    "progemu_lite.model.commands",
    "progemu_lite.model.demo_commands",
    "progemu_lite.evaluation.commands",
]


class CommandError(Exception):
    """A user error: printed as one line, exit status 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="progemu-lite",
        description="Interpretable counterfactual generation on chest X-rays (ProgEmu), for teaching and research.",
    )
    from . import __version__

    parser.add_argument("--version", action="version", version=f"progemu-lite {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result = args.handler(args)
    except (CommandError, ValueError, FileNotFoundError, PermissionError) as err:
        # Bad input: one clear line naming the problem, no traceback.
        print(f"progemu-lite {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
