"""argparse value types shared by the three entry points."""

from __future__ import annotations

import argparse


def version_number(text: str) -> int:
    """``v3`` or ``3`` -> 3, as people write version numbers."""
    try:
        return int(text.lower().removeprefix("v"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a version: {text!r} (use e.g. v3 or 3)") from None
