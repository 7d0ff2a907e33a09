"""The ``progemu-lite`` command's help: every subcommand's ``--help`` is what a student reads first."""

from __future__ import annotations

import argparse

import pytest

from progemu_lite.cli import build_parser


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


@pytest.mark.parametrize("name", sorted(_subcommands()))
def test_subcommand_help_renders_its_percent_signs_once(name):
    # argparse %-formats argument help but not descriptions: "95%%" in a description prints
    # literally, and a lone "%" in an argument's help raises when --help is asked for.
    text = _subcommands()[name].format_help()
    assert "%%" not in text, f"progemu-lite {name} --help shows a doubled percent sign"
    assert text.startswith(f"usage: progemu-lite {name}")


def test_top_level_help_lists_every_subcommand():
    text = build_parser().format_help()
    for name in _subcommands():
        assert name in text
