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
    """A request approved into a session, with that site's session secret.

    The secret is stored in plain text because the site must fetch it later through the
    authenticated socket; it is only valid for this one session and is wiped when it ends.
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


class AuditRow(Base):
    """Append-only, hash-chained: ``row_hash = sha256(prev_hash + canonical JSON of the row)``."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    at: Mapped[datetime]
    actor: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(64))
    detail: Mapped[dict[str, Any]]
    prev_hash: Mapped[str] = mapped_column(String(64))
    row_hash: Mapped[str] = mapped_column(String(64))


class SiteIdentityKey(Base):
    """A site's Ed25519 identity public key (base64 of 32 bytes), registered once over the socket.

    Peers check each round's key-exchange keys against it (secure aggregation); a different key
    is refused until the admin resets the registration.
    """

    __tablename__ = "site_identity_keys"

    site: Mapped[str] = mapped_column(ForeignKey("sites.name"), primary_key=True)
    public_key: Mapped[str] = mapped_column(String(64))
    registered_at: Mapped[datetime] = mapped_column(default=utcnow)
