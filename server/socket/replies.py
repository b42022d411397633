"""How the request socket words an outcome: the wire code of each error, and a reply with what it proved.
"""

from __future__ import annotations

from typing import NamedTuple

from shared import protocol as p
from shared.errors import (
    AuthError,
    FLError,
    FrameTooLarge,
    IllegalTransitionError,
    NotFoundError,
    ProtocolError,
    ServerBusy,
)


def error_code(exc: FLError) -> p.ErrorCode:
    """The wire code of an error the server raised on purpose (most specific class first)."""
    if isinstance(exc, AuthError):
        return "auth"
    if isinstance(exc, ServerBusy):
        return "rate_limited"
    if isinstance(exc, FrameTooLarge):
        return "too_large"
    if isinstance(exc, ProtocolError):
        return "protocol"
    if isinstance(exc, NotFoundError):
        return "not_found"
    if isinstance(exc, IllegalTransitionError):
        return "illegal"
    return "refused"


class Reply(NamedTuple):
    """An encoded reply and what it says about the frame it answers."""

    frame: bytes
    ok: bool
    authenticated: bool
