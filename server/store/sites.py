"""Enrolled sites: names, salted token hashes, privacy budgets, the enabled flag.

A token is shown once at enrolment and only its scrypt hash is kept (:mod:`server.store.tokens`).
"""

from __future__ import annotations

import re

from sqlalchemy import select

from server.store import audit_chain
from server.store import tokens as site_tokens
from server.store.base import StoreBase
from server.store.models import (
    Site,
    utcnow,
)
from server.store.records import (
    SiteInfo,
)
from server.store.row_records import (
    site_info,
)
from server.store.rows import (
    site_row,
)
from shared.errors import (
    AuthError,
    DuplicateError,
    StoreError,
)

SITE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class SiteStore(StoreBase):
    """Enrolled sites: tokens (salted hashes only), budgets, enabled flag."""

    def enrol_site(
        self,
        name: str,
        *,
        budget_epsilon: float = 10.0,
        budget_delta: float = 1e-5,
        allow_no_dp: bool = False,
        actor: str = "admin",
    ) -> str:
        """Register a site and return its token; only a salted hash is kept, so show it now or never.

        ``allow_no_dp`` grants training without noise (no finite epsilon; benchmarks only).
        """
        if not SITE_NAME.match(name):
            raise StoreError(
                f"invalid site name {name!r}",
                hint="Use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit.",
            )
        if not (budget_epsilon > 0 and 0 < budget_delta < 1):
            raise StoreError(
                f"invalid privacy budget epsilon={budget_epsilon} delta={budget_delta}"
            )
        token = site_tokens.new_token()
        token_hash = site_tokens.hash_token(token)
        with self._write() as session:
            if session.get(Site, name) is not None:
                raise DuplicateError(f"site '{name}' is already enrolled")
            session.add(
                Site(
                    name=name,
                    token_hash=token_hash,
                    budget_epsilon=budget_epsilon,
                    budget_delta=budget_delta,
                    enabled=True,
                    created_at=utcnow(),
                    allow_no_dp=allow_no_dp,
                )
            )
            audit_chain.append(
                session,
                actor,
                "enrol_site",
                {"site": name, "budget_epsilon": budget_epsilon, "budget_delta": budget_delta,
                 "allow_no_dp": allow_no_dp},
            )
        return token

    def authenticate(self, site: str, token: str) -> SiteInfo:
        with self._read() as session:
            row = session.get(Site, site)
            if row is None:
                raise AuthError(f"unknown site '{site}'")
            if not site_tokens.verify_token(token, row.token_hash):
                raise AuthError(f"wrong token for site '{site}'")
            if not row.enabled:
                raise AuthError(
                    f"site '{site}' is disabled", hint="Ask the admin to re-enable the site."
                )
            return site_info(row)

    def disable_site(self, name: str, *, actor: str = "admin") -> None:
        with self._write() as session:
            site_row(session, name).enabled = False
            audit_chain.append(session, actor, "disable_site", {"site": name})

    def get_site(self, name: str) -> SiteInfo:
        with self._read() as session:
            return site_info(site_row(session, name))

    def list_sites(self) -> list[SiteInfo]:
        with self._read() as session:
            return [site_info(row) for row in session.scalars(select(Site).order_by(Site.name))]

