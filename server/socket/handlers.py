"""What each request-socket message does to the store, for one already authenticated site.

Everything here is synchronous and runs in a worker thread, one call per message, so a
message that needs several store reads costs a single hop off the event loop. Ownership is
checked here: another site's request or a version not released to this site is answered
exactly like one that does not exist, so a site learns nothing about the others. For the same
reason a session ticket carries only the asking site's own plan, and a version view only
aggregates: the number of sites, never the other hospitals' names, counts or epsilons.
"""

from __future__ import annotations

import base64
import hashlib
import math
from typing import Any

from pydantic import BaseModel

from server.store import Store
from server.store.lifecycle import RequestState
from server.store.records import RequestInfo, VersionInfo, request_label, version_label
from shared import framing, secagg_identity
from shared import protocol as p
from shared.errors import IllegalTransitionError, NotFoundError
from shared.settings import Settings

_TICKET_STATES = frozenset({RequestState.APPROVED, RequestState.RUNNING})


class RequestHandlers:
    """Turns a validated message from ``site`` into its result model."""

    def __init__(self, store: Store, settings: Settings) -> None:
        self._store = store
        self._settings = settings
        self._chunk_bytes = framing.chunk_payload_bytes(
            settings.max_frame_bytes, settings.download_chunk_bytes
        )

    def handle(self, message: p.Message) -> BaseModel:
        """Dispatch on the message type (the union is closed, so every type has a method)."""
        handler = getattr(self, f"_{message.type}")
        return handler(message)

    # -------------------------------------------------------------- requests

    def _submit_request(self, m: p.SubmitRequest) -> BaseModel:
        dp = m.dp.model_dump(exclude_none=True)
        declaration = m.declaration.model_dump(exclude_none=True) if m.declaration else None
        self._store.check_request_privacy(m.site, dp, declaration)
        info = self._store.submit_request(
            m.site,
            rounds=m.rounds,
            local_epochs=m.local_epochs,
            dp=dp,
            note=m.note,
            max_pending=self._settings.max_pending_requests,
            declaration=declaration,
        )
        return p.RequestView.model_validate(info)

    def _request_status(self, m: p.RequestStatus) -> BaseModel:
        return p.RequestView.model_validate(self._own_request(m.site, m.request_id))

    def _list_requests(self, m: p.ListRequests) -> BaseModel:
        infos = self._store.list_requests(site=m.site)
        return p.RequestList(requests=[p.RequestView.model_validate(i) for i in infos])

    def _cancel_request(self, m: p.CancelRequest) -> BaseModel:
        self._own_request(m.site, m.request_id)
        info = self._store.cancel_request(m.request_id, site=m.site)
        return p.RequestView.model_validate(info)

    def _session_ticket(self, m: p.SessionTicketRequest) -> BaseModel:
        request = self._own_request(m.site, m.request_id)
        if request.state not in _TICKET_STATES or request.session_id is None:
            raise IllegalTransitionError(
                f"{request.label} is {request.state.value}: a session ticket exists only "
                "while it is APPROVED or RUNNING",
                hint="Poll the request status; the ticket appears once the admin approves it.",
            )
        session = self._store.get_session(request.session_id)
        return p.SessionTicket(
            request_id=request.id,
            session_id=session.id,
            session_state=session.state.value,
            host=self._settings.session_host,
            port=session.port,
            secret=self._store.session_secret(session.id, m.site),
            config=_ticket_config(session.config, m.site),
            peers=self._store.identity_keys(session.participants),
        )

    def _register_identity_key(self, m: p.RegisterIdentityKey) -> BaseModel:
        """The site's identity key for secure aggregation: first registration wins (see the store)."""
        fingerprint = secagg_identity.fingerprint(secagg_identity.raw_public_key(
            secagg_identity.decode_public_key(m.public_key)))
        new = self._store.register_identity_key(m.site, m.public_key, fingerprint=fingerprint)
        return p.IdentityKeyRegistered(fingerprint=fingerprint, newly_registered=new)

    # -------------------------------------------------------------- notifications

    def _list_notifications(self, m: p.ListNotifications) -> BaseModel:
        infos = self._store.notifications(m.site, unread_only=m.unread_only)
        return p.NotificationList(notifications=[p.NotificationView.model_validate(i) for i in infos])

    def _acknowledge(self, m: p.Acknowledge) -> BaseModel:
        return p.Acknowledged(acknowledged=self._store.acknowledge(m.site, list(m.notification_ids)))

    # -------------------------------------------------------------- versions

    def _list_versions(self, m: p.ListVersions) -> BaseModel:
        infos = self._store.available_versions(m.site)
        return p.VersionList(versions=[_version_view(i, m.site) for i in infos])

    def _download_version(self, m: p.DownloadVersion) -> BaseModel:
        version = self._downloadable_version(m.site, m.version)
        data, total_chunks = self._read_chunk(version, m.chunk)
        return p.DownloadChunk(
            version=version.number,
            chunk=m.chunk,
            total_chunks=total_chunks,
            total_size=version.size_bytes,
            sha256=version.sha256,
            chunk_sha256=hashlib.sha256(data).hexdigest(),
            data=base64.b64encode(data).decode("ascii"),
        )

    def _acknowledge_update(self, m: p.AcknowledgeUpdate) -> BaseModel:
        self._downloadable_version(m.site, m.version)
        self._store.record_download(m.site, m.version)
        return p.UpdateAccepted(version=m.version, recorded=True)

    # -------------------------------------------------------------- helpers

    def _own_request(self, site: str, request_id: int) -> RequestInfo:
        """The request if it belongs to ``site``; otherwise the same error as a missing one."""
        try:
            info = self._store.get_request(request_id)
        except NotFoundError:
            info = None
        if info is None or info.site != site:
            raise NotFoundError(
                f"no request {request_label(request_id)} for site '{site}'",
                hint="List your requests to see their ids.",
            )
        return info

    def _downloadable_version(self, site: str, number: int) -> VersionInfo:
        """The version if the store lets ``site`` fetch it; otherwise the same error as a missing one."""
        try:
            allowed = self._store.may_download(site, number)
        except NotFoundError:
            allowed = False
        if not allowed:
            raise NotFoundError(
                f"no version {version_label(number)} available to site '{site}'",
                hint="List the versions released to you; clean-up may have removed old weight files.",
            )
        return self._store.get_version(number)

    def _read_chunk(self, version: VersionInfo, index: int) -> tuple[bytes, int]:
        """Bytes of chunk ``index`` of the version file, and how many chunks it has."""
        total_chunks = max(1, math.ceil(version.size_bytes / self._chunk_bytes))
        if index >= total_chunks:
            raise NotFoundError(
                f"{version.label} has {total_chunks} chunks; there is no chunk {index}",
                hint="Chunks are numbered from 0.",
            )
        path = self._store.version_path(version.number)
        with open(path, "rb") as handle:
            handle.seek(index * self._chunk_bytes)
            return handle.read(self._chunk_bytes), total_chunks


def _version_view(info: VersionInfo, site: str) -> p.VersionView:
    """What ``site`` sees of a version: aggregates, its own privacy entry, the model spec to rebuild it."""
    view = p.VersionView.model_validate(info)
    mine = site in info.participants
    return view.model_copy(update={
        "model": dict(info.metadata.get("model", {})),
        "participants": [site] if mine else [],
        "sites": len(info.participants),
        "dp_summary": {site: info.dp_summary[site]} if site in info.dp_summary else {},
        # a total count minus the site's own would be another site's count
        "metrics": {phase: {k: v for k, v in values.items() if k != "examples"} if isinstance(values, dict) else values
                    for phase, values in info.metrics.items()},
    })


def _ticket_config(config: dict[str, Any], site: str) -> dict[str, Any]:
    """The session config without the other sites' plans; ``site`` holds the asking site's own."""
    shared = {key: value for key, value in config.items() if key != "sites"}
    return {**shared, "site": dict(config.get("sites", {}).get(site, {}))}
