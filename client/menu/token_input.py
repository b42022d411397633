"""Where ``fl-client setup`` reads the site's token from, without putting it on a command line.

A token passed as ``--token TOKEN`` is visible to every local user in the process list and is
kept in the shell history. So the token comes from a file (``--token-file PATH``, ``-`` for
standard input), or from a hidden prompt when a person is at the terminal, or from the first
line of standard input when a script pipes it in. ``--token`` still works, with a warning.
"""

from __future__ import annotations

import getpass
import sys
from pathlib import Path
from typing import TextIO

from shared.errors import UsageError

FLAG_WARNING = (
    "warning: --token puts the token in the process list and the shell history; "
    "use --token-file FILE, pipe it on standard input, or leave both out to be asked"
)


def read_token(
    flag: str | None, token_file: Path | None, *, stdin: TextIO | None = None, stderr: TextIO | None = None
) -> str:
    """The token from ``--token`` (warned), ``--token-file`` (``-``: stdin), the prompt or stdin."""
    stdin = stdin if stdin is not None else sys.stdin
    stderr = stderr if stderr is not None else sys.stderr
    if flag is not None:
        print(FLAG_WARNING, file=stderr)
        return _checked(flag, "--token")
    if token_file is not None and str(token_file) != "-":
        try:
            return _checked(token_file.read_text(encoding="utf-8"), str(token_file))
        except OSError as exc:
            raise UsageError(f"cannot read the token file {token_file}: {exc.strerror or exc}") from None
    if token_file is None and stdin.isatty():
        return _checked(getpass.getpass("site token (input hidden): ", stream=stderr), "the prompt")
    return _checked(stdin.readline(), "standard input")


def _checked(text: str, source: str) -> str:
    token = text.strip()
    if not token or any(char.isspace() for char in token):
        raise UsageError(
            f"no usable token from {source}",
            hint="Give the token the admin showed at enrolment: one line, no spaces.",
        )
    return token
