"""argparse value types shared by the three entry points."""

from __future__ import annotations

import argparse


def version_number(text: str) -> int:
    """``v3`` or ``3`` -> 3, as people write version numbers."""
    try:
        return int(text.lower().removeprefix("v"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a version: {text!r} (use e.g. v3 or 3)") from None


def add_verbose_option(parser: argparse.ArgumentParser, commands: argparse._SubParsersAction) -> None:
    """``--verbose``, before or after the command (call once every command is added)."""
    text = "show TensorFlow's and the other libraries' messages (default: only in the log file)"
    parser.add_argument("--verbose", action="store_true", help=text)
    for command in commands.choices.values():
        command.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS, help=text)
