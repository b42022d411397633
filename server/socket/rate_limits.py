"""Request-rate limits of the request socket: per connection, per address, per site.

One misbehaving client (a loop without sleep, a token-guessing script) must not starve the
others or the admin's console, so budgets are moving windows:

- per connection, every frame;
- per address, every token check that costs scrypt (cache misses: first logins, wrong tokens),
  so guessing from one address is slow and cannot monopolise the check threads;
- per site, frames *after* authentication, so only a site's own programs spend its budget (a
  stranger sending wrong tokens in its name spends the stranger's address budget instead).

A frame over budget is answered with a ``rate_limited`` error and the connection stays open.
"""

from __future__ import annotations

from itertools import count

from limits import RateLimitItem, parse
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter

from shared.errors import ServerBusy


class RequestRateLimits:
    """Moving-window limits such as ``"200/second"`` (the ``limits`` library's notation)."""

    def __init__(
        self,
        *,
        per_connection: str = "500/second",
        per_site: str = "2000/second",
        auth_checks_per_address: str = "10/second",
    ) -> None:
        self._limiter = MovingWindowRateLimiter(MemoryStorage())
        self._per_connection: RateLimitItem = parse(per_connection)
        self._per_site: RateLimitItem = parse(per_site)
        self._checks_per_address: RateLimitItem = parse(auth_checks_per_address)
        self._connection_ids = count(1)

    def new_connection(self) -> str:
        """A key for one connection's budget."""
        return f"connection-{next(self._connection_ids)}"

    def check_connection(self, key: str) -> None:
        if not self._limiter.hit(self._per_connection, "connection", key):
            raise ServerBusy(
                f"more than {self._per_connection} requests on this connection",
                hint="Slow down: wait a second before the next request.",
            )

    def check_address(self, address: str) -> None:
        """Charge one token check (scrypt) to ``address``."""
        if not self._limiter.hit(self._checks_per_address, "address", address):
            raise ServerBusy(
                f"more than {self._checks_per_address} token checks from {address}",
                hint="Slow down: check the site name and token before retrying.",
            )

    def check_site(self, site: str) -> None:
        """Charge one authenticated frame to ``site``."""
        if not self._limiter.hit(self._per_site, "site", site):
            raise ServerBusy(
                f"more than {self._per_site} requests for site '{site}'",
                hint="Slow down: several programs of this site may be polling at once.",
            )
