"""Notifications: what the server tells a site (approvals, new versions, releases); a site reads
and acknowledges only its own.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select, update

from server.store.base import StoreBase
from server.store.models import (
    Notification,
    utcnow,
)
from server.store.records import (
    NotificationInfo,
)
from server.store.row_records import (
    notification_info,
)
from server.store.rows import (
    add_notification,
    site_row,
)


class NotificationStore(StoreBase):
    """Messages to sites."""

    def notify(
        self, site: str, *, kind: str, message: str, payload: dict[str, Any] | None = None
    ) -> None:
        with self._write() as session:
            site_row(session, site)
            add_notification(session, site, kind, message, payload or {})

    def notifications(self, site: str, *, unread_only: bool = False) -> list[NotificationInfo]:
        query = select(Notification).where(Notification.site == site).order_by(Notification.id)
        if unread_only:
            query = query.where(Notification.read_at.is_(None))
        with self._read() as session:
            return [notification_info(row) for row in session.scalars(query)]

    def acknowledge(self, site: str, notification_ids: list[int]) -> int:
        """Mark the site's own unread notifications read; returns how many changed."""
        if not notification_ids:
            return 0
        with self._write() as session:
            result = session.execute(
                update(Notification)
                .where(
                    Notification.site == site,
                    Notification.id.in_(notification_ids),
                    Notification.read_at.is_(None),
                )
                .values(read_at=utcnow())
            )
            return int(result.rowcount or 0)

