"""Admit only the approved sites to a session's Flower server, and only for a bounded wait.

Flower's own client manager accepts any client that connects and waits up to 24 hours for
enough of them. Here every new connection is asked for its site name and per-session secret
(``get_properties``) before it can be sampled; a client that cannot prove them is told to
disconnect and never receives the global weights. A session whose sites do not all show up
within ``join_timeout_s`` fails with the names of the missing sites instead of holding its port.

Nobody who can merely connect may delay an approved site: proofs are checked as connections
arrive, concurrently, each with a short ``proof_timeout_s``, so silent connections cost a
thread for a few seconds and never a place in a queue. Unproven connections are capped per
address and in total; beyond that a connection is turned away at once, told (Flower's
``ReconnectIns``) to come back after a second or few: several honest sites behind one address
(one NAT, one host) that connect in the same instant all get in, a little later, instead of
failing for good. The name an unproven client claims is attacker-chosen text: it is cleaned
and cut short before it is logged.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from flwr.common import GetPropertiesIns, ReconnectIns
from flwr.server.client_manager import SimpleClientManager
from flwr.server.client_proxy import ClientProxy

from shared.errors import SessionFailedError
from shared.plain_text import log_excerpt

log = logging.getLogger(__name__)

SITE_KEY = "site"
SECRET_KEY = "session_secret"
PROOF_TIMEOUT_S = 10.0
MAX_UNPROVEN_PER_ADDRESS = 4
MAX_UNPROVEN = 64
UNKNOWN_ADDRESS = "unknown"

Rejecter = Callable[[int, str, str, str], None]

_joining = threading.local()


#: Seconds (drawn per connection, to spread a burst) after which a turned-away client comes back.
RETRY_AFTER_S = (1, 3)


def joining_from(address: str) -> None:
    """Record the address of the connection whose ``register`` runs next on this thread.

    The session's gRPC servicer calls it just before Flower registers the new client, on the
    same thread (see ``server.sessions.grpc_listener``).
    """
    _joining.address = address
    _joining.retry_after_s = None


def retry_after_s() -> int | None:
    """Seconds after which the connection ``register`` just turned away for capacity may come back
    (None: it was not turned away for capacity), for the servicer on the same thread to tell it."""
    return getattr(_joining, "retry_after_s", None)


def _joining_address() -> str:
    return getattr(_joining, "address", UNKNOWN_ADDRESS)


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
        ``(round, phase, who, reason)`` for every connection that failed its proof.
    proof_timeout_s, max_unproven_per_address, max_unproven : float, int, int
        How long one connection may take to prove itself, and how many may be trying at once.
    """

    def __init__(
        self,
        *,
        participants: list[str],
        verify_secret: Callable[[str, str], bool],
        min_clients: int,
        join_timeout_s: float,
        on_reject: Rejecter,
        proof_timeout_s: float = PROOF_TIMEOUT_S,
        max_unproven_per_address: int = MAX_UNPROVEN_PER_ADDRESS,
        max_unproven: int = MAX_UNPROVEN,
    ) -> None:
        super().__init__()
        self.participants = set(participants)
        self.verify_secret = verify_secret
        self.min_clients = min_clients
        self.join_timeout_s = join_timeout_s
        self.on_reject = on_reject
        self.proof_timeout_s = proof_timeout_s
        self.max_unproven_per_address = max_unproven_per_address
        self.max_unproven = max_unproven
        self.site_of: dict[str, str] = {}  # cid -> admitted site
        self._unproven: dict[str, str] = {}  # cid -> address
        self._slots = threading.Lock()
        self._checks = ThreadPoolExecutor(max_unproven, thread_name_prefix="admission")
        self._first_round_started = False

    def register(self, client: ClientProxy) -> bool:
        """Accept a connection for proving, unless its address (or everyone) has too many pending."""
        address = _joining_address()
        with self._slots:
            per_address = Counter(self._unproven.values())[address]
            if per_address >= self.max_unproven_per_address or len(self._unproven) >= self.max_unproven:
                _joining.retry_after_s = random.randint(*RETRY_AFTER_S)
                log.warning("turned away a connection from %s for %d s: %d unproven from there, %d in all",
                            log_excerpt(address), _joining.retry_after_s, per_address, len(self._unproven))
                return False
            self._unproven[client.cid] = address
        if not super().register(client):
            self._proved(client.cid)
            return False
        self._checks.submit(self._check, client)
        return True

    def sample(
        self, num_clients: int, min_num_clients: int | None = None, criterion: Any = None
    ) -> list[ClientProxy]:
        """Wait until enough admitted sites are connected and return all of them."""
        needed = self.min_clients if self._first_round_started else len(self.participants)
        deadline = time.monotonic() + self.join_timeout_s
        while True:
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

    def close(self) -> None:
        """Stop checking (proofs still running end with their connection)."""
        self._checks.shutdown(wait=False, cancel_futures=True)

    def _check(self, proxy: ClientProxy) -> None:
        try:
            self._admit_or_refuse(proxy)
        except Exception:  # a bug here must cost one connection, never the session
            log.exception("checking client %s failed", proxy.cid)
            super().unregister(proxy)
        finally:
            self._proved(proxy.cid)

    def _admit_or_refuse(self, proxy: ClientProxy) -> None:
        try:
            properties = proxy.get_properties(
                GetPropertiesIns(config={}), timeout=self.proof_timeout_s, group_id=None
            ).properties
        except Exception as exc:  # a client that cannot answer in time is not admitted
            self._refuse(proxy, f"client {proxy.cid}", f"no proof of admission ({exc.__class__.__name__})")
            return
        site = str(properties.get(SITE_KEY, ""))
        secret = str(properties.get(SECRET_KEY, ""))
        if site not in self.participants or not self.verify_secret(site, secret):
            who = log_excerpt(site) if site else f"client {proxy.cid}"
            self._refuse(proxy, who, "not admitted: missing or wrong session secret")
            return
        with self._slots:
            duplicate = site in self.site_of.values()
            if not duplicate:
                self.site_of[proxy.cid] = site
        if duplicate:
            self._refuse(proxy, site, "a second connection for an already connected site")
        else:
            log.info("site %s joined the session", site)

    def _proved(self, cid: str) -> None:
        with self._slots:
            self._unproven.pop(cid, None)
        with self._cv:
            self._cv.notify_all()

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
