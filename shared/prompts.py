"""questionary prompts for both menus; Ctrl-C raises ``KeyboardInterrupt`` so a menu can catch it.

questionary's ``ask()`` turns Ctrl-C into ``None`` (and prints "Cancelled"); ``unsafe_ask()``
lets it through, which is what "Ctrl-C returns to the menu" needs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

import questionary

T = TypeVar("T")


def choose(message: str, choices: Sequence[questionary.Choice | str], *, shortcuts: bool = False) -> str:
    """One of ``choices`` by arrow keys; with ``shortcuts`` each ``Choice.shortcut_key`` moves there too."""
    return questionary.select(message, choices=list(choices), use_shortcuts=shortcuts).unsafe_ask()


def choose_many(message: str, choices: Sequence[questionary.Choice]) -> list[str]:
    """Any subset of ``choices`` (space toggles, ``a`` toggles all)."""
    return questionary.checkbox(message, choices=list(choices)).unsafe_ask()


def text(message: str, default: str = "", *, required: bool = False) -> str:
    validate = (lambda value: bool(value.strip()) or "required") if required else None
    return questionary.text(message, default=default, validate=validate).unsafe_ask().strip()


def secret(message: str) -> str:
    return questionary.password(message, validate=lambda value: bool(value.strip()) or "required").unsafe_ask().strip()


def number(message: str, default: T, convert: Callable[[str], T], *, minimum: float | None = None,
           maximum: float | None = None) -> T:
    """A number typed as text, converted with ``convert`` (``int`` or ``float``), re-asked until valid."""

    def valid(value: str) -> bool | str:
        try:
            parsed = float(convert(value))  # type: ignore[arg-type]
        except ValueError:
            return f"type a number ({convert.__name__})"
        if minimum is not None and parsed < minimum:
            return f"at least {minimum:g}"
        return maximum is None or parsed <= maximum or f"at most {maximum:g}"

    return convert(questionary.text(message, default=str(default), validate=valid).unsafe_ask())


def confirm(message: str, default: bool = False) -> bool:
    return bool(questionary.confirm(message, default=default).unsafe_ask())
