"""Admit only the approved sites to a session's Flower server, and only for a bounded wait.

Flower's own client manager accepts any client that connects and waits up to 24 hours for
enough of them. Here every new connection is asked for its site name and per-session secret
(``get_properties``) before it can be sampled; a client that cannot prove them is told to
disconnect and never receives the global weights. A session whose sites do not all show up
within ``join_timeout_s`` fails with the names of the missing sites instead of holding its port.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from flwr.common import GetPropertiesIns, ReconnectIns
from flwr.server.client_manager import SimpleClientManager
from flwr.server.client_proxy import ClientProxy

from shared.errors import SessionFailedError

log = logging.getLogger(__name__)

SITE_KEY = "site"
SECRET_KEY = "session_secret"
PROOF_TIMEOUT_S = 30.0

Rejecter = Callable[[int, str, str, str], None]


class AdmissionClientManager(SimpleClientManager):
    """Samples exactly the connected clients that proved an admitted site's session secret.

    Parameters
    ----------
    participants : list[str]
        Sites approved for the session.
    verify_secret : Callable[[str, str], bool]
        ``(site, secret) -> bool``.
    min_clients : int
        Admitted sites a round needs once the first round has started.
    join_timeout_s : float
        How long the first round waits for every participant (later rounds: for ``min_clients``).
    on_reject : Rejecter
        ``(round, phase, who, reason)`` for every refused connection.
    """

    def __init__(
        self,
        *,
        participants: list[str],
        verify_secret: Callable[[str, str], bool],
        min_clients: int,
        join_timeout_s: float,
        on_reject: Rejecter,
    ) -> None:
        super().__init__()
        self.participants = set(participants)
        self.verify_secret = verify_secret
        self.min_clients = min_clients
        self.join_timeout_s = join_timeout_s
        self.on_reject = on_reject
        self.site_of: dict[str, str] = {}  # cid -> admitted site
        self._first_round_started = False

    def sample(
        self, num_clients: int, min_num_clients: int | None = None, criterion: Any = None
    ) -> list[ClientProxy]:
        """Wait until enough admitted sites are connected and return all of them."""
        needed = self.min_clients if self._first_round_started else len(self.participants)
        deadline = time.monotonic() + self.join_timeout_s
        while True:
            self._check_new_clients()
            admitted = [proxy for cid, proxy in dict(self.clients).items() if cid in self.site_of]
            if len(admitted) >= needed:
                self._first_round_started = True
                return admitted
            if time.monotonic() >= deadline:
                raise SessionFailedError(self._missing_message(admitted, needed))
            with self._cv:
                self._cv.wait(timeout=min(0.5, max(0.0, deadline - time.monotonic())))

    def unregister(self, client: ClientProxy) -> None:
        super().unregister(client)
        self.site_of.pop(client.cid, None)

    def _check_new_clients(self) -> None:
        for cid, proxy in list(self.clients.items()):
            if cid not in self.site_of:
                self._check(proxy)

    def _check(self, proxy: ClientProxy) -> None:
        try:
            properties = proxy.get_properties(
                GetPropertiesIns(config={}), timeout=PROOF_TIMEOUT_S, group_id=None
            ).properties
        except Exception as exc:  # a client that cannot answer is not admitted
            self._refuse(proxy, f"client {proxy.cid}", f"no proof of admission ({exc.__class__.__name__})")
            return
        site = str(properties.get(SITE_KEY, ""))
        secret = str(properties.get(SECRET_KEY, ""))
        if site not in self.participants or not self.verify_secret(site, secret):
            self._refuse(proxy, site or f"client {proxy.cid}", "not admitted: missing or wrong session secret")
        elif site in self.site_of.values():
            self._refuse(proxy, site, "a second connection for an already connected site")
        else:
            self.site_of[proxy.cid] = site
            log.info("site %s joined the session", site)

    def _refuse(self, proxy: ClientProxy, who: str, reason: str) -> None:
        log.warning("refused %s: %s", who, reason)
        self.on_reject(0, "join", who, reason)
        super().unregister(proxy)
        try:
            proxy.reconnect(ReconnectIns(seconds=None), timeout=5.0, group_id=None)
        except Exception:  # the client may already be gone; it is unregistered either way
            log.debug("could not tell %s to disconnect", who, exc_info=True)

    def _missing_message(self, admitted: list[ClientProxy], needed: int) -> str:
        present = {self.site_of[p.cid] for p in admitted}
        missing = sorted(self.participants - present)
        return (
            f"only {len(present)} of {needed} site(s) connected within "
            f"{self.join_timeout_s:.0f} s (missing: {', '.join(missing) or 'none'})"
        )
