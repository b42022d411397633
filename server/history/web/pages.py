"""The HTML pages: each renders the object its ``/api`` twin returns (``api.*_model``).

Tables are plain HTML (sorting is a link, paging is a link), so every page reads without
JavaScript; charts and the live sessions table add to it when scripts run.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from starlette.responses import FileResponse, HTMLResponse, RedirectResponse, Response

from server.history.web import api, charts
from server.history.web.api import (
    CacheDep,
    Order,
    PageNumber,
    PerPage,
    SessionId,
    SessionLimit,
    SortKey,
    StoreDep,
    VersionNumber,
)
from server.history.web.templating import render, render_text

router = APIRouter(include_in_schema=False)

VersionsPerPage = Annotated[int, Query(ge=1, le=5000)]

LIVE_REFRESH_S = 2


@router.get("/")
def home() -> Response:
    return RedirectResponse("/versions", status_code=303)


@router.get("/versions")
def versions_page(request: Request, store: StoreDep, cache: CacheDep, sort: SortKey = "number",
                  order: Order = "asc", page: PageNumber = 1, per_page: VersionsPerPage = 100) -> Response:
    marker, rows = api.versions_model(store, cache, sort, order)
    pages = max(1, -(-len(rows) // per_page))
    shown = rows[(page - 1) * per_page:page * per_page]
    body = cache.derived(marker, ("page", sort, order, page, per_page), lambda: render_text(
        request, "versions.html", versions=shown, total=len(rows), sort=sort, order=order, page=page,
        pages=pages, per_page=per_page))
    return HTMLResponse(body)


@router.get("/versions/{number}")
def version_page(request: Request, store: StoreDep, cache: CacheDep, number: VersionNumber) -> Response:
    detail = api.version_model(store, cache, number)
    figure = charts.figure_json(charts.rounds_chart(detail.rounds)) if detail.rounds else None
    return render(request, "version.html", detail=detail, v=detail.version, figure=figure)


@router.get("/lineage")
def lineage_page(request: Request, store: StoreDep, cache: CacheDep) -> Response:
    lineage = api.lineage_model(store, cache)
    return render(request, "lineage.html", lineage=lineage,
                  figure=charts.figure_json(charts.lineage_chart(lineage)))


@router.get("/compare")
def compare_page(request: Request, store: StoreDep, cache: CacheDep, a: Annotated[int | None, Query(ge=0)] = None,
                 b: Annotated[int | None, Query(ge=0)] = None) -> Response:
    versions = [v.number for v in cache.rows(store)[1]]
    comparison = api.comparison_model(store, a, b) if a is not None and b is not None else None
    return render(request, "compare.html", comparison=comparison, numbers=versions, a=a, b=b)


@router.get("/sessions")
def sessions_page(request: Request, store: StoreDep, limit: SessionLimit = 50) -> Response:
    return render(request, "sessions.html", sessions=api.sessions_model(store, limit), limit=limit,
                  refresh_s=LIVE_REFRESH_S)


@router.get("/sessions/{session_id}")
def session_page(request: Request, store: StoreDep, session_id: SessionId) -> Response:
    detail = api.session_model(store, session_id)
    figure = charts.figure_json(charts.rounds_chart(detail.rounds)) if detail.rounds else None
    return render(request, "session.html", detail=detail, s=detail.session, figure=figure,
                  refresh_s=LIVE_REFRESH_S)


@router.get("/privacy")
def privacy_page(request: Request, store: StoreDep) -> Response:
    points = api.privacy_model(store)
    return render(request, "privacy.html", points=list(reversed(points)),
                  figure=charts.figure_json(charts.privacy_chart(points)) if points else None)


@router.get("/audit")
def audit_page(request: Request, store: StoreDep, page: PageNumber = 1, per_page: PerPage = 50) -> Response:
    return render(request, "audit.html", audit=api.audit_model(store, page, per_page))


@router.get("/static/vendor/plotly.min.js")
def plotly_js() -> Response:
    """plotly.js from the installed plotly package: charts work on machines without internet."""
    return FileResponse(charts.PLOTLY_JS, media_type="text/javascript",
                        headers={"Cache-Control": "public, max-age=86400"})
