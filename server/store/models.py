"""SQLAlchemy 2 typed models of everything that must survive a server restart.

Only the store package touches these; everyone else gets the
frozen records of :mod:`server.store.records`. Timestamps are stored as UTC and always come back
timezone-aware, also on SQLite, which drops time zones.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    JSON,
    DateTime,
    Enum,
    ForeignKey,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from server.store.lifecycle import RequestState, SessionState


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in, aware UTC datetimes out, on every backend."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store; use timezone-aware UTC")
        value = value.astimezone(timezone.utc)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)


def _state(enum: type) -> Enum:
    """Enum stored as its name in a VARCHAR, the same on every backend (no native ENUM types)."""
    return Enum(enum, native_enum=False, length=16, validate_strings=True)


class Base(DeclarativeBase):
    type_annotation_map = {datetime: UTCDateTime, dict[str, Any]: JSON, list[Any]: JSON}


class WriteLock(Base):
    """One row that non-SQLite writers lock (SELECT ... FOR UPDATE) to take turns, like SQLite's BEGIN IMMEDIATE."""

    __tablename__ = "write_lock"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)


class Site(Base):
    __tablename__ = "sites"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(256))
    budget_epsilon: Mapped[float]
    budget_delta: Mapped[float]
    enabled: Mapped[bool] = mapped_column(default=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    #: Granted by the admin at enrolment: this site may train without noise (no finite epsilon).
    allow_no_dp: Mapped[bool] = mapped_column(default=False)


class Request(Base):
    __tablename__ = "requests"

    id: Mapped[int] = mapped_column(primary_key=True)
    site: Mapped[str] = mapped_column(ForeignKey("sites.name"), index=True)
    state: Mapped[RequestState] = mapped_column(_state(RequestState), index=True)
    rounds: Mapped[int]
    local_epochs: Mapped[int]
    dp: Mapped[dict[str, Any]]
    note: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    decided_at: Mapped[datetime | None]
    decided_by: Mapped[str | None] = mapped_column(String(64))
    reason: Mapped[str] = mapped_column(Text, default="")
    session_id: Mapped[int | None] = mapped_column(ForeignKey("sessions.id"))
    #: The site's data declaration (``shared.protocol.DataDeclaration``); {} from older clients.
    declaration: Mapped[dict[str, Any]] = mapped_column(default=dict)


class FlSession(Base):
    """One Flower session process; its members are the approved requests it carries."""

    __tablename__ = "sessions"

    id: Mapped[int] = mapped_column(primary_key=True)
    state: Mapped[SessionState] = mapped_column(_state(SessionState), index=True)
    config: Mapped[dict[str, Any]]
    port: Mapped[int | None]
    pid: Mapped[int | None]
    base_version: Mapped[int] = mapped_column(ForeignKey("versions.number"))
    version_number: Mapped[int | None] = mapped_column(ForeignKey("versions.number"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    ended_at: Mapped[datetime | None]
    reason: Mapped[str] = mapped_column(Text, default="")

    members: Mapped[list[SessionMember]] = relationship(
        order_by="SessionMember.request_id", lazy="selectin"
    )


class SessionMember(Base):
    """A request approved into a session, with the nonce of that site's session secret.

    ``secret`` holds a random nonce, not the secret: the secret is an HMAC of the nonce under
    the server key (``server.store.session_secrets``), so the database alone cannot join a
    session. The nonce is wiped when the session ends or the site is disabled.
    """

    __tablename__ = "session_members"
    __table_args__ = (UniqueConstraint("session_id", "site"),)

    session_id: Mapped[int] = mapped_column(ForeignKey("sessions.id"), primary_key=True)
    request_id: Mapped[int] = mapped_column(ForeignKey("requests.id"), primary_key=True)
    site: Mapped[str] = mapped_column(ForeignKey("sites.name"))
    secret: Mapped[str | None] = mapped_column(String(128))


class SessionRound(Base):
    __tablename__ = "session_rounds"

    session_id: Mapped[int] = mapped_column(ForeignKey("sessions.id"), primary_key=True)
    round_number: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    phase: Mapped[str] = mapped_column(String(16), primary_key=True)
    metrics: Mapped[dict[str, Any]]
    per_site: Mapped[dict[str, Any]]
    recorded_at: Mapped[datetime] = mapped_column(default=utcnow)


class Version(Base):
    """A model version; rows are never deleted, clean-up only removes the weight file."""

    __tablename__ = "versions"

    number: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    kind: Mapped[str] = mapped_column(String(16))
    parents: Mapped[list[Any]]
    session_id: Mapped[int | None] = mapped_column(Integer)  # no FK: sessions already point here
    participants: Mapped[list[Any]]
    rounds: Mapped[int] = mapped_column(default=0)
    metrics: Mapped[dict[str, Any]]
    dp_summary: Mapped[dict[str, Any]]
    meta: Mapped[dict[str, Any]] = mapped_column("metadata")
    merge_weight: Mapped[float | None]
    staleness: Mapped[int] = mapped_column(default=0)
    filename: Mapped[str] = mapped_column(String(255))
    size_bytes: Mapped[int]
    sha256: Mapped[str] = mapped_column(String(64))
    note: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    pruned_at: Mapped[datetime | None]

    releases: Mapped[list[Release]] = relationship(order_by="Release.site", lazy="selectin")


class Release(Base):
    """A version exported to a site: the site may download it, and clean-up keeps it."""

    __tablename__ = "releases"

    version_number: Mapped[int] = mapped_column(ForeignKey("versions.number"), primary_key=True)
    site: Mapped[str] = mapped_column(ForeignKey("sites.name"), primary_key=True)
    released_at: Mapped[datetime] = mapped_column(default=utcnow)
    released_by: Mapped[str] = mapped_column(String(64))


class Download(Base):
    """A site accepted and fetched a version."""

    __tablename__ = "downloads"

    id: Mapped[int] = mapped_column(primary_key=True)
    site: Mapped[str] = mapped_column(ForeignKey("sites.name"), index=True)
    version_number: Mapped[int] = mapped_column(ForeignKey("versions.number"))
    downloaded_at: Mapped[datetime] = mapped_column(default=utcnow)


class Notification(Base):
    __tablename__ = "notifications"

    id: Mapped[int] = mapped_column(primary_key=True)
    site: Mapped[str] = mapped_column(ForeignKey("sites.name"), index=True)
    kind: Mapped[str] = mapped_column(String(32))
    message: Mapped[str] = mapped_column(Text)
    payload: Mapped[dict[str, Any]]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    read_at: Mapped[datetime | None]


class AuditSeal(Base):
    """The server's seal on one audit row: ``mac = HMAC(audit key, row_hash)``.

    The hash chain alone can be recomputed by anyone who can write the database; the seal can
    only be made with the key in the server key file, which is not in the database.
    """

    __tablename__ = "audit_seals"

    #: No foreign key: removing a row must not need its seal removed first; the check reports it.
    row_id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    mac: Mapped[str] = mapped_column(String(64))


class AuditRow(Base):
    """Append-only, hash-chained: ``row_hash = sha256(prev_hash + canonical JSON of the row)``,
    each row sealed by an :class:`AuditSeal`."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    at: Mapped[datetime]
    actor: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(64))
    detail: Mapped[dict[str, Any]]
    prev_hash: Mapped[str] = mapped_column(String(64))
    row_hash: Mapped[str] = mapped_column(String(64))


class AnalystToken(Base):
    """A dashboard token for one analyst (``fl-history web`` off loopback).

    Only the scrypt hash of the secret part is kept; revoking stamps ``revoked_at`` and keeps the
    row, so the audit log's references stay resolvable.
    """

    __tablename__ = "analyst_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), index=True)
    token_hash: Mapped[str] = mapped_column(String(256))
    created_by: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None]


class PrivacyCharge(Base):
    """One site's DP schedule in one approved session, as the server approved and sent it.

    The server's privacy ledger: ``event_json`` is the whole session's DpEvent for that site
    (``rounds`` runs of ``schedule``), charged at approval; the epsilons are PLD (``epsilon_rdp``
    the RDP cross-check) at ``delta``, this session alone and composed with every earlier charge
    of the site. None means no finite guarantee (a no-DP session the admin allowed).
    """

    __tablename__ = "privacy_charges"

    id: Mapped[int] = mapped_column(primary_key=True)
    site: Mapped[str] = mapped_column(ForeignKey("sites.name"), index=True)
    session_id: Mapped[int] = mapped_column(ForeignKey("sessions.id"), index=True)
    request_id: Mapped[int] = mapped_column(ForeignKey("requests.id"))
    schedule: Mapped[dict[str, Any]]
    rounds: Mapped[int]
    examples: Mapped[int]
    event_json: Mapped[str] = mapped_column(Text)
    delta: Mapped[float]
    budget_epsilon: Mapped[float]
    epsilon: Mapped[float | None]
    epsilon_rdp: Mapped[float | None]
    total_epsilon: Mapped[float | None]
    total_epsilon_rdp: Mapped[float | None]
    slices_per_patient: Mapped[int | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class SiteIdentityKey(Base):
    """A site's Ed25519 identity public key (base64 of 32 bytes), registered once over the socket.

    Peers check each round's key-exchange keys against it (secure aggregation); a different key
    is refused until the admin resets the registration.
    """

    __tablename__ = "site_identity_keys"

    site: Mapped[str] = mapped_column(ForeignKey("sites.name"), primary_key=True)
    public_key: Mapped[str] = mapped_column(String(64))
    registered_at: Mapped[datetime] = mapped_column(default=utcnow)
