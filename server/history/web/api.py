"""The dashboard's JSON under ``/api``, and the functions that build what both the pages and it show.

Each ``*_model`` function asks ``server.history.queries`` and returns a schema; the page of the
same name renders that very object, so a number cannot differ between the two.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query, Request
from pydantic import TypeAdapter
from starlette.responses import Response

from server.history.export import csv_text, json_text
from server.history.queries import (
    audit_page,
    compare_versions,
    privacy_over_time,
    session_overview,
    sessions_overview,
    version_aggregation,
    version_rounds,
)
from server.history.web.schemas import (
    AuditPageOut,
    ComparisonOut,
    LineageOut,
    PrivacyPoint,
    SessionDetail,
    SessionOut,
    VersionDetail,
    VersionSummary,
)
from server.history.web.versions_cache import VersionsCache
from server.store import Store
from shared.errors import UsageError

SortKey = Literal["number", "kind", "session", "sites", "rounds", "accuracy", "created"]
Order = Literal["asc", "desc"]
VersionNumber = Annotated[int, Path(ge=0, le=2**31 - 1, description="version number, e.g. 3 for v3")]
SessionId = Annotated[int, Path(ge=1, le=2**31 - 1)]
PageNumber = Annotated[int, Query(ge=1, le=10**6)]
PerPage = Annotated[int, Query(ge=1, le=500)]
SessionLimit = Annotated[int, Query(ge=1, le=1000, description="finished sessions shown (live ones always are)")]


def get_store(request: Request) -> Store:
    return request.app.state.store


def get_versions_cache(request: Request) -> VersionsCache:
    return request.app.state.versions_cache


StoreDep = Annotated[Store, Depends(get_store)]
CacheDep = Annotated[VersionsCache, Depends(get_versions_cache)]

_SORT_VALUES: dict[str, Callable[[VersionSummary], Any]] = {
    "number": lambda v: v.number,
    "kind": lambda v: v.kind,
    "session": lambda v: v.session_id,
    "sites": lambda v: len(v.participants),
    "rounds": lambda v: v.rounds,
    "accuracy": lambda v: v.val_accuracy,
    "created": lambda v: v.created_at,
}
_VERSION_LIST = TypeAdapter(list[VersionSummary])


def sorted_versions(rows: list[VersionSummary], sort: SortKey, order: Order) -> list[VersionSummary]:
    """Rows without the sorted value (no session, no metric) go last in either order."""
    value = _SORT_VALUES[sort]
    present = sorted((r for r in rows if value(r) is not None), key=lambda r: (value(r), r.number),
                     reverse=order == "desc")
    return present + [r for r in rows if value(r) is None]


def versions_model(store: Store, cache: VersionsCache, sort: SortKey = "number",
                   order: Order = "asc") -> tuple[tuple[int, ...], list[VersionSummary]]:
    """Every version as a table row, sorted, and the store's versions marker they belong to."""
    marker, rows = cache.rows(store)
    return marker, cache.derived(marker, ("sorted", sort, order), lambda: sorted_versions(rows, sort, order))


def version_model(store: Store, cache: VersionsCache, number: int) -> VersionDetail:
    version = store.get_version(number)
    children = [v.number for v in cache.rows(store)[1] if number in v.parents]
    return VersionDetail.of(version, version_rounds(store, version), children, version_aggregation(store, version))


def lineage_model(store: Store, cache: VersionsCache) -> LineageOut:
    return LineageOut.of(cache.rows(store)[1])


def comparison_model(store: Store, a: int, b: int) -> ComparisonOut:
    try:
        return ComparisonOut.of(compare_versions(store, a, b))
    except ValueError as exc:  # weights of different shapes: two different model set-ups
        raise UsageError(f"cannot compare v{a} and v{b}: {exc}",
                         hint="Compare versions of the same model (same image size and trainable blocks).") from None


def sessions_model(store: Store, limit: int = 50) -> list[SessionOut]:
    return [SessionOut.of(o) for o in sessions_overview(store, finished_limit=limit)]


def session_model(store: Store, session_id: int) -> SessionDetail:
    return SessionDetail.of(session_overview(store, session_id))


def privacy_model(store: Store) -> list[PrivacyPoint]:
    """One query behind the privacy page (see ``queries.privacy_over_time``)."""
    return [PrivacyPoint.of(p) for p in privacy_over_time(store)]


def audit_model(store: Store, page: int, per_page: int) -> AuditPageOut:
    return AuditPageOut.of(audit_page(store, page, per_page))


router = APIRouter(prefix="/api", tags=["history"])


@router.get("/versions", response_model=list[VersionSummary])
def api_versions(store: StoreDep, cache: CacheDep, sort: SortKey = "number", order: Order = "asc") -> Response:
    """Every version: kind, parents, sites, rounds, accuracy, releases, sha256."""
    marker, rows = versions_model(store, cache, sort, order)
    body = cache.derived(marker, ("json", sort, order), lambda: _VERSION_LIST.dump_json(rows))
    return Response(body, media_type="application/json")


@router.get("/versions/{number}", response_model=VersionDetail)
def api_version(store: StoreDep, cache: CacheDep, number: VersionNumber) -> VersionDetail:
    """One version with its per-round metrics, participants as aggregates and privacy."""
    return version_model(store, cache, number)


@router.get("/versions/{number}/rounds.{fmt}", response_class=Response)
def api_version_rounds(store: StoreDep, number: VersionNumber, fmt: Literal["csv", "json"]) -> Response:
    """A version's per-round metrics as a CSV or JSON file (the columns of ``fl-history export``)."""
    rows = [asdict(r) for r in version_rounds(store, store.get_version(number))]
    body = csv_text(rows) if fmt == "csv" else json_text(rows)
    return Response(body, media_type="text/csv" if fmt == "csv" else "application/json",
                    headers={"Content-Disposition": f'attachment; filename="v{number}-rounds.{fmt}"'})


@router.get("/lineage", response_model=LineageOut)
def api_lineage(store: StoreDep, cache: CacheDep) -> LineageOut:
    """Every version and the parent edges; merge edges name the merged candidate."""
    return lineage_model(store, cache)


@router.get("/compare", response_model=ComparisonOut)
def api_compare(store: StoreDep, a: Annotated[int, Query(ge=0)], b: Annotated[int, Query(ge=0)]) -> ComparisonOut:
    """Metrics, participants, privacy and the L2 distance of two versions' weights."""
    return comparison_model(store, a, b)


@router.get("/sessions", response_model=list[SessionOut])
def api_sessions(store: StoreDep, limit: SessionLimit = 50) -> list[SessionOut]:
    """Sessions newest first: state and round k of n (the sessions page polls this)."""
    return sessions_model(store, limit)


@router.get("/sessions/{session_id}", response_model=SessionDetail)
def api_session(store: StoreDep, session_id: SessionId) -> SessionDetail:
    return session_model(store, session_id)


@router.get("/privacy", response_model=list[PrivacyPoint])
def api_privacy(store: StoreDep) -> list[PrivacyPoint]:
    """Every privacy report per site over time, oldest first."""
    return privacy_model(store)


@router.get("/audit", response_model=AuditPageOut)
def api_audit(store: StoreDep, page: PageNumber = 1, per_page: PerPage = 50) -> AuditPageOut:
    """One page of the audit log, newest first, with the whole chain's verification."""
    return audit_model(store, page, per_page)
