"""Text a site sent, made safe to store, log and show: no control characters, bounded length.

A site's note or a client's claimed name reaches the admin's terminal and the server log. Raw
escape sequences there can move the cursor, erase lines or forge a clickable link, and bidi
overrides can make text read differently from what it is. So the protocol strips them on the
way in (:func:`strip_control`), logs quote what they print (:func:`log_excerpt`), and views
render such text as plain text, never as Rich markup (``shared.terminal.untrusted``).
"""

from __future__ import annotations

import unicodedata

#: Unicode categories removed: Cc (C0/C1 controls, DEL, ESC), Cf (bidi overrides, zero-width
#: joiners and other invisible format characters), Cs (lone surrogates), Co (private use).
_REMOVED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co"})
#: Whitespace controls that separate words: they become one space instead of vanishing.
_SPACES = frozenset("\t\n\r\v\f\x85\u2028\u2029")


def strip_control(text: str) -> str:
    """``text`` without control or invisible format characters; line breaks and tabs become spaces."""
    out = []
    for char in text:
        if char in _SPACES:
            out.append(" ")
        elif unicodedata.category(char) not in _REMOVED_CATEGORIES:
            out.append(char)
    return "".join(out)


def log_excerpt(text: str, limit: int = 64) -> str:
    """``text`` for one log line: control characters removed, at most ``limit`` characters, quoted.

    The quotes (``repr``) show where an attacker-chosen value starts and ends.
    """
    cleaned = strip_control(text)
    if len(cleaned) > limit:
        cleaned = cleaned[:limit] + "..."
    return repr(cleaned)
