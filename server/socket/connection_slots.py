"""Who gets a connection slot on the request socket, and for how long an unknown peer keeps it.

Anyone can connect; only sites with a token matter. So a connection starts *unauthenticated*,
and while it is, it counts against a per-address cap and a cap on all unauthenticated
connections (both well below the total), it must authenticate within ``auth_deadline`` seconds
of being accepted (a deadline that bad frames do not extend), and it is closed after
``max_bad_frames`` error replies. Once one of its frames carries a valid token it leaves those
pools for good and is held only to ``frame_timeout`` per frame, like before.

What this buys: an outsider with one address holds at most ``max_unauthenticated_per_address``
slots for at most ``auth_deadline`` seconds each, can never take a slot from an authenticated
site, and cannot keep new sites from logging in. An outsider with many addresses can still
fill the unauthenticated pool (new logins then wait for a slot); that needs a firewall or
mutual TLS, not this module. All methods run on the event loop's thread: no locks.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ConnectionLimits:
    """Caps and deadlines of the request socket (the defaults suit a consortium of tens of sites)."""

    #: All open connections, authenticated or not.
    max_connections: int = 512
    #: Connections that have not authenticated yet, from all addresses together.
    max_unauthenticated: int = 256
    #: ... and from one address.
    max_unauthenticated_per_address: int = 32
    #: Seconds from accept to the first frame with a valid token.
    auth_deadline: float = 10.0
    #: Error replies an unauthenticated connection gets before it is closed.
    max_bad_frames: int = 3
    #: Seconds to wait for each next complete frame (slow senders, idle connections).
    frame_timeout: float = 30.0


@dataclass
class Connection:
    """One accepted connection: where from, since when, and how it has behaved."""

    address: str
    rate_key: str
    accepted_at: float = field(default_factory=time.monotonic)
    authenticated: bool = False
    bad_frames: int = 0


def peer_address(peername: Any) -> str:
    """The host part of ``getpeername()`` (IPv4 or IPv6); ``unknown`` for anything else."""
    if isinstance(peername, tuple) and peername:
        return str(peername[0])
    return "unknown"


class ConnectionSlots:
    """Counts connections per state and address and says which new one must be refused."""

    def __init__(self, limits: ConnectionLimits) -> None:
        self.limits = limits
        self._total = 0
        self._unauthenticated_total = 0
        self._unauthenticated: Counter[str] = Counter()

    @property
    def total(self) -> int:
        return self._total

    def refusal(self, address: str) -> str | None:
        """Why a new connection from ``address`` cannot have a slot, or None if it can."""
        limits = self.limits
        if self._total >= limits.max_connections:
            return f"the server is at its limit of {limits.max_connections} connections"
        if self._unauthenticated[address] >= limits.max_unauthenticated_per_address:
            return (
                f"{limits.max_unauthenticated_per_address} connections from {address} "
                "are already waiting to authenticate"
            )
        if self._unauthenticated_total >= limits.max_unauthenticated:
            return f"{limits.max_unauthenticated} connections are already waiting to authenticate"
        return None

    def take(self, connection: Connection) -> None:
        self._total += 1
        self._unauthenticated_total += 1
        self._unauthenticated[connection.address] += 1

    def authenticated(self, connection: Connection) -> None:
        """The connection carried a valid token: it leaves the unauthenticated pools."""
        if not connection.authenticated:
            connection.authenticated = True
            self._forget_unauthenticated(connection.address)

    def release(self, connection: Connection) -> None:
        self._total -= 1
        if not connection.authenticated:
            self._forget_unauthenticated(connection.address)

    def read_timeout(self, connection: Connection) -> float:
        """Seconds to wait for the next frame: the frame timeout, cut short by the auth deadline."""
        if connection.authenticated:
            return self.limits.frame_timeout
        left = connection.accepted_at + self.limits.auth_deadline - time.monotonic()
        return max(0.0, min(self.limits.frame_timeout, left))

    def past_deadline(self, connection: Connection) -> bool:
        return (
            not connection.authenticated
            and time.monotonic() >= connection.accepted_at + self.limits.auth_deadline
        )

    def strike(self, connection: Connection) -> bool:
        """Count an error reply; True when an unauthenticated connection has had enough."""
        if connection.authenticated:
            return False
        connection.bad_frames += 1
        return connection.bad_frames >= self.limits.max_bad_frames

    def _forget_unauthenticated(self, address: str) -> None:
        self._unauthenticated_total -= 1
        self._unauthenticated[address] -= 1
        if self._unauthenticated[address] <= 0:
            del self._unauthenticated[address]
