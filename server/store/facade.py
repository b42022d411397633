"""The store: the one API through which the socket, the sessions, the menus and analysts share state.

``Store`` composes one class per concern (sites, requests, sessions and the privacy ledger
charged with them, versions, clean-up, notifications, audit, analyst tokens), so callers keep a
single object while each concern lives in its own
module. Every method runs in its own short transaction and returns frozen records (never ORM
objects). Each admin and session action appends its audit row inside the same transaction as
the change, so the log never disagrees with the data.
"""

from __future__ import annotations

from server.store.analysts import AnalystStore
from server.store.audit import AuditStore
from server.store.cleanup import CleanupStore
from server.store.identity_keys import IdentityKeyStore
from server.store.notifications import NotificationStore
from server.store.privacy_ledger import PrivacyLedgerStore
from server.store.requests import RequestStore
from server.store.sessions import SessionStore
from server.store.sites import SiteStore
from server.store.versions import VersionStore


class Store(
    SiteStore,
    RequestStore,
    PrivacyLedgerStore,
    SessionStore,
    VersionStore,
    CleanupStore,
    NotificationStore,
    AuditStore,
    AnalystStore,
    IdentityKeyStore,
):
    """Repository facade over the database and the versions folder."""
